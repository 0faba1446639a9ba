"""`prefopt peft [--model-config NAME]` (the lesson) and `prefopt peft compare CONFIG` (the measurement)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from prefopt.commands import cli

app = typer.Typer(
    invoke_without_command=True,
    help="Where PEFT's trainable parameters come from, and how the methods compare in practice.",
)


@app.callback()
def lesson(
    ctx: typer.Context,
    model_config: Annotated[
        str, typer.Option(help="Architecture counted on the meta device: qwen3-0.6b, qwen3-1.7b, ...")
    ] = "qwen3-0.6b",
) -> None:
    """Print the lesson: a toy nn.Linear, then every method's counts on a real Qwen3 size (no download)."""
    if ctx.invoked_subcommand is not None:
        return
    from prefopt.model_configs import UnknownModelError, qwen3_config
    from prefopt.peft_lesson import print_lesson

    c = cli()
    try:
        arch = qwen3_config(model_config)
    except UnknownModelError as err:
        c.fail(str(err))
    print_lesson(c.console, arch)


@app.command()
def compare(
    config: Annotated[Path | None, typer.Argument(help="YAML config (omit for all defaults).")] = None,
    overrides: Annotated[list[str] | None, typer.Argument(help="key=value overrides")] = None,
    steps: Annotated[int, typer.Option(min=1, help="SFT optimizer steps per method.")] = 150,
    methods: Annotated[
        str, typer.Option(help="Comma-separated: none,lora,lora-scratch,adapter,prefix.")
    ] = "none,lora,lora-scratch,adapter,prefix",
    out: Annotated[Path, typer.Option(help="Output folder (runs, table, plot).")] = Path("runs/peft-compare"),
) -> None:
    """Run SFT with each method on the same data and step budget (one process each); write
    peft_compare.md (table) and peft_compare.png (plot) under --out."""
    from prefopt.config import ConfigError
    from prefopt.peft_compare import compare as run_compare
    from prefopt.peft_compare import markdown_table

    c = cli()
    cfg = c.resolve(config, overrides)
    chosen = [m.strip() for m in methods.split(",") if m.strip()]
    try:
        results = run_compare(cfg, out, steps=steps, methods=chosen, log=_plain)
    except ConfigError as err:
        c.fail(str(err))
    c.console.print(markdown_table(results), markup=False, highlight=False)
    c.console.print(f"table: {out / 'peft_compare.md'}  plot: {out / 'peft_compare.png'}")
    if all(r.error for r in results):
        c.fail("every method failed: see the logs under " + str(out / "logs"))


def _plain(line: str) -> None:
    cli().console.print(line, markup=False, highlight=False)
