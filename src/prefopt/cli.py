"""The `prefopt` command line. Each command is a thin shell around one stage's function.

Heavy imports (torch, transformers) happen inside the commands, so `prefopt --help` is instant.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from prefopt.commands import data_cmd, peft_cmd, plan_cmd
from prefopt.config import Config, ConfigError, derive, describe, dump_config, load_config

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Preference optimisation of causal LMs: SFT -> reward model -> PPO -> evaluation.",
)
config_app = typer.Typer(no_args_is_help=True, help="Inspect and check configs.")
app.add_typer(config_app, name="config")

# command groups, one module each under prefopt/commands/ (add yours here):
app.add_typer(data_cmd.app, name="data")
app.add_typer(peft_cmd.app, name="peft")
app.add_typer(plan_cmd.app, name="plan")

console = Console()
err_console = Console(stderr=True)

ConfigArg = Annotated[Path | None, typer.Argument(help="YAML config (omit for all defaults).")]
Overrides = Annotated[list[str] | None, typer.Argument(help="key=value overrides, e.g. ppo.kl_coef=0.1")]


def fail(message: str) -> None:
    """Print one clear error and exit 2 (no traceback)."""
    err_console.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(2)


def world_size() -> int:
    """Processes launched by `accelerate launch`/torchrun (1 otherwise)."""
    import os

    return int(os.environ.get("WORLD_SIZE", "1"))


def resolve(config: Path | None, overrides: list[str] | None) -> Config:
    """Load, validate and size-check a config before any work; exit with one message on error."""
    try:
        cfg = load_config(config, overrides or [])
        derive(cfg, world_size())
    except ConfigError as err:
        fail(str(err))
    return cfg


@config_app.command("show")
def config_show(
    config: ConfigArg = None,
    overrides: Overrides = None,
    docs: Annotated[
        bool, typer.Option("--docs/--yaml", help="A table of every field with its documentation.")
    ] = False,
) -> None:
    """Print the resolved config as YAML, or (--docs) every field with its type, default and documentation."""
    if docs:
        table = Table("key", "type", "default", "meaning", show_lines=False)
        for key, type_name, default, doc in describe():
            table.add_row(key, type_name, default, doc)
        console.print(table)
        return
    cfg = resolve(config, overrides)
    sys.stdout.write(dump_config(cfg))


@config_app.command("check")
def config_check(config: ConfigArg = None, overrides: Overrides = None) -> None:
    """Validate a config and print its derived sizes (gradient accumulation, PPO updates...)."""
    cfg = resolve(config, overrides)
    d = derive(cfg, world_size())
    console.print(f"[green]ok[/] {config or '(defaults)'} — {world_size()} process(es)")
    for key, value in vars(d).items():
        console.print(f"  {key} = {value}")


def _user_errors() -> tuple[type[Exception], ...]:
    """Mistakes a user can fix (config, data, model path, a locked run folder): one line, no traceback."""
    from prefopt.data.load import DataError
    from prefopt.models.load import ModelLoadError
    from prefopt.runs import RunLockedError

    return (DataError, ModelLoadError, RunLockedError, ConfigError, FileNotFoundError)


def _guarded(fn, *args):
    try:
        return fn(*args)
    except _user_errors() as err:
        fail(str(err))


def _stage(name: str, config: Path | None, overrides: list[str] | None) -> None:
    from prefopt.pipeline import run_stage

    _guarded(run_stage, resolve(config, overrides), name)


@app.command()
def sft(config: ConfigArg = None, overrides: Overrides = None) -> None:
    """Supervised fine-tuning on (post, summary) pairs -> <run>/sft/model."""
    _stage("sft", config, overrides)


@app.command()
def ppo(config: ConfigArg = None, overrides: Overrides = None) -> None:
    """PPO against the reward model under a KL penalty to the SFT policy -> <run>/ppo/model."""
    _stage("ppo", config, overrides)


@app.command()
def reward(
    config: Annotated[
        str | None, typer.Argument(help="YAML config, or the word `score` (see below).")
    ] = None,
    overrides: Overrides = None,
    out: Annotated[
        Path | None, typer.Option(help="`score` only: write the scores as JSON lines here.")
    ] = None,
) -> None:
    """Train the reward model on comparisons (Bradley-Terry), normalise and evaluate it -> <run>/reward/model.

    `prefopt reward score MODEL FILE` instead scores the (post, summary) rows of FILE (any SFT layout)
    with a saved reward model (`<run>/reward` or `<run>/reward/model`)."""
    if config == "score":
        if not overrides or len(overrides) != 2:
            fail("usage: prefopt reward score MODEL FILE [--out scores.jsonl]")
        from prefopt.reward.train import score_file

        _guarded(score_file, Path(overrides[0]), Path(overrides[1]), out)
        return
    _stage("reward", Path(config) if config else None, overrides)


@app.command("eval")
def eval_(config: ConfigArg = None, overrides: Overrides = None) -> None:
    """Compare SFT, PPO and the references on held-out posts (win rates with 95% intervals) -> <run>/eval."""
    _stage("eval", config, overrides)


@app.command()
def report(run_dir: Annotated[Path, typer.Argument(help="A run folder, e.g. runs/testbed.")]) -> None:
    """Build <run>/report.html (self-contained, plots embedded) from the run's folders."""
    from prefopt.report.build import build_report, summary_markdown

    if not run_dir.is_dir():
        fail(f"no run folder at {run_dir}")
    path = build_report(run_dir)
    console.print(summary_markdown(run_dir))
    console.print(f"report: {path}")


@app.command()
def run(config: ConfigArg = None, overrides: Overrides = None) -> None:
    """The whole pipeline: (tiny base) -> SFT -> reward -> PPO -> eval -> report. Complete stages are skipped."""
    from prefopt.pipeline import run_pipeline

    _guarded(run_pipeline, resolve(config, overrides))


def main() -> None:  # pragma: no cover - entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
