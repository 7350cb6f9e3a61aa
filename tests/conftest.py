"""Shared fixtures: a real DVC repo in a temp dir, a real MLflow SQLite store,
Prefect's local ephemeral API (one per session). No mocks of any of them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from flows import workspace

ROOT = Path(__file__).resolve().parents[1]

# Few epochs, few folds: the pipeline's wiring under test, not its accuracy.
FAST = [
    "audit.folds=3",
    "audit.repeats=1",
    "audit.epochs=3",
    "audit.hidden=[32]",
    "train.epochs=4",
    "train.min_steps=0",
    "train.hidden=[64, 32]",
    "train.patience=2",
    "train.hgb_max_iter=40",
    "distill.epochs=4",
    "distill.hidden=[16]",
    "distill.patience=2",
]


@pytest.fixture(scope="session", autouse=True)
def _isolated_env(tmp_path_factory):
    """Prefect and MLflow state in temp dirs; no analytics; the venv's python first on PATH."""
    home = tmp_path_factory.mktemp("prefect-home")
    os.environ["PREFECT_HOME"] = str(home)
    os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    os.environ["GX_ANALYTICS_ENABLED"] = "false"
    os.environ["DO_NOT_TRACK"] = "1"
    os.environ["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] = "120"  # CLI runs start their own; CI is busy
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    yield


@pytest.fixture(scope="session")
def prefect_api():
    """Prefect's local ephemeral API with a temp database, started once."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=60):
        yield


@pytest.fixture
def repo(tmp_path) -> Path:
    """A real tamis workspace (git + DVC) in a temp dir."""
    return workspace.create(tmp_path / "repo")


def run_stage(repo: Path, stage: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """``python -m stages.<stage>`` in ``repo``, as DVC would run it."""
    return subprocess.run(
        [sys.executable, "-m", f"stages.{stage}"], cwd=repo, capture_output=True, text=True, timeout=timeout
    )


def set_params(repo: Path, *overrides: str) -> None:
    import yaml

    from tamis.config import apply_overrides, read_raw

    raw = apply_overrides(read_raw(repo / "params.yaml"), list(overrides))
    (repo / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))


def validate_csv(tmp_path: Path, frame: pd.DataFrame, *overrides: str) -> tuple[Path, subprocess.CompletedProcess]:
    """A workspace whose ``data.train`` is ``frame`` written as a CSV, after ingest (which must pass) and validate:
    (the workspace, validate's process)."""
    repo = workspace.create(tmp_path / "repo")
    frame.to_csv(tmp_path / "train.csv", index=False)
    set_params(repo, f"data.train={tmp_path / 'train.csv'}", "data.inject_noise=null", *overrides)
    assert run_stage(repo, "ingest").returncode == 0
    return repo, run_stage(repo, "validate")


def mixed_table(n: int = 600, classes: int = 3, seed: int = 0) -> pd.DataFrame:
    """A small table with numeric and categorical columns and learnable classes."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    frame = pd.DataFrame(
        {
            "x1": rng.normal(size=n) + y,
            "x2": rng.normal(size=n) - 0.5 * y,
            "color": np.array(["red", "green", "blue", "cyan"])[(y + rng.integers(0, 2, n)) % 4],
            "label": np.array([f"c{k}" for k in range(classes)])[y],
        }
    )
    return frame
