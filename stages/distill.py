"""Distill: a narrower student learns from the calibrated teacher's soft labels.

The teacher is frozen (``eval()``, no gradients) and its calibrated
probabilities on the training rows are computed once; their logs are the soft
targets, so KD's temperature softens the calibrated distribution, whatever
calibrator the teacher uses. The loss mixes a distillation term (weight
``alpha``) with cross-entropy on the given labels; the term is Hinton KD,
decoupled KD (DKD) or normalised KD (NKD), see ``stages/losses.py``.

The distilled student also learns from ``transfer_rows`` synthetic rows per
training row (at most ``nets.MAX_MIXUP_ROWS``), each a mixup of two training rows
labelled by the teacher (Bucila et al.'s model compression): on a small table
the training rows alone show the student too little of the teacher's function
(on the default digits table it stayed 1.8 points under the teacher on the
calib split and never passed compress's gate).
Its epoch is chosen by its agreement with the teacher's argmax on the calib
rows, not by the calib rows' given labels: at 20-35% label noise those left
the macro-F1 curve so flat that it stopped after 3-7 epochs.

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

from tamis import paths, tracking
from tamis.calibration import PARAMETRIC, Settings, apply_map, select, skipped
from tamis.config import DistillParams, Params
from tamis.contract import Outputs, StageError, read_json, stage_main
from tamis.data import calibration_rows, read_calib, read_split
from tamis.losses import cross_entropy, dkd_loss, kd_loss, nkd_loss
from tamis.metrics import ECE_BINS, classification
from tamis.nets import (
    MLP,
    LossFn,
    Table,
    fit,
    fit_args,
    load_model,
    logits_of,
    param_count,
    resolve_device,
    save_model,
    seed_everything,
    with_mixup_rows,
)

# temperature first: a distilled student is rarely calibrated as it comes (KD softens it), so within one standard
# error temperature scaling is preferred to the identity; the identity stays a candidate
STUDENT_CANDIDATES = ("temperature", "none") + tuple(m for m in PARAMETRIC if m not in ("temperature", "none"))


def soft_targets(teacher: MLP, cal: dict, table: Table) -> torch.Tensor:
    """Log of the frozen teacher's calibrated probabilities on ``table`` (computed once, no grad)."""
    teacher.eval().requires_grad_(False)
    probs = apply_map(cal, logits_of(teacher, table).cpu().numpy())
    return torch.as_tensor(np.log(probs), dtype=torch.float32, device=table.y.device)


def distill_loss(kd: DistillParams) -> LossFn:
    """``alpha`` * (KD | DKD | NKD against ``batch.soft``) + (1 - ``alpha``) * cross-entropy."""

    def term(logits, b):
        if kd.loss == "kd":
            return kd_loss(logits, b.soft, kd.temperature, b.weight)
        if kd.loss == "dkd":
            return dkd_loss(logits, b.soft, b.y, kd.temperature, kd.dkd_alpha, kd.dkd_beta, b.weight)
        return nkd_loss(logits, b.soft, b.y, kd.temperature, kd.nkd_gamma, b.weight)

    return lambda logits, b: kd.alpha * term(logits, b) + (1.0 - kd.alpha) * cross_entropy(logits, b.y, b.weight)


def train_student(params: Params, encoder, train: Table, val: Table, loss_fn: LossFn, name: str) -> tuple[MLP, int]:
    """A fresh student (same seed every time) fitted with early stopping on ``val`` (the calib rows)."""
    kd = params.distill
    seed_everything(params.seed)
    student = MLP(len(encoder.numeric), encoder.cardinalities, len(encoder.classes), kd.hidden, kd.dropout)
    student = student.to(train.y.device)
    result = fit(
        student,
        train,
        loss_fn,
        **fit_args(kd, len(train)),
        seed=params.seed,
        val=val,
        patience=kd.patience_for(len(train), kd.patience),
        progress=name,
    )
    return student, result.best_epoch


def student_calibration(logits: np.ndarray, y: np.ndarray, params: Params, noise) -> tuple[dict, dict, np.ndarray]:
    """The student's own calibrator: ``distill.calibration``, ``auto`` among the parametric methods (temperature first), with the
    teacher's estimate of the calib labels' noise (``noise``, or None)."""
    c = params.calibrate
    settings = Settings(c.odir, c.histogram_bins, c.folds, params.seed, None if noise is None else np.asarray(noise))
    return select(params.distill.calibration, STUDENT_CANDIDATES, logits, y, settings)


