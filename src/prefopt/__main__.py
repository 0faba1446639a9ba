"""`python -m prefopt ...` (and `accelerate launch -m prefopt ...`)."""

from prefopt.cli import app

app()
