"""Compress: pruned and quantised variants of the student, and a gate that picks the one to ship.

Variants: the student and, per ``compress.prune_ratios``, a pruned student
(hidden units removed: smaller Linear layers, not masks), fine-tuned for a
fixed few epochs by distillation from the unpruned student and re-calibrated
with the student's calibration method. Each is exported with
``torch.onnx.export(dynamo=True)``, calibration baked into the graph (outputs
``logits`` and calibrated ``probs``), and must match torch within
``PARITY_ATOL`` (1e-4); then quantised to int8 with onnxruntime, dynamic
and/or static QDQ per channel (activation ranges from training rows, so the
calibration split stays unseen; inputs smoothed first, see ``Exported``). Only
the Linear layers are quantised: calibration and softmax stay in float.

The gate scores every variant on the calibration split (test is evaluate's
alone) against the calibrated teacher, both calibrated out-of-fold (no row is
scored by a map fitted on it): macro-F1 may drop by at most ``max_f1_drop``
(plus ``f1_drop_se`` times its paired-bootstrap standard error, reported per
variant: on a few hundred calib rows it is near a point),
ECE rise by at most ``max_ece_rise``, no class's recall drop by more than
``max_class_recall_drop`` (or one of that class's rows, when one
row is worth more: a small split cannot resolve less), and a row's
probabilities must not depend on the batch it is sent in (``compress.max_batch_shift``). The smallest
passing variant on disk ships (size, not latency: the choice must be
deterministic). When none passes, no failing variant ships: the calibrated
teacher is exported (FP32, its calibration in the graph) and ships instead, gated
like the others, and the stage says so (a teacher with trees exports as one
gather per tree level: right, but slow at big batches, 0.4 s per 256 digits rows
for 980 trees against 0.07 ms for a student). With noisy calib labels (calibrate's
noise matrix) the gate's ECE is the noise-corrected estimate. Size on disk and median latency at batch 1 and 256 with
``TAMIS_THREADS`` threads (``tamis run --threads``) are measured for every variant and for the torch
teacher, in this process.

The pieces (pruning, export, quantisation, timing, the gate) live in
``tamis/compression.py``; this script chains them and writes the outputs.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tamis import paths, runtime, tracking
from tamis.calibration import PARAMETRIC, Settings, fit_map, out_of_fold, select
from tamis.compression import (
    PARITY_ATOL,
    Exported,
    batch_shift,
    export_onnx,
    f1_drop_se,
    finetune,
    gate,
    latency,
    pick_shipped,
    prune,
    quantize,
    smooth_scales,
)
from tamis.config import CompressParams, Params
from tamis.contract import Outputs, StageError, read_json, stage_main, warn
from tamis.data import calibration_rows, read_split
from tamis.metrics import ECE_BINS, classification, noise_corrected_ece
from tamis.nets import MLP, Table, load_model, logits_of, param_count, resolve_device, seed_everything, torch_threads
from tamis.serving import Predictor


@dataclass
class Rows:
    """The encoded rows compress works on: calib (gate, parity), training sample (ranges), timing."""

    num: np.ndarray
    cat: np.ndarray
    y: np.ndarray
    quant_num: np.ndarray
    quant_cat: np.ndarray
    time_num: np.ndarray
    time_cat: np.ndarray


@dataclass
class Candidate:
    """A torch model to export: the student or a pruned copy, with its own parametric calibration."""

    name: str
    model: MLP
    calibration: dict
    hidden: list[int] | None = None  # pruned copies: the widths left
    quantize: bool = True  # int8 variants too (the teacher fallback ships in FP32)

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"parameters": param_count(self.model)}
        return out | ({"hidden": self.hidden} if self.hidden else {})


@dataclass
class Variant:
    """One exported file and how it scored: what metrics/compress.json records per variant."""

    file: str
    size_bytes: int
    parameters: int
    calibration: str
    calib: dict[str, Any]
    gate: dict[str, Any]
    latency_ms: dict[str, float]
    against_fp32: dict[str, float] = field(default_factory=dict)  # parity (FP32) or agreement (int8)

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        return {**{k: v for k, v in out.items() if k != "against_fp32"}, **self.against_fp32}


@dataclass
class Scoring:
    """What every variant is scored against: the calib rows, the teacher's reference numbers, how to calibrate, the gate."""

    rows: Rows
    reference: dict[str, Any]
    classes: list
    settings: Settings
    gate: CompressParams
    reference_probs: np.ndarray  # the calibrated teacher's out-of-fold probabilities of the calib rows


def onnx_calibration(teacher_cal: dict, logits: np.ndarray, y: np.ndarray, settings: Settings) -> dict:
    """The teacher's calibration as graph ops: its own when parametric, else the best parametric map."""
    if teacher_cal["method"] in PARAMETRIC:
        return teacher_cal
    return select("auto", PARAMETRIC, logits, y, settings)[0]


