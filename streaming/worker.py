"""`python -m streaming.worker`: run the speed-layer Faust worker until SIGTERM/SIGINT.

Settings come from the LKLAB_* environment (lklab.lambda_arch.speed.start passes Settings.to_env()).
Logs go to stdout at INFO.
"""
from __future__ import annotations

import asyncio
import sys

import faust

from lklab.core.config import Settings
from lklab.lambda_arch.speed import worker_dir
from streaming.app import make_app


def event_loop(settings: Settings) -> asyncio.AbstractEventLoop:
    """The worker's event loop (`speed_event_loop`), made current before the app is built: Faust
    binds the loop that is current then, and a worker on another one never consumes."""
    if settings.speed_event_loop == "uvloop":
        import uvloop

        loop = uvloop.new_event_loop()
    else:
        loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    return loop


def main() -> None:
    settings = Settings()
    workdir = worker_dir(settings)
    workdir.mkdir(parents=True, exist_ok=True)
    loop = event_loop(settings)
    app = make_app(settings)
    worker = faust.Worker(app, loglevel="info", logfile=sys.stdout, workdir=str(workdir), loop=loop)
    worker.execute_from_commandline()  # mode's Worker handles SIGTERM/SIGINT with a clean stop


if __name__ == "__main__":
    main()
