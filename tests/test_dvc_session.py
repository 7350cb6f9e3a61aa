"""The flow's one DVC process: the same commands, output and exit codes as a ``python -m dvc`` each."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from flows import dvc_session
from tamis import processes

STAGE = """\
import os, sys
print("to stdout", os.environ["TAMIS_TEST_TAG"])
print("to stderr", os.environ["TAMIS_TEST_TAG"], file=sys.stderr)
open("out.txt", "w").write(os.environ["TAMIS_TEST_TAG"])
sys.exit(int(os.environ.get("TAMIS_TEST_EXIT", "0")))
"""


def _repo(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    repo = tmp_path / "repo"
    repo.mkdir()
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=repo, check=True, env=env)
    (repo / "stage.py").write_text(STAGE)
    (repo / "dvc.yaml").write_text("stages:\n  tag:\n    cmd: python stage.py\n    deps: [stage.py]\n    outs: [out.txt]\n")
    return repo, env


def test_a_session_runs_every_command_in_one_worker_with_each_commands_own_output_and_code(tmp_path):
    repo, env = _repo(tmp_path)
    one_shot = dvc_session.run(repo, ["repro", "--single-item", "nosuch"], env)  # no session: a process of its own
    with dvc_session.session(repo):
        missing = dvc_session.run(repo, ["repro", "--single-item", "nosuch"], env)
        worker = dvc_session._OPEN[repo.resolve()].proc
        failed = dvc_session.run(repo, ["repro", "--single-item", "tag"], {**env, "TAMIS_TEST_TAG": "a", "TAMIS_TEST_EXIT": "3"})
        ran = dvc_session.run(repo, ["repro", "--single-item", "tag"], {**env, "TAMIS_TEST_TAG": "b"})
        again = dvc_session.run(repo, ["repro", "--single-item", "tag"], {**env, "TAMIS_TEST_TAG": "c"})
        status = dvc_session.run(repo, ["status", "--json"], env)
        assert dvc_session._OPEN[repo.resolve()].proc is worker  # one process for all of them
    assert (missing.returncode, missing.stderr) == (one_shot.returncode, one_shot.stderr)
    assert missing.returncode != 0 and "'nosuch' not found" in missing.stderr
    assert failed.returncode != 0 and "to stderr a" in failed.stderr and "to stdout a" in failed.stdout
    assert ran.returncode == 0 and "to stdout b" in ran.stdout and "to stderr b" in ran.stderr  # the env of this command
    assert "Running stage 'tag'" in ran.stdout and "to stdout a" not in ran.stdout  # nothing of the command before
    assert again.returncode == 0 and "didn't change, skipping" in again.stdout and "to stdout" not in again.stdout
    assert status.returncode == 0 and status.stdout.strip() == "{}"
    assert (repo / "out.txt").read_text() == "b" and "md5" in (repo / "dvc.lock").read_text()
    worker.wait(10)  # the session's end ends the worker
    assert worker not in processes._LIVE


def test_a_stopped_worker_answers_with_a_failure_and_the_next_command_starts_a_new_one(tmp_path):
    repo, env = _repo(tmp_path)
    with dvc_session.session(repo):
        assert dvc_session.run(repo, ["status"], env).returncode == 0
        first = dvc_session._OPEN[repo.resolve()].proc
        processes.stop_group(first)  # as an interrupt stops the group
        assert dvc_session.run(repo, ["status"], env).returncode == 0
        assert dvc_session._OPEN[repo.resolve()].proc is not first
