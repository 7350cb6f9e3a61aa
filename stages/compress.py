"""Compress: pruned and quantised variants of the student, and a gate that picks the one to ship.

Variants: the student and, per ``compress.prune_ratios``, a pruned student
(hidden units removed: smaller Linear layers, not masks), fine-tuned for a
fixed few epochs by distillation from the unpruned student and re-calibrated
with the student's calibration method. Each is exported with
``torch.onnx.export(dynamo=True)``, calibration baked into the graph (outputs
``logits`` and calibrated ``probs``), and must match torch within
``compress.parity_atol``; then quantised to int8 with onnxruntime, dynamic
and/or static QDQ per channel (activation ranges from training rows, so the
calibration split stays unseen; inputs smoothed first, see ``Exported``). Only
the Linear layers are quantised: calibration and softmax stay in float.

The gate scores every variant on the calibration split (test is evaluate's
alone) against the calibrated teacher, both calibrated out-of-fold (no row is
scored by a map fitted on it): macro-F1 may drop by at most ``max_f1_drop``,
ECE rise by at most ``max_ece_rise``, no class's recall drop by more than
``max_class_recall_drop`` (or ``recall_rows`` of that class's rows, when one
row is worth more: a small split cannot resolve less), and a row's
probabilities must not depend on the batch it is sent in. The smallest
passing variant on disk ships (size, not latency: the choice must be
deterministic). When none passes, the one with the best macro-F1 ships and the
stage says so. Size on disk and median latency at batch 1 and 256 with
``compress.threads`` threads are measured for every variant and for the torch
teacher, in this process.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from stages import calibrate, tracking
from stages.config import CompressParams, Params
from stages.contract import Outputs, StageError, read_json, stage_main
from stages.data import read_calib, read_split
from stages.losses import cross_entropy, kd_loss
from stages.metrics import classification
from stages.nets import (
    MLP,
    Table,
    fit,
    load_model,
    logits_of,
    param_count,
    resolve_device,
    seed_everything,
)
from stages.serving import Predictor

RESAMPLED = Path("data/resampled")
STUDENT = Path("models/student.pt")
TEACHER = Path("models/teacher.pt")
CALIBRATION = Path("models/calibration.json")
VARIANTS = Path("models/variants")
SERVING = Path("models/serving.json")
METRICS = Path("metrics/compress.json")
LAYERS = ["Gemm", "MatMul"]  # the Linear layers; the calibration map is a multiply-and-sum, left in float


class Exported(nn.Module):
    """The exported graph: (num[, cat]) -> (logits, calibrated probabilities).

    ``smooth`` (one scale per numeric column) divides the inputs while the
    first Linear layer's weights are multiplied by it: the same function in
    float, but activations an int8 range can hold (SmoothQuant, Xiao et al.
    2023). Standardised columns that are nearly constant reach values of 30 and
    more, and one int8 range for all columns would leave the rest a few steps.
    """

    def __init__(self, model: MLP, cal: dict, smooth: np.ndarray):
        super().__init__()
        model = copy.deepcopy(model).cpu()
        first = next(m for m in model.body if isinstance(m, nn.Linear))
        scale = torch.as_tensor(smooth, dtype=torch.float32)
        with torch.no_grad():
            first.weight[:, : len(scale)] *= scale  # the numeric columns come first
        self.model, self.calibration = model, calibrate.Calibration(cal)
        self.register_buffer("smooth", scale)

    def forward(self, num: torch.Tensor, cat: torch.Tensor | None = None):
        if cat is None:
            cat = torch.zeros((num.shape[0], 0), dtype=torch.int64)
        logits = self.model(num / self.smooth, cat)
        return logits, self.calibration(logits)


def smooth_scales(model: MLP, num: np.ndarray, alpha: float) -> np.ndarray:
    """Per numeric column: max|x|^alpha / max|w|^(1 - alpha) (1 where either is 0, or alpha is 0: no smoothing)."""
    if alpha == 0:
        return np.ones(num.shape[1])
    first = next(m for m in model.body if isinstance(m, nn.Linear))
    w = first.weight.detach().abs().max(dim=0).values[: num.shape[1]].cpu().numpy().astype(np.float64)
    x = np.abs(num).max(axis=0).astype(np.float64) if len(num) else np.zeros(num.shape[1])
    ok = (x > 0) & (w > 0)
    return np.where(ok, np.maximum(x, 1e-12) ** alpha / np.maximum(w, 1e-12) ** (1 - alpha), 1.0)


def prune(model: MLP, ratio: float, table: Table) -> MLP:
    """A narrower copy of ``model`` keeping ``1 - ratio`` of every hidden layer's units.

    A unit's importance is its mean activation on ``table`` (after ReLU) times
    the L2 norm of the weights leaving it: what the next layer receives from
    it. (The size of its incoming weights says little here: LayerNorm rescales
    them away.) The kept units' rows, LayerNorm entries and outgoing columns
    are copied; the rest of the model is kept as it is.
    """
    linears = [i for i, m in enumerate(model.body) if isinstance(m, nn.Linear)]
    relus = [m for m in model.body if isinstance(m, nn.ReLU)]
    totals: dict[int, torch.Tensor] = {}

    def record(layer):
        return lambda mod, inp, out: totals.__setitem__(layer, totals.get(layer, 0) + out.abs().sum(0))

    hooks = [r.register_forward_hook(record(layer)) for layer, r in enumerate(relus)]
    try:
        logits_of(model, table)
    finally:
        for h in hooks:
            h.remove()
    keeps = []
    for layer in range(len(linears)):
        nxt = model.body[linears[layer + 1]] if layer + 1 < len(linears) else model.head
        importance = totals[layer] / len(table) * nxt.weight.norm(dim=0)
        width = max(1, int(round(len(importance) * (1.0 - ratio))))
        keeps.append(torch.sort(torch.topk(importance, width).indices).values)
    small = MLP(**{**model.arch, "hidden": [len(k) for k in keeps]}).to(table.y.device)
    state = {k: v for k, v in model.state_dict().items() if not k.startswith(("body.", "head."))}
    layer, keep, prev = -1, None, None
    for i, m in enumerate(model.body):
        if isinstance(m, nn.Linear):
            layer += 1
            keep = keeps[layer]
            state[f"body.{i}.weight"] = m.weight[keep] if prev is None else m.weight[keep][:, prev]
            state[f"body.{i}.bias"] = m.bias[keep]
            prev = keep
        elif isinstance(m, nn.LayerNorm):
            state[f"body.{i}.weight"], state[f"body.{i}.bias"] = m.weight[keep], m.bias[keep]
    state["head.weight"], state["head.bias"] = model.head.weight[:, prev], model.head.bias
    small.load_state_dict(state)
    return small


def finetune(small: MLP, parent: MLP, params: Params, train: Table) -> None:
    """A short distillation from the unpruned ``parent`` (Hinton KD + cross-entropy), fixed length.

    No early stopping on the calibration split: the gate scores the result
    there, and must not score what was selected on it.
    """
    d = params.distill
    train.soft = logits_of(parent, train)
    fit(
        small,
        train,
        lambda z, b: d.alpha * kd_loss(z, b.soft, d.temperature, b.weight) + (1 - d.alpha) * cross_entropy(z, b.y, b.weight),
        epochs=params.compress.finetune_epochs,
        batch_size=d.batch_size,
        lr=d.lr,
        weight_decay=d.weight_decay,
        seed=params.seed,
        progress="compress (fine-tune)",
    )


@contextlib.contextmanager
def _quiet():
    """The exporter and the quantiser talk on stdout, warnings and logging; a stage run stays readable."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        root.setLevel(level)


