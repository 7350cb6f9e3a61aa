"""The shipped model as a predictor: raw columns in, labels and probabilities out.

Needs only numpy, pandas and onnxruntime (no torch), so it runs wherever the
model is served. It is also the MLflow pyfunc model (models-from-code): promote
logs this file with the ``tamis`` package as code, and
``mlflow.pyfunc.load_model(...).predict(frame)`` returns a DataFrame with a
``label`` column and one ``proba_<class>`` column per class.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tamis.data import Encoder, as_trained


class Predictor:
    """An ONNX classifier with its input encoder (``serving.json`` beside it)."""

    def __init__(self, onnx_path: str | Path, serving: dict[str, Any], threads: int = 0):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        if threads:
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
        self.encoder = Encoder.from_dict(serving["encoder"])
        self.inputs = [i.name for i in self.session.get_inputs()]

    @classmethod
    def load(cls, folder: str | Path, onnx_name: str | None = None, threads: int = 0) -> Predictor:
        folder = Path(folder)
        serving = json.loads((folder / "serving.json").read_text())
        return cls(folder / (onnx_name or serving["model"]), serving, threads)

    def feeds(self, num: np.ndarray, cat: np.ndarray) -> dict[str, np.ndarray]:
        arrays = {"num": num.astype(np.float32), "cat": cat.astype(np.int64)}
        return {name: arrays[name] for name in self.inputs}

    def proba_encoded(self, num: np.ndarray, cat: np.ndarray) -> np.ndarray:
        return self.session.run(["probs"], self.feeds(num, cat))[0]

    def logits_encoded(self, num: np.ndarray, cat: np.ndarray) -> np.ndarray:
        """The uncalibrated logits (the graph's first output)."""
        return self.session.run(["logits"], self.feeds(num, cat))[0]

    def predict_proba(self, frame: pd.DataFrame) -> np.ndarray:
        return self.proba_encoded(*self.encoder.transform(as_trained(frame, self.encoder.numeric + self.encoder.categorical)))

    def predict(self, frame: pd.DataFrame) -> pd.DataFrame:
        probs = self.predict_proba(frame)
        classes = np.array(self.encoder.classes, dtype=object)
        out = pd.DataFrame({"label": classes[probs.argmax(axis=1)]}, index=frame.index)
        for i, cls in enumerate(self.encoder.classes):
            out[f"proba_{cls}"] = probs[:, i]
        return out


try:  # the MLflow pyfunc wrapper, only where mlflow is installed
    import mlflow.pyfunc

    class TamisModel(mlflow.pyfunc.PythonModel):
        def load_context(self, context):
            self.predictor = Predictor(context.artifacts["model"], json.loads(Path(context.artifacts["serving"]).read_text()))

        def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
            return self.predictor.predict(pd.DataFrame(model_input))

    mlflow.models.set_model(TamisModel())
except ImportError:  # pragma: no cover - serving without mlflow
    pass
