"""Temperature scaling on small calibration splits: the prior on log T against the plain likelihood fit.

On a calibration split of 20-40 rows with one or two wrong answers, the likelihood alone sharpens to T ~ 0.1-0.3
(every other row pushes its probability to 1). Below ``calibration.TEMPERATURE_PRIOR_BELOW`` rows tamis fits
log T with a Gaussian prior at 0 worth ``calibration.TEMPERATURE_PRIOR_ROWS`` rows (from 100 rows it changed nothing
measurable here, so larger splits are fitted without it). Simulated models whose true logits have a 2-5 margin, made 0.5-2x as
sharp as calibrated (under- to over-confident), calibration splits of 20-300 rows drawn 40 times per cell, scored by
the test NLL (20,000 rows) of the fitted T minus that of T = 1 (negative: calibration helped). Both fits keep
tamis's rule that a split with no wrong answer never sharpens.

    python -m benchmarks.temperature_prior [--quick]
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import numpy as np

from benchmarks.common import machine, write_result
from tamis import calibration

CLASSES = 5


def draw(rng: np.random.Generator, n: int, margin: float, sharpness: float) -> tuple[np.ndarray, np.ndarray]:
    """(logits, labels): labels drawn from softmax(true logits), the model's logits the true ones x sharpness."""
    y = rng.integers(0, CLASSES, n)
    z = rng.normal(size=(n, CLASSES))
    z[np.arange(n), y] += margin
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    return z * sharpness, (p.cumsum(1) > rng.random((n, 1))).argmax(1)


def nll(z: np.ndarray, y: np.ndarray, t: float) -> float:
    return float(-calibration.log_softmax(z / t)[np.arange(len(y)), y].mean())


def fitted(z: np.ndarray, y: np.ndarray, prior_rows: float) -> float:
    old = calibration.TEMPERATURE_PRIOR_ROWS
    calibration.TEMPERATURE_PRIOR_ROWS = prior_rows
    try:
        return calibration.fit_map("temperature", z, y)["temperature"]
    finally:
        calibration.TEMPERATURE_PRIOR_ROWS = old


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="10 draws per cell instead of 40")
    args = parser.parse_args(argv)
    draws = 10 if args.quick else 40
    rng = np.random.default_rng(0)
    fits = {"likelihood only": 0.0, f"prior of {calibration.TEMPERATURE_PRIOR_ROWS:g} rows": calibration.TEMPERATURE_PRIOR_ROWS}
    cells = []
    for margin in (2.0, 3.0, 5.0):
        for sharpness in (0.5, 0.7, 1.0, 1.5, 2.0):
            zt, yt = draw(rng, 20000, margin, sharpness)
            base = nll(zt, yt, 1.0)
            for n in (20, 40, 100, 300):
                loss = {name: [] for name in fits}
                for _ in range(draws):
                    zc, yc = draw(rng, n, margin, sharpness)
                    for name, rows in fits.items():
                        loss[name].append(nll(zt, yt, fitted(zc, yc, rows)) - base)
                cells.append({"margin": margin, "sharpness": sharpness, "rows": n, **{k: float(np.mean(v)) for k, v in loss.items()}})
    result = {
        "command": " ".join(["python -m benchmarks.temperature_prior", *(sys.argv[1:] if argv is None else argv)]),
        "machine": machine(), "quick": args.quick, "draws": draws, "fits": list(fits), "cells": cells,
    }
    write_result("temperature_prior", result)
    return result


def table(result: dict[str, Any]) -> str:
    fits = result["fits"]
    lines = ["| calibration rows | " + " | ".join(f"{f}: mean / worst cell" for f in fits) + " |", "|---|" + "---|" * len(fits)]
    for n in sorted({c["rows"] for c in result["cells"]}) + ["all"]:
        cells = [c for c in result["cells"] if n == "all" or c["rows"] == n]
        lines.append(f"| {n} | " + " | ".join(f"{np.mean([c[f] for c in cells]):+.4f} / {max(c[f] for c in cells):+.4f}" for f in fits) + " |")
    lines += ["", f"Test NLL of the fitted T minus that of T = 1, mean over {result['draws']} draws per cell; 15 cells"
              " (3 margins x 5 sharpness factors) per row count."]
    return "\n".join(lines)


if __name__ == "__main__":
    print(table(main()))