def export_onnx(model: nn.Module, num: np.ndarray, cat: np.ndarray, path: Path) -> None:
    """Dynamo export with a dynamic batch dimension; a model without categoricals has one input.

    The exporter's debugging notes (each node's FX source and stack, the
    intermediate shapes) are dropped: in a small model they outweigh the
    weights, and nothing at run time reads them.
    """
    import onnx

    args = (torch.as_tensor(num[:8]),) + ((torch.as_tensor(cat[:8]),) if cat.shape[1] else ())
    names = ["num", "cat"][: len(args)]
    batch = torch.export.Dim("batch")
    exporter = logging.getLogger("torch.onnx")
    level = exporter.level
    exporter.setLevel(logging.ERROR)
    try:
        with _quiet():
            torch.onnx.export(
                model.eval(),
                args,
                str(path),
                dynamo=True,
                input_names=names,
                output_names=["logits", "probs"],
                dynamic_shapes={n: {0: batch} for n in names},
                external_data=False,  # one self-contained file: it is renamed into place
                verbose=False,
            )
    finally:
        exporter.setLevel(level)
    proto = onnx.load(str(path))
    for node in proto.graph.node:
        del node.metadata_props[:]
        node.doc_string = ""
    del proto.graph.value_info[:]
    onnx.save(proto, str(path))


