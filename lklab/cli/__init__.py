"""`lklab`: run the lab from the shell. Every failure is one line on stderr and exit code 2.

One module per command group; importing them registers their commands on `app`."""
from lklab.cli import lab, log, spark, lambda_layer, db, read, kappa, hybrid, scenarios, drill, chaos, schema, forget  # noqa: F401, I001 - registers the commands, in help order
from lklab.cli.common import app

__all__ = ["app"]
