"""The report and the over-optimisation plots, built from a synthetic run folder written here."""

from __future__ import annotations

import base64
import json
import math
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml

from prefopt.eval import overopt
from prefopt.report import build, plots

EVIL = "<script>alert('pwned')</script> & \"quotes\""
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _est(v: float, lo: float, hi: float, n: int = 50) -> dict:
    return {"value": v, "lo": lo, "hi": hi, "n": n}


def _done(stage: Path, **info) -> None:
    (stage / "DONE.json").write_text(json.dumps({**info, "completed_at": "2025-01-01T00:00:00"}))


def make_run(
    root: Path, name: str = "demo", kl_coef: float = 0.05, stages=("sft", "reward", "ppo", "eval")
) -> Path:
    """A run folder with every file the report reads, with made-up but plausible numbers."""
    run = root / name
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(
        yaml.safe_dump(
            {"model": {"preset": "testbed-tiny"}, "peft": {"method": "lora"}, "ppo": {"kl_coef": kl_coef}}
        )
    )
    if "sft" in stages:
        _write_jsonl(
            run / "sft" / "metrics.jsonl",
            [{"step": s, "time": s, "train/loss": 3.0 / s, "train/lr": 1e-3} for s in range(1, 31)]
            + [{"step": 30, "time": 31, "valid/loss": 0.2}],
        )
        _write_jsonl(run / "sft" / "samples.jsonl", [{"prompt": "P", "reference": "R", "sample": "S"}])
        _done(run / "sft", steps=30, seconds=12.5, **{"valid/loss": 0.2})
    if "reward" in stages:
        _write_jsonl(
            run / "reward" / "metrics.jsonl",
            [
                {"step": s, "time": s, "train/loss": 0.69 - s / 100, "train/accuracy": 0.5 + s / 100}
                for s in range(1, 21)
            ],
        )
        (run / "reward" / "eval.json").write_text(
            json.dumps(
                {
                    "n": 200,
                    "accuracy": 0.71,
                    "mean_margin": 0.8,
                    "calibration": {"ece": 0.04, "bins": []},
                    "testbed": {"noise_ceiling": 0.8, "fact_check": {"question": 0.625, "all": 0.5}},
                }  # fmt: skip
            )
        )
        fig, ax = plots.new_figure(3, 3)
        ax.plot([0, 1], [0, 1])
        plots.save(fig, run / "reward" / "reliability.png")
        _done(run / "reward", seconds=20.0)
    if "ppo" in stages:
        rows = []
        for u in range(1, 41):
            kl = 0.5 * u
            rows.append(
                {
                    "step": u,
                    "time": u,
                    "objective/kl": kl,
                    "objective/kl_k3": 0.9 * kl,
                    "objective/score": 0.1 * u,
                    "objective/raw_score": 0.1 * u + 0.01,
                    "gold/score": 1.0 - (kl - 8.0) ** 2 / 100,  # peaks at KL 8
                    "response/length": 20 + u / 4,
                    "response/eos_rate": 1.0,
                    "policy/entropy": 2.0 - u / 40,
                    "policy/clipfrac": 0.1,
                    "value/vf_clipfrac": 0.05,
                    "value/explained_variance": math.nan if u == 1 else 0.5,
                    "policy/approx_kl": 0.01,
                }
            )
        _write_jsonl(run / "ppo" / "metrics.jsonl", rows)
        _done(run / "ppo", updates=40, seconds=100.0)
    if "eval" in stages:
        results = {
            "n_posts": 50,
            "split": "valid",
            "source": "testbed",
            "temperature": 0.01,
            "response_length": 53,
            "bootstrap": 1000,
            "seed": 0,
            "testbed": True,
            "judge": None,
            "policies": {
                "reference": {"gold": _est(0.40, 0.35, 0.45), "length": _est(30, 28, 32)},
                "sft": {
                    "gold": _est(0.50, 0.45, 0.55),
                    "kl_to_sft": _est(0, 0, 0),
                    "length": _est(25, 24, 26),
                },
                "ppo": {
                    "gold": _est(0.70, 0.66, 0.74),
                    "kl_to_sft": _est(6.5, 5.9, 7.1),
                    "length": _est(28, 27, 29),
                },
            },
            "win_rates": {
                "gold": {
                    "ppo_vs_reference": _est(0.71, 0.65, 0.771),
                    "sft_vs_reference": _est(0.55, 0.47, 0.62),
                    "ppo_vs_sft": _est(0.68, 0.6, 0.75),
                }
            },
            "differences": {"gold": {"ppo_minus_sft": _est(0.2, 0.15, 0.25)}},
            "judge_failures": {},
            "notes": ["a note"],
        }
        (run / "eval").mkdir()
        (run / "eval" / "results.json").write_text(json.dumps(results))
        _write_jsonl(
            run / "eval" / "samples.jsonl",
            [
                {
                    "index": i,
                    "post": f"SUBREDDIT: r/test\n\nPOST: {EVIL}",
                    "reference": "a reference",
                    "sft": "an sft summary",
                    "ppo": EVIL,
                    "gold": {"reference": 0.4, "sft": 0.5, "ppo": 0.7},
                    "kl": {"ppo": 6.0},
                    "length": {"reference": 30, "sft": 25, "ppo": 28},
                    "eos": {"sft": True, "ppo": False},
                }
                for i in range(3)
            ],
        )
        _done(run / "eval", seconds=5.0)
    (run / "peft_compare.md").write_text(
        "# PEFT methods\n\n| method | params | gold |\n|---|---|---|\n| lora | 0.5% | 0.70 |\n"
    )
    return run


