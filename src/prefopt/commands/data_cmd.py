"""`prefopt data preview|stats SOURCE`: look at a data source as the pipeline will see it, before training.

SOURCE is anything `prefopt.data.load` reads: `testbed`, a .jsonl/.json/.parquet/.csv file or folder, or
a Hub id. A bad source or row is reported in one line (DataError), never as a traceback.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer

from prefopt.commands import cli

app = typer.Typer(no_args_is_help=True, help="Preview a data source and measure its token lengths.")

Source = Annotated[str, typer.Argument(help="testbed | file | folder | Hub id (owner/name[:config])")]
Split = Annotated[str, typer.Option(help="Split to read (ignored by single files).")]
Kind = Annotated[str | None, typer.Option(help="sft | comparisons (detected from the columns if omitted).")]
KINDS = {"sft": "sft", "comparisons": "comparison", "comparison": "comparison"}
GOLD_QUANTILES = (0.1, 0.5, 0.9)


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn the user's mistakes (bad source, bad row, bad path, bad split) into one clear line."""
    from prefopt.data.load import DataError
    from prefopt.models.load import ModelLoadError

    try:
        yield
    except (DataError, ModelLoadError, FileNotFoundError, ValueError) as err:
        cli().fail(str(err))


def _kind(kind: str | None) -> str | None:
    if kind is not None and kind not in KINDS:
        cli().fail(f"--kind must be 'sft' or 'comparisons', got {kind!r}")
    return KINDS[kind] if kind else None


# ---------------------------------------------------------------- preview


@app.command()
def preview(
    source: Source,
    n: Annotated[int, typer.Option("-n", min=1, help="Examples to show.")] = 3,
    split: Split = "train",
    kind: Kind = None,
) -> None:
    """Print the first N examples: prompt and reference (or chosen/rejected), with gold scores on the testbed."""
    from rich.panel import Panel

    from prefopt.data.load import preview as load_preview

    with user_errors():
        rows = load_preview(source, n, split, kind=_kind(kind))
    console = cli().console
    for i, row in enumerate(rows, 1):
        where = f"{row['source']} row {row['row']}" if row.get("row") is not None else source
        console.rule(f"[bold]example {i}[/] — {where}" + (f" — id {row['id']}" if row.get("id") else ""))
        console.print(Panel(row["prompt"], title="prompt", title_align="left"), markup=False)
        gold = testbed_gold(row)
        for key in ("completion", "chosen", "rejected"):
            if key in row:
                label = "reference" if key == "completion" else key
                extra = f" — gold {gold[key]:.3f}" if key in gold else ""
                console.print(Panel(row[key].strip(), title=label + extra, title_align="left"), markup=False)


def testbed_gold(row: dict[str, Any]) -> dict[str, float]:
    """Gold scores of a previewed testbed example's summaries ({} for any other source)."""
    from prefopt.data.testbed import gold_score, is_testbed_post
    from prefopt.data.types import Post

    post = Post(row["subreddit"], row["title"], row["body"], row.get("id"))
    if not is_testbed_post(post):
        return {}
    return {k: gold_score(post, row[k].strip()) for k in ("completion", "chosen", "rejected") if k in row}


# ---------------------------------------------------------------- stats


@app.command()
def stats(
    source: Source,
    split: Split = "train",
    kind: Kind = None,
    tokenizer: Annotated[
        str | None,
        typer.Option(help="Tokenizer folder or id (default: the cached testbed tiny base's)."),
    ] = None,
    limit: Annotated[int | None, typer.Option(min=1, help="Only the first N examples.")] = None,
    max_prompt_tokens: Annotated[int, typer.Option(help="Prompt budget counted against.")] = 512,
    cache_dir: Annotated[Path, typer.Option(help="Where the testbed tiny base is cached.")] = Path(
        ".cache/prefopt"
    ),
) -> None:
    """Counts and token-length percentiles; on the testbed also labeler agreement, noise ceiling and
    the gold-score distribution of the references per quality."""
    from prefopt.data import load

    c = cli()
    with user_errors():
        k = _kind(kind) or ("sft" if source == "testbed" else load._detect_kind(source, split))
        loader = load.load_sft if k == "sft" else load.load_comparisons
        examples = loader(source, split, limit=limit)  # before the tokenizer: bad data fails fast
        tok = _tokenizer(tokenizer, cache_dir)
        numbers = load.stats(examples, tok, max_prompt_tokens)
    c.console.print(f"{source} (split {split}, {k}) — tokenizer {tok.name_or_path}", markup=False)
    _print_counts(numbers)
    if source == "testbed":
        _print_testbed(split, limit)


