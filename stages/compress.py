"""Compress: the student as ONNX, then int8, each checked against torch.

The student is exported with ``torch.onnx.export(dynamo=True)`` with its
temperature baked in (outputs ``logits`` and calibrated ``probs``), and
quantised with onnxruntime's dynamic int8 quantisation. The FP32 graph must
match torch within ``compress.parity_atol``; the int8 graph's top-1 agreement
with FP32 is reported. ``models/serving.json`` names the model that ships.
"""

from __future__ import annotations

import contextlib
import io
import logging
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from stages import tracking
from stages.config import Params
from stages.contract import Outputs, StageError, stage_main
from stages.data import read_split
from stages.nets import MLP, load_model
from stages.serving import Predictor

VALIDATED = Path("data/validated")
STUDENT = Path("models/student.pt")
ONNX = Path("models/student.onnx")
INT8 = Path("models/student.int8.onnx")
SERVING = Path("models/serving.json")
METRICS = Path("metrics/compress.json")


class Calibrated(nn.Module):
    """The exported graph: (num[, cat]) -> (logits, softmax(logits / T))."""

    def __init__(self, model: MLP, temperature: float):
        super().__init__()
        self.model, self.temperature = model, float(temperature)

    def forward(self, num: torch.Tensor, cat: torch.Tensor | None = None):
        if cat is None:
            cat = torch.zeros((num.shape[0], 0), dtype=torch.int64)
        logits = self.model(num, cat)
        return logits, torch.softmax(logits / self.temperature, dim=1)


def export_onnx(model: nn.Module, num: np.ndarray, cat: np.ndarray, path: Path) -> None:
    """Dynamo export with a dynamic batch dimension; a model without categoricals has one input."""
    args = (torch.as_tensor(num[:8]),) + ((torch.as_tensor(cat[:8]),) if cat.shape[1] else ())
    names = ["num", "cat"][: len(args)]
    batch = torch.export.Dim("batch")
    quiet = logging.getLogger("torch.onnx")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
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
        quiet.setLevel(level)


def quantize_int8(src: Path, dst: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    logging.getLogger().setLevel(logging.ERROR)
    quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8)


def median_latency_ms(fn, batch: int, rows: int, repeats: int = 30) -> float:
    times = []
    for r in range(repeats + 3):
        start = (r * batch) % max(1, rows - batch)
        t0 = time.perf_counter()
        fn(start, start + batch)
        if r >= 3:  # warm-up
            times.append(time.perf_counter() - t0)
    return float(np.median(times) * 1000)


def run(params: Params, root: str | Path = ".") -> dict[str, Any]:
    root = Path(root)
    student, encoder, ckpt = load_model(root / STUDENT)
    temperature = float(ckpt["temperature"])
    calib = read_split(root / VALIDATED, "calib")
    num, cat = encoder.transform(calib)
    wrapped = Calibrated(student, temperature).eval()
    with torch.no_grad():
        ref = wrapped(torch.as_tensor(num), torch.as_tensor(cat))[1].numpy()
    serving = {"encoder": encoder.to_dict(), "label": params.data.label}
    with tracking.stage_run("compress", params, ("compress",), root), Outputs(root) as out:
        fp32_path, int8_path = out.path(ONNX), out.path(INT8)
        export_onnx(wrapped, num, cat, fp32_path)
        fp32 = Predictor(fp32_path, serving, threads=1)
        fp32_probs = fp32.proba_encoded(num, cat)
        parity = float(np.abs(fp32_probs - ref).max())
        if parity > params.compress.parity_atol:
            raise StageError(
                f"ONNX export disagrees with torch by {parity:.2e} (> compress.parity_atol "
                f"{params.compress.parity_atol:g}); the exported graph is wrong."
            )
        metrics: dict[str, Any] = {
            "parity_max_abs_error": parity,
            "size_bytes": {"student_pt": (root / STUDENT).stat().st_size, "onnx_fp32": fp32_path.stat().st_size},
        }
        final = ONNX.name
        latency = {"onnx_fp32": fp32}
        if params.compress.quantize == "int8_dynamic":
            quantize_int8(fp32_path, int8_path)
            int8 = Predictor(int8_path, serving, threads=1)
            int8_probs = int8.proba_encoded(num, cat)
            metrics["int8_top1_agreement"] = float((int8_probs.argmax(1) == fp32_probs.argmax(1)).mean())
            metrics["int8_max_abs_error"] = float(np.abs(int8_probs - fp32_probs).max())
            metrics["size_bytes"]["onnx_int8"] = int8_path.stat().st_size
            latency["onnx_int8"] = int8
            final = INT8.name
        else:
            int8_path.write_bytes(fp32_path.read_bytes())  # declared output: the FP32 graph ships
        metrics["latency_ms"] = {
            name: {
                f"batch_{b}": median_latency_ms(lambda i, j, p=p: p.proba_encoded(num[i:j], cat[i:j]), b, len(num))
                for b in (1, 256)
            }
            for name, p in latency.items()
        }
        metrics["final_model"] = final
        out.write_json(SERVING, {**serving, "model": final})
        out.write_json(METRICS, metrics)
        tracking.log_metrics(metrics)
    return metrics


if __name__ == "__main__":
    stage_main("compress", run)
