"""Train: the PyTorch teacher on the corrected, rebalanced training split.

Early stopping watches the calibration split (never resampled), and the best
epoch's weights are kept. Per-row weights from ``correct`` reach the loss.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from stages import tracking
from stages.config import Params
from stages.contract import Outputs, stage_main
from stages.data import Encoder, Schema, read_split
from stages.losses import cross_entropy
from stages.metrics import classification
from stages.nets import MLP, Table, fit, logits_of, param_count, resolve_device, save_model, seed_everything

VALIDATED = Path("data/validated")
RESAMPLED = Path("data/resampled")
MODEL = Path("models/teacher.pt")
METRICS = Path("metrics/train.json")
CURVE = Path("plots/train_curve.csv")


def run(params: Params, root: str | Path = ".") -> dict[str, Any]:
    root = Path(root)
    schema = Schema.load(root / VALIDATED / "schema.json")
    train = read_split(root / RESAMPLED, "train")
    calib = read_split(root / VALIDATED, "calib")
    t = params.train
    device = resolve_device(params.device)
    seed_everything(params.seed)
    encoder = Encoder.fit(train[~train["synthetic"]], schema)
    y_train = encoder.labels(train[schema.label], "resampled train")
    y_calib = encoder.labels(calib[schema.label], "calib split")
    train_t = Table.of(*encoder.transform(train), y_train, train.get("weight"), device=device)
    calib_t = Table.of(*encoder.transform(calib), y_calib, device=device)
    smoothing = t.label_smoothing if t.loss == "label_smoothing" else 0.0
    model = MLP(len(encoder.numeric), encoder.cardinalities, len(schema.classes), t.hidden, t.dropout).to(device)
    with tracking.stage_run("train", params, ("train",), root):
        result = fit(
            model,
            train_t,
            lambda logits, b: cross_entropy(logits, b.y, b.weight, smoothing),
            epochs=t.epochs,
            batch_size=t.batch_size,
            lr=t.lr,
            weight_decay=t.weight_decay,
            seed=params.seed,
            val=calib_t,
            patience=t.patience,
            progress="train",
        )
        probs = logits_of(model, calib_t).softmax(1).cpu().numpy()
        metrics = {
            "best_epoch": result.best_epoch,
            "epochs_run": len(result.history),
            "parameters": param_count(model),
            "device": device.type,
            "calib": classification(probs, y_calib, params.evaluate.ece_bins),
        }
        import mlflow

        for row in result.history:
            mlflow.log_metrics({k: v for k, v in row.items() if k != "epoch"}, step=int(row["epoch"]))
        tracking.log_metrics(metrics)
        with Outputs(root) as out:
            save_model(out.path(MODEL), model.cpu(), encoder, best_epoch=result.best_epoch)
            out.write_json(METRICS, metrics)
            pd.DataFrame(result.history).to_csv(out.path(CURVE), index=False)
    return metrics


if __name__ == "__main__":
    stage_main("train", run)