@pytest.fixture(scope="module")
def full_run(tmp_path_factory) -> Path:
    run = make_run(tmp_path_factory.mktemp("runs"))
    build.build_report(run)
    return run


def test_report_is_self_contained_and_embeds_every_plot(full_run):
    html = (full_run / "report.html").read_text()
    # nothing is fetched: no external src/href, no stylesheet links, no scripts at all
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", html, re.IGNORECASE)
    assert "<link" not in html.lower() and "@import" not in html and "url(" not in html
    assert "<script" not in html.lower()
    pngs = sorted((full_run / "plots").glob("*.png"))
    names = {p.stem for p in pngs}
    assert {"sft_loss", "reward_loss", "reward_accuracy", "reward_reliability", "ppo_kl", "ppo_gold"} <= names
    assert {"overoptimisation", "ppo_explained_variance", "ppo_entropy", "ppo_clipfrac"} <= names
    embedded = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
    assert len(embedded) == len(pngs)  # each plot exactly once
    decoded = {base64.b64decode(e) for e in embedded}
    assert decoded == {p.read_bytes() for p in pngs}
    assert all(d.startswith(PNG_MAGIC) for d in decoded)


def test_report_escapes_untrusted_text(full_run):
    html = (full_run / "report.html").read_text()
    assert "alert(" in html  # the sample is shown...
    assert "<script>alert" not in html  # ...but never as markup
    assert "&lt;script&gt;alert(&#x27;pwned&#x27;)&lt;/script&gt; &amp; &quot;quotes&quot;" in html


def test_report_shows_numbers_tables_and_notes(full_run):
    html = (full_run / "report.html").read_text()
    assert "71.0%" in html and "[65.0, 77.1]" in html  # a win rate and its interval
    assert "6.500" in html  # PPO KL mean
    assert "no EOS" in html  # the PPO sample's missing EOS is flagged
    assert "<td>lora</td>" in html.replace(' class=""', "")  # the PEFT markdown table, rendered
    assert "a note" in html
    assert "testbed: fact_check question" in html and "0.625" in html  # the per-slot fact checks, flattened
    for anchor in ("stages", "evaluation", "overopt", "ppo", "reward", "sft", "peft", "samples"):
        assert f'id="{anchor}"' in html


def test_missing_stages_are_skipped_with_a_note(tmp_path):
    run = make_run(tmp_path, stages=("sft",))
    html = build.build_report(run).read_text()
    assert "not run yet (skipped): reward, ppo, eval" in html
    assert 'id="evaluation"' not in html and 'id="overopt"' not in html
    assert "sft/samples.jsonl" in html  # falls back to the SFT samples
    assert (run / "plots" / "sft_loss.png").is_file()
    md = build.summary_markdown(run)
    assert "no evaluation yet" in md and "ppo -" in md


def test_empty_run_folder_does_not_crash(tmp_path):
    (tmp_path / "empty").mkdir()
    html = build.build_report(tmp_path / "empty").read_text()
    assert "sft, reward, ppo, eval" in html


def test_summary_markdown_has_win_rates_with_intervals(full_run):
    md = build.summary_markdown(full_run)
    assert "| gold labeler | 71.0% [65.0, 77.1] | 55.0% [47.0, 62.0] | 68.0% [60.0, 75.0] |" in md
    assert "| gold score (truth) | 0.400 [0.350, 0.450] | 0.500 [0.450, 0.550] | 0.700 [0.660, 0.740] |" in md
    assert "report.html" in md


