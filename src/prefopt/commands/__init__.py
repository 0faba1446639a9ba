"""Command groups of the `prefopt` CLI, one module each (data, peft, plan); `cli.py` mounts them.

A command module must not import `prefopt.cli` at module level: `cli.py` imports the command modules
while it is still being defined, so each command reaches `fail`, `resolve` and `console` through
`cli()` at call time.
"""

from __future__ import annotations

from types import ModuleType


def cli() -> ModuleType:
    """The `prefopt.cli` module (imported when a command runs, after it is fully defined)."""
    from prefopt import cli as module

    return module