def quantize(kind: str, src: Path, dst: Path, feeds: list[dict[str, np.ndarray]]) -> None:
    """int8 weights: ``int8_dynamic`` (activations quantised at run time) or ``int8_static`` (QDQ, per channel)."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )

    with _quiet():
        if kind == "int8_dynamic":
            quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, op_types_to_quantize=LAYERS)
            return

        class Rows(CalibrationDataReader):
            def __init__(self):
                self.batches = iter(feeds)

            def get_next(self):
                return next(self.batches, None)

        quantize_static(
            str(src),
            str(dst),
            Rows(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            weight_type=QuantType.QInt8,
            activation_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
            op_types_to_quantize=LAYERS,
        )


def median_latency_ms(fn, batch: int, rows: int, repeats: int = 50) -> float:
    """Median wall time of ``fn(i, j)`` on ``batch`` consecutive rows, after 5 warm-up calls."""
    times = []
    for r in range(repeats + 5):
        start = (r * batch) % max(1, rows - batch)
        t0 = time.perf_counter()
        fn(start, start + batch)
        if r >= 5:
            times.append(time.perf_counter() - t0)
    return float(np.median(times) * 1000)


def latency(fn, rows: int) -> dict[str, float]:
    return {f"batch_{b}": median_latency_ms(fn, b, rows) for b in (1, 256)}


def batch_shift(predictor: Predictor, num: np.ndarray, cat: np.ndarray) -> float:
    """Largest change of a probability between scoring rows one at a time and all in one batch.

    Dynamic int8 quantises activations with the range of the whole batch, so a
    row's answer can depend on the rows sent with it; a served model must not.
    """
    alone = np.concatenate([predictor.proba_encoded(num[i : i + 1], cat[i : i + 1]) for i in range(len(num))])
    return float(np.abs(alone - predictor.proba_encoded(num, cat)).max())


def gate(
    report: dict, reference: dict, shift: float, class_rows: np.ndarray, classes: list, c: CompressParams
) -> dict[str, Any]:
    """How a variant compares with the calibrated teacher on the calib split, and whether it may ship."""
    f1_drop = reference["macro_f1"] - report["macro_f1"]
    ece_rise = report["ece"] - reference["ece"]
    drops = np.asarray(reference["per_class_recall"]) - np.asarray(report["per_class_recall"])
    allowed = np.maximum(c.max_class_recall_drop, c.recall_rows / np.maximum(class_rows, 1))
    failures = []
    if f1_drop > c.max_f1_drop + 1e-12:
        failures.append(f"macro-F1 drop {f1_drop:.4f} > compress.max_f1_drop {c.max_f1_drop:g}")
    if ece_rise > c.max_ece_rise + 1e-12:
        failures.append(f"ECE rise {ece_rise:.4f} > compress.max_ece_rise {c.max_ece_rise:g}")
    worst = int(np.argmax(drops - allowed))
    if drops[worst] > allowed[worst] + 1e-12:
        failures.append(f"recall of class {classes[worst]!r} drops {drops[worst]:.4f} > allowed {allowed[worst]:.4f}")
    if shift > c.parity_atol:
        failures.append(f"probabilities change by {shift:.2e} with the batch (> compress.parity_atol {c.parity_atol:g})")
    return {
        "macro_f1_drop": f1_drop,
        "ece_rise": ece_rise,
        "max_class_recall_drop": float(drops.max()),
        "batch_shift": shift,
        "passed": not failures,
        "failures": failures,
    }


def choose(variants: dict[str, dict[str, Any]]) -> tuple[str, bool]:
    """(name, passed): the smallest variant passing the gate, else the best macro-F1 (then ECE, then size)."""
    passing = [n for n, v in variants.items() if v["gate"]["passed"]]
    if passing:
        return min(passing, key=lambda n: variants[n]["size_bytes"]), True
    best = min(variants, key=lambda n: (-variants[n]["calib"]["macro_f1"], variants[n]["calib"]["ece"], variants[n]["size_bytes"]))
    return best, False


@contextlib.contextmanager
def torch_threads(n: int):
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


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


def variants_of(
    name: str, m: dict[str, Any], folder: Path, rows: Rows, serving: dict, reference: dict, params: Params, classes: list
) -> dict[str, dict[str, Any]]:
    """Export one model (FP32, parity-checked), quantise it, and score every resulting variant."""
    c = params.compress
    wrapped = Exported(m["model"], m["calibration"], smooth_scales(m["model"], rows.quant_num, c.smooth_alpha)).eval()
    with torch.no_grad():
        ref = wrapped(torch.as_tensor(rows.num), torch.as_tensor(rows.cat))[1].numpy()
    files = {"fp32": folder / f"{name}.fp32.onnx"}
    export_onnx(wrapped, rows.num, rows.cat, files["fp32"])
    fp32 = Predictor(files["fp32"], serving, threads=c.threads)
    fp32_probs, fp32_logits = fp32.proba_encoded(rows.num, rows.cat), fp32.logits_encoded(rows.num, rows.cat)
    parity = float(np.abs(fp32_probs - ref).max())
    if parity > c.parity_atol:
        raise StageError(
            f"ONNX export of {name} disagrees with torch by {parity:.2e} (> compress.parity_atol "
            f"{c.parity_atol:g}); the exported graph is wrong."
        )
    feeds = [fp32.feeds(rows.quant_num[i : i + 64], rows.quant_cat[i : i + 64]) for i in range(0, len(rows.quant_num), 64)]
    for kind in c.quantize:
        files[kind] = folder / f"{name}.{kind}.onnx"
        quantize(kind, files["fp32"], files[kind], feeds)
    class_rows = np.bincount(rows.y, minlength=len(classes))
    method = m["calibration"]["method"]
    out = {}
    for kind, path in files.items():
        predictor = fp32 if kind == "fp32" else Predictor(path, serving, threads=c.threads)
        p, logits = predictor.proba_encoded(rows.num, rows.cat), predictor.logits_encoded(rows.num, rows.cat)
        # the calibration in every variant's graph is the FP32 model's map, so the out-of-fold maps are fitted on FP32 logits too
        oof = calibrate.out_of_fold(method, fp32_logits.astype(np.float64), rows.y, params, logits.astype(np.float64))
        report = classification(oof, rows.y, params.evaluate.ece_bins)
        shift = batch_shift(predictor, rows.num, rows.cat)
        timing = latency(lambda i, j, q=predictor: q.proba_encoded(rows.time_num[i:j], rows.time_cat[i:j]), len(rows.time_num))
        variant = {
            "file": f"{VARIANTS.name}/{path.name}",
            "size_bytes": path.stat().st_size,
            "parameters": m["parameters"],
            "calibration": method,
            "calib": report,
            "gate": gate(report, reference, shift, class_rows, classes, c),
            "latency_ms": timing,
        }
        if kind == "fp32":
            variant["parity_max_abs_error"] = parity
        else:
            variant["top1_agreement_with_fp32"] = float((p.argmax(1) == fp32_probs.argmax(1)).mean())
            variant["max_abs_error_vs_fp32"] = float(np.abs(p - fp32_probs).max())
        out[f"{name}.{kind}"] = variant
    return out


def run(params: Params, root: str | Path = ".") -> dict[str, Any]:
    root = Path(root)
    c = params.compress
    device = resolve_device(params.device)
    student, encoder, ckpt = load_model(root / STUDENT, device)
    teacher, _, _ = load_model(root / TEACHER)
    teacher_cal = read_json(root / CALIBRATION)
    label = params.data.label
    calib = read_calib(root)
    train = read_split(root / RESAMPLED, "train")
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
    reference = classification(calibrate.out_of_fold(teacher_cal["method"], teacher_logits, y, params), y, params.evaluate.ece_bins)

    models: dict[str, dict[str, Any]] = {
        "student": {"model": student, "calibration": ckpt["calibration"], "parameters": param_count(student)}
    }
    for ratio in c.prune_ratios:
        seed_everything(params.seed)
        small = prune(student, ratio, train_t)
        finetune(small, student, params, train_t)
        logits = logits_of(small, Table.of(num, cat, y, device=device)).cpu().numpy()
        models[f"pruned{ratio * 100:g}"] = {
            "model": small,
            "calibration": calibrate.fit(ckpt["calibration"]["method"], logits, y, params.calibrate),
            "parameters": param_count(small),
            "hidden": small.arch["hidden"],
        }

    serving = {"encoder": encoder.to_dict(), "label": label}
    with tracking.stage_run("compress", params, ("compress",), root), Outputs(root) as out:
        folder = out.dir(VARIANTS)
        variants: dict[str, dict[str, Any]] = {}
        for name, m in models.items():
            variants.update(variants_of(name, m, folder, rows, serving, reference, params, encoder.classes))
        with torch_threads(c.threads), torch.inference_mode():
            tnum, tcat = torch.as_tensor(rows.time_num), torch.as_tensor(rows.time_cat)
            teacher_ms = latency(lambda i, j: teacher(tnum[i:j], tcat[i:j]), n_time)
        chosen, passed = choose(variants)
        shipped = variants[chosen]
        teacher_bytes = (root / TEACHER).stat().st_size
        metrics: dict[str, Any] = {
            "final_model": shipped["file"],
            "chosen": chosen,
            "gate": {
                "passed": passed,
                "reference": "calibrated teacher on the calib split",
                "teacher_calib": {k: reference[k] for k in ("macro_f1", "ece", "per_class_recall")},
                "passing": [n for n, v in variants.items() if v["gate"]["passed"]],
            },
            "threads": c.threads,
            "teacher": {"size_bytes": teacher_bytes, "latency_ms": teacher_ms, "parameters": param_count(teacher)},
            "shipped": {
                "size_bytes": shipped["size_bytes"],
                "latency_ms": shipped["latency_ms"],
                "smaller_than_teacher": teacher_bytes / shipped["size_bytes"],
                "speedup_batch_1": teacher_ms["batch_1"] / shipped["latency_ms"]["batch_1"],
                "speedup_batch_256": teacher_ms["batch_256"] / shipped["latency_ms"]["batch_256"],
            },
            "models": {n: {k: v for k, v in m.items() if k not in ("model", "calibration")} for n, m in models.items()},
            "variants": variants,
        }
        if not passed:
            metrics["gate"]["warning"] = (
                f"no variant passed the gate; shipping {chosen}, the best macro-F1 "
                f"({'; '.join(shipped['gate']['failures'])})"
            )
            print(f"tamis compress: warning: {metrics['gate']['warning']}", file=sys.stderr)
        out.write_json(SERVING, {**serving, "model": shipped["file"]})
        out.write_json(METRICS, metrics)
        tracking.log_metrics(metrics)
        import mlflow

        mlflow.set_tags({"tamis.shipped": chosen, "tamis.gate_passed": str(passed).lower()})
    return metrics


if __name__ == "__main__":
    stage_main("compress", run)
