"""`prefopt report RUN_DIR`: one self-contained HTML page (+ `plots/*.png`) built from the run folders only.

The page embeds every plot as a base64 PNG and its stylesheet inline, loads nothing from the network
and escapes every piece of text it shows (posts and summaries are untrusted). A stage that is missing
or unfinished is skipped with a note. Sections: stages, evaluation (win rates and means with 95%
intervals), over-optimisation (proxy vs gold against KL), PPO curves, reward model (held-out accuracy,
reliability plot, curves), SFT, the PEFT comparison when `<run>/peft_compare.md` (or `peft*.md`) exists,
and samples side by side.

To look at it as a reader would, take a screenshot in headless Chromium (``apt-get install chromium``)::

    chromium --headless --no-sandbox --disable-gpu --hide-scrollbars --window-size=1280,4000 \\
        --screenshot=/tmp/report.png "file://$(realpath runs/<name>/report.html)"
"""

from __future__ import annotations

import base64
import json
import math
import re
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from html import escape
from pathlib import Path
from typing import Any

import yaml

from prefopt.report import plots
from prefopt.report.template import page
from prefopt.reward.evaluate import testbed_scalars
from prefopt.runs import STAGES, atomic_write_text, read_complete
from prefopt.tracking import read_metrics

REPORT = "report.html"
PLOTS = "plots"
COLUMNS = ("reference", "sft", "ppo")
PAIRS = ("ppo_vs_reference", "sft_vs_reference", "ppo_vs_sft")
SCORERS = {"gold": "gold labeler", "judge": "LLM judge", "reward_model": "reward model"}
MEANS = (
    ("gold", "gold score (truth)"),
    ("reward", "reward-model score"),
    ("kl_to_sft", "KL to SFT (k1, nats)"),
    ("kl_k3_to_sft", "KL to SFT (k3, nats)"),
    ("length", "length (tokens)"),
    ("eos_rate", "ends with EOS"),
    ("rouge1", "ROUGE-1 vs reference"),
    ("rouge2", "ROUGE-2 vs reference"),
    ("rougeL", "ROUGE-L vs reference"),
)


@dataclass
class StageView:
    """What a report needs to know about one stage folder."""

    name: str
    path: Path
    done: dict[str, Any] | None
    records: list[dict[str, Any]] = field(default_factory=list)

    @property
    def exists(self) -> bool:
        return self.path.is_dir()

    @property
    def status(self) -> str:
        return "complete" if self.done is not None else "partial" if self.exists else "missing"


def read_stage(run_dir: Path, name: str) -> StageView:
    path = Path(run_dir) / name
    records: list[dict[str, Any]] = []
    if (path / "metrics.jsonl").is_file():
        try:
            records = read_metrics(path / "metrics.jsonl")
        except ValueError:
            records = []  # a corrupt metrics file should not stop the report; the status row shows it
    return StageView(name, path, read_complete(path), records)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


# ------------------------------------------------------------------------------------- HTML pieces


