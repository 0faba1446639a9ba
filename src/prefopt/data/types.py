"""The two example types every data source is normalised into.

Whatever the layout on disk (OpenAI raw, tldr_3_filtered, CarperAI, trl-lib, the testbed), the
pipeline only ever sees `SFTExample` and `Comparison`. Both keep the post's parts (subreddit, title,
body) rather than a pre-formatted prompt, so the prompt can be rebuilt with smart truncation for any
tokenizer's budget.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

PROMPT_TEMPLATE = "SUBREDDIT: r/{subreddit}\n\nTITLE: {title}\n\nPOST: {post}\n\nTL;DR:"


def format_prompt(subreddit: str, title: str, post: str) -> str:
    """The exact OpenAI summarize-from-feedback query format."""
    return PROMPT_TEMPLATE.format(subreddit=subreddit, title=title, post=post)


@dataclass(frozen=True)
class Post:
    """A Reddit post: what the policy is asked to summarise."""

    subreddit: str
    title: str
    body: str
    id: str | None = None

    @property
    def prompt(self) -> str:
        return format_prompt(self.subreddit, self.title, self.body)


@dataclass(frozen=True)
class SFTExample:
    """A post and one reference summary (stored without the leading space)."""

    post: Post
    summary: str
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def prompt(self) -> str:
        return self.post.prompt

    @property
    def completion(self) -> str:
        """`" " + summary`: the space belongs to the completion, as in OpenAI's data. EOS is added at tokenisation."""
        return " " + self.summary


@dataclass(frozen=True)
class Comparison:
    """A post and two summaries, `chosen` preferred over `rejected` by a labeler.

    `confidence` is the labeler's 1-9 confidence where the source has it (OpenAI raw `extra.confidence`).
    """

    post: Post
    chosen: str
    rejected: str
    confidence: int | None = None
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def prompt(self) -> str:
        return self.post.prompt
