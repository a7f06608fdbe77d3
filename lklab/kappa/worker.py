"""`python -m lklab.kappa.worker VIEW VERSION [--from …] [--from-snapshot …]`: one live Kappa job
in the foreground (lklab.kappa.jobs starts it in the background). SIGTERM stops it after a last
checkpoint; a failure is one line in its log and exit code 1."""
from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading

from lklab.core.config import Settings
from lklab.kappa.live import run_live
from lklab.kappa.names import ReplayError
from lklab.kappa.planner import parse_from
from lklab.serving.store import make_engine

log = logging.getLogger("lklab.kappa")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lklab.kappa.worker")
    parser.add_argument("view")
    parser.add_argument("version", type=int)
    parser.add_argument("--from", dest="start", default="earliest")
    parser.add_argument("--from-snapshot", dest="snapshot", default=None)
    parser.add_argument("--max-rate", dest="max_rate", type=float, default=None, help="hydrate at most this many events/s")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    settings = Settings()
    engine = make_engine(settings)
    try:
        run_live(settings, engine, args.view, args.version, stop, parse_from(args.start), args.snapshot,
                 on_hydrated=lambda r: log.info(f"{r.output} hydrated: {r.events} events to offsets {r.target_offsets}; following the log"),
                 max_rate=args.max_rate, on_retire=log.info)
    except (ReplayError, LookupError) as exc:
        log.error(f"{args.view} v{args.version}: {exc}")
        return 1
    finally:
        stop.set()
        engine.dispose()
    log.info(f"{args.view} v{args.version} stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
