"""Reddit TL;DR data: the OpenAI prompt format, parsing prompts back into parts, smart truncation,
and one normaliser per real schema.

Every layout is normalised into `SFTExample` / `Comparison` (or `AxisRating` for the axis file)
keeping the post's parts, so `build_prompt` can rebuild the prompt for any tokenizer's budget.

Normalisation rules (the same for every layout, so the three SFT layouts of one post give equal
examples): subreddit, title, body and summaries are stripped of surrounding whitespace (OpenAI's
summaries start with a space; the space belongs to the completion, see `SFTExample.completion`);
CarperAI's comparison summaries lose their `"TL;DR: "` prefix. The subreddit is kept as written,
so the few OpenAI rows whose subreddit is `r/relationships` keep the doubled `r/r/` of the source.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from prefopt.data.types import Comparison, Post, SFTExample, format_prompt

PROMPT_SUFFIX = "\n\nTL;DR:"
FILLABLE_FIELDS = ("subreddit", "title")  # the only parts a user may fill in when a source lacks them


class RowError(ValueError):
    """One row is unusable; `field` names the offending field (None: the whole row)."""

    def __init__(self, field: str | None, problem: str):
        super().__init__(f"field {field!r}: {problem}" if field else problem)
        self.field = field
        self.problem = problem


class SkipRow(Exception):
    """A well-formed row that is not a Reddit TL;DR example (OpenAI's CNN/DM comparisons)."""


@dataclass(frozen=True)
class AxisRating:
    """One summary rated by one labeler on OpenAI's Likert axes (1-7; a missing axis is None)."""

    post_id: str
    summary_id: int
    summary: str
    worker: str | None
    axes: dict[str, float | None]
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)


# ---------------------------------------------------------------------------------------- fields