def _tokenizer(path: str | None, cache_dir: Path):
    from prefopt.models.load import load_tokenizer

    if path is None:
        path = cached_tiny_tokenizer(cache_dir)
    if path is None:
        cli().fail(
            f"no tokenizer: pass --tokenizer PATH (e.g. ../shared/data/qwen-tokenizer), or build the "
            f"testbed tiny base first (none cached under {cache_dir})"
        )
    return load_tokenizer(path)


def cached_tiny_tokenizer(cache_dir: Path) -> str | None:
    """The newest complete tiny base under `cache_dir` (its marker file is written last), or None."""
    from prefopt.model_configs import cached_tiny_base

    found = cached_tiny_base(cache_dir)
    return str(found) if found else None


def _print_counts(numbers: dict[str, Any]) -> None:
    from rich.table import Table

    console = cli().console
    console.print(
        f"{numbers['examples']:,} examples, {numbers['posts']:,} distinct posts, "
        f"{numbers['prompts_over_budget']:,} prompts over {numbers['max_prompt_tokens']} tokens "
        "(they will be cut at a newline or sentence end)"
    )
    table = Table(title="token lengths")
    cols = ("mean", "min", "p50", "p90", "p95", "p99", "max")
    for col in ("", *cols):
        table.add_column(col, justify="right" if col else "left")
    for key in ("prompt_tokens", "completion_tokens", "chosen_tokens", "rejected_tokens"):
        if numbers.get(key):
            table.add_row(key.removesuffix("_tokens"), *(f"{numbers[key][c]:.1f}" for c in cols))
    console.print(table)
    if "with_confidence" in numbers:
        console.print(f"{numbers['with_confidence']:,} comparisons carry a labeler confidence")


def testbed_numbers(split: str, limit: int | None) -> dict[str, Any]:
    """Labeler agreement and noise ceiling of the split's comparisons, and the gold scores of its
    reference summaries per writer quality (share, mean, quantiles)."""
    import numpy as np

    from prefopt.data import testbed

    cmps = testbed.load_comparisons(split, limit)
    refs = testbed.load_sft(split, limit)
    by_quality: dict[str, list[float]] = {}
    for ex in refs:
        by_quality.setdefault(ex.meta["quality"], []).append(ex.meta["gold"])
    quality = {}
    for q in [*testbed.QUALITY_MIX, *sorted(set(by_quality) - set(testbed.QUALITY_MIX))]:
        golds = np.asarray(by_quality.get(q, []), dtype=np.float64)
        if golds.size:
            qs = np.quantile(golds, GOLD_QUANTILES)
            quality[q] = {"n": int(golds.size), "share": golds.size / len(refs), "mean": float(golds.mean())}
            quality[q] |= {f"p{round(p * 100)}": float(v) for p, v in zip(GOLD_QUANTILES, qs, strict=True)}
    all_gold = np.asarray([ex.meta["gold"] for ex in refs], dtype=np.float64)
    return {
        "comparisons": len(cmps),
        "labeler_agreement": testbed.labeler_agreement(cmps),
        "noise_ceiling": testbed.noise_ceiling(cmps),
        "references": len(refs),
        "gold_mean": float(all_gold.mean()),
        "gold_by_quality": quality,
    }


def _print_testbed(split: str, limit: int | None) -> None:
    from rich.table import Table

    console = cli().console
    t = testbed_numbers(split, limit)
    console.print(
        f"testbed: on {t['comparisons']:,} comparisons, two labelers agree {t['labeler_agreement']:.3f}; "
        f"noise ceiling (accuracy of the noiseless gold labeler) {t['noise_ceiling']:.3f}"
    )
    table = Table(
        title=f"gold score of the {t['references']:,} reference summaries (mean {t['gold_mean']:.3f})"
    )
    cols = ("share", "n", "mean", "p10", "p50", "p90")
    for col in ("quality", *cols):
        table.add_column(col, justify="left" if col == "quality" else "right")
    for q, row in t["gold_by_quality"].items():
        share = f"{row['share']:.1%}"
        table.add_row(q, share, f"{row['n']:,}", *(f"{row[c]:.3f}" for c in ("mean", "p10", "p50", "p90")))
    console.print(table)