def calib_report(probs: np.ndarray, y: np.ndarray, noise: np.ndarray | None) -> dict[str, Any]:
    """Classification numbers on the calib split; with noisy calib labels the gate's ECE is the noise-corrected one
    (against the given labels an ECE rewards models that match the noise)."""
    report = classification(probs, y, ECE_BINS)
    if noise is not None:
        report["ece_given_labels"] = report["ece"]
        report["ece"] = noise_corrected_ece(probs, y, noise, ECE_BINS)
    return report


def export_files(cand: Candidate, folder: Path, rows: Rows, serving: dict, params: Params) -> tuple[dict[str, Path], float]:
    """(files, parity): ``<name>.fp32.onnx`` (checked against torch within ``PARITY_ATOL``) and one file per int8 kind."""
    c = params.compress
    smooth = smooth_scales(cand.model, rows.quant_num, c.smooth_alpha) if cand.quantize else np.ones(rows.num.shape[1])
    wrapped = Exported(cand.model, cand.calibration, smooth).eval()
    with torch.no_grad():
        ref = wrapped(torch.as_tensor(rows.num), torch.as_tensor(rows.cat))[1].numpy()
    files = {"fp32": folder / f"{cand.name}.fp32.onnx"}
    export_onnx(wrapped, rows.num, rows.cat, files["fp32"])
    fp32 = Predictor(files["fp32"], serving, threads=runtime.threads())
    parity = float(np.abs(fp32.proba_encoded(rows.num, rows.cat) - ref).max())
    if parity > PARITY_ATOL:
        raise StageError(
            f"ONNX export of {cand.name} disagrees with torch by {parity:.2e} (> {PARITY_ATOL:g}); the exported graph is wrong."
        )
    feeds = [fp32.feeds(rows.quant_num[i : i + 64], rows.quant_cat[i : i + 64]) for i in range(0, len(rows.quant_num), 64)]
    for kind in c.quantize if cand.quantize else []:
        files[kind] = folder / f"{cand.name}.{kind}.onnx"
        quantize(kind, files["fp32"], files[kind], feeds)
    return files, parity


def score_variants(cand: Candidate, files: dict[str, Path], serving: dict, scoring: Scoring) -> dict[str, Variant]:
    """Every exported file of ``cand`` on the calib split (calibrated out-of-fold), timed, and gated."""
    rows, method = scoring.rows, cand.calibration["method"]
    class_rows = np.bincount(rows.y, minlength=len(scoring.classes))
    fp32 = Predictor(files["fp32"], serving, threads=runtime.threads())
    fp32_probs, fp32_logits = fp32.proba_encoded(rows.num, rows.cat), fp32.logits_encoded(rows.num, rows.cat)
    out = {}
    for kind, path in files.items():
        predictor = fp32 if kind == "fp32" else Predictor(path, serving, threads=runtime.threads())
        p, logits = predictor.proba_encoded(rows.num, rows.cat), predictor.logits_encoded(rows.num, rows.cat)
        # the calibration in every variant's graph is the FP32 model's map, so the out-of-fold maps are fitted on FP32 logits too
        oof = out_of_fold(method, fp32_logits.astype(np.float64), rows.y, scoring.settings, logits.astype(np.float64))
        report = calib_report(oof, rows.y, scoring.settings.noise)
        report["macro_f1_drop_se"] = f1_drop_se(scoring.reference_probs, oof, rows.y, scoring.settings.seed)
        shift = batch_shift(predictor, rows.num, rows.cat)
        against = {} if kind == "fp32" else {  # FP32's own parity against torch is added by the caller
            "top1_agreement_with_fp32": float((p.argmax(1) == fp32_probs.argmax(1)).mean()),
            "max_abs_error_vs_fp32": float(np.abs(p - fp32_probs).max()),
        }
        out[f"{cand.name}.{kind}"] = Variant(
            file=f"{paths.VARIANTS.name}/{path.name}",
            size_bytes=path.stat().st_size,
            parameters=param_count(cand.model),
            calibration=method,
            calib=report,
            gate=gate(report, scoring.reference, shift, class_rows, scoring.classes, scoring.gate),
            latency_ms=latency(lambda i, j, q=predictor: q.proba_encoded(rows.time_num[i:j], rows.time_cat[i:j]), len(rows.time_num)),
            against_fp32=against,
        )
    return out


