"""Distill: a narrower student learns from the calibrated teacher's soft labels.

Hinton KD: the loss mixes the KL divergence to the teacher's temperature-
softened, calibrated probabilities (weight ``alpha``) with cross-entropy on the
given labels. The teacher is frozen and its logits computed once. The student
gets its own temperature, fitted on the calibration split like the teacher's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from stages import tracking
from stages.calibrate import fit_temperature
from stages.config import Params
from stages.contract import Outputs, StageError, read_json, stage_main
from stages.data import read_split
from stages.losses import cross_entropy, kd_loss
from stages.metrics import classification, softmax
from stages.nets import MLP, Table, fit, load_model, logits_of, param_count, resolve_device, save_model, seed_everything

VALIDATED = Path("data/validated")
RESAMPLED = Path("data/resampled")
TEACHER = Path("models/teacher.pt")
CALIBRATION = Path("models/calibration.json")
MODEL = Path("models/student.pt")
METRICS = Path("metrics/distill.json")


def run(params: Params, root: str | Path = ".") -> dict[str, Any]:
    root = Path(root)
    d = params.distill
    device = resolve_device(params.device)
    teacher, encoder, _ = load_model(root / TEACHER, device)
    if sum(d.hidden) >= sum(teacher.arch["hidden"]):
        raise StageError(
            f"distill.hidden {d.hidden} is not smaller than the teacher's train.hidden {teacher.arch['hidden']}."
        )
    t_cal = float(read_json(root / CALIBRATION)["temperature"])
    train = read_split(root / RESAMPLED, "train")
    calib = read_split(root / VALIDATED, "calib")
    label = params.data.label
    train_t = Table.of(*encoder.transform(train), encoder.labels(train[label]), train.get("weight"), device=device)
    calib_t = Table.of(*encoder.transform(calib), encoder.labels(calib[label]), device=device)
    train_t.soft = logits_of(teacher, train_t) / t_cal  # frozen, calibrated teacher logits, computed once

    def loss_fn(logits, b):
        soft = kd_loss(logits, b.soft, d.temperature, b.weight)
        return d.alpha * soft + (1.0 - d.alpha) * cross_entropy(logits, b.y, b.weight)

    seed_everything(params.seed)
    student = MLP(len(encoder.numeric), encoder.cardinalities, len(encoder.classes), d.hidden, d.dropout).to(device)
    with tracking.stage_run("distill", params, ("distill",), root):
        result = fit(
            student,
            train_t,
            loss_fn,
            epochs=d.epochs,
            batch_size=d.batch_size,
            lr=d.lr,
            weight_decay=d.weight_decay,
            seed=params.seed,
            val=calib_t,
            patience=d.patience,
            progress="distill",
        )
        logits = logits_of(student, calib_t).cpu().numpy()
        y = calib_t.y.cpu().numpy()
        temperature, converged = fit_temperature(logits, y)
        metrics = {
            "best_epoch": result.best_epoch,
            "parameters": param_count(student),
            "teacher_parameters": param_count(teacher),
            "temperature": temperature,
            "temperature_converged": converged,
            "calib": classification(softmax(logits, temperature), y, params.evaluate.ece_bins),
        }
        tracking.log_metrics(metrics)
        with Outputs(root) as out:
            save_model(out.path(MODEL), student.cpu(), encoder, temperature=temperature)
            out.write_json(METRICS, metrics)
    return metrics


if __name__ == "__main__":
    stage_main("distill", run)
