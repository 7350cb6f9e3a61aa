"""Audit: find what is wrong with the data, row by row, before anything learns from it.

Every row of train, calib and test gets class probabilities from models that
never saw it: train rows from stratified K-fold (each fold's models fit on the
other folds), calib and test rows from the average of those fold models, which
never train on calib or test. ``audit.models`` picks the project's MLP, a
HistGradientBoosting model, or their average; folds run in parallel processes.

From those probabilities, and an embedding of every row (the penultimate layer
of an MLP fit on the train rows, reduced by PCA), cleanlab finds:

- label issues by confident learning, split by split: each split's own noise
  sets its thresholds, so a clean test split is not judged by the noisy train
  split's rates (the same call Datalab's label check makes). The train split's
  confident joint gives the noise matrix and per-class noise rates;
- with Datalab, over all rows at once: outliers, near duplicates, class
  imbalance, non-iid order and underperforming groups on the embeddings' k-NN
  graph (faiss; HNSW above ``EXACT_KNN_ROWS`` rows, so its cost grows about
  linearly; non-iid order on a sample of ``NON_IID_ROWS`` rows above that
  many, as its permutation test's memory grows with rows x permutations),
  and rows with nulls on the raw columns;
- leakage: rows whose feature values are also in another split, exactly or as
  a near copy (a near duplicate whose raw values agree within
  ``audit.near_copy_tolerance`` standard deviations);
- EL2N: the L2 norm of (softmax - one-hot given label) after
  ``EL2N_EPOCH`` epochs, averaged over the folds whose models fit the
  row (all folds for calib and test rows).

Rows a person reviewed (``tamis review apply``, ``data/fixes/labels.csv``) and
kept are trusted: their flags are cleared (leakage excepted), and
``metrics/audit.json`` says how often the audit's flags were right on them
(``review.precision``: the reviewer's decisions as the truth).

A class with fewer training rows than folds never gets here: validate stops it
(``class_counts_check``), since every stratified fold needs rows of every class.
"""

from __future__ import annotations

import contextlib
import io
import math
import sys
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
# At import, not inside _fit_hgb: a Dask worker imports this module when it unpickles a fold job, before running it;
# imported inside the job, a worker's first import of scikit-learn raced another thread's and failed ("partially
# initialized module sklearn.utils._metadata_requests", tests/test_dask.py, one fresh clone in three).
from sklearn.ensemble import HistGradientBoostingClassifier

from tamis import paths, reports, review, runtime, tracking
from tamis.config import AuditParams, Params
from tamis.contract import Outputs, StageError, stage_main
from tamis.data import ROW_ID, SPLITS, Encoder, Schema, read_split
from tamis.losses import cross_entropy
from tamis.nets import (
    MLP,
    Table,
    fit,
    logits_of,
    resolve_device,
    fit_args,
    seed_everything,
    torch_threads,
)
from tamis.trees import categorical_mask, hgb_inputs

KNN_TYPES = ("outlier", "near_duplicate", "class_imbalance", "non_iid", "underperforming_group")
EXACT_KNN_ROWS = 20_000
NON_IID_ROWS = 100_000  # non_iid's permutation test holds 25 permutations x rows x k neighbours as int64 (~5 GiB
                        # at 1M rows, most of the audit's peak): above this, it tests a random sample in row order
EL2N_EPOCH = 3  # EL2N: the error L2 norm of the predictions after this many epochs (Paul et al. score early)


def load_rows(root: Path, schema: Schema) -> pd.DataFrame:
    """Train, calib and test rows in one table (train first), with a ``split`` column."""
    frames = [read_split(root / paths.VALIDATED, s).assign(split=s) for s in SPLITS]
    rows = pd.concat(frames, ignore_index=True)
    train = rows[rows["split"] == "train"]
    varying = [c for c in schema.features if train[c].nunique(dropna=False) > 1]
    if not varying:
        raise StageError(
            f"{root / paths.VALIDATED / 'train.parquet'}: no numeric or categorical column varies across the training "
            "rows; there is nothing to learn the labels from."
        )
    return rows