def run(params: Params, root: str | Path = ".") -> dict[str, Any]:
    root = Path(root)
    kd = params.distill
    device = resolve_device(params.device)
    teacher, encoder, _ = load_model(root / paths.TEACHER, device)
    if sum(kd.hidden) >= sum(params.train.hidden):
        raise StageError(f"distill.hidden {kd.hidden} is not smaller than the teacher's train.hidden {params.train.hidden}.")
    teacher_cal = read_json(root / paths.CALIBRATION)
    train = read_split(root / paths.RESAMPLED, "train")
    calib = read_calib(root)
    label = params.data.label
    train_t = Table.of(*encoder.transform(train), encoder.labels(train[label]), train.get("weight"), device=device)
    calib_t = Table.of(*encoder.transform(calib), encoder.labels(calib[label]), device=device)  # early stopping
    fit_rows = calibration_rows(root, params.calibrate.calib_rows)  # the student's calibration, as the teacher's
    cal_t = Table.of(*encoder.transform(fit_rows), encoder.labels(fit_rows[label]), device=device)
    train_t.soft = soft_targets(teacher, teacher_cal, train_t)
    transfer = with_mixup_rows(train_t, kd.transfer_rows, params.seed, lambda rows: soft_targets(teacher, teacher_cal, rows))
    y = cal_t.y.cpu().numpy()
    # the distilled student imitates the teacher, so its epoch is chosen by agreement with the teacher's argmax on the
    # calib rows, which label noise does not touch; the baseline has only the given labels to go by
    calib_teacher = Table(calib_t.num, calib_t.cat, soft_targets(teacher, teacher_cal, calib_t).argmax(1), calib_t.weight)
    with tracking.stage_run("distill", params, root):
        students, report = {}, {}
        losses = {
            "distilled": (distill_loss(kd), transfer, calib_teacher),
            "baseline": (lambda z, b: cross_entropy(z, b.y, b.weight), train_t, calib_t),
        }
        for name, (loss_fn, rows, val) in losses.items():
            student, best_epoch = train_student(params, encoder, rows, val, loss_fn, f"distill ({name})")
            logits = logits_of(student, cal_t).cpu().numpy()
            cal, scores, oof = student_calibration(logits, y, params, teacher_cal.get("noise"))
            students[name] = (student, cal)
            report[name] = {
                "best_epoch": best_epoch,
                "calibration": cal["method"],
                "calibration_candidates": scores,
                "calibration_skipped": skipped(STUDENT_CANDIDATES, logits.shape[1], teacher_cal.get("noise") is not None)
                if kd.calibration == "auto" else {},
                "calib": classification(oof, y, ECE_BINS),  # out-of-fold calibration, as for the teacher
            }
        distilled, base = report["distilled"]["calib"], report["baseline"]["calib"]
        better = distilled["macro_f1"] > base["macro_f1"] + 1e-12 or (
            abs(distilled["macro_f1"] - base["macro_f1"]) <= 1e-12 and distilled["nll"] <= base["nll"]
        )
        kept = "distilled" if better else "baseline"
        student, cal = students[kept]
        metrics = {
            "loss": kd.loss,
            "transfer_rows": len(transfer) - len(train_t),
            "kept": kept,
            "parameters": param_count(student),
            "teacher_parameters": param_count(teacher),
            "calibration": cal["method"],
            "calib": report[kept]["calib"],
            "macro_f1_gain_from_teacher": distilled["macro_f1"] - base["macro_f1"],
            **report,
        }
        tracking.log_metrics(metrics)
        import mlflow

        mlflow.set_tags({"tamis.student": kept, "tamis.student_calibration": cal["method"]})
        with Outputs(root) as out:
            save_model(out.path(paths.STUDENT), student.cpu(), encoder, calibration=cal, distilled=kept == "distilled")
            out.write_json(paths.metrics("distill"), metrics)
    return metrics


if __name__ == "__main__":
    stage_main("distill", run)
