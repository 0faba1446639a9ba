"""Load TL;DR examples from any source, validated row by row.

A source is one of:
- `"testbed"`: the embedded offline testbed (`prefopt.data.testbed`);
- a local `.jsonl` / `.json` / `.parquet` / `.csv` file (`split` is ignored: the file is the split);
- a local folder: the files named after the split (`train.jsonl`, `train-00000-of-00002.parquet`,
  `train/*`), or, when no file there is named after any split, all its data files;
- a Hub dataset id, `owner/name` or `owner/name:config`, read with `datasets.load_dataset`.

The layout is detected from the columns (see `tldr.LAYOUTS`) or forced with `layout=`. A bad row
(missing or null field, wrong type, empty text, invalid UTF-8, unparseable JSON) raises `DataError`
naming the source, the 1-based row (the line number for JSON lines) and the field; with
`on_bad_row="skip"` bad rows are skipped and counted in one `BadRowsWarning`. OpenAI's CNN/DM rows
(not Reddit posts) are always skipped, and counted in the same warning.
"""

from __future__ import annotations

import csv
import importlib
import io
import json
import re
import warnings
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from itertools import chain, islice
from pathlib import Path
from typing import Any

import numpy as np

from prefopt.data import tldr
from prefopt.data.types import Comparison, SFTExample

DATA_SUFFIXES = (".jsonl", ".json", ".parquet", ".csv")
SPLIT_NAMES = ("train", "validation", "valid", "val", "test", "eval", "dev")
_HUB_ID = re.compile(r"[\w.-]+/[\w.-]+(:[\w.-]+)?")
_SNIFF_ROWS = 64  # rows read ahead to detect the layout from their columns


class DataError(ValueError):
    """An unusable source or row. The message names the source, the 1-based row and the field."""

    def __init__(
        self, message: str, *, source: str | None = None, row: int | None = None, field: str | None = None
    ):
        super().__init__(message)
        self.source, self.row, self.field = source, row, field


class BadRowsWarning(UserWarning):
    """Rows skipped under `on_bad_row="skip"`; `.skipped` holds one DataError per row."""

    def __init__(self, message: str, skipped: list[DataError]):
        super().__init__(message)
        self.skipped = skipped


@dataclass(frozen=True)
class _BadRow:
    """A row the reader could not turn into a mapping (undecodable bytes, broken JSON)."""

    problem: str


@dataclass
class _Table:
    name: str  # what errors call the source: a path, or hub:id[split]
    columns: list[str] | None  # the schema when the format has one (parquet, csv, Hub)
    rows: Iterable[tuple[int, Mapping[str, Any] | _BadRow]]


# ---------------------------------------------------------------------------------------- public API


def load_sft(
    source: str,
    split: str = "train",
    *,
    layout: str | None = None,
    on_bad_row: str = "error",
    limit: int | None = None,
    seed: int = 0,
    fill_missing: Mapping[str, str] | None = None,
) -> list[SFTExample]:
    """Posts with a reference summary. `limit` keeps the first `limit` good rows in source order;
    `seed` only matters for the testbed. `fill_missing` (e.g. `{"title": ""}`) opts in to loading rows
    whose subreddit/title is null with that placeholder; without it such rows are bad rows."""
    return _load("sft", source, split, layout, on_bad_row, limit, seed, fill_missing)


def load_comparisons(
    source: str,
    split: str = "train",
    *,
    layout: str | None = None,
    on_bad_row: str = "error",
    limit: int | None = None,
    seed: int = 0,
    fill_missing: Mapping[str, str] | None = None,
    summaries_per_post: int = 2,
) -> list[Comparison]:
    """Human comparisons (chosen preferred over rejected); arguments as in `load_sft`.
    `summaries_per_post` shapes the testbed's comparisons (`testbed.load_comparisons(per_post=)`).

    OpenAI's raw 727-row file has null title and subreddit on every row: by default that is an error
    naming the fields; `fill_missing={"subreddit": "", "title": ""}` loads it with empty placeholders
    (the filled fields are listed in each example's `meta["filled"]`).
    """
    if summaries_per_post != 2 and source != "testbed":
        raise ValueError(
            f"summaries_per_post={summaries_per_post} applies to the testbed only, not to {source!r}"
        )
    return _load(
        "comparison", source, split, layout, on_bad_row, limit, seed, fill_missing, summaries_per_post
    )


