"""A run owns its repository: one at a time, its own params, no orphans, a reachable tracking server.

Real processes and signals throughout: a second ``tamis run`` against a held
lock, a ``tamis run`` killed while its stage runs.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flows import workspace
from tamis import lock, processes, tracking


def cli(repo: Path, *args: str, env: dict | None = None, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "flows.cli", "run", "--repo", str(repo), *args],
        capture_output=True, text=True, timeout=timeout, env=env,
    )


@pytest.fixture(scope="module")
def shared_repo(tmp_path_factory) -> Path:
    return workspace.create(tmp_path_factory.mktemp("own") / "repo")


def test_a_second_run_exits_at_once_naming_the_first(shared_repo):
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from tamis import lock\n"
         f"with lock.hold({str(shared_repo)!r}):\n    print('held', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        params = (shared_repo / "params.yaml").read_text()
        start = time.perf_counter()
        proc = cli(shared_repo, "--set", "train.epochs=3")
        assert proc.returncode == 2, proc.stderr[-2000:]
        line = proc.stderr.strip().splitlines()[-1]
        assert line.startswith(f"tamis: another tamis run holds {shared_repo} (pid {holder.pid} on {socket.gethostname()}, started ")
        assert time.perf_counter() - start < 30  # no Prefect server, no stage
        assert (shared_repo / "params.yaml").read_text() == params
        assert not (shared_repo / "mlflow.db").exists()
    finally:
        holder.kill()
        holder.wait()


def test_a_dead_runs_lock_is_taken_over_with_a_note(tmp_path, capsys):
    (tmp_path / lock.LOCK_FILE).parent.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    info = {"pid": int(dead.stdout), "host": socket.gethostname(), "started": "yesterday"}
    (tmp_path / lock.LOCK_FILE).write_text(json.dumps(info))
    with lock.hold(tmp_path):
        with lock.hold(tmp_path):  # re-entrant in one process: the CLI holds it, the flow takes it again
            pass
        assert json.loads((tmp_path / lock.LOCK_FILE).read_text())["pid"] == os.getpid()
    assert f"taking over the lock of a run that died (pid {info['pid']}" in capsys.readouterr().err
    with lock.hold(tmp_path):  # released on exit
        pass


def test_uris_are_printed_with_the_password_masked():
    assert tracking.masked("https://ann:s3cret@mlflow.example:5000/x") == "https://ann:***@mlflow.example:5000/x"
    assert tracking.masked("sqlite:////tmp/mlflow.db") == "sqlite:////tmp/mlflow.db"


def test_an_unreachable_tracking_server_stops_before_anything(shared_repo):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the with ends: nothing listens there
    params = (shared_repo / "params.yaml").read_text()
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"http://user:secret@127.0.0.1:{port}"}
    proc = cli(shared_repo, "--set", "train.epochs=3", env=env)
    assert proc.returncode == 2, proc.stderr[-2000:]
    line = proc.stderr.strip().splitlines()[-1]
    assert f"tracking server http://user:***@127.0.0.1:{port} is unreachable" in line
    assert "secret" not in proc.stderr + proc.stdout
    assert (shared_repo / "params.yaml").read_text() == params
    assert not (shared_repo / "data" / "fingerprint.json").exists()


SLOW_STAGE = """\
import os, subprocess, sys, time
worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])  # like the audit's workers
open("stage.pids.tmp", "w").write(f"{os.getpid()} {worker.pid}")
os.replace("stage.pids.tmp", "stage.pids")
time.sleep(120)
"""


def wait_for_pids(path: Path, timeout: float = 90) -> list[int]:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.2)
    return [int(p) for p in path.read_text().split()]


def all_gone(pids: list[int], timeout: float = 15) -> bool:
    deadline = time.monotonic() + timeout
    while any(processes.alive(p) for p in pids):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def test_a_supervised_child_group_stops_when_its_parent_is_killed(tmp_path):
    (tmp_path / "slow.py").write_text(SLOW_STAGE)
    parent = subprocess.Popen(
        [sys.executable, "-c", "import os, sys; from tamis import processes\n"
         "processes.run([sys.executable, 'slow.py'], '.', dict(os.environ))"],
        cwd=tmp_path,
    )
    pids = wait_for_pids(tmp_path / "stage.pids")
    parent.kill()
    parent.wait()
    assert all_gone(pids), "the stage or its worker outlived a SIGKILLed parent"


@pytest.mark.e2e
def test_tamis_run_stopped_by_sigterm_leaves_no_process_and_no_running_run(tmp_path):
    import yaml
    from mlflow import MlflowClient

    repo = workspace.create(tmp_path / "repo")
    (repo / "slow.py").write_text(SLOW_STAGE)
    dag = yaml.safe_load((repo / "dvc.yaml").read_text())
    dag["stages"]["fingerprint"]["cmd"] = "python slow.py"  # a stage that takes its time
    (repo / "dvc.yaml").write_text(yaml.safe_dump(dag, sort_keys=False))
    params = (repo / "params.yaml").read_text()
    # the repo's own mlflow.db: an earlier in-process test's default URI may linger in the environment
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    tamis = subprocess.Popen(
        [sys.executable, "-m", "flows.cli", "run", "--repo", str(repo), "--set", "train.epochs=3"],
        stderr=subprocess.PIPE, text=True, env=env,
    )
    pids = wait_for_pids(repo / "stage.pids")
    tamis.send_signal(signal.SIGTERM)
    _, err = tamis.communicate(timeout=60)
    assert all_gone(pids), "the stage or its worker outlived tamis"
    assert tamis.returncode == 143, err[-2000:]
    said = [ln for ln in err.splitlines() if ln.startswith("tamis:")]
    assert len(said) == 1 and said[0].startswith("tamis: stopped by SIGTERM; the running stage"), err[-2000:]
    assert (repo / "params.yaml").read_text() == params  # the run's --set went with it
    client = MlflowClient(tracking.tracking_uri(repo))
    runs = client.search_runs([client.get_experiment_by_name("tamis").experiment_id])
    assert {r.data.tags.get("tamis.stage", "parent"): r.info.status for r in runs} == {
        "parent": "KILLED", "fingerprint": "KILLED"
    }
    with lock.hold(repo):  # released
        pass


def test_runs_left_running_by_a_dead_process_are_marked_killed(tmp_path):
    from mlflow import MlflowClient

    from flows.retrain import HOST_TAG, PID_TAG, mark_killed_runs, owner_tags

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.create_experiment("tamis", artifact_location=(tmp_path / "art").as_uri())
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    orphan = client.create_run(experiment, tags={PID_TAG: dead.stdout.strip(), HOST_TAG: socket.gethostname()})
    ours = client.create_run(experiment, tags=owner_tags())  # this process is alive: its run is left alone
    elsewhere = client.create_run(experiment, tags={PID_TAG: dead.stdout.strip(), HOST_TAG: "another-host"})
    assert mark_killed_runs(client, experiment) == [orphan.info.run_id]
    status = {r: client.get_run(r).info.status for r in (orphan.info.run_id, ours.info.run_id, elsewhere.info.run_id)}
    assert list(status.values()) == ["KILLED", "RUNNING", "RUNNING"]


@pytest.mark.e2e  # the flow on Prefect's ephemeral API, which the e2e tests start anyway
def test_a_failed_run_puts_params_yaml_back(shared_repo, tmp_path, prefect_api):
    from flows.retrain import StageFailed, retrain

    before = (shared_repo / "params.yaml").read_bytes()
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp_path / 'mlflow.db'}"
    try:
        with pytest.raises(StageFailed, match="does not exist"):
            retrain(repo=str(shared_repo), overrides=[f"data.train={tmp_path / 'missing.csv'}", "train.epochs=3"])
    finally:
        os.environ.pop("MLFLOW_TRACKING_URI")
    assert (shared_repo / "params.yaml").read_bytes() == before
