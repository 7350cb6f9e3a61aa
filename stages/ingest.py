"""Ingest: read the source table, give rows their ``row_id``, carve train / calib / test.

The split is stratified by label. With ``data.test`` the test table comes from
that file; otherwise it is carved out of ``data.train``. The calibration split
is always carved out of the training rows. Demo noise (``data.inject_noise``)
flips labels in the train split only; the true labels go to ``data/truth/``,
which only evaluate reads.

Then the label fixes of the review loop (``data/fixes/labels.csv``, written by
``tamis review apply``) are applied to every split, before anything else reads
the rows: reviewed labels set, dropped rows removed. They come after the split
and the demo noise, so a fix never moves a row to another split and the demo
noise never undoes a fix; the truth table then records the labels the pipeline
is given.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tamis import paths, review, tracking
from tamis.config import DataParams, NoiseParams, Params
from tamis.contract import Outputs, StageError, dumps, stage_main, warn
from tamis.data import (
    ROW_ID,
    fold_labels,
    label_key,
    label_spellings,
    load_source,
    looks_like_id,
    reserved_renames,
    shown,
    split_frame,
)


def _load(source: str, label: str, key: str) -> pd.DataFrame:
    frame = load_source(source, label, key)
    renamed = reserved_renames(frame.columns)
    if renamed:
        warn("ingest", f"column(s) {', '.join(f'{a!r} (as {b!r})' for a, b in renamed.items())} of {source} share a name"
             " with a column tamis adds, so tamis reads them by another name; serving takes either.")
        frame = frame.rename(columns=renamed)
    if label not in frame.columns:
        import difflib

        names = [str(c) for c in frame.columns]
        close = [c for c in names if c.strip().casefold() == label.strip().casefold()]
        close = close or difflib.get_close_matches(label, names, n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        listed = ", ".join(map(repr, names[:8])) + (", ..." if len(names) > 8 else "")
        raise StageError(f"data.label: column {label!r} is not in {source} (its columns: {listed}){hint or '.'}")
    index = [c for c in frame.columns if c != label and re.fullmatch(r"Unnamed: \d+", str(c))]
    if index:  # what pandas names the row index that DataFrame.to_csv() writes: a row number, not a feature
        warn("ingest", f"column(s) {', '.join(map(repr, index))} of {source} look like a written row index"
             " (pandas' to_csv) and are ignored.")
        frame = frame.drop(columns=index)
    frame.insert(0, ROW_ID, np.arange(len(frame), dtype=np.int64))
    return frame


def unlabelled_dropped(frame: pd.DataFrame, d: DataParams, source: str, key: str) -> tuple[pd.DataFrame, int]:
    """(the rows that have a label, how many had none); with data.missing_labels=refuse validate refuses them."""
    missing = frame[d.label].isna()
    if d.missing_labels == "refuse" or not missing.any():
        return frame, 0
    if missing.all():
        raise StageError(f"{key}: column '{d.label}' in {source} has no labels (every value is missing).")
    warn("ingest", f"{int(missing.sum())} of {len(frame)} row(s) of {source} have no value in the label "
         f"column '{d.label}' and are left out (data.missing_labels=refuse stops instead).")
    kept = frame[~missing].copy()
    labels = kept[d.label]
    if pd.api.types.is_float_dtype(labels) and (labels == labels.round()).all():  # pandas read 1, 2, NaN as floats
        kept[d.label] = labels.astype(np.int64)
    return kept, int(missing.sum())


def without_extra_columns(test: pd.DataFrame, train: pd.DataFrame, source: str) -> pd.DataFrame:
    """The test table without the columns the training table lacks (no model could use them), with a warning."""
    extra = [c for c in test.columns if c not in train.columns]
    if extra:
        warn("ingest", f"column(s) {', '.join(map(repr, extra))} of {source} are not in data.train and are ignored.")
    return test.drop(columns=extra)


def checked_labels(frames: list[pd.DataFrame], d: DataParams) -> list[pd.DataFrame]:
    """Refuse a label column that is no class label, or whose classes are spelt several ways (or fold them)."""
    where = " and ".join(s for s in (d.train, d.test) if s)
    labels = frames[0][d.label]
    if looks_like_id(labels):
        raise StageError(
            f"data.label: column '{d.label}' in {d.train} has {labels.nunique()} distinct values in"
            f" {labels.notna().sum()} rows, so it is probably an id or a continuous value, not a class label;"
            " point data.label at the class column."
        )
    groups = label_spellings(pd.concat([f[d.label] for f in frames]))
    if groups and not d.normalize_labels:
        listed = "; ".join(", ".join(map(repr, g)) for g in groups[:5])
        raise StageError(
            f"data.label: column '{d.label}' in {where} holds labels that differ only by case or spaces"
            f" ({listed}); make each class one spelling, or set data.normalize_labels: true to fold them."
        )
    for frame in frames:
        frame[d.label] = fold_labels(frame[d.label], groups)
    return frames


def encode_for_sklearn(features: pd.DataFrame) -> np.ndarray:
    """Numeric as is, categoricals as ordinal codes (tree models handle them well)."""
    out = features.copy()
    for col in out.columns:
        if not pd.api.types.is_numeric_dtype(out[col]):
            out[col] = out[col].astype("category").cat.codes
    return out.to_numpy(dtype=np.float64)


def confusion_noise(
    frame: pd.DataFrame, rate: float, seed: int = 0, label: str = "label"
) -> tuple[pd.Series, np.ndarray]:
    """Flip ``rate`` of the labels towards the classes a clean model confuses each class with.

    Returns (noisy labels, flipped mask). The flip target of a class is drawn
    from the off-diagonal row of a cross-validated confusion matrix of a quick
    model on the clean labels (uniform where that row is empty).
    """
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.metrics import confusion_matrix
    from sklearn.model_selection import cross_val_predict

    rng = np.random.default_rng(seed)
    X = encode_for_sklearn(frame.drop(columns=[label]))
    classes = np.array(sorted(frame[label].unique()))
    y = np.searchsorted(classes, frame[label].to_numpy())
    pred = cross_val_predict(HistGradientBoostingClassifier(max_iter=50, random_state=seed), X, y, cv=3)
    conf = confusion_matrix(y, pred, labels=np.arange(len(classes))).astype(float) + 1e-3
    np.fill_diagonal(conf, 0.0)
    conf /= conf.sum(axis=1, keepdims=True)
    flip = rng.random(len(y)) < rate
    noisy = y.copy()
    for i in np.flatnonzero(flip):
        noisy[i] = rng.choice(len(classes), p=conf[y[i]])
    return pd.Series(classes[noisy], index=frame.index, name=label), flip


def inject_noise(train: pd.DataFrame, label: str, noise: NoiseParams) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Flip a ``rate`` share of labels to another class (uniformly, or confusable); returns (noisy, truth)."""
    rng = np.random.default_rng(noise.seed)
    labels = train[label]
    classes = np.array(sorted(labels.dropna().unique().tolist()), dtype=object)
    noisy = labels.astype(object).to_numpy().copy()
    if noise.kind == "confusable" and len(classes) > 1:
        known = labels.notna().to_numpy()
        flipped, flip_known = confusion_noise(train[known].drop(columns=[ROW_ID]), noise.rate, noise.seed, label)
        noisy[known] = flipped.to_numpy()
        flip = np.zeros(len(train), dtype=bool)
        flip[known] = flip_known
    else:
        flip = (rng.random(len(train)) < noise.rate) & labels.notna().to_numpy() & (len(classes) > 1)
        for i in np.flatnonzero(flip):
            others = classes[classes != noisy[i]]
            noisy[i] = others[rng.integers(len(others))]
    out = train.copy()
    out[label] = pd.Series(noisy, index=train.index).astype(labels.dtype)
    truth = pd.DataFrame(
        {ROW_ID: train[ROW_ID].to_numpy(), "true_label": labels.to_numpy(), "given_label": out[label].to_numpy()}
    )
    truth["flipped"] = flip
    return out, truth


