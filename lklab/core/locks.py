"""One exclusive file lock (flock), for processes of one machine that share a lab home."""
from __future__ import annotations

import fcntl
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path


BATCH_LOCK = ".batch.lock"  # in the lab home: held by `lklab batch` (ingest included) and by a forget's lake purge


class LockBusy(TimeoutError):
    """The lock was still held by another process at the deadline."""


@contextmanager
def file_lock(path: Path, deadline: float | None = None, on_wait: Callable[[], None] | None = None) -> Iterator[None]:
    """Hold an exclusive lock on `path` for the block. Without a deadline, block until it is free;
    with one (a time.monotonic() value), poll until then and raise LockBusy. `on_wait` is
    called once, when the lock is held by another process."""
    with open(path, "a") as handle:
        if deadline is None:
            fcntl.flock(handle, fcntl.LOCK_EX)
        else:
            _poll(handle, deadline, on_wait)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _poll(handle, deadline: float, on_wait: Callable[[], None] | None) -> None:
    told = False
    while True:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() > deadline:
                raise LockBusy(f"{handle.name} is locked by another process") from None
            if on_wait is not None and not told:
                on_wait()
                told = True
            time.sleep(1.0)
