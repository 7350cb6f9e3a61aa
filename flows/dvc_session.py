"""One DVC process for all of a flow run's DVC commands, instead of a process each.

A ``python -m dvc repro --single-item`` process spends about a second
starting (interpreter, imports, config, the repository's index) before it
looks at its stage, and a run asks DVC a dozen times. Inside ``session(repo)``
:func:`run` sends each command to one long-lived worker (``python -m
flows.dvc_session``, supervised by ``tamis.processes`` like any child: stopped
with tamis, whatever stops it) that calls DVC's own command-line entry point,
``dvc.cli.main``, so the commands, their output and their exit codes are
``python -m dvc``'s. Each command's stdout and stderr, its stage's included,
go to files of their own and come back with its exit code. Outside a session
each command is its own process, as before.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from tamis import processes

_OPEN: dict[Path, _Worker | None] = {}  # repositories with a session open, and its worker once started


class _Worker:
    """The flow side of one worker process: a request line in, a reply line out."""

    def __init__(self, repo: Path, env: dict[str, str]):
        self.repo = repo
        self.proc = processes.start([sys.executable, "-m", "flows.dvc_session"], repo, env,
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE)

    def run(self, args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
        try:
            self.proc.stdin.write(json.dumps({"args": args, "env": env, "cwd": str(self.repo)}) + "\n")
            self.proc.stdin.flush()
            line = self.proc.stdout.readline()
        except BrokenPipeError:
            line = ""
        if not line:  # stopped (an interrupt stops the whole group) or crashed
            code = self.proc.wait()
            return subprocess.CompletedProcess(["dvc", *args], code or 1, "", f"ERROR: the DVC worker exited with code {code}")
        reply = json.loads(line)
        return subprocess.CompletedProcess(["dvc", *args], reply["rc"], reply["stdout"], reply["stderr"])

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.proc.stdin.close()  # the worker's loop ends at end of input
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(10)
        processes.finish(self.proc)


@contextlib.contextmanager
def session(repo: Path) -> Iterator[None]:
    """DVC commands for ``repo`` go to one worker (started at the first) until the block ends."""
    repo = Path(repo).resolve()
    _OPEN[repo] = None
    try:
        yield
    finally:
        worker = _OPEN.pop(repo, None)
        if worker is not None:
            worker.close()


def run(repo: Path, args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    """``python -m dvc ARGS`` in ``repo`` with ``env``: through the session's worker when one is open."""
    repo = Path(repo).resolve()
    if repo not in _OPEN:
        return processes.run([sys.executable, "-m", "dvc", *args], cwd=repo, env=env)
    worker = _OPEN[repo]
    if worker is None or worker.proc.poll() is not None:  # first command, or the last worker was stopped
        worker = _OPEN[repo] = _Worker(repo, env)
    return worker.run(args, env)


@contextlib.contextmanager
def _captured() -> Iterator[tuple]:
    """File descriptors 1 and 2 (this process's and every child's output) into two temporary files."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        os.dup2(out.fileno(), 1)
        os.dup2(err.fileno(), 2)
        try:
            yield out, err
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)


def serve() -> int:
    """The worker: one JSON request a line on stdin (args, env, cwd), one JSON reply a line (rc, stdout, stderr)."""
    from dvc.cli import main

    requests, replies = os.fdopen(os.dup(0), "r"), os.fdopen(os.dup(1), "w")
    os.dup2(os.open(os.devnull, os.O_RDONLY), 0)  # a stage's stdin is not the request pipe
    for line in requests:
        request = json.loads(line)
        os.environ.clear()
        os.environ.update(request["env"])
        os.chdir(request["cwd"])
        with _captured() as (out, err):
            try:
                rc = main(request["args"])
            except Exception as exc:  # dvc.cli.main reports its own errors; anything past it is a crash
                print(f"ERROR: DVC crashed: {exc!r}", file=sys.stderr)
                rc = 255
            out.seek(0)
            err.seek(0)
            reply = {"rc": rc, "stdout": out.read().decode(errors="replace"), "stderr": err.read().decode(errors="replace")}
        replies.write(json.dumps(reply) + "\n")
        replies.flush()
    return 0


if __name__ == "__main__":
    sys.exit(serve())
