"""One pipeline run at a time per repository.

``hold(repo)`` takes an exclusive ``flock`` on ``.tamis/run.lock`` before the
run writes anything (params.yaml included). The kernel drops the lock when the
holder dies, however it dies, so a lock can never be stale; the pid, host and
start time written into the file only serve to name the running process to a
second run, and to note that a dead run's lock is being taken over.
Re-entrant within one process: the CLI takes it, the flow it calls takes it
again.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from tamis.errors import StageError
from tamis.processes import alive

LOCK_FILE = Path(".tamis") / "run.lock"
_HELD: dict[Path, int] = {}  # repo -> nesting depth, for this process


class RepoBusy(StageError):
    """Another tamis run holds this repository."""


def _describe(info: dict) -> str:
    return f"pid {info.get('pid', '?')} on {info.get('host', '?')}, started {info.get('started', '?')}"


@contextlib.contextmanager
def hold(repo: str | Path) -> Iterator[None]:
    """Hold the repository's run lock for the ``with`` block, or raise :class:`RepoBusy` at once."""
    repo = Path(repo).resolve()
    if repo in _HELD:
        _HELD[repo] += 1
        try:
            yield
        finally:
            _HELD[repo] -= 1
        return
    path = repo / LOCK_FILE
    path.parent.mkdir(exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)  # not inherited by children (O_CLOEXEC by default)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RepoBusy(
                f"another tamis run holds {repo} ({_describe(_read(fd))}); wait for it to finish or stop it."
            ) from None
        previous = _read(fd)
        if previous.get("pid") and previous.get("host") == socket.gethostname() and not alive(previous["pid"]):
            print(f"tamis: taking over the lock of a run that died ({_describe(previous)}).", file=sys.stderr)
        info = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S %z")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        _HELD[repo] = 1
        try:
            yield
        finally:
            del _HELD[repo]
            os.ftruncate(fd, 0)  # a clean exit leaves no holder to name
    finally:
        os.close(fd)  # closing releases the flock


def _read(fd: int) -> dict:
    try:
        return json.loads(os.pread(fd, 4096, 0) or b"{}")
    except ValueError:
        return {}
