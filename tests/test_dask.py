"""The audit's fold fits on a real Dask cluster (a scheduler and two workers started here) give the local run's output."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from test_audit import FAST_AUDIT, clusters, write_validated

from stages import audit
from tamis import paths, runtime
from tamis.config import parse_params
from tamis.contract import StageError

ROOT = Path(__file__).resolve().parents[1]
DASK = str(Path(sys.executable).parent / "dask")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def cluster(tmp_path: Path):
    """``dask scheduler`` and two ``dask worker`` processes (one thread each) that can import tamis's stages."""
    address = f"tcp://127.0.0.1:{free_port()}"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    commands = [[DASK, "scheduler", "--host", "127.0.0.1", "--port", address.rsplit(":", 1)[1], "--no-dashboard"]]
    commands += [[DASK, "worker", address, "--nthreads", "1", "--no-dashboard", "--name", f"w{i}"] for i in range(2)]
    procs = []
    try:
        for i, cmd in enumerate(commands):
            log = (tmp_path / f"dask-{i}.log").open("w")
            procs.append(subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
        from distributed import Client

        with Client(address, timeout=60) as client:
            client.wait_for_workers(2, timeout=60)
        yield address
    finally:
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(20)


@pytest.fixture
def validated(tmp_path) -> Path:
    write_validated(tmp_path, {"train": clusters(240, 0), "calib": clusters(60, 1), "test": clusters(60, 2)})
    return tmp_path


def test_the_audit_on_a_dask_cluster_writes_what_the_local_processes_write(validated, tmp_path, monkeypatch):
    params = parse_params({"audit": FAST_AUDIT})
    monkeypatch.setenv(runtime.JOBS_ENV, "2")
    audit.run(params, validated)
    local = pd.read_parquet(validated / paths.ISSUES)
    with cluster(tmp_path) as address:
        monkeypatch.setenv(runtime.DASK_ENV, address)
        audit.run(params, validated)
        from distributed import Client

        with Client(address) as client:  # the fits ran there: each worker imported the audit's fold functions
            ran = client.run(lambda: "stages.audit" in __import__("sys").modules)
    on_dask = pd.read_parquet(validated / paths.ISSUES)
    assert len(ran) == 2 and all(ran.values()), ran
    pd.testing.assert_frame_equal(local, on_dask)


def test_an_unreachable_scheduler_is_one_sentence(validated, monkeypatch):
    monkeypatch.setenv(runtime.DASK_ENV, f"tcp://127.0.0.1:{free_port()}")
    with pytest.raises(StageError, match=r"TAMIS_DASK_SCHEDULER=tcp://127\.0\.0\.1:\d+: no Dask scheduler answers there"):
        audit.run(parse_params({"audit": FAST_AUDIT}), validated)