def rare_classes(train: pd.DataFrame, calib: pd.DataFrame, test: pd.DataFrame, label: str, folds: int) -> dict[Any, dict[str, int]]:
    """Classes the audit cannot cross-validate (fewer than ``folds`` training rows) or calibrate (no calib row),
    with their rows per split, a class only data.test has among them; kept only if at least two classes would
    remain."""
    counts = {name: part[label].dropna().map(label_key).value_counts() for name, part in
              (("train", train), ("calib", calib), ("test", test))}
    first = {label_key(v): v for v in pd.concat([train[label], calib[label], test[label]]).dropna()}
    rare = {key: {name: int(c.get(key, 0)) for name, c in counts.items()} for key in counts["train"].index.union(counts["calib"].index).union(counts["test"].index)
            if counts["train"].get(key, 0) < folds or counts["calib"].get(key, 0) < 1}
    if len(first) - len(rare) < 2:
        return {}  # nothing learnable would be left: validate says why
    return {first[key]: n for key, n in rare.items()}


def apply_fixes(parts: dict[str, pd.DataFrame], label: str, fixes: pd.DataFrame):
    """(train, calib, test, counts): the reviewed labels applied to every split, dropped rows removed."""
    counts = {"relabelled": 0, "dropped": 0, "matched": 0}
    out = []
    for part in parts.values():
        fixed, n = review.apply_fixes(part, label, fixes)
        counts = {k: counts[k] + n[k] for k in counts}
        out.append(fixed)
    return (*out, counts)


