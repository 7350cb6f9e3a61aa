"""Train: the teacher on the corrected, rebalanced training split.

Two candidates (``train.teacher: auto``; ``mlp`` or ``hgb`` fits one): an MLP,
and scikit-learn's HistGradientBoosting trees (on many tables trees beat an
MLP, and a user would try them first), boosted on the same rows with the same
weights, cut at the iteration that scores best on the calibration split and
copied into a torch module (``tamis/trees.py``) so every later stage takes it
as it takes the MLP. ``auto`` keeps the MLP, the trees or a blend of their
probabilities, by cross-validated likelihood after a temperature fit on the
calib rows calibrate uses, forward-corrected through their noise matrix:
a teacher is not chosen for fitting the calib labels' own flips.

The MLP is for tables (numeric columns standardised or quantile-mapped,
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

import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from tamis import paths, tracking
from tamis.calibration import Settings, capped, label_nll, noise_matrix, out_of_fold, within_one_se
from tamis.config import Params, TrainParams
from tamis.contract import Outputs, read_json, stage_main
from tamis.data import Encoder, Schema, audited_noisy_rows, calibration_rows, read_calib, read_split
from tamis.losses import (
    cross_entropy,
    elr_loss,
    generalized_cross_entropy,
    running_average,
    symmetric_cross_entropy,
)
from tamis.metrics import ECE_BINS, classification, macro_f1
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
from tamis.trees import Blend, Forest, categorical_mask, fit_hgb, hgb_inputs, staged_scores



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


def fit_mlp(params: Params, train_t: Table, calib_t: Table, encoder: Encoder, device: torch.device) -> tuple[MLP, Any, np.ndarray]:
    """(the MLP, its fit history, the class mix its loss saw) on the rebalanced training rows."""
    t = params.train
    n_classes = len(encoder.classes)
    embedding_dim = t.embedding_dim if t.categorical == "embedding" else 0
    model = MLP(len(encoder.numeric), encoder.cardinalities, n_classes, t.hidden, t.dropout, embedding_dim).to(device)
    loss_fn, refresh = make_loss(t, model, train_t)
    sampler = None
    if params.resample.method == "temperature":
        start, end = params.resample.temperature_start, params.resample.temperature_end
        sampler = TemperatureSampler(train_t.y.cpu().numpy(), n_classes, start, end, t.epochs_for(len(train_t)))
    result = fit(
        model,
        train_t,
        loss_fn,
        **fit_args(t, len(train_t)),
        seed=params.seed,
        val=calib_t,
        patience=t.patience_for(len(train_t), t.patience),
        progress="train",
        monitor=t.monitor,
        warmup=t.warmup,
        grad_clip=t.grad_clip,
        mixup=t.mixup,
        sampler=sampler,
        on_epoch=refresh,
    )
    return model, result, training_priors(train_t, n_classes, sampler, result.best_epoch)


def fit_trees(params: Params, train_t: Table, calib_t: Table, encoder: Encoder) -> tuple[Forest, dict[str, Any], np.ndarray]:
    """(the tree teacher, what its fit measured, the class mix it saw): boosted on the training rows with their
    weights, and cut at the iteration that scores best on the calib split by ``train.monitor``, as the MLP's epoch."""
    t = params.train
    n_classes = len(encoder.classes)
    x = hgb_inputs(train_t.num.cpu().numpy(), train_t.cat.cpu().numpy())
    y, w = train_t.y.cpu().numpy(), train_t.weight.cpu().numpy()
    mask = categorical_mask(len(encoder.numeric), encoder.cardinalities)
    start = time.perf_counter()
    model = fit_hgb(x, y, w, mask, n_classes, t.hgb_max_iter, t.hgb_learning_rate, t.hgb_max_leaf_nodes, params.seed)
    seconds = time.perf_counter() - start
    y_calib = calib_t.y.cpu().numpy()
    staged = staged_scores(model, hgb_inputs(calib_t.num.cpu().numpy(), calib_t.cat.cpu().numpy()), y_calib, n_classes)
    key = (lambda r: (-r["macro_f1"], r["nll"])) if t.monitor == "macro_f1" else (lambda r: r["nll"])
    best = min(range(len(staged)), key=lambda i: key(staged[i]))
    forest = Forest.from_sklearn(model, best + 1)
    info = {"iterations_fitted": len(staged), "best_iteration": best + 1, "fit_seconds": seconds,
            "trees": forest.arch["trees"], "nodes": forest.arch["nodes"], "depth": forest.arch["depth"],
            "calib_at_best": staged[best]}
    return forest, info, class_priors(np.bincount(y, weights=w, minlength=n_classes))


MAX_TREE_CLASSES = 50  # auto leaves the trees out above this: one tree per class and iteration grows too large
BLEND_GRID = (1.0, 0.75, 0.5, 0.25, 0.0)  # the MLP's share of the blend; 1: the MLP alone, 0: the trees alone


def blend_order(root: Path) -> tuple[float, ...]:
    """``BLEND_GRID`` (MLP shares) nearest first to the share the audit gave its MLP out of fold
    (``metrics/audit.json``'s ``model_weights``, fitted on every train and calib row); MLP first on a tie, and
    where the audit did not weigh the two."""
    path = root / paths.metrics("audit")
    prior = read_json(path).get("model_weights", {}).get("mlp") if path.exists() else None
    return BLEND_GRID if prior is None else tuple(sorted(BLEND_GRID, key=lambda w: (abs(w - prior), -w)))


