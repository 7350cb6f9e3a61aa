"""Calibrate: make the teacher's probabilities mean what they say.

Every calibrator (``tamis/calibration.py``) is fitted on the trusted
calibration split only (never resampled) and stored as plain JSON
(``models/calibration.json``) that numpy code applies and the ONNX export
bakes in. Only temperature scaling can never change the predicted class; the
others can (a per-class bias or map moves the argmax; isotonic / histogram
also create ties), so each candidate's share of changed predictions is
measured and reported (``argmax_changed``) beside its scores. ``method: auto``
scores every method by out-of-fold NLL over stratified folds of the
calibration split and takes the simplest within one standard error of the
best. The "after" numbers are out-of-fold too: no row is scored by a map
fitted on it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from tamis import paths, tracking
from tamis.calibration import METHODS, Settings, apply_map, select, skipped
from tamis.config import Params
from tamis.contract import Outputs, StageError, stage_main
from tamis.data import read_calib
from tamis.metrics import ECE_BINS, calibration_report, classification, softmax
from tamis.nets import Table, load_model, logits_of

def calib_logits(params: Params, root: Path) -> tuple[np.ndarray, np.ndarray]:
    """Teacher logits and class indices on the calibration split."""
    model, encoder, _ = load_model(root / paths.TEACHER)
    calib = read_calib(root)
    y = encoder.labels(calib[params.data.label], "calib split")
    missing = sorted(set(range(len(encoder.classes))) - set(y.tolist()))
    if missing:
        names = [encoder.classes[i] for i in missing]
        raise StageError(
            f"calib split lacks class(es) {names}; raise data.calib_size so every class is in it."
        )
    logits = logits_of(model, Table.of(*encoder.transform(calib), y)).numpy()
    return logits, y


def reliability_plot(path: Path, curves: dict[str, tuple[np.ndarray, np.ndarray]], bins: int, title: str) -> None:
    """Accuracy against confidence per equal-width bin, one line per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot([0, 1], [0, 1], "k:", label="perfect")
    edges = np.linspace(0, 1, bins + 1)
    for name, (p, y) in curves.items():
        conf, hit = p.max(1), p.argmax(1) == y
        which = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, bins - 1)
        xs = [conf[which == b].mean() for b in range(bins) if (which == b).any()]
        ys = [hit[which == b].mean() for b in range(bins) if (which == b).any()]
        ax.plot(xs, ys, "o-", label=name)
    ax.set(xlabel="confidence", ylabel="accuracy", xlim=(0, 1), ylim=(0, 1), title=title)
    ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=100, format="png")
    plt.close(fig)


def report(p: np.ndarray, y: np.ndarray, params: Params) -> dict[str, Any]:
    """Classification numbers plus every calibration metric with bootstrap intervals."""
    return {**classification(p, y, ECE_BINS), **calibration_report(p, y, ECE_BINS, params.calibrate.bootstrap, params.seed)}


def run(params: Params, root: str | Path = ".") -> dict[str, Any]:
    root = Path(root)
    logits, y = calib_logits(params, root)
    with tracking.stage_run("calibrate", params, root):
        settings = Settings(params.calibrate.odir, params.calibrate.histogram_bins, params.calibrate.folds, params.seed)
        cal, scores, after = select(params.calibrate.method, METHODS, logits, y, settings)
        before = softmax(logits)
        metrics = {
            "method": cal["method"],
            "asked": params.calibrate.method,
            "converged": cal.get("converged", True),
            "argmax_changed": float((apply_map(cal, logits).argmax(1) != before.argmax(1)).mean()),
            "candidates": scores,
            "skipped": skipped(METHODS, logits.shape[1]) if params.calibrate.method == "auto" else {},
            "before": report(before, y, params),
            "after": report(after, y, params),  # out-of-fold: each row calibrated by a map fitted without it
        }
        if "temperature" in cal:
            metrics["temperature"] = cal["temperature"]
        tracking.log_metrics(metrics)
        with Outputs(root) as out:
            out.write_json(paths.CALIBRATION, cal)
            out.write_json(paths.metrics("calibrate"), metrics)
            curves = {"teacher": (before, y), f"{cal['method']} (out-of-fold)": (after, y)}
            reliability_plot(out.path(paths.RELIABILITY_PLOT), curves, ECE_BINS, "Teacher reliability (calib split)")
        import mlflow

        mlflow.set_tag("tamis.calibration", cal["method"])
        mlflow.log_artifact(str(root / paths.RELIABILITY_PLOT))
    return metrics


if __name__ == "__main__":
    stage_main("calibrate", run)
