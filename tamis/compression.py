"""Compression: pruning, ONNX export with the calibration baked in, int8 quantisation, timing and the ship gate.

Pieces of the compress stage that are worth testing on their own. Only the
Linear layers are quantised: calibration and softmax stay in float. The gate
compares a variant with the calibrated teacher: macro-F1 may drop by at most
``max_f1_drop``, ECE rise by at most ``max_ece_rise``, no class's recall drop
by more than ``max_class_recall_drop`` (or ``RECALL_ROWS`` of that class's
rows, when one row is worth more: a small split cannot resolve less), and a
row's probabilities must not change with the batch it is sent in by more
than ``max_batch_shift``.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from tamis.calibration import Calibration
from tamis.config import CompressParams, DistillParams
from tamis.losses import cross_entropy, kd_loss
from tamis.nets import MLP, Table, fit, logits_of
from tamis.serving import Predictor

LAYERS = ["Gemm", "MatMul"]  # the Linear layers; the calibration map is a multiply-and-sum, left in float
PARITY_ATOL = 1e-4  # largest |ONNX FP32 - torch| probability: beyond it the exported graph is wrong
RECALL_ROWS = 1  # gate: a class's recall may always drop by this many of its calib rows


class Exported(nn.Module):
    """The exported graph: (num[, cat]) -> (logits, calibrated probabilities).

    ``smooth`` (one scale per numeric column) divides the inputs while the
    first Linear layer's weights are multiplied by it: the same function in
    float, but activations an int8 range can hold (SmoothQuant, Xiao et al.
    2023). Standardised columns that are nearly constant reach values of 30 and
    more, and one int8 range for all columns would leave the rest a few steps.
    """

    def __init__(self, model: nn.Module, cal: dict, smooth: np.ndarray):
        super().__init__()
        model = copy.deepcopy(model).cpu()
        scale = torch.as_tensor(smooth, dtype=torch.float32)
        if isinstance(model, MLP):
            first = next(m for m in model.body if isinstance(m, nn.Linear))
            with torch.no_grad():
                first.weight[:, : len(scale)] *= scale  # the numeric columns come first
        elif not torch.all(scale == 1):
            raise ValueError("only an MLP's inputs can be smoothed (its first layer takes the scale)")
        self.model, self.calibration = model, Calibration(cal)
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


def finetune(small: MLP, parent: MLP, train: Table, kd: DistillParams, *, epochs: int, seed: int) -> None:
    """A short distillation from the unpruned ``parent`` (Hinton KD + cross-entropy, ``kd``'s weights), fixed length.

    No early stopping on the calibration split: the gate scores the result
    there, and must not score what was selected on it.
    """
    train.soft = logits_of(parent, train)
    fit(
        small,
        train,
        lambda z, b: kd.alpha * kd_loss(z, b.soft, kd.temperature, b.weight) + (1 - kd.alpha) * cross_entropy(z, b.y, b.weight),
        epochs=kd.epochs_for(len(train), epochs),
        batch_size=kd.batch_size,
        lr=kd.lr,
        weight_decay=kd.weight_decay,
        seed=seed,
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

    from tamis.trees import as_tree_ensembles, with_forest_inputs

    model, forests = with_forest_inputs(model)  # a tree teacher's walk becomes one TreeEnsemble node below
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
    as_tree_ensembles(proto, forests)
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


def median_latency_ms(fn, batch: int, rows: int, repeats: int = 50, budget_s: float = 1.0) -> float:
    """Median wall time of ``fn(i, j)`` on ``batch`` consecutive rows, after up to 5 warm-up calls.

    At most ``repeats`` timed calls, fewer (never under 5) once they have taken ``budget_s``: a tree
    teacher takes 0.2-0.4 s per 256 rows, and 55 such calls would be half a minute of a stage.
    """
    times: list[float] = []
    spent, r = 0.0, 0
    while len(times) < repeats and (len(times) < 5 or spent < budget_s):
        start = (r * batch) % max(1, rows - batch)
        t0 = time.perf_counter()
        fn(start, start + batch)
        took = time.perf_counter() - t0
        spent += took
        if r >= 5 or spent > budget_s:  # warm-up calls, unless they alone used the budget
            times.append(took)
        r += 1
    return float(np.median(times) * 1000)


def latency(fn, rows: int) -> dict[str, float]:
    return {f"batch_{b}": median_latency_ms(fn, b, rows) for b in (1, 256)}


def batch_shift(predictor: Predictor, num: np.ndarray, cat: np.ndarray, rows: int = 512) -> float:
    """Largest change of a probability between scoring rows one at a time and all in one batch (the first
    ``rows`` rows: one call per row, and a tree teacher takes milliseconds a call).

    Dynamic int8 quantises activations with the range of the whole batch, so a
    row's answer can depend on the rows sent with it; a served model must not.
    """
    num, cat = num[:rows], cat[:rows]
    alone = np.concatenate([predictor.proba_encoded(num[i : i + 1], cat[i : i + 1]) for i in range(len(num))])
    return float(np.abs(alone - predictor.proba_encoded(num, cat)).max())


def gate(
    report: dict, reference: dict, shift: float, class_rows: np.ndarray, classes: list, c: CompressParams, recall_rows: int = RECALL_ROWS
) -> dict[str, Any]:
    """How a variant compares with the calibrated teacher on the calib split, and whether it may ship.

    ``report["macro_f1_drop_se"]`` (the paired bootstrap's standard error of the drop, see
    :func:`f1_drop_se`) times ``compress.f1_drop_se`` is added to the drop before it meets the budget,
    and a standard error above ``compress.max_f1_drop_se`` fails the variant: on a few dozen calib rows
    (ad_data: 37, SE 0.07) a student 12 points worse on test passed with a drop of -0.02.
    """
    f1_drop = reference["macro_f1"] - report["macro_f1"]
    se = report.get("macro_f1_drop_se", 0.0)
    bound = f1_drop + c.f1_drop_se * se
    ece_rise = report["ece"] - reference["ece"]
    drops = np.asarray(reference["per_class_recall"]) - np.asarray(report["per_class_recall"])
    allowed = np.maximum(c.max_class_recall_drop, recall_rows / np.maximum(class_rows, 1))
    failures = []
    if bound > c.max_f1_drop + 1e-12:
        failures.append(f"macro-F1 drop {f1_drop:.4f}" + (f" + {c.f1_drop_se:g} x SE {se:.4f}" if se and c.f1_drop_se else "")
                        + f" > compress.max_f1_drop {c.max_f1_drop:g}")
    if se > c.max_f1_drop_se + 1e-12:
        failures.append(f"the macro-F1 drop's standard error {se:.4f} > compress.max_f1_drop_se {c.max_f1_drop_se:g}:"
                        " too few calib rows to tell (raise data.calib_size)")
    if ece_rise > c.max_ece_rise + 1e-12:
        failures.append(f"ECE rise {ece_rise:.4f} > compress.max_ece_rise {c.max_ece_rise:g}")
    worst = int(np.argmax(drops - allowed))
    if drops[worst] > allowed[worst] + 1e-12:
        failures.append(f"recall of class {classes[worst]!r} drops {drops[worst]:.4f} > allowed {allowed[worst]:.4f}")
    if shift > c.max_batch_shift:
        failures.append(f"probabilities change by {shift:.2e} with the batch (> compress.max_batch_shift {c.max_batch_shift:g})")
    return {
        "macro_f1_drop": f1_drop,
        "macro_f1_drop_se": se,
        "ece_rise": ece_rise,
        "max_class_recall_drop": float(drops.max()),
        "batch_shift": shift,
        "passed": not failures,
        "failures": failures,
    }


BOOTSTRAP = 200  # resamples of the calib rows for the standard error of a variant's macro-F1 drop


def f1_drop_se(reference: np.ndarray, probs: np.ndarray, y: np.ndarray, seed: int) -> float:
    """Standard error of macro-F1(reference) - macro-F1(probs) over paired bootstrap resamples of the rows.

    Paired: both models are scored on the same resampled rows, so what they agree on cancels and the
    error reflects the rows where they differ. The same seed gives every variant the same resamples.
    Macro-F1 as scikit-learn's over every class (0 for a class neither predicted nor present).
    """
    a, b = reference.argmax(1), probs.argmax(1)
    if np.array_equal(a, b):
        return 0.0
    k, n = reference.shape[1], len(y)
    rng = np.random.default_rng(seed)

    def macro_f1(pred: np.ndarray, w: np.ndarray) -> float:
        hit = pred == y
        tp = np.bincount(y[hit], weights=w[hit], minlength=k)
        both = np.bincount(pred, weights=w, minlength=k) + np.bincount(y, weights=w, minlength=k)
        return float(np.mean(np.divide(2 * tp, both, out=np.zeros(k), where=both > 0)))

    drops = []
    for _ in range(BOOTSTRAP):
        w = np.bincount(rng.integers(0, n, n), minlength=n).astype(np.float64)
        drops.append(macro_f1(a, w) - macro_f1(b, w))
    return float(np.std(drops))


def pick_shipped(variants: dict[str, dict[str, Any]]) -> tuple[str, bool]:
    """(name, passed): the smallest variant passing the gate, else the best macro-F1 (then ECE, then size)."""
    passing = [n for n, v in variants.items() if v["gate"]["passed"]]
    if passing:
        return min(passing, key=lambda n: variants[n]["size_bytes"]), True
    best = min(variants, key=lambda n: (-variants[n]["calib"]["macro_f1"], variants[n]["calib"]["ece"], variants[n]["size_bytes"]))
    return best, False