def run(params: Params, root: str | Path = ".") -> dict[str, Any]:
    root = Path(root)
    c = params.compress
    device = resolve_device(params.device)
    student, encoder, ckpt = load_model(root / paths.STUDENT, device)
    teacher, _, _ = load_model(root / paths.TEACHER)
    teacher_cal = read_json(root / paths.CALIBRATION)
    label = params.data.label
    calib = calibration_rows(root, params.calibrate.calib_rows)  # the rows calibrate fitted on, and T describes
    train = read_split(root / paths.RESAMPLED, "train")
    num, cat = encoder.transform(calib)
    y = encoder.labels(calib[label], "calib split")
    real = train[~train["synthetic"]] if "synthetic" in train else train
    n_time = max(len(num), 512)  # timing rows: the calib split, repeated when small
    rows = Rows(
        num,
        cat,
        y,
        *encoder.transform(real.sample(min(len(real), c.quant_rows), random_state=params.seed)),
        np.resize(num, (n_time, num.shape[1])),
        np.resize(cat, (n_time, cat.shape[1])),
    )
    train_t = Table.of(*encoder.transform(train), encoder.labels(train[label]), train.get("weight"), device=device)
    teacher_logits = logits_of(teacher, Table.of(num, cat, y)).numpy()
    noise = None if teacher_cal.get("noise") is None else np.asarray(teacher_cal["noise"])
    cp = params.calibrate
    settings = Settings(cp.odir, cp.histogram_bins, cp.folds, params.seed, noise)
    reference_probs = out_of_fold(teacher_cal["method"], teacher_logits, y, settings)
    reference = calib_report(reference_probs, y, noise)
    scoring = Scoring(rows, reference, encoder.classes, settings, c, reference_probs)

    candidates = [Candidate("student", student, ckpt["calibration"])]
    for ratio in c.prune_ratios:
        seed_everything(params.seed)
        small = prune(student, ratio, train_t)
        finetune(small, student, train_t, params.distill, epochs=c.finetune_epochs, seed=params.seed)
        logits = logits_of(small, Table.of(num, cat, y, device=device)).cpu().numpy()
        cal = fit_map(ckpt["calibration"]["method"], logits, y, settings)
        candidates.append(Candidate(f"pruned{ratio * 100:g}", small, cal, small.arch["hidden"]))

    serving = {"encoder": encoder.to_dict(), "label": label}
    with tracking.stage_run("compress", params, root), Outputs(root) as out:
        folder = out.dir(paths.VARIANTS)
        variants: dict[str, dict[str, Any]] = {}
        for cand in candidates:
            files, parity = export_files(cand, folder, rows, serving, params)
            scored = score_variants(cand, files, serving, scoring)
            scored[f"{cand.name}.fp32"].against_fp32 = {"parity_max_abs_error": parity}
            variants.update({name: v.as_dict() for name, v in scored.items()})
        with torch_threads(runtime.threads()), torch.inference_mode():
            tnum, tcat = torch.as_tensor(rows.time_num), torch.as_tensor(rows.time_cat)
            teacher_ms = latency(lambda i, j: teacher(tnum[i:j], tcat[i:j]), n_time)
        chosen, passed = pick_shipped(variants)
        fallback = None
        if not passed:  # never ship a variant that failed: the calibrated teacher, exported, is the fallback
            fallback = Candidate("teacher", teacher, onnx_calibration(teacher_cal, teacher_logits, y, settings), quantize=False)
            files, parity = export_files(fallback, folder, rows, serving, params)
            scored = score_variants(fallback, files, serving, scoring)
            scored["teacher.fp32"].against_fp32 = {"parity_max_abs_error": parity}
            variants["teacher.fp32"] = scored["teacher.fp32"].as_dict()
            chosen, passed = "teacher.fp32", variants["teacher.fp32"]["gate"]["passed"]
        shipped = variants[chosen]
        teacher_bytes = (root / paths.TEACHER).stat().st_size
        metrics: dict[str, Any] = {
            "final_model": shipped["file"],
            "chosen": chosen,
            "gate": {
                "passed": passed,
                "reference": "calibrated teacher on the calib split",
                "teacher_calib": {k: reference[k] for k in ("macro_f1", "ece", "per_class_recall")},
                "passing": [n for n, v in variants.items() if v["gate"]["passed"]],
            },
            "threads": runtime.threads(),
            "teacher": {"size_bytes": teacher_bytes, "latency_ms": teacher_ms, "parameters": param_count(teacher)},
            "shipped": {
                "size_bytes": shipped["size_bytes"],
                "latency_ms": shipped["latency_ms"],
                "smaller_than_teacher": teacher_bytes / shipped["size_bytes"],
                "speedup_batch_1": teacher_ms["batch_1"] / shipped["latency_ms"]["batch_1"],
                "speedup_batch_256": teacher_ms["batch_256"] / shipped["latency_ms"]["batch_256"],
            },
            "models": {cand.name: cand.describe() for cand in candidates},
            "variants": variants,
        }
        if fallback is not None:
            metrics["gate"]["fallback"] = "teacher"
            metrics["gate"]["warning"] = (
                "no student variant passed the gate; shipping the calibrated teacher (teacher.fp32)"
                + ("" if passed else f", which fails it too ({'; '.join(shipped['gate']['failures'])})")
            )
            warn("compress", metrics["gate"]["warning"])
        out.write_json(paths.SERVING, {**serving, "model": shipped["file"]})
        out.write_json(paths.metrics("compress"), metrics)
        tracking.log_metrics(metrics)
        import mlflow

        mlflow.set_tags({"tamis.shipped": chosen, "tamis.gate_passed": str(passed).lower()})
    return metrics


if __name__ == "__main__":
    stage_main("compress", run)
