"""How close to ECE 0.03 can any calibration of the teacher get, cell by cell?

Reads workspaces kept by ``python -m benchmarks.quality --keep DIR`` (``DIR/<table>_<noise %>_<seed>/repo``) and
rebuilds each cell's clean labels from its table and seed. On the kept teacher, without re-training anything, it
scores on the clean test table the teacher's ECE (15 bins) when calibrated:

- ``raw``: not at all (its own softmax);
- ``tamis``: as this checkout's calibrate stage does (noise matrix estimated by confident learning, capped);
- ``true noise``: the same, given the calib rows' true noise matrix (counted from their clean and given labels);
- ``clean labels``: as calibrate does when told the calib labels are clean, and they are;
- ``best T on test``: the one temperature that minimises the test ECE itself, a bound no map fitted on the calib
  split can beat (unless it moves predictions), since the teachers' misses are mostly over-confidence.

The gap between ``tamis`` and ``true noise`` is what the noise estimate costs; between ``true noise`` and ``clean
labels``, what the calib labels' noise costs once its matrix is known; between ``clean labels`` and ``best T on
test``, what the calib split's size costs.

    python -m benchmarks.calibration_bounds DIR [--quick]
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from benchmarks.common import machine, write_result
from benchmarks.quality import load_table, split
from benchmarks.tables import HELD_OUT
from stages.calibrate import calib_logits, fit_teacher_calibrator
from tamis import paths
from tamis.calibration import apply_map
from tamis.config import apply_overrides, parse_params, read_raw
from tamis.data import read_split
from tamis.metrics import ECE_BINS, ece, softmax
from tamis.nets import Table, load_model, logits_of

TEMPERATURES = np.geomspace(0.05, 100.0, 241)
FITS = ("raw", "tamis", "true noise", "clean labels", "best T on test")
TARGET = 0.03


def true_noise(clean: np.ndarray, given: np.ndarray, k: int) -> np.ndarray:
    """``T[true, given]`` counted on the calib rows (a class with no row keeps its label)."""
    counts = np.zeros((k, k))
    np.add.at(counts, (clean, given), 1)
    counts[counts.sum(1) == 0] = np.eye(k)[counts.sum(1) == 0]
    return counts / counts.sum(1, keepdims=True)


def cell(repo: Path, quick: bool, frames: dict[str, pd.DataFrame]) -> dict[str, Any]:
    table, rate, seed = repo.parent.name.rsplit("_", 2)
    if table not in frames:
        frames[table] = load_table(table, quick)[0]
    clean_train, _ = split(frames[table], int(seed))
    with_set = lambda *sets: parse_params(apply_overrides(read_raw(repo / "params.yaml"), list(sets)), f"{repo}/params.yaml")
    params = with_set()
    logits, y, estimated = calib_logits(params, repo)
    model, encoder, _ = load_model(repo / paths.TEACHER)
    calib = read_split(repo / paths.VALIDATED, "calib")
    clean = encoder.labels(clean_train["label"].iloc[calib["row_id"].to_numpy()].reset_index(drop=True), "clean labels")
    test = read_split(repo / paths.VALIDATED, "test")
    y_test = encoder.labels(test[params.data.label], "test split")
    test_logits = logits_of(model, Table.of(*encoder.transform(test), y_test)).numpy()
    score = lambda cal: ece(apply_map(cal, test_logits), y_test, ECE_BINS)
    k = logits.shape[1]
    uncapped, clean_params = with_set("calibrate.max_label_noise=1.0"), with_set("calibrate.noise_aware=false")
    out = {
        "table": table, "noise": int(rate) / 100, "seed": int(seed), "held_out": table in HELD_OUT,
        "calib_rows": len(y), "test_rows": len(y_test), "calib_label_noise": float((clean != y).mean()),
        "raw": ece(softmax(test_logits), y_test, ECE_BINS),
        "tamis": score(fit_teacher_calibrator(params, logits, y, estimated)[0]),
        "true noise": score(fit_teacher_calibrator(uncapped, logits, y, true_noise(clean, y, k))[0]),
        "clean labels": score(fit_teacher_calibrator(clean_params, logits, clean, None)[0]),
    }
    tests = [ece(softmax(test_logits / t), y_test, ECE_BINS) for t in TEMPERATURES]
    out["best T on test"], out["best_temperature"] = min(tests), float(TEMPERATURES[int(np.argmin(tests))])
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("keep", type=Path, help="the --keep folder of a benchmarks.quality run")
    parser.add_argument("--quick", action="store_true", help="the workspaces are of a --quick run")
    args = parser.parse_args(argv)
    frames: dict[str, pd.DataFrame] = {}
    cells = []
    for repo in sorted(args.keep.glob("*_*_*/repo")):
        if repo.parent.name.rsplit("_", 2)[1] != "0":
            cells.append(cell(repo, args.quick, frames))
            print(cells[-1], flush=True)
    result = {"machine": machine(), "cells": cells}
    write_result("calibration_bounds", result)
    return result


def table(result: dict[str, Any]) -> str:
    lines = ["| table | noise | seed | calib rows | test rows | " + " | ".join(FITS) + " |",
             "|---|---|---|---|---|" + "---|" * len(FITS)]
    cells = result["cells"]
    for c in cells:
        name = c["table"] + (" (held out)" if c["held_out"] else "")
        lines.append(f"| {name} | {c['noise']:.0%} | {c['seed']} | {c['calib_rows']} | {c['test_rows']} | "
                     + " | ".join(f"{c[f]:.3f}" for f in FITS) + " |")
    for label, pick in (("tuning tables", False), ("held-out tables", True)):
        group = [c for c in cells if c["held_out"] == pick]
        if group:
            lines.append(f"| **{label}: mean** | | | | | " + " | ".join(f"{np.mean([c[f] for c in group]):.3f}" for f in FITS) + " |")
            lines.append(f"| **{label}: cells <= {TARGET}** | | | | | "
                         + " | ".join(f"{sum(c[f] <= TARGET for c in group)} of {len(group)}" for f in FITS) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(table(main()))