def load_ratings(
    source: str, split: str = "train", *, on_bad_row: str = "error", limit: int | None = None
) -> list[tldr.AxisRating]:
    """OpenAI's Likert axis ratings of summaries (no post text)."""
    return _load("rating", source, split, None, on_bad_row, limit, 0, None)


def preview(
    source: str,
    n: int = 3,
    split: str = "train",
    *,
    kind: str | None = None,
    layout: str | None = None,
    fill_missing: Mapping[str, str] | None = None,
) -> list[dict[str, Any]]:
    """The first `n` examples as plain dicts, as the pipeline will see them (kind detected if None)."""
    kind = kind or _detect_kind(source, split)
    loaders = {"sft": load_sft, "comparison": load_comparisons}
    if kind not in loaders:
        raise ValueError(f"kind must be 'sft' or 'comparison', got {kind!r}")
    examples = loaders[kind](source, split, layout=layout, limit=n, fill_missing=fill_missing)
    return [_as_dict(ex) for ex in examples]


def stats(
    examples: list[SFTExample] | list[Comparison], tokenizer: Any, max_prompt_tokens: int = 512
) -> dict[str, Any]:
    """Counts and token-length percentiles of the untruncated prompts and of the completions.

    Prompt tokens include special tokens (as `tldr.build_prompt` counts them); completion tokens are
    `" " + summary` without EOS. For comparisons, `chosen` and `rejected` are reported separately.
    """
    prompts = [ex.prompt for ex in examples]
    prompt_lengths = _token_lengths(tokenizer, prompts, special=True)
    out: dict[str, Any] = {
        "examples": len(examples),
        "posts": len({(ex.post.subreddit, ex.post.title, ex.post.body) for ex in examples}),
        "prompt_tokens": _percentiles(prompt_lengths),
        "prompts_over_budget": int(sum(n > max_prompt_tokens for n in prompt_lengths)),
        "max_prompt_tokens": max_prompt_tokens,
    }
    if examples and isinstance(examples[0], Comparison):
        for key in ("chosen", "rejected"):
            texts = [" " + getattr(ex, key) for ex in examples]
            out[f"{key}_tokens"] = _percentiles(_token_lengths(tokenizer, texts, special=False))
        out["with_confidence"] = sum(ex.confidence is not None for ex in examples)
    else:
        texts = [ex.completion for ex in examples]
        out["completion_tokens"] = _percentiles(_token_lengths(tokenizer, texts, special=False))
    return out


# ---------------------------------------------------------------------------------------- loading


