"""Distill: a narrower student learns from the calibrated teacher's soft labels.

The teacher is frozen (``eval()``, no gradients) and its calibrated
probabilities on the training rows are computed once; their logs are the soft
targets, so KD's temperature softens the calibrated distribution, whatever
calibrator the teacher uses. The loss mixes a distillation term (weight
``alpha``) with cross-entropy on the given labels; the term is Hinton KD,
decoupled KD (DKD) or normalised KD (NKD), see ``stages/losses.py``.

The same student (same widths, seed and schedule) is also trained without a
teacher (cross-entropy alone). Each gets its own calibration (parametric only,
so compress can bake it into the ONNX graph) and the distilled student is kept
only when it is better on the calibration split (scored with out-of-fold
calibration): higher macro-F1, or equal macro-F1 and lower NLL. Both are
reported.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from stages import calibrate, tracking
from stages.config import DistillParams, Params
from stages.contract import Outputs, StageError, read_json, stage_main
from stages.data import read_calib, read_split
from stages.losses import cross_entropy, dkd_loss, kd_loss, nkd_loss
from stages.metrics import classification
from stages.nets import (
    MLP,
    LossFn,
    Table,
    fit,
    load_model,
    logits_of,
    param_count,
    resolve_device,
    save_model,
    schedule,
    seed_everything,
)

RESAMPLED = Path("data/resampled")
TEACHER = Path("models/teacher.pt")
CALIBRATION = Path("models/calibration.json")
MODEL = Path("models/student.pt")
METRICS = Path("metrics/distill.json")


def soft_targets(teacher: MLP, cal: dict, table: Table) -> torch.Tensor:
    """Log of the frozen teacher's calibrated probabilities on ``table`` (computed once, no grad)."""
    teacher.eval().requires_grad_(False)
    probs = calibrate.probs(cal, logits_of(teacher, table).cpu().numpy())
    return torch.as_tensor(np.log(probs), dtype=torch.float32, device=table.y.device)


def distill_loss(d: DistillParams) -> LossFn:
    """``alpha`` * (KD | DKD | NKD against ``batch.soft``) + (1 - ``alpha``) * cross-entropy."""

    def term(logits, b):
        if d.loss == "kd":
            return kd_loss(logits, b.soft, d.temperature, b.weight)
        if d.loss == "dkd":
            return dkd_loss(logits, b.soft, b.y, d.temperature, d.dkd_alpha, d.dkd_beta, b.weight)
        return nkd_loss(logits, b.soft, b.y, d.temperature, d.nkd_gamma, b.weight)

    return lambda logits, b: d.alpha * term(logits, b) + (1.0 - d.alpha) * cross_entropy(logits, b.y, b.weight)


def train_student(params: Params, encoder, train: Table, calib: Table, loss_fn: LossFn, name: str) -> tuple[MLP, int]:
    """A fresh student (same seed every time) fitted with early stopping on the calib split."""
    d = params.distill
    seed_everything(params.seed)
    student = MLP(len(encoder.numeric), encoder.cardinalities, len(encoder.classes), d.hidden, d.dropout)
    student = student.to(train.y.device)
    result = fit(
        student,
        train,
        loss_fn,
        **schedule(d),
        seed=params.seed,
        val=calib,
        patience=d.patience,
        progress=name,
    )
    return student, result.best_epoch


def student_calibration(logits: np.ndarray, y: np.ndarray, params: Params) -> tuple[dict, dict, np.ndarray]:
    """The student's own calibrator: ``distill.calibration``, ``auto`` among the parametric methods."""
    return calibrate.choose(params.distill.calibration, calibrate.PARAMETRIC, logits, y, params)


def run(params: Params, root: str | Path = ".") -> dict[str, Any]:
    root = Path(root)
    d = params.distill
    device = resolve_device(params.device)
    teacher, encoder, _ = load_model(root / TEACHER, device)
    if sum(d.hidden) >= sum(teacher.arch["hidden"]):
        raise StageError(
            f"distill.hidden {d.hidden} is not smaller than the teacher's train.hidden {teacher.arch['hidden']}."
        )
    teacher_cal = read_json(root / CALIBRATION)
    train = read_split(root / RESAMPLED, "train")
    calib = read_calib(root)
    label = params.data.label
    train_t = Table.of(*encoder.transform(train), encoder.labels(train[label]), train.get("weight"), device=device)
    calib_t = Table.of(*encoder.transform(calib), encoder.labels(calib[label]), device=device)
    train_t.soft = soft_targets(teacher, teacher_cal, train_t)
    y = calib_t.y.cpu().numpy()
    bins = params.evaluate.ece_bins
    with tracking.stage_run("distill", params, ("distill",), root):
        students, report = {}, {}
        losses = {"distilled": distill_loss(d), "baseline": lambda z, b: cross_entropy(z, b.y, b.weight)}
        for name, loss_fn in losses.items():
            student, best_epoch = train_student(params, encoder, train_t, calib_t, loss_fn, f"distill ({name})")
            logits = logits_of(student, calib_t).cpu().numpy()
            cal, scores, oof = student_calibration(logits, y, params)
            students[name] = (student, cal)
            report[name] = {
                "best_epoch": best_epoch,
                "calibration": cal["method"],
                "calibration_candidates": scores,
                "calib": classification(oof, y, bins),  # out-of-fold calibration, as for the teacher
            }
        kd, base = report["distilled"]["calib"], report["baseline"]["calib"]
        better = kd["macro_f1"] > base["macro_f1"] + 1e-12 or (
            abs(kd["macro_f1"] - base["macro_f1"]) <= 1e-12 and kd["nll"] <= base["nll"]
        )
        kept = "distilled" if better else "baseline"
        student, cal = students[kept]
        metrics = {
            "loss": d.loss,
            "kept": kept,
            "parameters": param_count(student),
            "teacher_parameters": param_count(teacher),
            "calibration": cal["method"],
            "calib": report[kept]["calib"],
            "macro_f1_gain_from_teacher": kd["macro_f1"] - base["macro_f1"],
            **report,
        }
        tracking.log_metrics(metrics)
        import mlflow

        mlflow.set_tags({"tamis.student": kept, "tamis.student_calibration": cal["method"]})
        with Outputs(root) as out:
            save_model(out.path(MODEL), student.cpu(), encoder, calibration=cal, distilled=kept == "distilled")
            out.write_json(METRICS, metrics)
    return metrics


if __name__ == "__main__":
    stage_main("distill", run)
