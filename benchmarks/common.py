"""Pieces every benchmark shares: tables, label noise, peers, running tamis, timing.

Noise is class-dependent: a label flips towards the classes a clean model
confuses it with (estimated by cross-validation on the clean labels), which is
how real annotators err and harder to detect than uniform flips.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from flows import workspace
from stages.ingest import confusion_noise, encode_for_sklearn


def long_tail_sizes(n_rows: int, n_classes: int, imbalance: float) -> np.ndarray:
    """Class sizes falling geometrically from the largest to largest / ``imbalance``."""
    ratios = imbalance ** (-np.arange(n_classes) / max(1, n_classes - 1))
    sizes = np.floor(ratios / ratios.sum() * n_rows).astype(int)
    sizes[0] += n_rows - sizes.sum()
    return sizes


def make_table(
    n_rows: int = 5000,
    n_numeric: int = 12,
    n_categorical: int = 3,
    n_classes: int = 8,
    imbalance: float = 10.0,
    seed: int = 0,
    separation: float = 1.6,
) -> pd.DataFrame:
    """Numeric + categorical columns, long-tailed classes, label column ``label``.

    Classes are Gaussian clusters in a random 6-dimensional subspace mixed into
    the numeric columns (some classes overlap); each categorical column leans
    towards a class-dependent category.
    """
    rng = np.random.default_rng(seed)
    sizes = long_tail_sizes(n_rows, n_classes, imbalance)
    y = np.repeat(np.arange(n_classes), sizes)
    rng.shuffle(y)
    latent_dim = min(6, n_numeric)
    centers = rng.normal(scale=separation, size=(n_classes, latent_dim))
    latent = centers[y] + rng.normal(size=(n_rows, latent_dim))
    mixing = rng.normal(size=(latent_dim, n_numeric)) / np.sqrt(latent_dim)
    numeric = latent @ mixing + 0.5 * rng.normal(size=(n_rows, n_numeric))
    frame = pd.DataFrame(numeric.astype(np.float32), columns=[f"x{i}" for i in range(n_numeric)])
    for j in range(n_categorical):
        levels = 4 + j
        favourite = rng.integers(0, levels, n_classes)
        informative = rng.random(n_rows) < 0.6
        values = np.where(informative, favourite[y], rng.integers(0, levels, n_rows))
        frame[f"c{j}"] = np.array([f"v{v}" for v in range(levels)], dtype=object)[values]
    frame["label"] = np.array([f"k{k}" for k in range(n_classes)], dtype=object)[y]
    return frame


def digits_table() -> pd.DataFrame:
    from tamis.data import load_source

    return load_source("sklearn:digits", "label")


def set_params(repo: Path, overrides: list[str]) -> None:
    """``repo``'s params.yaml with each ``key.path=value`` set."""
    from tamis.config import apply_overrides, read_raw

    raw = apply_overrides(read_raw(repo / "params.yaml"), overrides)
    (repo / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))


def run_tamis(
    workdir: Path,
    train: pd.DataFrame,
    test: pd.DataFrame,
    overrides: list[str] | None = None,
    timeout: int = 3600,
    targets: list[str] | None = None,
) -> dict[str, Any]:
    """Run the real pipeline (``dvc repro [targets]``) on ``train`` and score it on ``test``.

    Returns evaluate.json (when evaluate ran) plus the audit's issues and the wall time. The
    tables go to CSV so the pipeline reads them as a user's files would be read.
    """
    repo = workspace.create(workdir / "repo")
    train.to_csv(workdir / "train.csv", index=False)
    test.to_csv(workdir / "test.csv", index=False)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    from tamis.config import apply_overrides

    params = apply_overrides(
        params,
        [f"data.train={workdir / 'train.csv'}", f"data.test={workdir / 'test.csv'}", "data.inject_noise=null"]
        + list(overrides or []),
    )
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    env.setdefault("GX_ANALYTICS_ENABLED", "false")
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "dvc", "repro", *(targets or [])], cwd=repo, env=env, capture_output=True, text=True,
        timeout=timeout,
    )
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"tamis failed in {repo}:\n{proc.stderr[-3000:]}")
    evaluation = repo / "metrics/evaluate.json"
    result = json.loads(evaluation.read_text()) if evaluation.exists() else {}
    result["wall_seconds"] = wall
    result["repo"] = str(repo)
    train_metrics = repo / "metrics/train.json"
    if train_metrics.exists():  # the MLP's share of the teacher: 1 the MLP, 0 the trees, between a blend
        teacher = json.loads(train_metrics.read_text())["teacher"]
        result["teacher_mlp_weight"] = teacher.get("mlp_weight", 1.0 if teacher["kind"] == "mlp" else 0.0)
    calibrate = repo / "metrics/calibrate.json"
    if calibrate.exists():  # the label-noise rate confident learning estimated, and what the fits assumed
        c = json.loads(calibrate.read_text())
        result["label_noise"] = {"estimated": c.get("estimated_label_noise"), "used": c.get("label_noise")}
    result["issues"] = pd.read_parquet(repo / "data/audit/issues.parquet")
    return result


def detection_scores(flagged: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    flagged, truth = np.asarray(flagged, bool), np.asarray(truth, bool)
    hits = (flagged & truth).sum()
    precision = hits / flagged.sum() if flagged.sum() else 0.0
    recall = hits / truth.sum() if truth.sum() else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": float(precision), "recall": float(recall), "f1": float(f1)}


def median_seconds(fn: Callable[[], Any], repeats: int = 5, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def peak_rss_mb(children: bool = False) -> float:
    """Peak resident memory of this process (or its finished children) in MiB."""
    who = resource.RUSAGE_CHILDREN if children else resource.RUSAGE_SELF
    return resource.getrusage(who).ru_maxrss / 1024


def write_result(name: str, result: dict[str, Any]) -> Path:
    """benchmarks/results/<name>.json (git-ignored), read back by benchmarks.run for BENCHMARKS.md."""
    out = ROOT / "benchmarks" / "results" / f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    return out


def machine() -> dict[str, Any]:
    import torch

    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "cuda": torch.cuda.is_available(),
        "commit": _commit(),
    }


def _commit() -> str | None:
    """The checkout's short commit (with ``+dirty`` for uncommitted changes), so a result names the code it measured."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True, text=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
