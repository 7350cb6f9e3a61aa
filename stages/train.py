"""Train: the PyTorch teacher on the corrected, rebalanced training split.

An MLP for tables (numeric columns standardised or quantile-mapped,
categoricals as learned embeddings or one-hot) fitted with a noise-robust loss
(``train.loss``: CE, label smoothing, GCE, SCE or ELR, optionally with mixup),
AdamW, warmup + cosine and gradient clipping. Early stopping watches the
calibration split (never resampled) on ``train.monitor`` and keeps the best
epoch. Per-row weights from ``correct`` / ``resample`` reach every loss.

With ``train.prior_correction`` the teacher's logits get log(true prior /
training prior) added (logit adjustment): trained on rebalanced rows, it then
predicts with the class priors of the data. The adjustment is stored in the
checkpoint, so calibrate, distill and evaluate all see the same logits.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from tamis import paths, tracking
from tamis.config import Params, TrainParams
from tamis.contract import Outputs, read_json, stage_main
from tamis.data import Encoder, Schema, read_calib, read_split
from tamis.losses import (
    cross_entropy,
    elr_loss,
    generalized_cross_entropy,
    running_average,
    symmetric_cross_entropy,
)
from tamis.metrics import ECE_BINS, classification
from tamis.nets import (
    MLP,
    LossFn,
    Table,
    TemperatureSampler,
    fit,
    logits_of,
    param_count,
    resolve_device,
    save_model,
    fit_args,
    seed_everything,
)



def make_loss(t: TrainParams, model: MLP, train: Table) -> tuple[LossFn, Callable[[int], None] | None]:
    """The loss ``train.loss`` names and, for ELR, the per-epoch refresh of its running targets.

    ELR's targets are refreshed from the model's predictions on every training
    row after each epoch (each row is seen once per epoch, so this is the
    paper's per-visit update, made at one point in time).
    """
    if t.loss == "elr":
        targets = torch.zeros((len(train), model.arch["n_classes"]), device=train.y.device)

        def refresh(epoch: int) -> None:
            probs = logits_of(model, train).softmax(dim=1).clamp(1e-4, 1.0 - 1e-4)
            targets.copy_(running_average(targets, probs, t.elr_beta))

        return (lambda z, b: elr_loss(z, b.y, targets[b.index], b.weight, t.elr_lambda)), refresh
    losses: dict[str, LossFn] = {
        "ce": lambda z, b: cross_entropy(z, b.y, b.weight),
        "label_smoothing": lambda z, b: cross_entropy(z, b.y, b.weight, t.label_smoothing),
        "gce": lambda z, b: generalized_cross_entropy(z, b.y, b.weight, t.gce_q),
        "sce": lambda z, b: symmetric_cross_entropy(z, b.y, b.weight, t.sce_alpha, t.sce_beta),
    }
    return losses[t.loss], None


def class_priors(counts: np.ndarray) -> np.ndarray:
    counts = np.asarray(counts, dtype=np.float64)
    return counts / counts.sum()


def training_priors(table: Table, n_classes: int, sampler: TemperatureSampler | None, epoch: int) -> np.ndarray:
    """The class mix the loss saw: weighted class totals, and the sampler's class probabilities at ``epoch``."""
    y, w = table.y.cpu().numpy(), table.weight.cpu().numpy()
    weighted = np.bincount(y, weights=w, minlength=n_classes)
    if sampler is not None:
        weighted = weighted / np.maximum(np.bincount(y, minlength=n_classes), 1) * sampler.class_probs(epoch)
    return class_priors(weighted)


def run(params: Params, root: str | Path = ".") -> dict[str, Any]:
    root = Path(root)
    t = params.train
    device = resolve_device(params.device)
    schema = Schema.load(root / paths.SCHEMA)
    train = read_split(root / paths.RESAMPLED, "train")
    calib = read_calib(root)
    true_priors = class_priors(read_json(root / paths.RESAMPLED / "priors.json")["counts"])
    seed_everything(params.seed)
    encoder = Encoder.fit(train[~train["synthetic"]], schema, t.numeric_transform)
    y_train = encoder.labels(train[schema.label], "resampled train")
    y_calib = encoder.labels(calib[schema.label], "calib split")
    train_t = Table.of(*encoder.transform(train), y_train, train.get("weight"), device=device)
    calib_t = Table.of(*encoder.transform(calib), y_calib, device=device)
    n_classes = len(schema.classes)
    embedding_dim = t.embedding_dim if t.categorical == "embedding" else 0
    model = MLP(len(encoder.numeric), encoder.cardinalities, n_classes, t.hidden, t.dropout, embedding_dim).to(device)
    loss_fn, refresh = make_loss(t, model, train_t)
    r = params.resample
    sampler = (
        TemperatureSampler(y_train, n_classes, r.temperature_start, r.temperature_end, t.epochs)
        if r.method == "temperature"
        else None
    )
    with tracking.stage_run("train", params, root):
        result = fit(
            model,
            train_t,
            loss_fn,
            **fit_args(t),
            seed=params.seed,
            val=calib_t,
            patience=t.patience,
            progress="train",
            monitor=t.monitor,
            warmup=t.warmup,
            grad_clip=t.grad_clip,
            mixup=t.mixup,
            sampler=sampler,
            on_epoch=refresh,
        )
        fit_priors = training_priors(train_t, n_classes, sampler, result.best_epoch)
        if t.prior_correction:
            adjustment = np.log(np.maximum(true_priors, 1e-12)) - np.log(np.maximum(fit_priors, 1e-12))
            model.logit_adjustment.copy_(torch.as_tensor(adjustment, dtype=torch.float32))
        probs = logits_of(model, calib_t).softmax(1).cpu().numpy()
        metrics = {
            "best_epoch": result.best_epoch,
            "epochs_run": len(result.history),
            "parameters": param_count(model),
            "device": device.type,
            "rows_per_second": float(len(train_t) * len(result.epoch_seconds) / sum(result.epoch_seconds)),
            "prior_correction": t.prior_correction,
            "calib": classification(probs, y_calib, ECE_BINS),
        }
        import mlflow

        for row in result.history:
            mlflow.log_metrics({k: v for k, v in row.items() if k != "epoch"}, step=int(row["epoch"]))
        tracking.log_metrics(metrics)
        with Outputs(root) as out:
            save_model(
                out.path(paths.TEACHER),
                model.cpu(),
                encoder,
                best_epoch=result.best_epoch,
                priors=true_priors.tolist(),
                training_priors=fit_priors.tolist(),
            )
            out.write_json(paths.metrics("train"), metrics)
            pd.DataFrame(result.history).to_csv(out.path(paths.TRAIN_CURVE), index=False)
    return metrics


if __name__ == "__main__":
    stage_main("train", run)
