"""An optional LLM judge: which of two summaries of a post is better, with the published TL;DR prompt.

Two kinds of judge, one interface (`judge(prompt) -> answer text`):
- an OpenAI-compatible server (OpenAI, vLLM, llama.cpp, ...): ``POST {url}/chat/completions``; the model
  name comes from ``PREFOPT_JUDGE_MODEL`` (default :data:`DEFAULT_MODEL`), the key from
  ``OPENAI_API_KEY`` (none sent when unset, as local servers want);
- a local Hugging Face causal-LM folder, generating greedily (with its chat template when it has one).

:func:`judge_pairwise` shows the two summaries in a seeded random order (LLM judges prefer one position)
and maps each verdict back. An answer without a readable ``Preferred: A|B`` line, or a request that
failed, counts as a tie (0.5) and is counted in ``failures``: a flaky judge shrinks a win rate toward
one half instead of crashing the evaluation.
"""

from __future__ import annotations

import json
import os
import random
import re
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

# The "concise" TL;DR win-rate prompt of the DPO paper (Rafailov et al. 2023, "Direct Preference
# Optimization", Appendix C.2, "Summarization GPT-4 win rate prompt (C)"), the judge prompt of the TL;DR
# comparisons that Huang et al. 2024 ("The N+ implementation details of RLHF with PPO") follow; their
# repository's eval/oai.py (vwxyzjn/summarize_from_feedback_details) uses a variant of it that asks to
# "Judge based on accuracy, coverage, and coherence" under "###" headings. Wording checked against the
# paper's appendix as reproduced on hackernoon.com ("GPT-4 Prompts for Computing Summarization and
# Dialogue Win Rates") and against public code that quotes it.
JUDGE_PROMPT = (
    "Which of the following summaries does a better job of summarizing the most important points in the "
    "given forum post, without including unimportant or irrelevant details? A good summary is both "
    "precise and concise.\n\n"
    "Post:\n{post}\n\n"
    "Summary A:\n{summary_a}\n\n"
    "Summary B:\n{summary_b}\n\n"
    "FIRST provide a one-sentence comparison of the two summaries, explaining which you prefer and why. "
    'SECOND, on a new line, state only "A" or "B" to indicate your choice. Your response should use the '
    "format:\n"
    "Comparison: <one-sentence comparison and explanation>\n"
    'Preferred: <"A" or "B">'
)
DEFAULT_MODEL = "gpt-4o-mini"
"""Model name sent to an OpenAI-compatible judge when ``PREFOPT_JUDGE_MODEL`` is unset."""

_PREFERRED = re.compile(r"preferred\s*[:：]\s*[\"'<*\s]*([AB])\b", re.IGNORECASE)


class JudgeError(RuntimeError):
    """The judge cannot be reached or set up (as opposed to one bad answer, which counts as a tie)."""


def build_prompt(post: str, summary_a: str, summary_b: str) -> str:
    """The published prompt with the post and the two summaries filled in (no other formatting)."""
    return JUDGE_PROMPT.format(post=post.strip(), summary_a=summary_a.strip(), summary_b=summary_b.strip())


def parse_verdict(answer: str | None) -> str | None:
    """``"A"`` or ``"B"`` from the LAST ``Preferred: ...`` line of an answer; None when there is none."""
    if not answer:
        return None
    found = _PREFERRED.findall(answer)
    return found[-1].upper() if found else None


# ------------------------------------------------------------------------------------- judges