def text_field(row: Mapping[str, Any], key: str, name: str | None = None) -> str:
    """`row[key]` as stripped, non-empty, valid Unicode text; RowError naming `name` otherwise."""
    name = name or key
    if key not in row:
        raise RowError(name, "missing")
    value = row[key]
    if value is None:
        raise RowError(name, "null")
    if not isinstance(value, str):
        raise RowError(name, f"expected text, got {type(value).__name__}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:  # lone surrogates: JSON escapes or undecodable CSV bytes
        raise RowError(name, f"not valid UTF-8 text (bad character at {e.start})") from None
    value = value.strip()
    if not value:
        raise RowError(name, "empty text")
    return value


def _mapping(row: Mapping[str, Any], key: str, name: str | None = None) -> Mapping[str, Any]:
    value = row.get(key)
    if not isinstance(value, Mapping):
        got = "missing" if key not in row else "null" if value is None else type(value).__name__
        raise RowError(name or key, f"expected an object, got {got}")
    return value


def _context(row: Mapping[str, Any], prefix: str, fill: Mapping[str, str]) -> tuple[str, str]:
    """(subreddit, title). A null/missing one is replaced by `fill[key]` only when the user opted in;
    otherwise the error lists every such field and says how to opt in."""
    absent = [k for k in FILLABLE_FIELDS if row.get(k) is None and k not in fill]
    if absent:
        names = [prefix + k for k in absent]
        opt_in = ", ".join(f"{k!r}: ''" for k in absent)
        raise RowError(
            names[0],
            f"null or missing ({', '.join(names)}); the prompt needs them: "
            f"pass fill_missing={{{opt_in}}} to load with placeholders",
        )
    subreddit, title = (
        fill[k] if row.get(k) is None else text_field(row, k, prefix + k) for k in FILLABLE_FIELDS
    )
    return subreddit, title


def _optional_id(row: Mapping[str, Any], key: str) -> str | None:
    value = row.get(key)
    return None if value is None else str(value)


# ---------------------------------------------------------------------------------------- prompts


def prompt_style(prompt: str) -> str:
    """'openai' (parts separated by a blank line) or 'carperai' (single newlines)."""
    i = prompt.find("TITLE: ")
    return "openai" if i >= 2 and prompt[i - 2 : i] == "\n\n" else "carperai"


def parse_prompt(prompt: str, style: str | None = None) -> Post:
    """Split a formatted TL;DR prompt back into (subreddit, title, body).

    Accepts OpenAI/trl-lib prompts (`SUBREDDIT: r/X\\n\\nTITLE: T\\n\\nPOST: P\\n\\nTL;DR:`) and CarperAI
    ones (single newlines, `TL;DR: ` at the end, or no TL;DR line at all in its comparisons).
    Each part ends at the FIRST marker that follows it, so a post mentioning `TITLE:` is safe.
    """
    style = style or prompt_style(prompt)
    sep = {"openai": "\n\n", "carperai": "\n"}[style]
    text = prompt.lstrip()
    head = "SUBREDDIT: r/"
    if not text.startswith(head):
        raise ValueError(f"does not start with {head!r}")
    i = text.find(sep + "TITLE: ", len(head))
    if i < 0:
        raise ValueError(f"no {sep + 'TITLE: '!r} after the subreddit ({style} style)")
    j = text.find(sep + "POST: ", i)
    if j < 0:
        raise ValueError(f"no {sep + 'POST: '!r} after the title ({style} style)")
    subreddit = text[len(head) : i]
    if "\n" in subreddit:
        raise ValueError("the subreddit line spans several lines")
    title = text[i + len(sep) + len("TITLE: ") : j]
    body = text[j + len(sep) + len("POST: ") :].rstrip()
    if body.endswith("TL;DR:"):
        body = body[: -len("TL;DR:")]
    return Post(subreddit=subreddit.strip(), title=title.strip(), body=body.strip())


def _prompt_post(row: Mapping[str, Any], style: str) -> Post:
    prompt = text_field(row, "prompt")
    try:
        post = parse_prompt(prompt, style)
    except ValueError as e:
        raise RowError("prompt", f"not a TL;DR prompt: {e}") from None
    for part, value in (("subreddit", post.subreddit), ("title", post.title), ("body", post.body)):
        if not value:
            raise RowError("prompt", f"the {part} in the prompt is empty")
    return post


# ---------------------------------------------------------------------------------------- normalisers


def sft_from_tldr_3_filtered(row: Mapping[str, Any], fill: Mapping[str, str]) -> SFTExample:
    """OpenAI tldr_3_filtered: `{id?, subreddit, title, post, summary}`."""
    subreddit, title = _context(row, "", fill)
    post = Post(subreddit, title, text_field(row, "post"), _optional_id(row, "id"))
    return SFTExample(post=post, summary=text_field(row, "summary"))


def sft_from_carperai(row: Mapping[str, Any], fill: Mapping[str, str]) -> SFTExample:
    """CarperAI/openai_summarize_tldr: `{prompt, label}`, single newlines, prompt ends `TL;DR: `."""
    return SFTExample(post=_prompt_post(row, "carperai"), summary=text_field(row, "label"))


def sft_from_trl(row: Mapping[str, Any], fill: Mapping[str, str]) -> SFTExample:
    """trl-lib/tldr: `{prompt, completion}`, completion = `" " + summary`."""
    return SFTExample(post=_prompt_post(row, "openai"), summary=text_field(row, "completion"))


def _choice(row: Mapping[str, Any]) -> int:
    value = row.get("choice")
    if isinstance(value, bool) or value not in (0, 1):
        raise RowError("choice", f"expected 0 or 1, got {value!r}")
    return int(value)


def _confidence(row: Mapping[str, Any]) -> int | None:
    extra = row.get("extra")
    if extra is None:
        return None
    if not isinstance(extra, Mapping):
        raise RowError("extra", f"expected an object, got {type(extra).__name__}")
    value = extra.get("confidence")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or value != int(value):
        raise RowError("extra.confidence", f"expected an integer, got {value!r}")
    return int(value)


def _raw_summaries(row: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    summaries = row.get("summaries")
    if not isinstance(summaries, list) or len(summaries) != 2:
        raise RowError("summaries", f"expected a list of 2 summaries, got {summaries!r:.60}")
    for k, s in enumerate(summaries):
        if not isinstance(s, Mapping):
            raise RowError(f"summaries[{k}]", f"expected an object, got {type(s).__name__}")
    return summaries


def comparison_from_openai_raw(row: Mapping[str, Any], fill: Mapping[str, str]) -> Comparison:
    """OpenAI raw comparisons: `{info:{id,post,title,subreddit}, summaries:[{text,policy,note}]x2,
    choice, worker, batch, split, extra:{confidence?}}`; policy/note/batch/split may be null.

    Null title/subreddit (the 727-row file) are errors unless `fill` supplies a value.
    """
    info = _mapping(row, "info")
    if info.get("post") is None and info.get("article") is not None:
        raise SkipRow("a CNN/DM article, not a Reddit post")
    subreddit, title = _context(info, "info.", fill)
    post = Post(subreddit, title, text_field(info, "post", "info.post"), _optional_id(info, "id"))
    summaries = _raw_summaries(row)
    texts = [text_field(s, "text", f"summaries[{k}].text") for k, s in enumerate(summaries)]
    choice = _choice(row)
    meta = {
        "worker": row.get("worker"),
        "batch": row.get("batch"),
        "split": row.get("split"),
        "policies": (summaries[choice].get("policy"), summaries[1 - choice].get("policy")),
        "filled": sorted(k for k in FILLABLE_FIELDS if info.get(k) is None),
    }
    return Comparison(post, texts[choice], texts[1 - choice], confidence=_confidence(row), meta=meta)


def _strip_tldr(text: str) -> str:
    return text[len("TL;DR:") :].strip() if text.startswith("TL;DR:") else text


def comparison_from_carperai(row: Mapping[str, Any], fill: Mapping[str, str]) -> Comparison:
    """CarperAI/openai_summarize_comparisons: `{prompt, chosen, rejected}`, single newlines, no TL;DR
    line in the prompt, summaries start with `TL;DR: `."""
    chosen, rejected = (_strip_tldr(text_field(row, k)) for k in ("chosen", "rejected"))
    for key, value in (("chosen", chosen), ("rejected", rejected)):
        if not value:
            raise RowError(key, "empty text after 'TL;DR:'")
    return Comparison(_prompt_post(row, "carperai"), chosen, rejected)


def comparison_from_trl(row: Mapping[str, Any], fill: Mapping[str, str]) -> Comparison:
    """trl-lib/tldr-preference: `{prompt, chosen, rejected}`, OpenAI prompt, summaries start with a space."""
    chosen, rejected = text_field(row, "chosen"), text_field(row, "rejected")
    return Comparison(_prompt_post(row, "openai"), chosen, rejected)


def rating_from_openai_axis(row: Mapping[str, Any], fill: Mapping[str, str]) -> AxisRating:
    """OpenAI axis evaluations, flattened: `{id, summary_id, text, worker, axes:{overall, ...}}`."""
    axes = _mapping(row, "axes")
    for name, value in axes.items():
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
            raise RowError(f"axes.{name}", f"expected a number or null, got {value!r}")
    summary_id = row.get("summary_id")
    if isinstance(summary_id, bool) or not isinstance(summary_id, int):
        raise RowError("summary_id", f"expected an integer, got {summary_id!r}")
    return AxisRating(
        post_id=text_field(row, "id"),
        summary_id=summary_id,
        summary=text_field(row, "text"),
        worker=_optional_id(row, "worker"),
        axes={str(k): None if v is None else float(v) for k, v in axes.items()},
    )


# ---------------------------------------------------------------------------------------- layouts

Normaliser = Callable[[Mapping[str, Any], Mapping[str, str]], Any]


@dataclass(frozen=True)
class Layout:
    name: str
    kind: str  # "sft" | "comparison" | "rating"
    columns: tuple[str, ...]  # required top-level columns
    normalise: Normaliser
    # Tells apart layouts whose columns can all be present (trl vs CarperAI) from one sample row.
    sniff: Callable[[Mapping[str, Any]], bool] | None = None


def _openai_style(row: Mapping[str, Any]) -> bool:
    return isinstance(row.get("prompt"), str) and prompt_style(row["prompt"]) == "openai"


LAYOUTS: dict[str, dict[str, Layout]] = {
    "sft": {
        "tldr_3_filtered": Layout(
            "tldr_3_filtered", "sft", ("subreddit", "title", "post", "summary"), sft_from_tldr_3_filtered
        ),
        "carperai": Layout(
            "carperai", "sft", ("prompt", "label"), sft_from_carperai, lambda r: not _openai_style(r)
        ),
        "trl": Layout("trl", "sft", ("prompt", "completion"), sft_from_trl, _openai_style),
    },
    "comparison": {
        "openai_raw": Layout(
            "openai_raw", "comparison", ("info", "summaries", "choice"), comparison_from_openai_raw
        ),
        "trl": Layout(
            "trl", "comparison", ("prompt", "chosen", "rejected"), comparison_from_trl, _openai_style
        ),
        "carperai": Layout(
            "carperai",
            "comparison",
            ("prompt", "chosen", "rejected"),
            comparison_from_carperai,
            lambda row: not _openai_style(row),
        ),
    },
    "rating": {
        "openai_axis": Layout(
            "openai_axis", "rating", ("id", "summary_id", "text", "axes"), rating_from_openai_axis
        ),
    },
}


def detect_layout(kind: str, columns: Iterable[str], sample: Mapping[str, Any] | None = None) -> str | None:
    """The layout of `kind` whose columns are all present (None if none); `sample` breaks ties."""
    cols = set(columns)
    matches = [lay for lay in LAYOUTS[kind].values() if set(lay.columns) <= cols]
    if len(matches) > 1 and sample is not None:
        matches = [lay for lay in matches if lay.sniff is None or lay.sniff(sample)] or matches
    return matches[0].name if matches else None


def describe_layouts(kind: str) -> str:
    return "; ".join(f"{lay.name} {{{', '.join(lay.columns)}}}" for lay in LAYOUTS[kind].values())


# ---------------------------------------------------------------------------------------- truncation

# A sentence ends at . ! or ? (possibly repeated, possibly closed by a quote or bracket) before whitespace.
_SENTENCE_END = re.compile(r"[.!?]+['\")\]]*(?=\s)")


def cut_lengths(body: str) -> list[int]:
    """Lengths of the body prefixes smart truncation may keep, in the order they are tried.

    First every cut at a newline (longest first, trailing whitespace dropped); once no newline is left
    (the first line), every sentence end inside it; once no sentence end is left (the first sentence),
    every word boundary inside it. Strictly decreasing, so `fits(cut)` flips once along the list.
    """
    cuts = [len(body[: m.start()].rstrip()) for m in re.finditer("\n", body)]
    first_line = body[: body.find("\n")].rstrip() if "\n" in body else body
    ends = [m.end() for m in _SENTENCE_END.finditer(first_line) if m.end() < len(first_line)]
    first_sentence = first_line[: ends[0]] if ends else first_line
    words = [len(first_sentence[: m.start()].rstrip()) for m in re.finditer(r"\s+", first_sentence)]
    ordered = sorted({c for c in cuts if c > 0}, reverse=True) + ends[::-1] + sorted(set(words), reverse=True)
    return [c for c in ordered if c > 0]


def _first_true(pred: Callable[[int], bool], n: int, guess: int) -> int:
    """Smallest i in [0, n) with pred(i) (n if none), for pred False...False True...True.

    Gallops out from `guess`, then bisects: a good guess costs ~2 calls of `pred`.
    """
    if n == 0:
        return 0
    lo, hi = -1, n  # invariant: pred(lo) is False (or lo == -1), pred(hi) is True (or hi == n)
    guess = min(max(guess, 0), n - 1)
    step = 1
    if pred(guess):
        hi = guess
        while hi - step > lo and pred(hi - step):
            hi, step = hi - step, step * 2
        lo = max(lo, hi - step)
    else:
        lo = guess
        while lo + step < hi and not pred(lo + step):
            lo, step = lo + step, step * 2
        hi = min(hi, lo + step)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if pred(mid) else (mid, hi)
    return hi


def _encode(tokenizer: Any, text: str, offsets: bool = False) -> Any:
    # Special tokens count: the budget is what the model will see for the prompt (BOS included, if any).
    if offsets and getattr(tokenizer, "is_fast", False):
        return tokenizer(text, add_special_tokens=True, return_offsets_mapping=True)
    return tokenizer(text, add_special_tokens=True)


def truncate_post(post: Post, tokenizer: Any, max_prompt_tokens: int = 512) -> Post:
    """`post` with its body cut (see `cut_lengths`) so its prompt fits `max_prompt_tokens` tokens.

    Tokenises the full prompt once and uses its offset mapping to guess where to cut; then verifies,
    moving along the cut list until the LONGEST cut that fits. Raises ValueError if none fits.
    """
    enc = _encode(tokenizer, post.prompt, offsets=True)
    if len(enc["input_ids"]) <= max_prompt_tokens:
        return post
    cuts = cut_lengths(post.body)
    body_end = len(post.prompt) - len(PROMPT_SUFFIX)
    body_start = body_end - len(post.body)

    def fits(k: int) -> bool:
        prompt = format_prompt(post.subreddit, post.title, post.body[: cuts[k]])
        return len(_encode(tokenizer, prompt)["input_ids"]) <= max_prompt_tokens

    k = _first_true(fits, len(cuts), _guess(enc, cuts, body_start, body_end, max_prompt_tokens))
    if k == len(cuts):
        raise ValueError(
            f"post {post.id or post.title[:40]!r}: no cut of the body fits {max_prompt_tokens} tokens "
            f"(the prompt has {len(enc['input_ids'])}; subreddit and title alone may be too long)"
        )
    return Post(post.subreddit, post.title, post.body[: cuts[k]], post.id)


def _guess(enc: Any, cuts: list[int], body_start: int, body_end: int, budget: int) -> int:
    """Index of the first cut no longer than the body characters that fit, read off the offsets."""
    offsets = enc.get("offset_mapping")
    if not offsets or not cuts:
        return 0
    # Tokens after the body (the TL;DR line, any trailing special) stay; the rest is room for the head.
    tail = sum(1 for start, end in offsets if start >= body_end or start == end)
    room = budget - tail
    if room <= 0:
        return len(cuts) - 1
    max_chars = offsets[min(room, len(offsets)) - 1][1] - body_start
    return next((k for k, c in enumerate(cuts) if c <= max_chars), len(cuts) - 1)


def build_prompt(post: Post, tokenizer: Any, max_prompt_tokens: int = 512) -> str:
    """The OpenAI TL;DR prompt for `post`, its body smart-truncated to fit `max_prompt_tokens`."""
    return truncate_post(post, tokenizer, max_prompt_tokens).prompt
