"""`prefopt plan CONFIG [--gpus N]`: expected peak GPU memory of each stage, before renting a GPU."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from prefopt.commands import cli

app = typer.Typer(
    invoke_without_command=True,
    # options may follow the key=value overrides
    context_settings={"allow_interspersed_args": True},
)


@app.callback()
def plan(
    config: Annotated[Path | None, typer.Argument(help="YAML config (omit for all defaults).")] = None,
    overrides: Annotated[list[str] | None, typer.Argument(help="key=value overrides")] = None,
    gpus: Annotated[int, typer.Option(min=1, help="GPUs (DDP processes) the run uses.")] = 1,
    model_config: Annotated[
        str | None, typer.Option(help="Size the named architecture instead of model.name_or_path.")
    ] = None,
    formula: Annotated[bool, typer.Option("--formula/--no-formula", help="Also print the formula.")] = True,
) -> None:
    """Expected peak GPU memory per stage (SFT, reward, PPO) from a documented formula (no download)."""
    from rich.table import Table

    from prefopt import plan as planning
    from prefopt.config import ConfigError, derive
    from prefopt.model_configs import UnknownModelError, model_config_for

    c = cli()
    cfg = c.resolve(config, overrides)
    try:
        derive(cfg, gpus)  # the batch sizes must divide over the GPUs
        arch = model_config_for(cfg, model_config)
    except (ConfigError, UnknownModelError) as err:
        c.fail(str(err))
    shape = planning.Shape.of(arch)
    trainable = planning.trainable_parameters(arch, cfg)
    stages = planning.plan(cfg, shape, trainable, gpus)

    name = getattr(arch, "name_or_path", "") or cfg.model.name_or_path
    table = Table(
        title=f"Expected peak GPU memory per GPU (GiB): {name}, {gpus} GPU(s), peft={cfg.peft.method}"
    )
    for col in ("stage", "weights", "grads+optimizer", "activations", "logits", "generation", "peak"):
        table.add_column(col, justify="left" if col == "stage" else "right")
    for st in stages:
        g = st.as_gib()
        cells = (g["weights"], g["state"], g["activations"], g["logits"], g["generation"], g["peak"])
        table.add_row(st.stage, *(f"{v:.2f}" for v in cells[:-1]), f"[bold]{cells[-1]:.2f}[/]")
    c.console.print(table)
    c.console.print(
        f"P = {shape.params:,} parameters, T = {trainable:,} trainable ({cfg.peft.method}), "
        f"b = {planning.weight_bytes(cfg.model.dtype)} bytes, L = {shape.layers}, h = {shape.hidden}, "
        f"kv = {shape.kv_dim}, m = {shape.intermediate}, V = {shape.vocab:,}, "
        f"gradient checkpointing {'on' if cfg.model.gradient_checkpointing else 'off'}, "
        f"PPO {'one shared base' if planning.ppo_shares_base(cfg) else 'four models'}"
    )
    if formula:
        c.console.rule("formula (prefopt/plan.py)")
        c.console.print(planning.__doc__, markup=False, highlight=False, soft_wrap=True)