def _num(v: Any) -> str:
    if isinstance(v, bool) or not isinstance(v, int | float):
        return escape(str(v))
    if isinstance(v, float) and not math.isfinite(v):
        return "–"
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _est(e: dict | None, percent: bool = False) -> str:
    """An estimate as value + small interval, for a table cell."""
    if not e:
        return ""
    scale, unit = (100.0, "%") if percent else (1.0, "")
    v, lo, hi = (e.get(k, math.nan) * scale for k in ("value", "lo", "hi"))
    digits = 1 if percent else 3
    return f'{v:.{digits}f}{unit} <span class="ci">[{lo:.{digits}f}, {hi:.{digits}f}]</span>'


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]], num_from: int = 1) -> str:
    """Headers are escaped here; cells are trusted HTML. Columns from ``num_from`` are right-aligned."""
    head = "".join(
        f'<th class="{"num" if i >= num_from else ""}">{escape(h)}</th>' for i, h in enumerate(headers)
    )
    body = "".join(
        "<tr>"
        + "".join(f'<td class="{"num" if i >= num_from else ""}">{c}</td>' for i, c in enumerate(r))
        + "</tr>"
        for r in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _kv_table(info: dict[str, Any]) -> str:
    rows = [[escape(k), _num(v)] for k, v in info.items() if not isinstance(v, dict | list)]
    return _table(["measure", "value"], rows) if rows else ""


def _img(path: Path, caption: str) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return (
        f'<figure><img alt="{escape(caption)}" src="data:image/png;base64,{data}">'
        f"<figcaption>{escape(caption)}</figcaption></figure>"
    )


def _plots_grid(items: Sequence[tuple[Path, str]], wide: bool = False) -> str:
    if not items:
        return ""
    return f'<div class="plots{" wide" if wide else ""}">' + "".join(_img(p, c) for p, c in items) + "</div>"


def _section(anchor: str, title: str, inner: str) -> str:
    return f'<section id="{escape(anchor)}"><h2>{escape(title)}</h2>{inner}</section>'


def _note(text: str, warn: bool = False) -> str:
    return f'<p class="{"warn" if warn else "note"}">{escape(text)}</p>'


# ------------------------------------------------------------------------------------- sections


def _stages_section(run_dir: Path, views: dict[str, StageView], cfg: dict) -> str:
    rows = []
    for name in STAGES:
        v = views[name]
        secs = (v.done or {}).get("seconds")
        rows.append(
            [
                escape(name),
                escape(v.status),
                _num(secs) if isinstance(secs, int | float) else "",
                escape(str(len(v.records))),
            ]
        )
    inner = _table(["stage", "status", "seconds", "metric records"], rows, num_from=2)
    if cfg:
        model = cfg.get("model", {})
        facts = {
            "model": model.get("preset")
            if model.get("preset") not in (None, "none")
            else model.get("name_or_path"),
            "peft": cfg.get("peft", {}).get("method"),
            "data": cfg.get("data", {}).get("sft_source"),
            "ppo.kl_coef": cfg.get("ppo", {}).get("kl_coef"),
            "seed": cfg.get("seed"),
        }
        inner += "<h3>Config</h3>" + _kv_table({k: v for k, v in facts.items() if v is not None})
    return _section("stages", "Stages", inner)


def _by_scorer(win: dict[str, Any]) -> dict[str, Any]:
    """Win rates in a fixed order: gold (the truth, testbed), judge, reward model, then anything else."""
    order = list(SCORERS)
    return dict(sorted(win.items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else len(order)))


def _eval_section(views: dict[str, StageView]) -> str | None:
    results = _read_json(views["eval"].path / "results.json")
    if not isinstance(results, dict):
        return None
    win = _by_scorer(results.get("win_rates", {}))
    cards = []
    for scorer, label in SCORERS.items():
        for pair in ("ppo_vs_reference", "ppo_vs_sft", "sft_vs_reference"):
            e = win.get(scorer, {}).get(pair)
            if not e:
                continue
            tone = "good" if e["lo"] > 0.5 else "bad" if e["hi"] < 0.5 else ""
            title = f"{label}: {pair.replace('_vs_', ' beats ').replace('ppo', 'PPO').replace('sft', 'SFT')}"
            cards.append(
                f'<div class="card"><div class="k">{escape(title)}</div>'
                f'<div class="v {tone}">{100 * e["value"]:.1f}%</div>'
                f'<div class="ci">95% CI [{100 * e["lo"]:.1f}, {100 * e["hi"]:.1f}] · n={e["n"]}</div></div>'
            )
    inner = f'<div class="cards">{"".join(cards)}</div>' if cards else ""
    pairs = [p for p in PAIRS if any(p in win.get(s, {}) for s in win)]
    if win:
        rows = [[escape(SCORERS.get(s, s))] + [_est(win[s].get(p), percent=True) for p in pairs] for s in win]
        inner += "<h3>Win rates (ties count one half)</h3>"
        inner += _table(["judged by"] + [p.replace("_vs_", " vs ") for p in pairs], rows)
    pol = results.get("policies", {})
    cols = [c for c in COLUMNS if c in pol]
    rows = [
        [escape(label)] + [_est(pol[c].get(key)) for c in cols]
        for key, label in MEANS
        if any(key in pol[c] for c in cols)
    ]
    inner += "<h3>Means</h3>" + _table(
        ["measure"] + [c.upper() if c != "reference" else "reference" for c in cols], rows
    )
    diffs = results.get("differences", {})
    if diffs:
        rows = [[escape(SCORERS.get(s, s)), _est(d.get("ppo_minus_sft"))] for s, d in diffs.items()]
        inner += "<h3>PPO minus SFT, per post</h3>" + _table(["score", "mean difference"], rows)
    failures = results.get("judge_failures") or {}
    if any(failures.values()):
        inner += _note(
            "judge answers without a verdict (counted as ties): "
            + ", ".join(f"{k}: {v}" for k, v in failures.items()),
            warn=True,
        )
    meta = (
        f"{results.get('n_posts')} held-out posts ({results.get('source')}:{results.get('split')}), "
        f"temperature {results.get('temperature')}, response budget {results.get('response_length')} tokens, "
        f"{results.get('bootstrap')} bootstrap resamples (seed {results.get('seed')})."
    )
    inner += _note(meta) + "".join(_note(n) for n in results.get("notes", []))
    return _section("evaluation", "Evaluation", inner)


def _overopt_section(run_dir: Path, views: dict[str, StageView], plots_dir: Path) -> str | None:
    from prefopt.eval.overopt import plot_run_curve

    path = plot_run_curve(views["ppo"].path, plots_dir / "overoptimisation.png")
    if path is None:
        return None
    text = (
        "Each point is one PPO update: the reward model's score (the proxy PPO maximises) and, on the "
        "testbed, the gold score (the truth it cannot see), against the KL of the rollouts to the SFT policy. "
        "Where the gold curve turns down while the proxy still rises, the policy is exploiting the reward model."
    )
    return _section(
        "overopt",
        "Over-optimisation",
        _note(text) + _plots_grid([(path, "proxy and truth against KL")], wide=True),
    )


def _curves_section(
    anchor: str, title: str, view: StageView, panels, plots_dir: Path, extra: str = ""
) -> str:
    if not view.exists:
        return _section(anchor, title, _note(f"skipped: {view.path} does not exist"))
    drawn = plots.stage_plots(view.records, panels, plots_dir)
    inner = "" if view.done is not None else _note(f"{view.name} has not finished (no DONE.json)", warn=True)
    inner += extra
    inner += _plots_grid([(p, panel.title) for panel, p in drawn]) if drawn else _note("no metrics logged")
    return _section(anchor, title, inner)


def _reward_extra(view: StageView, plots_dir: Path) -> str:
    report = _read_json(view.path / "eval.json")
    out = ""
    if isinstance(report, dict):
        flat = {k: v for k, v in report.items() if isinstance(v, int | float)}
        calib = report.get("calibration") or {}
        if isinstance(calib.get("ece"), int | float):
            flat["calibration error (ECE)"] = calib["ece"]
        flat |= {f"testbed: {k.replace('/', ' ')}": v for k, v in testbed_scalars(report).items()}
        flat |= {f"length: {k}": v for k, v in (report.get("length") or {}).items()}
        out += "<h3>Held-out comparisons</h3>" + _kv_table(flat)
    figures = []
    for png in sorted(view.path.glob("*.png")):
        copy = plots_dir / f"reward_{png.name}"
        shutil.copyfile(png, copy)
        figures.append((copy, f"reward model: {png.stem.replace('_', ' ')}"))
    return out + _plots_grid(figures)


def _peft_section(run_dir: Path) -> str | None:
    found = sorted({*run_dir.glob("peft*.md"), *run_dir.glob("peft/*.md")})
    if not found:
        return None
    inner = "".join(
        f"<h3>{escape(p.name)}</h3>" + markdown_to_html(p.read_text(encoding="utf-8")) for p in found
    )
    return _section("peft", "PEFT comparison", inner)


def markdown_to_html(text: str) -> str:
    """The little markdown a comparison file holds: pipe tables, #-headings, paragraphs; all escaped."""
    out, table = [], []

    def flush() -> None:
        if not table:
            return
        cells = [[c.strip() for c in row.strip().strip("|").split("|")] for row in table]
        body = [r for r in cells[1:] if not all(re.fullmatch(r":?-{2,}:?", c) for c in r)]
        out.append(_table(cells[0], [[escape(c) for c in r] for r in body], num_from=1))
        table.clear()

    for line in text.splitlines():
        if line.strip().startswith("|"):
            table.append(line)
            continue
        flush()
        heading = re.match(r"#{1,6}\s+(.*)", line.strip())
        if heading:
            out.append(f"<h3>{escape(heading.group(1))}</h3>")
        elif line.strip():
            out.append(f"<p>{escape(line.strip())}</p>")
    flush()
    return "".join(out)


def sample_cards(run_dir: Path, max_samples: int) -> tuple[list[dict[str, Any]], str]:
    """Samples to show, normalised to {post, columns: [(label, text, {badge: value})]}, and their source."""
    rows = _read_jsonl(run_dir / "eval" / "samples.jsonl")
    if rows:
        cards = []
        for r in rows[:max_samples]:
            cols = []
            for c in COLUMNS:
                if c not in r:
                    continue
                badges = {s: r[s][c] for s in ("gold", "reward") if isinstance(r.get(s), dict) and c in r[s]}
                if c == "ppo" and isinstance(r.get("kl"), dict):
                    badges["KL"] = r["kl"].get("ppo")
                if isinstance(r.get("length"), dict) and c in r["length"]:
                    badges["tokens"] = r["length"][c]
                if isinstance(r.get("eos"), dict) and c in r["eos"] and not r["eos"][c]:
                    badges["no EOS"] = ""
                cols.append((c.upper() if c != "reference" else "reference", r[c], badges))
            cards.append({"post": r.get("post", ""), "columns": cols})
        return cards, "eval/samples.jsonl (held-out posts)"
    rows = _read_jsonl(run_dir / "ppo" / "samples.jsonl")
    if rows:
        last = max(r.get("update", 0) for r in rows)
        cards = [
            {
                "post": r.get("prompt", ""),
                "columns": [("PPO rollout", r.get("response", ""), {"reward": r.get("score")})],
            }
            for r in rows
            if r.get("update", 0) == last
        ][:max_samples]
        return (
            cards,
            f"ppo/samples.jsonl (training prompts, update {last}); run `prefopt eval` for held-out samples",
        )
    rows = _read_jsonl(run_dir / "sft" / "samples.jsonl")
    cards = [
        {
            "post": r.get("prompt", ""),
            "columns": [
                (
                    "reference",
                    r.get("reference", ""),
                    {"gold": r["gold_reference"]} if "gold_reference" in r else {},
                ),
                ("SFT", r.get("sample", ""), {"gold": r["gold_sample"]} if "gold_sample" in r else {}),
            ],
        }
        for r in rows[:max_samples]
    ]
    return cards, "sft/samples.jsonl (greedy SFT samples)" if cards else ""


def _samples_section(run_dir: Path, max_samples: int) -> str | None:
    cards, source = sample_cards(run_dir, max_samples)
    if not cards:
        return None
    parts = [_note(f"from {source}")]
    for i, card in enumerate(cards):
        cols = ""
        for label, text, badges in card["columns"]:
            shown = "".join(
                f'<span class="badge">{escape(k)}{" " + _num(v) if v != "" else ""}</span>'
                for k, v in badges.items()
            )
            cols += f'<div class="col"><h4>{escape(label)}</h4><p>{escape(str(text))}</p>{shown}</div>'
        open_attr = " open" if i < 2 else ""
        parts.append(
            f'<div class="sample"><details{open_attr}><summary>post {i + 1}</summary>'
            f'<div class="post">{escape(str(card["post"]))}</div></details><div class="cols">{cols}</div></div>'
        )
    return _section("samples", "Samples side by side", "".join(parts))


# ------------------------------------------------------------------------------------- entry points


def build_report(run_dir: str | Path, *, max_samples: int = 12) -> Path:
    """Write `<run>/report.html` (self-contained) and `<run>/plots/*.png`; returns the HTML path."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"no run folder at {run_dir}")
    plots_dir = run_dir / PLOTS
    plots_dir.mkdir(exist_ok=True)
    views = {name: read_stage(run_dir, name) for name in STAGES}
    cfg = _read_yaml(run_dir / "config.yaml")
    sections: list[tuple[str, str, str | None]] = [
        ("stages", "Stages", _stages_section(run_dir, views, cfg)),
        ("evaluation", "Evaluation", _eval_section(views)),
        ("overopt", "Over-optimisation", _overopt_section(run_dir, views, plots_dir)),
        ("ppo", "PPO", _curves_section("ppo", "PPO training", views["ppo"], plots.PPO_PANELS, plots_dir)),
        (
            "reward",
            "Reward model",
            _curves_section(
                "reward",
                "Reward model",
                views["reward"],
                plots.reward_panels(views["reward"].records),
                plots_dir,
                extra=_reward_extra(views["reward"], plots_dir) if views["reward"].exists else "",
            ),
        ),
        (
            "sft",
            "SFT",
            _curves_section(
                "sft",
                "Supervised fine-tuning",
                views["sft"],
                plots.SFT_PANELS,
                plots_dir,
                extra=("<h3>Final measures</h3>" + _kv_table(views["sft"].done)) if views["sft"].done else "",
            ),
        ),
        ("peft", "PEFT", _peft_section(run_dir)),
        ("samples", "Samples", _samples_section(run_dir, max_samples)),
    ]
    missing = [n for n in ("sft", "reward", "ppo", "eval") if views[n].status == "missing"]
    body = _note("not run yet (skipped): " + ", ".join(missing), warn=True) if missing else ""
    if views["eval"].exists and not _read_json(views["eval"].path / "results.json"):
        body += _note("eval/results.json is missing: the evaluation section is skipped", warn=True)
    body += "\n".join(html for _, _, html in sections if html)
    nav = [(a, label) for a, label, html in sections if html]
    subtitle = f"{run_dir.resolve()} · built {time.strftime('%Y-%m-%d %H:%M')} from the run folders"
    out = run_dir / REPORT
    atomic_write_text(out, page(f"prefopt report: {run_dir.name}", subtitle, nav, body))
    return out


def _read_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return {}
    return data if isinstance(data, dict) else {}


def summary_markdown(run_dir: str | Path) -> str:
    """A short markdown summary for the terminal: stage status, win rates and means with intervals."""
    run_dir = Path(run_dir)
    views = {name: read_stage(run_dir, name) for name in STAGES}
    marks = {"complete": "done", "partial": "partial", "missing": "-"}
    lines = [f"## prefopt run `{run_dir.name}`", ""]
    lines.append("stages: " + ", ".join(f"{n} {marks[views[n].status]}" for n in STAGES))
    results = _read_json(run_dir / "eval" / "results.json")
    if isinstance(results, dict):
        win = _by_scorer(results.get("win_rates", {}))
        pairs = [p for p in PAIRS if any(p in win.get(s, {}) for s in win)]
        if win:
            lines += ["", "| win rate | " + " | ".join(p.replace("_vs_", " vs ") for p in pairs) + " |"]
            lines.append("|---" * (len(pairs) + 1) + "|")
            for s, by_pair in win.items():
                cells = [_md_est(by_pair.get(p), percent=True) for p in pairs]
                lines.append(f"| {SCORERS.get(s, s)} | " + " | ".join(cells) + " |")
        pol = results.get("policies", {})
        cols = [c for c in COLUMNS if c in pol]
        keys = [(k, label) for k, label in MEANS[:6] if any(k in pol[c] for c in cols)]
        if keys:
            lines += ["", "| mean | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
            lines += [
                f"| {label} | " + " | ".join(_md_est(pol[c].get(k)) for c in cols) + " |" for k, label in keys
            ]
        lines += ["", f"{results.get('n_posts')} held-out posts; 95% bootstrap intervals in brackets."]
    else:
        lines += ["", "no evaluation yet (`prefopt eval`)."]
    report = run_dir / REPORT
    if report.is_file():
        lines += ["", f"report: {report}"]
    return "\n".join(lines) + "\n"


def _md_est(e: dict | None, percent: bool = False) -> str:
    if not e:
        return ""
    if percent:
        return f"{100 * e['value']:.1f}% [{100 * e['lo']:.1f}, {100 * e['hi']:.1f}]"
    return f"{e['value']:.3f} [{e['lo']:.3f}, {e['hi']:.3f}]"