# ---- out-of-sample probabilities: one job per fold and model, run in parallel processes ----


@dataclass
class Encoded:
    """Every audited row, encoded once and shared read-only with the fold processes."""

    num: np.ndarray
    cat: np.ndarray
    cardinalities: list[int]
    y: np.ndarray
    n_classes: int


def _fit_mlp(rows: Encoded, fit_idx: np.ndarray, a: AuditParams, seed: int, device: str, on_epoch=None):
    """An MLP fit on the rows ``fit_idx`` (cross-entropy), with ``on_epoch(model, table, epoch)`` after each epoch."""
    import torch

    seed_everything(seed)
    model = MLP(rows.num.shape[1], rows.cardinalities, rows.n_classes, a.hidden, a.dropout).to(device)
    table = Table.of(rows.num, rows.cat, rows.y, device=device)
    fit(
        model,
        table.rows(torch.as_tensor(fit_idx, device=table.y.device)),
        lambda logits, b: cross_entropy(logits, b.y, b.weight),
        **fit_args(a, len(fit_idx)),
        seed=seed,
        on_epoch=None if on_epoch is None else lambda epoch: on_epoch(model, table, epoch),
    )
    return model, table


def el2n(early: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Each row's error L2 norm: the distance of its early probabilities from its label's one-hot vector.

    Taken in the fold's job, so each job sends back n numbers, not n x classes early probabilities.
    """
    return np.linalg.norm(early - np.eye(early.shape[1])[y], axis=1)


def mlp_probs(rows: Encoded, fit_idx: np.ndarray, a: AuditParams, seed: int, device: str) -> tuple[np.ndarray, np.ndarray]:
    """(probs, el2n) of every row from an MLP fit on ``fit_idx``; EL2N of the probs after ``EL2N_EPOCH`` epochs.

    Where ``max_steps`` cuts the epochs (a large table), early is the same share of the epochs that run.
    """
    early: dict[str, np.ndarray] = {}
    early_epoch = max(1, round(min(EL2N_EPOCH, a.epochs) * a.epochs_for(len(fit_idx)) / a.epochs))

    def snapshot(model, table, epoch: int) -> None:
        if epoch == early_epoch:
            early["probs"] = logits_of(model, table).softmax(1).cpu().numpy()

    with torch_threads(1):  # one thread per fit: the same bits in a local process or on any Dask worker
        model, table = _fit_mlp(rows, fit_idx, a, seed, device, snapshot)
        return logits_of(model, table).softmax(1).cpu().numpy(), el2n(early["probs"], rows.y)


def mlp_embedding(rows: Encoded, fit_idx: np.ndarray, a: AuditParams, seed: int, device: str) -> np.ndarray:
    """Penultimate-layer features of every row from an MLP fit on ``fit_idx``."""
    import torch

    with torch_threads(1):
        model, table = _fit_mlp(rows, fit_idx, a, seed, device)
    model.eval()
    with torch.no_grad(), torch_threads(1):
        parts = [model.features(table.num[i : i + 8192], table.cat[i : i + 8192]) for i in range(0, len(table), 8192)]
    return torch.cat(parts).cpu().numpy()


def _fit_hgb(X, y, fit_idx, categorical, a: AuditParams, seed):
    """A HistGradientBoosting model fit on ``fit_idx``: (probs, el2n of the early probs) of every row.

    "Early" is the same share of its boosting iterations as ``EL2N_EPOCH`` is of the MLP's epochs.
    """
    model = HistGradientBoostingClassifier(max_iter=a.hgb_max_iter, categorical_features=categorical, random_state=seed)
    model.fit(X[fit_idx], y[fit_idx])
    stage = max(1, math.ceil(model.n_iter_ * min(EL2N_EPOCH, a.epochs) / a.epochs))
    early = next(islice(model.staged_predict_proba(X), stage - 1, None))
    return model.predict_proba(X), el2n(early, y)


def out_of_sample(rows: pd.DataFrame, schema: Schema, params: Params, embed: bool) -> dict[str, Any]:
    """Probabilities (``probs``), ``el2n`` and (``embed``) penultimate-layer ``embedding`` of every row.

    One job per fold and model (plus the embedding MLP) on ``TAMIS_JOBS`` processes; joblib shares the
    encoded table with them read-only (memory-mapped), so each process adds about one fold's tensors.
    """
    from joblib import Parallel, delayed
    from sklearn.model_selection import StratifiedKFold

    a = params.audit
    device = resolve_device(params.device)
    is_train = (rows["split"] == "train").to_numpy()
    train_idx = np.flatnonzero(is_train)
    encoder = Encoder.fit(rows[is_train], schema)
    num, cat = encoder.transform(rows)
    y = encoder.labels(rows[schema.label], "validated labels")
    n_classes = len(schema.classes)
    X = hgb_inputs(num, cat)
    encoded = Encoded(num, cat, encoder.cardinalities, y, n_classes)
    categorical = categorical_mask(num.shape[1], encoder.cardinalities)
    repeats = fold_repeats(a.repeats, len(train_idx))
    folds = [fold for r in range(repeats)  # repeated K-fold: each row held out once per repeat, in another shuffle
             for fold in StratifiedKFold(a.folds, shuffle=True, random_state=params.seed + r).split(train_idx, y[train_idx])]
    kinds = ["mlp", "hgb"] if a.models == "both" else [a.models]

    jobs, keys = [], []
    for k, (fit_pos, _) in enumerate(folds):
        if "mlp" in kinds:
            jobs.append(delayed(mlp_probs)(encoded, train_idx[fit_pos], a, params.seed + k, str(device)))
            keys.append(("mlp", k))
        if "hgb" in kinds:
            jobs.append(delayed(_fit_hgb)(X, y, train_idx[fit_pos], categorical, a, params.seed + k))
            keys.append(("hgb", k))
    if embed:  # one more MLP, on every train row: one embedding space for all rows
        jobs.append(delayed(mlp_embedding)(encoded, train_idx, a, params.seed, str(device)))
    if device.type == "cuda":  # the fits share this machine's GPU, one after the other
        results = Parallel(n_jobs=1)(jobs)
    else:
        with runtime.parallel(min(len(jobs), runtime.jobs())) as n_jobs:  # local processes, or a Dask cluster
            results = Parallel(n_jobs=n_jobs, verbose=5 if sys.stderr.isatty() else 0)(jobs)

    n = len(rows)
    by_kind = {kind: np.zeros((n, n_classes)) for kind in kinds}
    el2n_sum, el2n_count = np.zeros(n), np.zeros(n)
    for (kind, k), (fold_probs, fold_el2n) in zip(keys, results):
        held, fitted = train_idx[folds[k][1]], np.zeros(n, dtype=bool)
        fitted[train_idx[folds[k][0]]] = True
        by_kind[kind][held] += fold_probs[held] / repeats
        by_kind[kind][~is_train] += fold_probs[~is_train] / len(folds)
        counts = fitted | ~is_train  # train rows: the folds that fit them; others: every fold
        el2n_sum[counts] += fold_el2n[counts]
        el2n_count[counts] += 1
    weights = mixture_weights(by_kind, y, train_idx)
    probs = sum(w * by_kind[kind] for kind, w in weights.items())
    return {"probs": probs, "y": y, "el2n": el2n_sum / el2n_count, "embedding": results[-1] if embed else None,
            "weights": weights, "repeats": repeats}


HELD_OUT_ROWS = 1000  # audit.repeats auto: repeat the K folds until about this many rows have been held out
MAX_REPEATS = 5


def fold_repeats(asked: int | str, rows: int) -> int:
    """How many times the K-fold split is repeated (``audit.repeats``; auto: ``HELD_OUT_ROWS / rows``, 1 to
    ``MAX_REPEATS``). On a table of a few hundred rows one split's out-of-fold probabilities are noisy: each fold
    model sees a fifth less of very little. Five repeats on the ~210-row tables of the quality matrix raised
    detection F1 in 7 of 8 tuning cells (ad_data 0.478 -> 0.506, penguins 0.856 -> 0.877) and left titanic's 834
    rows level; a large table gains nothing and pays every fit again, so it keeps one."""
    if asked != "auto":
        return asked
    return min(MAX_REPEATS, max(1, round(HELD_OUT_ROWS / max(rows, 1))))


WEIGHT_GRID = np.linspace(0.0, 1.0, 11)  # the MLP's share in the mixture of the two families


def mixture_weights(by_kind: dict[str, np.ndarray], y: np.ndarray, train_idx: np.ndarray) -> dict[str, float]:
    """Each model family's weight in the audit's probabilities: the mix with the best out-of-fold log-loss.

    A plain average lets the weaker family drag the stronger one down (an MLP on a small table, trees on
    images); the train rows' probabilities are all out of fold, so the loss ranks the mixes fairly.
    """
    if len(by_kind) == 1:
        return {kind: 1.0 for kind in by_kind}
    mlp, hgb = by_kind["mlp"][train_idx], by_kind["hgb"][train_idx]
    rows = np.arange(len(train_idx))
    loss = [-np.log(np.clip(w * mlp[rows, y[train_idx]] + (1 - w) * hgb[rows, y[train_idx]], 1e-12, None)).mean()
            for w in WEIGHT_GRID]
    w = float(WEIGHT_GRID[int(np.argmin(loss))])
    return {"mlp": w, "hgb": 1.0 - w}


# ---- the checks ----


def reduce_embedding(embedding: np.ndarray, is_train: np.ndarray, dim: int) -> np.ndarray:
    """PCA (fit on the train rows) down to ``dim`` dimensions: fast k-NN, little lost."""
    from sklearn.decomposition import PCA

    dim = min(dim, embedding.shape[1], int(is_train.sum()))
    pca = PCA(n_components=dim, svd_solver="covariance_eigh").fit(embedding[is_train])
    return np.ascontiguousarray(pca.transform(embedding), dtype=np.float32)


def knn_graph(x: np.ndarray, k: int):
    """Each row's ``k`` nearest other rows (Euclidean) as the sparse distance graph Datalab takes.

    Exact up to ``EXACT_KNN_ROWS`` rows, HNSW above (n log n, recall ~0.99);
    single-threaded so the graph is the same on every run.
    """
    import faiss
    from scipy.sparse import csr_matrix

    faiss.omp_set_num_threads(1)
    n, d = x.shape
    k = min(k, n - 1)
    if n <= EXACT_KNN_ROWS:
        index = faiss.IndexFlatL2(d)
    else:
        index = faiss.IndexHNSWFlat(d, 32)
        index.hnsw.efSearch = max(64, 2 * k)
    index.add(x)
    dist, ind = index.search(x, k + 1)
    is_self = ind == np.arange(n)[:, None]
    is_self[~is_self.any(axis=1), -1] = True  # self not returned (many exact duplicates): drop the farthest
    keep = ~is_self
    dist = np.sqrt(np.maximum(dist[keep].reshape(n, k), 0.0))
    ind = ind[keep].reshape(n, k)
    return csr_matrix((dist.ravel(), ind.ravel(), np.arange(0, n * k + 1, k)), shape=(n, n))


def _datalab(y: np.ndarray, types: dict[str, dict[str, Any]], **inputs) -> tuple[pd.DataFrame, Any]:
    """Datalab's checks ``{type: its arguments}``; a check that could not run on this data is an error."""
    from cleanlab import Datalab

    lab = Datalab({"label": y}, label_name="label", verbosity=0)
    with contextlib.redirect_stdout(io.StringIO()):
        lab.find_issues(issue_types=types, **inputs)
    found = lab.get_issues()
    missing = [t for t in types if f"is_{t}_issue" not in found.columns]
    if missing:
        raise StageError(
            f"audit.issue_types: cleanlab could not run {', '.join(missing)} on this data "
            f"({len(y)} rows); remove it from audit.issue_types or add rows."
        )
    return found, lab


def non_iid_on_sample(y: np.ndarray, embedding: np.ndarray, probs: np.ndarray, k: int, seed: int):
    """(flag, score, p-value) of Datalab's non-iid check on ``NON_IID_ROWS`` random rows kept in file order, with
    their own k-NN graph: the question (do neighbours in feature space sit close in the file?) survives sampling;
    rows outside the sample score 1 (nothing found) and are never flagged."""
    sample = np.sort(np.random.default_rng(seed).choice(len(y), NON_IID_ROWS, replace=False))
    x = np.ascontiguousarray(embedding[sample])
    found, lab = _datalab(y[sample], {"non_iid": {}}, features=x, pred_probs=probs[sample], knn_graph=knn_graph(x, k))
    flag, score = np.zeros(len(y), dtype=bool), np.ones(len(y))
    flag[sample], score[sample] = found["is_non_iid_issue"].to_numpy(), found["non_iid_score"].to_numpy()
    return flag, score, float(lab.get_info("non_iid")["p-value"])


def label_check(y: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(is_label_issue, label_quality) by confident learning, as Datalab's label check computes them."""
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    if len(y) == 0:
        return np.zeros(0, dtype=bool), np.zeros(0)
    is_issue = find_label_issues(labels=y, pred_probs=probs, filter_by="prune_by_noise_rate")
    return is_issue, get_label_quality_scores(labels=y, pred_probs=probs)


def noise_estimates(y: np.ndarray, probs: np.ndarray, classes: list[Any]) -> dict[str, Any]:
    """Confident joint, noise matrix P(given | true) and per-class noise rates of the train split."""
    from cleanlab.count import estimate_py_and_noise_matrices_from_probabilities

    _, noise_matrix, inverse, joint = estimate_py_and_noise_matrices_from_probabilities(y, probs)
    given_share = np.bincount(y, minlength=len(classes)) / len(y)
    per_class = 1.0 - np.diag(inverse)  # P(true != c | given = c)
    return {
        "estimated_noise_rate": float((given_share * per_class).sum()),
        "noise_rate_per_class": {str(c): float(r) for c, r in zip(classes, per_class)},
        "confident_joint": joint.tolist(),  # rows: given label, columns: true label
        "noise_matrix": noise_matrix.tolist(),  # [given][true] = P(given | true)
    }


def raw_matrix(rows: pd.DataFrame, schema: Schema) -> np.ndarray:
    """The feature columns as floats with NaN where a value is missing (for the null check)."""
    cols = [rows[c].to_numpy(dtype=np.float64, na_value=np.nan) for c in schema.numeric]
    for c in schema.categorical:
        codes = rows[c].astype("category").cat.codes.to_numpy().astype(np.float64)
        cols.append(np.where(codes < 0, np.nan, codes))
    return np.column_stack(cols)


# A table whose training rows repeat their feature values this often (the share of rows whose values three or more
# training rows share) describes profiles, not records: carData's Arrests (7 coarse columns) has 68% of its rows in a
# repeated profile, and "leakage" dropped 1,614 of its 3,397 training rows. A copy there is the same profile, not the
# same person, so the leakage check stands down. A table written out twice repeats its rows twice, not three times.
REPEATED_PROFILE_SHARE = 0.1


def repeated_profiles(digest: pd.Series, split: np.ndarray) -> float:
    """The share of training rows whose exact feature values at least three training rows share."""
    train = digest[split == "train"]
    return float((train.map(train.value_counts()) >= 3).mean()) if len(train) else 0.0


def leakage(rows: pd.DataFrame, schema: Schema, near_sets: list[np.ndarray], near_score: np.ndarray, tol: float):
    """(flag, score, counts) of rows whose features reappear in another split; score 0 for an exact copy.

    A near copy is a near duplicate (embeddings) in another split whose categories are the same and
    whose numbers are within ``tol`` standard deviations: the embedding proposes, the raw values confirm.
    Nothing is flagged where the rows are profiles rather than records (``REPEATED_PROFILE_SHARE``).
    """
    split = rows["split"].to_numpy()
    digest = pd.util.hash_pandas_object(rows[schema.features], index=False)
    repeated = repeated_profiles(digest, split)
    if repeated > REPEATED_PROFILE_SHARE:
        return np.zeros(len(rows), dtype=bool), np.ones(len(rows)), {"exact": 0, "near": 0, "repeated_profiles": repeated}
    exact = (pd.DataFrame({"h": digest.to_numpy(), "s": split}).groupby("h")["s"].transform("nunique") > 1).to_numpy()
    pairs = np.array([(i, j) for i, s in enumerate(near_sets) for j in s if split[j] != split[i]], dtype=np.int64)
    near = np.zeros(len(rows), dtype=bool)
    if len(pairs):
        num = rows[schema.numeric].to_numpy(dtype=np.float64, na_value=np.nan)
        num = np.nan_to_num(num / np.where(np.nanstd(num, axis=0) > 0, np.nanstd(num, axis=0), 1.0), nan=np.inf)
        cat = rows[schema.categorical].astype(str).to_numpy()
        a, b = pairs[:, 0], pairs[:, 1]
        same_num = (np.abs(num[a] - num[b]) <= tol) | (num[a] == num[b])
        close = same_num.all(axis=1) & (cat[a] == cat[b]).all(axis=1)
        near[a[close]] = True
    score = np.where(exact, 0.0, np.where(near, near_score, 1.0))
    return exact | near, score, {"exact": int(exact.sum()), "near": int((near & ~exact).sum()), "repeated_profiles": repeated}


def audit_rows(rows: pd.DataFrame, schema: Schema, params: Params) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The issues table (one row per input row) and the numbers behind it."""
    a = params.audit
    knn_types = [t for t in KNN_TYPES if t in a.issue_types]
    oos = out_of_sample(rows, schema, params, embed=bool(knn_types))
    probs, y = oos["probs"], oos["y"]
    split = rows["split"].to_numpy()
    classes = np.array(schema.classes, dtype=object)
    issues = pd.DataFrame(
        {
            ROW_ID: rows[ROW_ID].to_numpy(),
            "split": split,
            "given_label": rows[schema.label].to_numpy(),
            "predicted_label": classes[probs.argmax(axis=1)],
            "label_quality": 0.0,
            "is_label_issue": False,
            "el2n": oos["el2n"],
        }
    )
    for s in SPLITS:
        mask = split == s
        flags, quality = label_check(y[mask], probs[mask])
        issues.loc[mask, "is_label_issue"] = flags
        issues.loc[mask, "label_quality"] = quality
    extra: dict[str, Any] = {}
    if knn_types:
        # the fold MLP's features (rows x hidden float32: 0.5 GB at 1M rows) are not needed once reduced
        embedding = reduce_embedding(oos.pop("embedding"), split == "train", a.embedding_dim)
        graph = knn_graph(embedding, a.knn_k)
        # DBSCAN's default eps (0.5) suits cosine distances; these are Euclidean, so scale it to the data: the
        # median distance to a neighbour that is not an identical row (titanic's three coarse columns give most rows
        # k identical neighbours, a median of 0, and DBSCAN refuses eps=0)
        args = {t: {} for t in knn_types if t != "non_iid" or len(rows) <= NON_IID_ROWS}
        if "underperforming_group" in args:
            apart = graph.data[graph.data > 0]
            args["underperforming_group"] = {"clustering_kwargs": {"eps": float(np.median(apart)) if len(apart) else 1.0}}
        found, lab = _datalab(y, args, features=embedding, pred_probs=probs, knn_graph=graph) if args else (None, None)
        for t in args:
            issues[f"is_{t}_issue"] = found[f"is_{t}_issue"].to_numpy()
            issues[f"{t}_score"] = found[f"{t}_score"].to_numpy()
        if "non_iid" in args:
            extra["non_iid_p_value"] = float(lab.get_info("non_iid")["p-value"])
        near_sets = lab.get_info("near_duplicate")["near_duplicate_sets"] if "leakage" in a.issue_types else None
        del found, lab, graph  # Datalab keeps its own copy of the k-NN graph and every check's statistics
        if "non_iid" in knn_types and "non_iid" not in args:
            flag, score, extra["non_iid_p_value"] = non_iid_on_sample(y, embedding, probs, a.knn_k, params.seed)
            issues["is_non_iid_issue"], issues["non_iid_score"] = flag, score
            extra["non_iid_rows"] = NON_IID_ROWS
        if near_sets is not None:
            flag, score, extra["leakage"] = leakage(
                rows, schema, near_sets, issues["near_duplicate_score"].to_numpy(), a.near_copy_tolerance
            )
            issues["is_leakage_issue"], issues["leakage_score"] = flag, score
    if "null" in a.issue_types:
        found, _ = _datalab(y, {"null": {}}, features=raw_matrix(rows, schema))
        issues["is_null_issue"] = found["is_null_issue"].to_numpy()
        issues["null_score"] = found["null_score"].to_numpy()
    for i in range(len(schema.classes)):
        issues[f"prob_{i}"] = probs[:, i]
    train = split == "train"
    extra["noise"] = noise_estimates(y[train], probs[train], schema.classes)
    extra["fold_repeats"] = oos["repeats"]
    extra["model_weights"] = oos["weights"]  # how much of each family's out-of-fold probabilities the audit used
    return issues, extra


def summarise(issues: pd.DataFrame, extra: dict[str, Any], schema: Schema, params: Params) -> dict[str, Any]:
    train = issues[issues["split"] == "train"]
    y_pred = train["predicted_label"].astype(str).to_numpy()
    per_class = train[train["is_label_issue"]]["given_label"].astype(str).value_counts()
    types = [t for t in params.audit.issue_types if f"is_{t}_issue" in issues.columns]
    return {
        "rows": len(train),
        "label_issues": int(train["is_label_issue"].sum()),
        "label_issue_fraction": float(train["is_label_issue"].mean()),
        "out_of_sample_accuracy": float((y_pred == train["given_label"].astype(str).to_numpy()).mean()),
        "label_issues_per_class": {str(c): int(per_class.get(str(c), 0)) for c in schema.classes},
        "models": params.audit.models,
        "rows_per_split": {s: int((issues["split"] == s).sum()) for s in SPLITS},
        "issues": {t: {s: int(issues.loc[issues["split"] == s, f"is_{t}_issue"].sum()) for s in SPLITS} for t in types},
        "mean_el2n": {s: float(issues.loc[issues["split"] == s, "el2n"].mean()) for s in SPLITS},
        **extra,
    }


# ---- report ----


def noise_heatmap(matrix: list[list[float]], classes: list[Any]) -> str:
    """The estimated noise matrix as an inline base64 PNG."""
    plt = reports.figure()
    m = np.asarray(matrix)
    size = min(12.0, 2.5 + 0.45 * len(classes))
    fig, ax = plt.subplots(figsize=(size, size * 0.85))
    im = ax.imshow(m, cmap="viridis", vmin=0.0, vmax=1.0)
    ax.set_xticks(range(len(classes)), [str(c) for c in classes], rotation=90)
    ax.set_yticks(range(len(classes)), [str(c) for c in classes])
    ax.set_xlabel("true label (estimated)")
    ax.set_ylabel("given label")
    ax.set_title("P(given | true)")
    if len(classes) <= 12:
        for (i, j), v in np.ndenumerate(m):
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", color="white" if v < 0.5 else "black", fontsize=8)
    fig.colorbar(im, ax=ax)
    return reports.png(fig)


def render_report(issues: pd.DataFrame, metrics: dict[str, Any], schema: Schema, worst: int = 25) -> str:
    counts = reports.table(["issue type", *SPLITS], [[t, *by.values()] for t, by in metrics["issues"].items()])
    flagged = issues[issues["is_label_issue"]].nsmallest(worst, "label_quality")
    worst_rows = reports.table(
        ["split", "row_id", "given", "predicted", "label quality", "EL2N"],
        [[r.split, r.row_id, r.given_label, r.predicted_label, f"{r.label_quality:.3f}", f"{r.el2n:.3f}"]
         for r in flagged.itertuples()],
    )
    balance = issues.groupby(["given_label", "split"]).size().unstack(fill_value=0).reindex(columns=list(SPLITS))
    noise = metrics["noise"]
    balance_rows = [
        [c, *balance.loc[c].tolist(), f"{noise['noise_rate_per_class'][str(c)]:.1%}"]
        for c in balance.index
    ]
    png = noise_heatmap(noise["noise_matrix"], schema.classes)
    leak = metrics.get("leakage")
    leak_txt = (
        f"<p>Leakage: {leak['exact']} rows with an exact copy in another split, "
        f"{leak['near']} more with a near copy.</p>"
        if leak
        else ""
    )
    if leak and leak.get("repeated_profiles", 0) > REPEATED_PROFILE_SHARE:
        leak_txt = (f"<p>Leakage: not checked; {leak['repeated_profiles']:.0%} of the training rows share their feature "
                    "values with two or more others, so a copy in another split is a common profile, not a copied row.</p>")
    return reports.page("tamis audit", f"""<h1>Audit</h1>
<p>{metrics['label_issues']} of {metrics['rows']} training rows ({metrics['label_issue_fraction']:.1%})
look mislabelled;
estimated noise rate {noise['estimated_noise_rate']:.1%}; out-of-sample accuracy against the given labels
{metrics['out_of_sample_accuracy']:.3f} ({metrics['models']} models).</p>
{leak_txt}
<h2>Rows flagged per issue type</h2>{counts}
<h2>Estimated noise matrix (train split)</h2>{reports.img(png, "noise matrix")}
<h2>Worst {len(flagged)} rows</h2>{worst_rows}
<h2>Class balance</h2>{reports.table(["class", *SPLITS, "estimated noise (train)"], balance_rows)}""")


def trust_reviewed(issues: pd.DataFrame, rows: pd.DataFrame, schema: Schema, fixes: pd.DataFrame) -> pd.DataFrame:
    """Rows a person reviewed and kept are trusted: no flag but leakage (a copy across splits leaks whatever its label)."""
    reviewed = review.trusted(review.row_keys(rows, schema.features), fixes)
    out = issues.assign(reviewed=reviewed)
    for col in out.columns:
        if col.startswith("is_") and col.endswith("_issue") and col.removeprefix("is_").removesuffix("_issue") not in review.NOT_CLEARED:
            out.loc[reviewed, col] = False
    return out


def run(params: Params, root: str | Path = ".") -> dict[str, Any]:
    root = Path(root)
    schema = Schema.load(root / paths.SCHEMA)
    rows = load_rows(root, schema)
    fixes = review.read_fixes(root)
    with tracking.stage_run("audit", params, root):
        issues, extra = audit_rows(rows, schema, params)
        issues = trust_reviewed(issues, rows, schema, fixes)
        extra["review"] = {"trusted_rows": int(issues["reviewed"].sum()), **review.precision(fixes, params.audit.issue_types)}
        metrics = summarise(issues, extra, schema, params)
        tracking.log_metrics({k: v for k, v in metrics.items() if k != "noise"})
        tracking.log_metrics({"noise_rate": metrics["noise"]["noise_rate_per_class"]})
        import mlflow

        mlflow.log_dict(metrics["noise"], "noise.json")
        with Outputs(root) as out:
            issues.to_parquet(out.path(paths.ISSUES), index=False)
            out.write_json(paths.metrics("audit"), metrics)
            out.path(paths.AUDIT_REPORT).write_text(render_report(issues, metrics, schema))
        mlflow.log_artifact(str(root / paths.AUDIT_REPORT))
    return metrics


if __name__ == "__main__":
    stage_main("audit", run)