def _load(
    kind: str,
    source: str,
    split: str,
    layout: str | None,
    on_bad_row: str,
    limit: int | None,
    seed: int,
    fill_missing: Mapping[str, str] | None,
    per_post: int = 2,
) -> list[Any]:
    if on_bad_row not in ("error", "skip"):
        raise ValueError(f"on_bad_row must be 'error' or 'skip', got {on_bad_row!r}")
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    fill = _check_fill(fill_missing)
    if source == "testbed":
        return _load_testbed(kind, split, layout, limit, seed, fill, per_post)
    if layout is not None and layout not in tldr.LAYOUTS[kind]:
        raise DataError(f"unknown {kind} layout {layout!r}; accepted: {tldr.describe_layouts(kind)}")
    out: list[Any] = []
    skipped: list[DataError] = []
    not_reddit = seen = 0
    for table in _resolve(source, split):
        if limit is not None and len(out) >= limit:
            break
        rows = iter(table.rows)
        head = list(islice(rows, _SNIFF_ROWS))
        if not head:
            continue  # an empty file: reported below if nothing at all was loaded
        lay = tldr.LAYOUTS[kind][layout or _detect(kind, table, head)]
        for row_no, row in chain(head, rows):
            if limit is not None and len(out) >= limit:
                break
            seen += 1
            try:
                example = _normalise(lay, row, fill)
            except tldr.SkipRow:
                not_reddit += 1
                continue
            except tldr.RowError as e:
                err = _row_error(table.name, row_no, e)
                if on_bad_row == "error":
                    raise err from None
                skipped.append(err)
                continue
            example.meta.update(source=table.name, row=row_no, layout=lay.name)
            out.append(example)
    _report(source, seen, skipped, not_reddit)
    if not out and limit != 0:
        raise DataError(f"{source}: no usable {kind} rows ({seen} read, {len(skipped) + not_reddit} skipped)")
    return out


def _normalise(lay: tldr.Layout, row: Mapping[str, Any] | _BadRow, fill: Mapping[str, str]) -> Any:
    if isinstance(row, _BadRow):
        raise tldr.RowError(None, row.problem)
    return lay.normalise(row, fill)


def _row_error(name: str, row_no: int, e: tldr.RowError) -> DataError:
    where = f"field {e.field!r}" if e.field else "whole row"
    return DataError(f"{name}: row {row_no}: {where}: {e.problem}", source=name, row=row_no, field=e.field)


def _report(source: str, seen: int, skipped: list[DataError], not_reddit: int) -> None:
    """One warning for everything dropped: nothing disappears silently."""
    if not skipped and not not_reddit:
        return
    parts = []
    if skipped:
        listed = "; ".join(str(e) for e in skipped[:10]) + ("; ..." if len(skipped) > 10 else "")
        parts.append(f"skipped {len(skipped)} bad rows of {seen} (on_bad_row='skip'): {listed}")
    if not_reddit:
        parts.append(f"skipped {not_reddit} rows that are CNN/DM articles, not Reddit posts")
    warnings.warn(BadRowsWarning(f"{source}: " + "; and ".join(parts), skipped), stacklevel=3)


def _check_fill(fill_missing: Mapping[str, str] | None) -> dict[str, str]:
    fill = dict(fill_missing or {})
    unknown = set(fill) - set(tldr.FILLABLE_FIELDS)
    if unknown or not all(isinstance(v, str) for v in fill.values()):
        raise ValueError(f"fill_missing takes text for {tldr.FILLABLE_FIELDS} only, got {fill!r}")
    return fill


def _detect(kind: str, table: _Table, head: list[tuple[int, Any]]) -> str:
    dict_rows = [row for _, row in head if isinstance(row, Mapping)]
    columns = table.columns or sorted(set().union(*(row.keys() for row in dict_rows)))
    name = tldr.detect_layout(kind, columns, dict_rows[0] if dict_rows else None)
    if name is not None:
        return name
    if not dict_rows and head:
        raise DataError(
            f"{table.name}: no readable row in the first {len(head)}: row {head[0][0]}: {head[0][1].problem}"
        )
    others = [k for k in tldr.LAYOUTS if k != kind and tldr.detect_layout(k, columns)]
    hint = f" It looks like {others[0]} data: use load_{_PLURAL[others[0]]}." if others else ""
    raise DataError(
        f"{table.name}: unknown {kind} layout; columns seen: {list(columns)}; "
        f"accepted: {tldr.describe_layouts(kind)}.{hint} Force one with layout=...",
        source=table.name,
    )


_PLURAL = {"sft": "sft", "comparison": "comparisons", "rating": "ratings"}