def run(params: Params, root: str | Path = ".") -> dict[str, Any]:
    d = params.data
    frame, unlabelled = unlabelled_dropped(_load(d.train, d.label, "data.train"), d, d.train, "data.train")
    unlabelled = {"train": unlabelled}
    if d.test:
        test, unlabelled["test"] = unlabelled_dropped(_load(d.test, d.label, "data.test"), d, d.test, "data.test")
        test = without_extra_columns(test, frame, d.test)
        frame, test = checked_labels([frame, test], d)
        rest, calib_share = frame, d.calib_size
    else:
        (frame,) = checked_labels([frame], d)
        rest, test = split_frame(frame, d.label, d.test_size, params.seed)
        calib_share = d.calib_size / (1.0 - d.test_size)
    train, calib = split_frame(rest, d.label, calib_share, params.seed + 1)
    truth = pd.DataFrame({ROW_ID: [], "true_label": [], "given_label": [], "flipped": []})
    if d.inject_noise is not None:
        train, truth = inject_noise(train, d.label, d.inject_noise)
        if not d.train.startswith("sklearn:"):  # a demo setting on real data: say so, every time
            warn("ingest", f"data.inject_noise flips {d.inject_noise.rate:.0%} of the training labels of "
                 f"{d.train} (a demo setting); set data.inject_noise=null for real data.")
    injected = int(truth["flipped"].sum())
    fixes = review.read_fixes(root)
    train, calib, test, fixed = apply_fixes({"train": train, "calib": calib, "test": test}, d.label, fixes)
    rare = rare_classes(train, calib, test, d.label, params.audit.folds) if d.rare_classes == "drop" else {}
    if rare:
        keep = lambda part: part[~part[d.label].map(label_key).isin({label_key(c) for c in rare})]  # noqa: E731
        train, calib, test = keep(train), keep(calib), keep(test)
        truth = truth[truth[ROW_ID].isin(train[ROW_ID])]
        listed = ", ".join(f"{shown(c)} ({sum(n.values())} row(s))" for c, n in rare.items())
        warn("ingest", f"{len(rare)} class(es) too rare to learn and check, their rows left out: {listed}; "
             f"a class needs audit.folds={params.audit.folds} training rows and a calibration row "
             "(data.rare_classes=refuse stops instead).")
    if not truth.empty:  # the labels the pipeline is given now: fixes set some, dropped rows are gone
        given = train.set_index(ROW_ID)[d.label]
        truth = truth[truth[ROW_ID].isin(given.index)].copy()
        truth["given_label"] = truth[ROW_ID].map(given).to_numpy()
        truth["flipped"] = truth["given_label"].map(label_key) != truth["true_label"].map(label_key)
    meta = {
        "source": {"train": d.train, "test": d.test},
        "rows": {"train": len(train), "calib": len(calib), "test": len(test)},
        "injected_noise": None if d.inject_noise is None else injected,
        "label_fixes": {"fixes": len(fixes), "md5": review.fixes_digest(root), **fixed},
        "rare_classes_dropped": {label_key(c): n for c, n in rare.items()},
        "unlabelled_rows_dropped": unlabelled,
    }
    import mlflow

    with tracking.stage_run("ingest", params, root), Outputs(root) as out:
        raw = out.dir(paths.RAW)
        for name, part in (("train", train), ("calib", calib), ("test", test)):
            part.reset_index(drop=True).to_parquet(raw / f"{name}.parquet", index=False)
        (raw / "meta.json").write_text(dumps(meta) + "\n")
        truth.astype({"flipped": bool}).to_parquet(out.path(paths.TRUTH), index=False)
        tracking.log_dataset(train, "train", d.train, "training")
        tracking.log_metrics({"rows": meta["rows"], "label_fixes": fixed})
        mlflow.set_tag("tamis.label_fixes_md5", meta["label_fixes"]["md5"])  # lineage: which fixes this run used
    return meta


if __name__ == "__main__":
    stage_main("ingest", run)
