"""Full fine-tuning vs LoRA (peft) vs LoRA (scratch) vs adapter vs prefix, on the same data and steps.

`compare()` runs the SFT stage once per method, each in its own Python process (so the peak RSS it
reports is that method's alone), as `<out>/runs/<method>/`, then collects per method: trainable
parameters, peak RSS above the process's size before training, wall time of the stage, validation loss
and the gold score of greedy samples (the stage's DONE.json), into `<out>/peft_compare.md`,
`<out>/peft_compare.json` and a plot `<out>/peft_compare.png`.

The step budget is exact: each run trains on the first `steps x sft.batch_size` examples, with as many
epochs (a fraction more than one when the stage drops over-long examples) as make exactly `steps`
optimizer steps; the learning rate and everything else are the config's.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from prefopt.config import Config, ConfigError, build_config, dump_config, load_config

METHODS = ("none", "lora", "lora-scratch", "adapter", "prefix")
LABELS = {
    "none": "full fine-tuning",
    "lora": "LoRA (peft)",
    "lora-scratch": "LoRA (scratch)",
    "adapter": "bottleneck adapter",
    "prefix": "prefix tuning",
}
COLUMNS = (
    "method",
    "trainable params",
    "% of total",
    "peak RSS delta (MB)",
    "wall time (s)",
    "steps",
    "valid loss",
    "gold (greedy)",
    "ROUGE-L",
)


@dataclass
class MethodResult:
    """What one method's run measured (None where the run failed before measuring it)."""

    method: str
    trainable: int | None = None
    total: int | None = None
    peak_rss_delta_mb: float | None = None
    seconds: float | None = None
    steps: int | None = None
    valid_loss: float | None = None
    gold: float | None = None
    gold_reference: float | None = None
    rouge_l: float | None = None
    error: str | None = None


# ---------------------------------------------------------------- the parent: one process per method


def method_config(cfg: Config, method: str, steps: int, out_dir: Path) -> Config:
    """`cfg` for one method's run: its own run name, exactly `steps` optimizer steps."""
    return build_config(
        cfg.model_dump(mode="json"),
        [
            f"name={method}",
            f"output_dir={out_dir / 'runs'}",
            f"peft.method={method}",
            f"data.limit_train={steps * cfg.sft.batch_size}",
            "sft.max_seconds=null",
            "sft.save_every=0",
        ],
    )


def compare(
    cfg: Config,
    out_dir: Path,
    *,
    steps: int = 150,
    methods: Sequence[str] = METHODS,
    log: Callable[[str], None] = print,
) -> list[MethodResult]:
    """Run every method (a fresh run each time), then write the table, the JSON and the plot."""
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise ConfigError(f"unknown methods {unknown}; choose from {', '.join(METHODS)}")
    out_dir = Path(out_dir)
    (out_dir / "logs").mkdir(parents=True, exist_ok=True)
    _ensure_base(cfg, log)
    results = []
    for method in methods:
        log(f"[peft compare] {LABELS[method]} ({method}): {steps} steps ...")
        results.append(_run_method(cfg, method, steps, out_dir))
        r = results[-1]
        log(f"[peft compare]   {r.error or _summary(r)}")
    write_outputs(results, out_dir, cfg, steps)
    return results


def _ensure_base(cfg: Config, log: Callable[[str], None]) -> None:
    """Build the testbed tiny base once, here, so no method's time or memory includes building it."""
    if cfg.model.preset != "testbed-tiny":
        return
    from prefopt.models.tiny_base import ensure_tiny_base

    ensure_tiny_base(
        Path(cfg.model.cache_dir), seed=cfg.seed, pretrain_seconds=cfg.model.tiny_pretrain_seconds, log=log
    )


def _run_method(cfg: Config, method: str, steps: int, out_dir: Path) -> MethodResult:
    try:
        run_cfg = method_config(cfg, method, steps, out_dir)
    except ConfigError as err:  # e.g. prefix tuning with gradient checkpointing
        return MethodResult(method, error=f"not run: {err}")
    shutil.rmtree(run_cfg.run_dir, ignore_errors=True)  # a fresh run: no resume, no reuse
    config_path = out_dir / "logs" / f"{method}.yaml"
    result_path = out_dir / "logs" / f"{method}.json"
    log_path = out_dir / "logs" / f"{method}.log"
    config_path.write_text(dump_config(run_cfg))
    result_path.unlink(missing_ok=True)
    with open(log_path, "w") as log_file:
        proc = subprocess.run(
            [sys.executable, "-m", "prefopt.peft_compare", str(config_path), str(result_path), str(steps)],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            check=False,
        )
    if proc.returncode != 0 or not result_path.is_file():
        tail = log_path.read_text(errors="replace").strip().splitlines()[-1:] or ["(no output)"]
        return MethodResult(method, error=f"failed (exit {proc.returncode}, see {log_path}): {tail[0]}")
    return MethodResult(**json.loads(result_path.read_text()))


def _summary(r: MethodResult) -> str:
    return (
        f"{r.trainable:,} trainable, peak RSS +{r.peak_rss_delta_mb:.0f} MB, {r.seconds:.0f}s, "
        f"valid loss {r.valid_loss:.3f}, gold {_fmt(r.gold)}"
    )


# ---------------------------------------------------------------- the child: one method


