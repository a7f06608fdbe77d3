"""`python -m streaming.worker`: run the speed-layer Faust worker until SIGTERM/SIGINT.

Settings come from the LKLAB_* environment (lklab.lambda_arch.speed.start passes Settings.to_env()).
Logs go to stdout at INFO.
"""
from __future__ import annotations

import sys

import faust

from lklab.core.config import Settings
from streaming.app import make_app


def main() -> None:
    settings = Settings()
    (settings.home / "speed").mkdir(parents=True, exist_ok=True)
    app = make_app(settings)
    worker = faust.Worker(app, loglevel="info", logfile=sys.stdout, workdir=str(settings.home / "speed"))
    worker.execute_from_commandline()  # mode's Worker handles SIGTERM/SIGINT with a clean stop


if __name__ == "__main__":
    main()
