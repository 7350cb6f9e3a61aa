"""Child processes that never outlive the run that started them.

``run(cmd)`` starts ``cmd`` (``dvc repro``, and through it the stage) under a
small supervisor, ``python -m tamis.processes CMD...``, which leads a process
group of its own: a Ctrl-C in the terminal reaches only tamis, and tamis stops
the whole group (DVC, the stage, the audit's worker processes) with one
``killpg``. When tamis dies without a chance to do so (SIGKILL), the supervisor
notices (``PR_SET_PDEATHSIG`` on Linux, and a once-a-second check that its
parent is still the one that started it) and stops the group itself.

Kept free of heavy imports: the supervisor starts once per stage.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

PARENT_ENV = "TAMIS_SUPERVISOR_PARENT"
GRACE_SECONDS = 5.0  # SIGTERM first, then SIGKILL for what is still running after this
_LIVE: set[subprocess.Popen] = set()


class Interrupted(BaseException):
    """tamis got SIGINT or SIGTERM: a BaseException, so neither retries nor ``except Exception`` swallow it."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        self.exit_code = 128 + signum


def alive(pid: int) -> bool:
    """Whether ``pid`` is a running process (a zombie is not)."""
    if int(pid) <= 0:
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    try:
        stat = Path(f"/proc/{int(pid)}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def stop_group(proc: subprocess.Popen, group: int | None = None) -> None:
    """SIGTERM the process group (the child's own by default), SIGKILL it after the grace period."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid if group is None else group, sig)
        try:
            proc.wait(GRACE_SECONDS)
            return
        except subprocess.TimeoutExpired:
            continue


def start(cmd: list[str], cwd: str | Path, env: dict[str, str], **popen) -> subprocess.Popen:
    """``cmd`` started under the supervisor, in a process group of its own; end it with :func:`finish`."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "tamis.processes", *cmd],
        cwd=cwd, env={**env, PARENT_ENV: str(os.getpid())}, text=True, start_new_session=True, **popen,
    )
    _LIVE.add(proc)
    return proc


def finish(proc: subprocess.Popen) -> None:
    """Stop what is still running of a :func:`start`-ed group (interrupted, or not needed any more)."""
    if proc.poll() is None:
        stop_group(proc)
    _LIVE.discard(proc)


def run(cmd: list[str], cwd: str | Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    """``subprocess.run(cmd, capture_output=True, text=True)``, supervised: stopped with tamis, whatever stops it."""
    proc = start(cmd, cwd, env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out, err = proc.communicate()
    finally:
        finish(proc)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


@contextlib.contextmanager
def interruptible() -> Iterator[None]:
    """SIGINT / SIGTERM stop every supervised child group, then raise :class:`Interrupted` here."""

    def handler(signum, frame):
        for proc in list(_LIVE):
            stop_group(proc)
        raise Interrupted(signum)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _set_parent_death_signal() -> None:
    """Linux: the kernel sends SIGTERM to this process when its parent dies."""
    if sys.platform.startswith("linux"):
        import ctypes

        PR_SET_PDEATHSIG = 1
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def supervise(cmd: list[str]) -> int:
    """Run ``cmd`` in this (new) process group; stop the group when told to or when the parent is gone."""
    parent = int(os.environ.pop(PARENT_ENV, os.getppid()))
    _set_parent_death_signal()
    child = subprocess.Popen(cmd)

    def stop(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the group's SIGTERM is not for this process
        stop_group(child, os.getpgrp())
        os._exit(128 + signum)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, stop)
    while True:
        if os.getppid() != parent:  # the parent died before PDEATHSIG was set, or there is none (not Linux)
            stop(signal.SIGTERM, None)
        try:
            return child.wait(1.0)
        except subprocess.TimeoutExpired:
            continue


if __name__ == "__main__":
    sys.exit(supervise(sys.argv[1:]))