def test_markdown_to_html_escapes_and_drops_separator_rows():
    out = build.markdown_to_html("## T <b>\n| a | b |\n|:--|--:|\n| <i> | 2 |\ntext & more")
    assert "<h3>T &lt;b&gt;</h3>" in out
    assert out.count("<tr>") == 2 and "&lt;i&gt;" in out and "--" not in out
    assert "<p>text &amp; more</p>" in out


def test_reward_panels_group_losses_and_accuracies():
    records = [
        {"step": 1, "time": 0, "train/loss": 0.6, "eval/accuracy": 0.7, "eval/confidence_9/accuracy": 0.9}
    ]
    panels = {p.name: p.keys for p in plots.reward_panels(records)}
    assert panels == {"reward_loss": ("train/loss",), "reward_accuracy": ("eval/accuracy",)}


def test_smooth_is_a_trailing_mean():
    x = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    assert np.allclose(plots.smooth(x, 2), [1.0, 1.5, 2.5, 3.5, 4.5])
    assert np.allclose(plots.smooth(x, 1), x)
    assert np.allclose(plots.smooth(x, 3, centered=True), [1.5, 2.0, 3.0, 4.0, 4.5])
    assert np.allclose(plots.smooth(x, 4, centered=True), [2.0, 2.5, 3.5, 4.0, 4.5])


def test_overopt_curve_reads_the_ppo_metrics(full_run):
    curve = overopt.run_curve(full_run / "ppo")
    assert np.allclose(curve.kl, 0.5 * np.arange(1, 41))
    assert np.allclose(curve.rm, 0.1 * np.arange(1, 41) + 0.01)  # raw score preferred over score
    assert int(np.argmax(curve.gold)) == 15  # KL 8.0 = update 16
    # the centred mean of the 5 updates at KL 7..9: 1 - (1 + 0.25 + 0 + 0.25 + 1) / (5 * 100)
    assert overopt.gold_peak(curve) == pytest.approx((8.0, 0.995), abs=1e-9)
    assert overopt.run_curve(full_run / "nothing") is None


def test_sweep_points_and_plot(tmp_path):
    runs = []
    for coef, kl_scale in ((0.01, 2.0), (0.05, 1.0), (0.2, 0.5)):
        run = make_run(tmp_path, name=f"beta{coef}", kl_coef=coef, stages=("ppo",))
        rows = build._read_jsonl(run / "ppo" / "metrics.jsonl")
        for r in rows:
            r["objective/kl"] *= kl_scale
        _write_jsonl(run / "ppo" / "metrics.jsonl", rows)
        runs.append(run)
    # one run also has an evaluation: its point comes from results.json, not the PPO tail
    (runs[1] / "eval").mkdir()
    (runs[1] / "eval" / "results.json").write_text(
        json.dumps(
            {
                "policies": {
                    "ppo": {
                        "kl_to_sft": _est(3.0, 2, 4),
                        "reward": _est(1.5, 1, 2),
                        "gold": _est(0.6, 0.5, 0.7),
                    }
                }
            }
        )
    )
    points = [overopt.sweep_point(r) for r in runs]
    assert [p.kl_coef for p in points] == [0.01, 0.05, 0.2]
    assert points[0].source == "ppo" and points[0].kl == pytest.approx(2.0 * 0.5 * np.mean(range(36, 41)))
    assert points[1].source == "eval" and (points[1].kl, points[1].rm, points[1].gold) == (3.0, 1.5, 0.6)
    png = overopt.plot_sweep([*runs, tmp_path / "missing"], tmp_path / "sweep.png")
    assert png.read_bytes().startswith(PNG_MAGIC)
    assert overopt.plot_sweep([tmp_path / "missing"], tmp_path / "none.png") is None


@pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium is not installed")
def test_report_renders_in_headless_chromium(full_run, tmp_path):
    shot = tmp_path / "report.png"
    cmd = [
        "chromium",
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--hide-scrollbars",
        "--window-size=1280,2400",
        f"--screenshot={shot}",
        (full_run / "report.html").resolve().as_uri(),
    ]
    subprocess.run(cmd, check=True, capture_output=True, timeout=60)
    from PIL import Image

    img = np.asarray(Image.open(shot).convert("L"), dtype=float)
    assert img.shape == (2400, 1280)
    # a rendered page with plots has many distinct grey levels; a blank or error page has a handful
    assert len(np.unique(img)) > 50 and img.std() > 10
