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
best. With noisy calib labels (``noise_aware``) the NLL is forward-corrected
and ``auto`` tries only temperature, the identity and vector scaling
(``calibration.NOISE_AWARE``). ``auto`` refuses a map that moves the argmax
and lowers the calib split's macro-F1 (noise-corrected), and says so in its
candidate's ``refused``. The "after" numbers are out-of-fold too: no row is
scored by a map fitted on it.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from tamis import paths, tracking
from tamis.calibration import (
    METHODS,
    Settings,
    apply_map,
    capped,
    noise_matrix,
    noise_rate,
    select,
    skipped,
    teacher_min_temperature,
)
from tamis.config import Params
from tamis.contract import Outputs, StageError, stage_main
from tamis.data import audited_noisy_rows, calibration_rows
from tamis.metrics import ECE_BINS, calibration_report, classification, noise_corrected_ece, softmax
from tamis.nets import Table, load_model, logits_of

def calib_logits(params: Params, root: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Teacher logits and class indices of the calibration split, and (``calibrate.noise_aware``) the labels' noise
    matrix as estimated, before ``calibrate.max_label_noise`` caps it.

    The noise matrix comes from the audit's out-of-sample probabilities of every
    audited train and calib row (``data.noisy_rows``: the same noise, 6-7x the rows).
    """
    model, encoder, _ = load_model(root / paths.TEACHER)
    calib = calibration_rows(root, params.calibrate.calib_rows)
    y = encoder.labels(calib[params.data.label], "calib split")
    missing = sorted(set(range(len(encoder.classes))) - set(y.tolist()))
    if missing:
        names = [encoder.classes[i] for i in missing]
        raise StageError(
            f"calib split lacks class(es) {names}; raise data.calib_size so every class is in it."
        )
    logits = logits_of(model, Table.of(*encoder.transform(calib), y)).numpy()
    noise = None
    if params.calibrate.noise_aware:
        noise = noise_matrix(*audited_noisy_rows(root, encoder, params.data.inject_noise))
    return logits, y, noise


def fit_teacher_calibrator(
    params: Params, logits: np.ndarray, y: np.ndarray, estimated: np.ndarray | None
) -> tuple[dict, dict[str, dict[str, float]], np.ndarray, Settings]:
    """(calibrator, each candidate's scores, the chosen one's out-of-fold probabilities, the settings it was fitted
    with) of the teacher's calib logits: ``calibrate.method`` with the noise matrix capped at
    ``calibrate.max_label_noise``, sharpening no further than ``teacher_min_temperature`` allows."""
    c = params.calibrate
    noise = None if estimated is None else capped(estimated, c.max_label_noise)
    settings = Settings(c.odir, c.histogram_bins, c.folds, params.seed, noise)
    if noise is not None:
        settings = replace(settings, min_temperature=teacher_min_temperature(logits, y, settings))
    cal, scores, after = select(c.method, METHODS, logits, y, settings)
    return cal, scores, after, settings


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


def report(p: np.ndarray, y: np.ndarray, params: Params, noise: np.ndarray | None) -> dict[str, Any]:
    """Classification numbers, every calibration metric with bootstrap intervals, and the noise-corrected ECE."""
    out = {**classification(p, y, ECE_BINS), **calibration_report(p, y, ECE_BINS, params.calibrate.bootstrap, params.seed)}
    if noise is not None:  # what the ECE would be against clean labels, estimated through T
        out["ece_noise_corrected"] = noise_corrected_ece(p, y, noise, ECE_BINS)
    return out


def run(params: Params, root: str | Path = ".") -> dict[str, Any]:
    root = Path(root)
    logits, y, estimated = calib_logits(params, root)
    c = params.calibrate
    with tracking.stage_run("calibrate", params, root):
        cal, scores, after, settings = fit_teacher_calibrator(params, logits, y, estimated)
        noise = settings.noise
        cal["noise"] = None if noise is None else noise.tolist()  # distill and compress calibrate with the same T
        before = softmax(logits)
        metrics = {
            "method": cal["method"],
            "asked": c.method,
            "noise_aware": noise is not None,
            "estimated_label_noise": None if noise is None else noise_rate(estimated),  # confident learning's
            "label_noise": None if noise is None else noise_rate(noise),  # what the fits assume (max_label_noise)
            "min_temperature": None if noise is None else settings.min_temperature,  # how far a fit may sharpen
            "converged": cal.get("converged", True),
            "argmax_changed": float((apply_map(cal, logits).argmax(1) != before.argmax(1)).mean()),
            "candidates": scores,
            "skipped": skipped(METHODS, logits.shape[1], noise is not None) if c.method == "auto" else {},
            "before": report(before, y, params, noise),
            "after": report(after, y, params, noise),  # out-of-fold: each row calibrated by a map fitted without it
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
