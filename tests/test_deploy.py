"""The production path for real: a Prefect server, the tamis-gpu process pool
and a worker, ``prefect deploy`` from prefect.yaml, and a deployment run whose
pull steps clone a git repository on the worker, then a model in the MLflow
registry. The commands are the README's (`make test-deploy`, ~3.5 min on 2 cores)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from conftest import FAST

from flows import workspace

pytestmark = pytest.mark.deploy

ROOT = Path(__file__).resolve().parents[1]
PREFECT = str(Path(sys.executable).parent / "prefect")
POOL, DEPLOYMENT = "tamis-gpu", "tamis-retrain/nightly"
# what README "Running it" shows; the test runs exactly these
COMMANDS = [
    f"prefect work-pool create {POOL} --type process",
    f"prefect worker start --pool {POOL}",
    "prefect --no-prompt deploy --all",
    f"prefect deployment run {DEPLOYMENT} --watch",
]


def workspace_stages(repo: Path) -> list[str]:
    from tamis import dvcfiles

    return list(dvcfiles.stages(repo))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def started(args: list[str], env: dict[str, str], log: Path):
    """A long-running prefect process in its own process group, stopped with the whole group however the test ends."""
    with log.open("w") as out:
        proc = subprocess.Popen(args, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield proc
    finally:
        for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(wait)
                break


def wait_healthy(api: str, server: subprocess.Popen, log: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert server.poll() is None, f"prefect server exited: {log.read_text()[-3000:]}"
        with contextlib.suppress(requests.RequestException):
            if requests.get(f"{api}/health", timeout=2).status_code == 200:
                return
        time.sleep(1)
    raise AssertionError(f"prefect server not healthy after {timeout}s: {log.read_text()[-3000:]}")


# prefect 3.8.8 with this venv's fastapi/pydantic: after creating the deployment, `prefect deploy` asks for the
# pool's online workers with limit/offset null, the server refuses (422) and the command exits 1. Only that is let by.
def prefect(env: dict[str, str], command: str, *extra: str, cwd: Path | None = None, timeout: float = 120) -> str:
    """One of COMMANDS (plus ``extra`` arguments), which must succeed."""
    proc = subprocess.run([PREFECT, *command.split()[1:], *extra], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, f"{command} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def test_readme_shows_the_production_commands_the_test_runs():
    readme = (ROOT / "README.md").read_text()
    assert [c for c in COMMANDS if c not in readme] == []


@pytest.mark.timeout(900)
def test_a_deployment_run_on_a_worker_clones_the_repo_and_registers_a_model(tmp_path):
    from mlflow import MlflowClient

    source = workspace.create(tmp_path / "source")
    bare = tmp_path / "tamis.git"  # the repository the workers clone (a file:// URL here)
    subprocess.run(["git", "clone", "-q", "--bare", str(source), str(bare)], check=True, timeout=60)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=bare, capture_output=True, text=True, check=True).stdout.strip()
    api = f"http://127.0.0.1:{free_port()}/api"
    tracking_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}  # the clone's code, not this tree's
    env.update({
        "PREFECT_HOME": str(tmp_path / "prefect-home"),  # its own SQLite database
        "PREFECT_API_URL": api,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_CLI_PROMPT": "false",
        "PREFECT_WORKER_QUERY_SECONDS": "2",  # poll often: the test waits for the pickup
        "TAMIS_GIT_URL": bare.as_uri(),
        "MLFLOW_TRACKING_URI": tracking_uri,
        "TAMIS_DVC_REMOTE": str(tmp_path / "dvc-remote"),  # the cache the workers share
    })
    port = api.rsplit(":", 1)[1].split("/")[0]
    server_log, worker_log = tmp_path / "server.log", tmp_path / "worker.log"
    server_cmd = [PREFECT, "server", "start", "--host", "127.0.0.1", "--port", port, "--no-ui", "--analytics-off"]
    with started(server_cmd, env, server_log) as server:
        wait_healthy(api, server, server_log)
        prefect(env, COMMANDS[0])
        with started([PREFECT, *COMMANDS[1].split()[1:]], env, worker_log) as worker:
            prefect(env, COMMANDS[2], cwd=source)
            outs = []
            try:
                # the second run is another fresh clone: with the same params every stage comes from the shared cache
                for _ in range(2):
                    outs.append(prefect(env, COMMANDS[3], "--params", json.dumps({"overrides": FAST}),
                                        "--watch-timeout", "600", timeout=660))
            except AssertionError as err:
                raise AssertionError(f"{err}\nworker log:\n{worker_log.read_text()[-6000:]}") from None
            assert worker.poll() is None, worker_log.read_text()[-3000:]
            # the server's scheduler has put the nightly runs (02:00 UTC) in the calendar
            scheduled = requests.post(f"{api}/flow_runs/filter", timeout=30, json={
                "flow_runs": {"state": {"type": {"any_": ["SCHEDULED"]}}}}).json()
            assert scheduled and {r["expected_start_time"][11:16] for r in scheduled} == {"02:00"}, scheduled
    for out in outs:
        assert "Flow run finished successfully in 'Completed'" in out, out[-3000:]

    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name("tamis").experiment_id
    first, second = client.search_runs([experiment], "tags.`tamis.pipeline` = 'retrain'", order_by=["start_time ASC"])
    for parent in (first, second):
        assert parent.info.status == "FINISHED"
        assert parent.data.tags["tamis.git_commit"] == head  # the run happened in the worker's clone
    (version,) = client.search_model_versions()  # the second run's model is the same one: not registered again
    assert version.run_id and int(version.version) == 1
    children = client.search_runs([experiment], f"tags.mlflow.parentRunId = '{second.info.run_id}'")
    restored = {c.data.tags["tamis.stage"] for c in children if c.data.tags.get("tamis.restored_from_run_cache") == "true"}
    ran = {c.data.tags["tamis.stage"] for c in children if c.data.tags.get("tamis.executed") == "true"}
    assert ran == set() and restored == set(workspace_stages(source)[1:])  # all but fingerprint, which only hashes