def _detect_kind(source: str, split: str) -> str:
    if source == "testbed":
        return "sft"
    for table in _resolve(source, split):
        head = list(islice(table.rows, _SNIFF_ROWS))
        dict_rows = [row for _, row in head if isinstance(row, Mapping)]
        columns = table.columns or set().union(*(row.keys() for row in dict_rows))
        for kind in ("sft", "comparison"):
            if tldr.detect_layout(kind, columns):
                return kind
        raise DataError(
            f"{table.name}: neither SFT nor comparison data; columns seen: {sorted(columns)}; "
            f"accepted: {tldr.describe_layouts('sft')}; {tldr.describe_layouts('comparison')}"
        )
    raise DataError(f"{source}: no data")


def _load_testbed(
    kind: str,
    split: str,
    layout: str | None,
    limit: int | None,
    seed: int,
    fill: Mapping[str, str],
    per_post: int,
) -> list[Any]:
    if layout is not None or fill:
        raise ValueError("layout= and fill_missing= do not apply to the testbed")
    if kind == "rating":
        raise DataError("the testbed has no axis ratings")
    testbed = importlib.import_module("prefopt.data.testbed")  # lazy: it builds its own world
    fn = testbed.load_sft if kind == "sft" else testbed.load_comparisons
    kwargs: dict[str, Any] = {"seed": seed}
    if kind == "comparison":
        kwargs["per_post"] = per_post
    if limit is not None:
        kwargs["n"] = limit
    return list(fn(split, **kwargs))


# ---------------------------------------------------------------------------------------- sources


def _resolve(source: str, split: str) -> list[_Table]:
    path = Path(source).expanduser()
    if path.is_file():
        return [_open_file(path)]
    if path.is_dir():
        return [_open_file(p) for p in _split_files(path, split)]
    if path.suffix in DATA_SUFFIXES or source.startswith(("/", ".", "~")):
        raise DataError(f"{source}: no such file or folder", source=source)
    if _HUB_ID.fullmatch(source):
        return [_open_hub(source, split)]
    raise DataError(f"{source!r} is not a file, a folder, 'testbed' or a Hub id (owner/name[:config])")


def _split_files(folder: Path, split: str) -> list[Path]:
    """The data files of `split` in `folder`: named after it, or under `folder/split/`."""
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in DATA_SUFFIXES)
    sub = folder / split
    nested = sorted(p for p in sub.iterdir() if p.suffix in DATA_SUFFIXES) if sub.is_dir() else []
    named = [p for p in files if _named_after(p.name, split)] + nested
    if named:
        return named
    if files and not any(_named_after(p.name, s) for p in files for s in SPLIT_NAMES):
        return files  # a folder of unsplit files is one dataset, like a single file
    found = ", ".join(p.name for p in files) or "no data files"
    raise DataError(
        f"{folder}: no data file for split {split!r} (found: {found}); name files {split}.jsonl, "
        f"{split}-*.parquet or put them in {split}/, or pass a file",
        source=str(folder),
    )


def _named_after(name: str, split: str) -> bool:
    return re.match(rf"{re.escape(split)}([-_.]|$)", name) is not None


def _open_file(path: Path) -> _Table:
    name = str(path)
    if path.suffix == ".parquet":
        return _Table(name, _parquet_columns(path), _read_parquet(path))
    if path.suffix == ".csv":
        return _read_csv(path)
    if path.suffix == ".json":
        return _read_json(path)
    if path.suffix == ".jsonl":
        return _Table(name, None, _read_jsonl(path.read_bytes()))
    raise DataError(f"{path}: unsupported file type; use one of {DATA_SUFFIXES}", source=name)


def _read_jsonl(data: bytes) -> Iterator[tuple[int, Mapping[str, Any] | _BadRow]]:
    """One JSON object a line; decoded strictly per line so errors carry the exact line number."""
    for line_no, raw in enumerate(data.split(b"\n"), 1):
        if not raw.strip():
            continue  # blank lines (a trailing newline) hold no row
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            yield line_no, _BadRow(f"invalid UTF-8 at byte {e.start} of the line")
            continue
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            yield line_no, _BadRow(f"not valid JSON ({e.msg} at column {e.colno})")
            continue
        yield (
            line_no,
            obj if isinstance(obj, dict) else _BadRow(f"expected a JSON object, got {type(obj).__name__}"),
        )