def exact_epochs(cfg: Config, steps: int) -> float:
    """`sft.epochs` that makes the SFT stage run exactly `steps` optimizer steps on the examples it
    keeps (it drops over-long ones): the stage runs int(epochs x kept) // batch_size steps."""
    from prefopt.batching import tokenize_sft
    from prefopt.data.load import load_sft
    from prefopt.models.base import resolve_base, tokenizer_source
    from prefopt.models.load import load_tokenizer

    d = cfg.data
    tok = load_tokenizer(tokenizer_source(cfg, resolve_base(cfg)), eos_token=cfg.model.eos_token)
    examples = load_sft(
        d.sft_source,
        d.train_split,
        layout=d.layout,
        on_bad_row=d.on_bad_row,
        limit=d.limit_train,
        seed=cfg.seed,
    )
    kept = len(tokenize_sft(examples, tok, d.max_prompt_tokens, d.max_summary_tokens))
    if kept == 0:
        raise ValueError(
            f"{d.sft_source}: no SFT example fits data.max_summary_tokens={d.max_summary_tokens}"
        )
    return (steps * cfg.sft.batch_size + 0.5) / kept  # the 0.5 keeps float rounding off the floor


def run_child(config_path: Path, result_path: Path, steps: int) -> MethodResult:
    """Train one method's SFT stage in this process, for exactly `steps` steps, and measure it."""
    import warnings

    import psutil

    import prefopt.sft.train as sft_train
    from prefopt.peft_scratch import trainable_parameters
    from prefopt.runs import read_complete

    cfg = load_config(config_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the stage itself warns about dropped examples below
        cfg.sft.epochs = exact_epochs(cfg, steps)
    counts: dict[str, int] = {}
    real_apply = sft_train.apply_peft

    def counting_apply(model, peft_cfg, **kw):
        model = real_apply(model, peft_cfg, **kw)
        counts["trainable"], counts["total"] = trainable_parameters(model)
        return model

    sft_train.apply_peft = counting_apply  # count on the very model the stage trains
    before = psutil.Process().memory_info().rss
    t0 = time.perf_counter()
    stage_dir = sft_train.train(cfg)
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
    done = read_complete(stage_dir) or {}
    result = MethodResult(
        method=cfg.peft.method,
        trainable=counts.get("trainable"),
        total=counts.get("total"),
        peak_rss_delta_mb=max(0, peak - before) / 2**20,
        seconds=seconds,
        steps=done.get("steps"),
        valid_loss=done.get("valid/loss"),
        gold=done.get("samples/gold"),
        gold_reference=done.get("samples/gold_reference"),
        rouge_l=done.get("samples/rougeL"),
    )
    Path(result_path).write_text(json.dumps(asdict(result), indent=2))
    return result


# ---------------------------------------------------------------- outputs


def _fmt(value: float | int | None, spec: str = ".3f") -> str:
    return "—" if value is None else format(value, spec)


def table_rows(results: Sequence[MethodResult]) -> list[list[str]]:
    rows = []
    for r in results:
        share = 100.0 * r.trainable / r.total if r.trainable is not None and r.total else None
        rows.append(
            [
                LABELS[r.method],
                _fmt(r.trainable, ","),
                _fmt(share, ".2f"),
                _fmt(r.peak_rss_delta_mb, ".0f"),
                _fmt(r.seconds, ".0f"),
                _fmt(r.steps, "d"),
                _fmt(r.valid_loss),
                _fmt(r.gold),
                _fmt(r.rouge_l),
            ]
        )
    return rows


def markdown_table(results: Sequence[MethodResult]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "|".join("---" for _ in COLUMNS) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in table_rows(results)]
    return "\n".join(lines) + "\n"


def write_outputs(results: Sequence[MethodResult], out_dir: Path, cfg: Config, steps: int) -> None:
    refs = [r.gold_reference for r in results if r.gold_reference is not None]
    header = (
        f"# PEFT comparison: {steps} SFT steps each (batch {cfg.sft.batch_size}, lr {cfg.sft.lr:g}, "
        f"model {cfg.model.preset if cfg.model.preset != 'none' else cfg.model.name_or_path}, "
        f"data {cfg.data.sft_source})\n\n"
    )
    notes = "".join(f"- {LABELS[r.method]}: {r.error}\n" for r in results if r.error)
    ref_line = f"\nGold score of the reference summaries of the same posts: {refs[0]:.3f}.\n" if refs else ""
    (out_dir / "peft_compare.md").write_text(header + markdown_table(results) + ref_line + notes)
    (out_dir / "peft_compare.json").write_text(json.dumps([asdict(r) for r in results], indent=2))
    plot(results, out_dir / "peft_compare.png", title=f"{steps} SFT steps per method")


def plot(results: Sequence[MethodResult], path: Path, title: str = "") -> None:
    """Five bar panels: trainable parameters (log), peak RSS delta, wall time, valid loss, gold."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in results if r.error is None]
    refs = [r.gold_reference for r in ok if r.gold_reference is not None]
    panels = [
        ("trainable parameters", "trainable", True),
        ("peak RSS delta (MB)", "peak_rss_delta_mb", False),
        ("wall time (s)", "seconds", False),
        ("validation loss", "valid_loss", False),
        ("gold score (greedy)", "gold", False),
    ]
    fig, axes = plt.subplots(1, len(panels), figsize=(17, 3.6))
    names = [LABELS[r.method].replace(" ", "\n", 1) for r in ok]
    for ax, (label, key, log_scale) in zip(axes, panels, strict=True):
        values = [getattr(r, key) or 0 for r in ok]
        ax.bar(range(len(ok)), values, color=[f"C{i}" for i in range(len(ok))])
        ax.set_xticks(range(len(ok)), names, fontsize=7)
        ax.set_title(label, fontsize=9)
        if log_scale and any(values):
            ax.set_yscale("log")
        if key == "gold" and refs:
            ax.axhline(refs[0], color="gray", linestyle="--", linewidth=1)
            ax.text(-0.4, refs[0], "references", fontsize=7, color="gray", va="bottom")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":  # the child: python -m prefopt.peft_compare CONFIG.yaml RESULT.json STEPS
    run_child(Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]))