class OpenAIJudge:
    """A chat-completions endpoint: ``POST {base_url}/chat/completions`` with the standard JSON body."""

    def __init__(
        self,
        base_url: str,
        model: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float = 60.0,
        max_tokens: int = 256,
        retries: int = 2,
        backoff: float = 2.0,
    ):
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model = model or os.environ.get("PREFOPT_JUDGE_MODEL") or DEFAULT_MODEL
        self.api_key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY")
        self.timeout, self.max_tokens, self.retries, self.backoff = timeout, max_tokens, retries, backoff

    def request_body(self, prompt: str) -> dict:
        return {
            "model": self.model,
            "messages": [{"role": "user", "content": prompt}],
            "temperature": 0.0,
            "max_tokens": self.max_tokens,
        }

    def __call__(self, prompt: str) -> str:
        """The answer text. Retries rate limits (429), server errors (5xx) and dropped connections;
        raises JudgeError when they persist or the server refuses the request (other 4xx)."""
        data = json.dumps(self.request_body(prompt)).encode("utf-8")
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        last = ""
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            req = urllib.request.Request(self.url, data=data, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                    payload = json.loads(resp.read().decode("utf-8"))
                return payload["choices"][0]["message"]["content"] or ""
            except urllib.error.HTTPError as err:
                last = f"HTTP {err.code} from {self.url}: {err.read()[:200]!r}"
                if err.code != 429 and err.code < 500:
                    raise JudgeError(last) from None
            except (urllib.error.URLError, TimeoutError, ConnectionError) as err:
                last = f"cannot reach {self.url}: {err}"
            except (KeyError, IndexError, TypeError, json.JSONDecodeError) as err:
                raise JudgeError(f"{self.url} did not answer in chat-completions format: {err!r}") from None
        raise JudgeError(last)


class LocalHFJudge:
    """A local Hugging Face causal-LM folder as judge: greedy generation, chat template when available."""

    def __init__(self, model_dir: str | Path, *, device: str | None = None, max_new_tokens: int = 128):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
        dtype = torch.bfloat16 if self.device.startswith("cuda") else torch.float32
        self.model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=dtype).to(self.device).eval()
        self.max_new_tokens = max_new_tokens

    def __call__(self, prompt: str) -> str:
        import torch

        tok = self.tokenizer
        if getattr(tok, "chat_template", None):
            ids = tok.apply_chat_template(
                [{"role": "user", "content": prompt}], add_generation_prompt=True, return_tensors="pt"
            )
            ids = ids if isinstance(ids, torch.Tensor) else ids["input_ids"]
        else:
            ids = tok(prompt, return_tensors="pt")["input_ids"]
        ids = ids.to(self.device)
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        with torch.no_grad():
            out = self.model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=self.max_new_tokens,
                do_sample=False,
                pad_token_id=pad,
            )
        return tok.decode(out[0, ids.shape[1] :], skip_special_tokens=True)


def make_judge(spec: str) -> Callable[[str], str]:
    """``http(s)://...`` -> :class:`OpenAIJudge`; an existing folder -> :class:`LocalHFJudge`."""
    if spec.startswith(("http://", "https://")):
        return OpenAIJudge(spec)
    if Path(spec).is_dir():
        return LocalHFJudge(spec)
    raise JudgeError(
        f"eval.judge={spec!r} is neither an http(s):// URL of an OpenAI-compatible server "
        "(e.g. https://api.openai.com/v1) nor a local model folder"
    )


# ------------------------------------------------------------------------------------- verdicts


@dataclass
class PairwiseJudgement:
    """Per-item outcome of a against b (1 a better, 0 b better, 0.5 no usable verdict)."""

    outcomes: list[float]
    a_shown_first: list[bool]
    answers: list[str | None]
    failures: int = 0
    errors: list[str] = field(default_factory=list)

    @property
    def win_rate(self) -> float:
        return sum(self.outcomes) / max(1, len(self.outcomes))


def judge_pairwise(
    judge: Callable[[str], str],
    posts: Sequence[str],
    a: Sequence[str],
    b: Sequence[str],
    *,
    seed: int = 0,
    max_workers: int = 4,
) -> PairwiseJudgement:
    """Ask ``judge`` whether ``a[i]`` or ``b[i]`` better summarises ``posts[i]``, order randomised.

    The order of every item is drawn up front from ``seed`` (so a rerun shows the judge the same
    prompts); requests run ``max_workers`` at a time. A request that fails even after the judge's
    retries, or an answer with no verdict, gives 0.5 and counts as a failure. If the first
    ``max_workers`` requests all fail to reach the judge, JudgeError is raised (a wrong URL should not
    cost hundreds of timeouts).
    """
    rng = random.Random(seed)
    a_first = [rng.random() < 0.5 for _ in posts]
    prompts = [
        build_prompt(p, x, y) if first else build_prompt(p, y, x)
        for p, x, y, first in zip(posts, a, b, a_first, strict=True)
    ]

    def ask(prompt: str) -> tuple[str | None, str | None]:
        try:
            return judge(prompt), None
        except JudgeError as err:
            return None, str(err)

    with ThreadPoolExecutor(max_workers=max(1, max_workers)) as pool:
        head = list(pool.map(ask, prompts[:max_workers]))
        if head and all(err is not None for _, err in head):
            raise JudgeError(f"the judge failed on its first {len(head)} requests: {head[0][1]}")
        replies = head + list(pool.map(ask, prompts[max_workers:]))

    result = PairwiseJudgement([], a_first, [answer for answer, _ in replies])
    for (answer, err), first in zip(replies, a_first, strict=True):
        verdict = parse_verdict(answer)
        if verdict is None:
            result.outcomes.append(0.5)
            result.failures += 1
            result.errors.append(err or f"no verdict in answer: {(answer or '')[:120]!r}")
        else:
            a_won = (verdict == "A") == first
            result.outcomes.append(1.0 if a_won else 0.0)
    return result