def _read_json(path: Path) -> _Table:
    """A JSON array of objects (or {"data": [...]}); a .json file holding JSON lines also works."""
    data = path.read_bytes()
    try:
        doc = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise DataError(f"{path}: row {line}: whole row: invalid UTF-8", source=str(path), row=line) from None
    except json.JSONDecodeError as e:
        if e.msg == "Extra data":  # several documents: JSON lines under a .json name
            return _Table(str(path), None, _read_jsonl(data))
        raise DataError(
            f"{path}: not valid JSON ({e.msg} at line {e.lineno})", source=str(path), row=e.lineno
        ) from None
    if isinstance(doc, dict) and isinstance(doc.get("data"), list):
        doc = doc["data"]
    if not isinstance(doc, list):
        raise DataError(f"{path}: expected a JSON array of rows, got {type(doc).__name__}", source=str(path))
    rows = [
        (i, r if isinstance(r, dict) else _BadRow(f"expected an object, got {type(r).__name__}"))
        for i, r in enumerate(doc, 1)
    ]
    return _Table(str(path), None, rows)


def _read_csv(path: Path) -> _Table:
    """CSV with a header; undecodable bytes survive as surrogates, so only their row is bad."""
    text = path.read_bytes().decode("utf-8", errors="surrogateescape")
    reader = csv.DictReader(io.StringIO(text, newline=""))
    return _Table(str(path), list(reader.fieldnames or []), enumerate(reader, 1))


def _parquet_columns(path: Path) -> list[str]:
    import pyarrow.parquet as pq

    return list(pq.ParquetFile(path).schema_arrow.names)


def _read_parquet(path: Path) -> Iterator[tuple[int, Mapping[str, Any]]]:
    import pyarrow.parquet as pq

    row_no = 0
    for batch in pq.ParquetFile(path).iter_batches(batch_size=1024):
        for row in batch.to_pylist():
            row_no += 1
            yield row_no, row


def _open_hub(source: str, split: str) -> _Table:
    import datasets

    repo, _, config = source.partition(":")
    args = (repo, config) if config else (repo,)
    try:
        ds = datasets.load_dataset(*args, split=split)
    except Exception as e:  # offline, unknown id, unknown split: keep the cause, name the source
        raise DataError(f"hub:{source}[{split}]: could not load: {e}", source=source) from e
    return _Table(f"hub:{source}[{split}]", list(ds.column_names), enumerate(ds, 1))


# ---------------------------------------------------------------------------------------- helpers


def _as_dict(ex: SFTExample | Comparison) -> dict[str, Any]:
    out: dict[str, Any] = {
        "source": ex.meta.get("source"),
        "row": ex.meta.get("row"),
        "layout": ex.meta.get("layout"),
        "id": ex.post.id,
        "subreddit": ex.post.subreddit,
        "title": ex.post.title,
        "body": ex.post.body,
        "prompt": ex.prompt,
    }
    if isinstance(ex, Comparison):
        out.update(chosen=ex.chosen, rejected=ex.rejected, confidence=ex.confidence)
    else:
        out.update(completion=ex.completion)
    return out


def _token_lengths(tokenizer: Any, texts: list[str], special: bool) -> list[int]:
    if not texts:
        return []
    return [len(ids) for ids in tokenizer(texts, add_special_tokens=special)["input_ids"]]


def _percentiles(lengths: list[int]) -> dict[str, float]:
    if not lengths:
        return {}
    a = np.asarray(lengths, dtype=np.float64)
    qs = {"min": 0, "p50": 50, "p90": 90, "p95": 95, "p99": 99, "max": 100}
    return {"mean": float(a.mean()), **{k: float(np.percentile(a, q)) for k, q in qs.items()}}