def choose_teacher(params: Params, root: Path, teachers: dict[str, nn.Module], encoder: Encoder) -> tuple[nn.Module, dict[str, Any]]:
    """The MLP, the trees, or a blend, by cross-validated likelihood after a temperature fit on the calib rows
    calibrate fits on, forward-corrected through their noise matrix (``calibrate.noise_aware``), so a teacher is
    not chosen for fitting the calib labels' own flips. Temperature first: calibrate fixes confidence, not ranking.
    Of those within one paired standard error of the best, the one nearest the audit's own out-of-fold MLP share
    is kept (:func:`blend_order`): on a small calib split a switch must be clearly better (one-seed quick cells
    moved 1-3 points either way on such tables), and where the split cannot tell them apart (iris: 16 calib
    rows, every candidate right on all) the audit's 105 rows can (trees 0.7: test macro-F1 0.84 with the MLP
    alone)."""
    if len(teachers) == 1:
        (name, model), = teachers.items()
        return model, {"kind": name}
    cp = params.calibrate
    calib = calibration_rows(root, cp.calib_rows)
    y = encoder.labels(calib[params.data.label], "calib split")
    rows = Table.of(*encoder.transform(calib), y)
    noise = None
    if cp.noise_aware:
        noise = capped(noise_matrix(*audited_noisy_rows(root, encoder, params.data.inject_noise)), cp.max_label_noise)
    settings = Settings(cp.odir, cp.histogram_bins, cp.folds, params.seed, noise)
    probs = {name: logits_of(m, rows).softmax(1).double().numpy() for name, m in teachers.items()}
    f1, row_nll = {}, {}
    for w in BLEND_GRID:
        logits = np.log(np.clip(w * probs["mlp"] + (1 - w) * probs["hgb"], 1e-12, None))
        oof = out_of_fold("temperature", logits, y, settings)
        row_nll[w], f1[w] = label_nll(oof, y, noise), macro_f1(oof, y)
    order = blend_order(root)
    w, gaps = within_one_se(row_nll, order)
    scores = {v: {**gaps[v], "macro_f1": f1[v]} for v in BLEND_GRID}
    name = {1.0: "mlp", 0.0: "hgb"}.get(w, "blend")
    model = teachers[name] if name in teachers else Blend([teachers["mlp"], teachers["hgb"]], [w, 1 - w])
    return model, {"kind": name, "mlp_weight": w, "noise_aware": noise is not None, "order": list(order),
                   "candidates": {f"mlp_weight_{v:g}": s for v, s in scores.items()}}


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
    log_true = np.log(np.maximum(true_priors, 1e-12))
    with tracking.stage_run("train", params, root):
        teachers: dict[str, nn.Module] = {}
        metrics: dict[str, Any] = {"device": device.type, "prior_correction": t.prior_correction}
        history: list[dict[str, float]] = []
        fit_priors: dict[str, list[float]] = {}
        if t.teacher in ("auto", "mlp"):
            model, result, priors = fit_mlp(params, train_t, calib_t, encoder, device)
            history = result.history
            metrics["mlp"] = {
                "best_epoch": result.best_epoch,
                "epochs_run": len(result.history),
                "parameters": param_count(model),
                "rows_per_second": float(len(train_t) * len(result.epoch_seconds) / sum(result.epoch_seconds)),
            }
            teachers["mlp"], fit_priors["mlp"] = model.cpu(), priors.tolist()
        if t.teacher == "hgb" or (t.teacher == "auto" and len(encoder.classes) <= MAX_TREE_CLASSES):
            forest, metrics["hgb"], priors = fit_trees(params, train_t, calib_t, encoder)
            teachers["hgb"], fit_priors["hgb"] = forest, priors.tolist()
        for name, m in teachers.items():
            if t.prior_correction:
                adjustment = log_true - np.log(np.maximum(fit_priors[name], 1e-12))
                m.logit_adjustment.copy_(torch.as_tensor(adjustment, dtype=torch.float32))
        teacher, metrics["teacher"] = choose_teacher(params, root, teachers, encoder)
        probs = logits_of(teacher, Table.of(calib_t.num.cpu(), calib_t.cat.cpu(), y_calib)).softmax(1).numpy()
        metrics.update(
            best_epoch=metrics.get("mlp", {}).get("best_epoch", 0),
            parameters=param_count(teacher),
            calib=classification(probs, y_calib, ECE_BINS),
        )
        print(f"tamis train: teacher {metrics['teacher']['kind']}"
              + (f" (MLP weight {metrics['teacher']['mlp_weight']:g})" if "mlp_weight" in metrics["teacher"] else ""),
              file=sys.stderr)
        import mlflow

        for row in history:
            mlflow.log_metrics({k: v for k, v in row.items() if k != "epoch"}, step=int(row["epoch"]))
        tracking.log_metrics(metrics)
        mlflow.set_tag("tamis.teacher", metrics["teacher"]["kind"])
        with Outputs(root) as out:
            save_model(
                out.path(paths.TEACHER),
                teacher,
                encoder,
                best_epoch=metrics["best_epoch"],
                priors=true_priors.tolist(),
                training_priors=fit_priors,
            )
            out.write_json(paths.metrics("train"), metrics)
            pd.DataFrame(history, columns=["epoch"] if not history else None).to_csv(out.path(paths.TRAIN_CURVE), index=False)
    return metrics


if __name__ == "__main__":
    stage_main("train", run)
