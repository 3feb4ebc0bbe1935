"""One writer per output folder.

``with output_lock(out, command="progemu curate"):`` takes an exclusive, non-blocking
``flock`` on the empty file ``OUT/.progemu.lock``. A second process that tries to write the
same folder gets :class:`OutputLockedError` naming the folder; the lock disappears with the
process that held it (SIGKILL included), so a killed run never leaves a stale lock behind.
The file stays (empty, so outputs stay byte-identical between runs): removing it on exit
would let two processes lock two different files of the same name. Under torchrun only
rank 0 locks (every rank writes the same ``--out`` by design).
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator

__all__ = ["OutputLockedError", "output_lock", "LOCK_NAME"]

LOCK_NAME = ".progemu.lock"


class OutputLockedError(RuntimeError):
    """Another process is writing the same output folder."""


@contextlib.contextmanager
def output_lock(directory: str | os.PathLike, command: str = "progemu", flag: str = "--out") -> Iterator[Path]:
    """Hold the folder's lock for the duration of the ``with`` block (creates the folder)."""
    if os.environ.get("RANK", "0") != "0":
        yield Path(directory)
        return
    import fcntl

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise OutputLockedError(f"{flag} {directory}: another progemu process is writing this folder (it holds "
                                    f"{LOCK_NAME}); wait for it to finish (or stop it), or choose another {flag} "
                                    f"for {command}") from None
        yield directory
    finally:
        os.close(fd)  # releases the flock
