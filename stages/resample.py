"""Resample: balance the classes of the training split (never calib or test).

``resample.method`` picks one way to counter the long tail:

- an imbalanced-learn sampler: ``random_over`` (copies of minority rows up
  to full balance, which dominated in the systematic CNN study), ``smote``,
  ``smotenc``, ``adasyn``, ``borderline_smote``,
  ``random_under``, ``tomek_links`` or ``smote_tomek``, with
  ``resample.sampling_strategy`` passed through. The SMOTE family
  interpolates in the encoded space (standardised numbers, one-hot categories;
  SMOTENC keeps categories as categories) and new rows are written back as raw
  columns, so train encodes them like any other row;
- loss re-weighting: ``inverse_frequency`` or ``effective_number`` (Cui et
  al.) multiply each row's ``weight`` (from ``correct``) by its class weight;
- ``temperature`` (the default): rows pass through and train samples classes
  with a cooling temperature (``stages.nets.TemperatureSampler``). Under label
  noise it beat full oversampling on macro-F1 (benchmarks/train_quality.py):
  copies of a few noisy minority rows are easy to memorise.

Copies and new rows are marked ``synthetic`` (new rows have ``row_id`` -1).
``priors.json`` keeps the class counts before resampling, for train's prior
correction.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tamis import paths, tracking
from tamis.config import Params, ResampleParams
from tamis.contract import Outputs, StageError, dumps, stage_main
from tamis.data import ROW_ID, Encoder, Schema, read_split

REWEIGHT = ("inverse_frequency", "effective_number")
SMOTE_FAMILY = ("smote", "smotenc", "adasyn", "borderline_smote", "smote_tomek")


def samplers(r: ResampleParams, seed: int, categorical_idx: list[int]) -> list[Any]:
    """The imbalanced-learn samplers ``resample.method`` names, applied in order."""
    from imblearn.over_sampling import (
        ADASYN,
        SMOTE,
        SMOTENC,
        BorderlineSMOTE,
        RandomOverSampler,
    )
    from imblearn.under_sampling import RandomUnderSampler, TomekLinks

    s, k = r.sampling_strategy, r.k_neighbors
    return {
        "random_over": lambda: [RandomOverSampler(sampling_strategy=s, random_state=seed)],
        "random_under": lambda: [RandomUnderSampler(sampling_strategy=s, random_state=seed)],
        "tomek_links": lambda: [TomekLinks(sampling_strategy=s)],
        "smote": lambda: [SMOTE(sampling_strategy=s, k_neighbors=k, random_state=seed)],
        "smotenc": lambda: [
            SMOTENC(categorical_features=categorical_idx, sampling_strategy=s, k_neighbors=k, random_state=seed)
        ],
        "adasyn": lambda: [ADASYN(sampling_strategy=s, n_neighbors=k, random_state=seed)],
        "borderline_smote": lambda: [BorderlineSMOTE(sampling_strategy=s, k_neighbors=k, random_state=seed)],
        # what imblearn's SMOTETomek does, in two steps so every kept row's origin stays known
        "smote_tomek": lambda: [
            SMOTE(sampling_strategy=s, k_neighbors=k, random_state=seed),
            TomekLinks(sampling_strategy="all"),
        ],
    }[r.method]()


def encode(train: pd.DataFrame, enc: Encoder, method: str) -> tuple[np.ndarray, list[int]]:
    """Sampler features: standardised numbers beside category codes (SMOTENC) or one-hot categories."""
    num, cat = enc.transform(train)
    if method == "smotenc":
        return np.hstack([num, cat]).astype(np.float64), list(range(num.shape[1], num.shape[1] + cat.shape[1]))
    onehot = [np.eye(k)[cat[:, j]] for j, k in enumerate(enc.cardinalities)]
    return np.hstack([num, *onehot]).astype(np.float64), []


def decode(x: np.ndarray, enc: Encoder, method: str, template: pd.DataFrame) -> pd.DataFrame:
    """New rows back to raw columns: numbers un-standardised, codes (or the largest one-hot entry) to categories."""
    n_num = len(enc.numeric)
    out = pd.DataFrame(x[:, :n_num] * np.asarray(enc.scale) + np.asarray(enc.center), columns=enc.numeric)
    start = n_num
    for j, (col, k) in enumerate(zip(enc.categorical, enc.cardinalities)):
        if method == "smotenc":
            codes = np.rint(x[:, n_num + j]).astype(int)
        else:
            codes, start = x[:, start : start + k].argmax(axis=1), start + k
        values = np.array([None, *enc.categories[col]], dtype=object)[codes]
        out[col] = pd.Series(values, dtype=template[col].dtype)
    return out


def resample(train: pd.DataFrame, schema: Schema, r: ResampleParams, seed: int) -> pd.DataFrame:
    """The training rows after ``resample.method``: originals (copies marked), then any new rows."""
    train = train.reset_index(drop=True)
    labels = train[schema.label].astype(str).to_numpy()
    if r.method in ("none", "temperature", *REWEIGHT):
        out = train.assign(synthetic=False)
        if r.method in REWEIGHT:
            counts = pd.Series(labels).value_counts()
            weights = class_weights(counts.to_numpy(), r.method, r.beta)
            out["weight"] = out.get("weight", 1.0) * pd.Series(labels).map(dict(zip(counts.index, weights))).to_numpy()
        return out
    if r.method == "smotenc" and not schema.categorical:
        raise StageError("resample.method: 'smotenc' needs categorical feature columns and this table has none; use 'smote'.")
    enc = Encoder.fit(train, schema)
    if r.method in ("random_over", "random_under"):
        x, cat_idx = np.zeros((len(train), 1)), []  # these samplers never look at the features
    else:
        x, cat_idx = encode(train, enc, r.method)
    origin, y = np.arange(len(train)), labels
    for sampler in samplers(r, seed, cat_idx):
        x, y, origin = _apply(sampler, x, y, origin, r, labels)
    kept = np.sort(origin[origin >= 0], kind="stable")
    out = train.iloc[kept].reset_index(drop=True)
    out["synthetic"] = pd.Series(kept).duplicated().to_numpy()  # the first copy is the original
    new = origin < 0
    if new.any():
        rows = decode(x[new], enc, r.method, train)
        label_of = {str(v): v for v in train[schema.label].unique()}
        rows.insert(0, schema.label, pd.Series(y[new]).map(label_of).to_numpy())
        rows.insert(0, ROW_ID, -1)
        if "weight" in train:
            rows["weight"] = 1.0
        rows["synthetic"] = True
        out = pd.concat([out, rows[out.columns]], ignore_index=True)
    return out


def _apply(sampler, x, y, origin, r: ResampleParams, labels: np.ndarray):
    """One sampler step, tracking each output row's original position (-1: a new row)."""
    try:
        x_out, y_out = sampler.fit_resample(x, y)
    except (ValueError, RuntimeError) as err:
        counts = pd.Series(labels).value_counts()
        if r.method in SMOTE_FAMILY and counts.min() <= r.k_neighbors:
            raise StageError(
                f"resample.method '{r.method}' interpolates between resample.k_neighbors={r.k_neighbors} neighbours "
                f"of the same class, but class {counts.index[-1]!r} has {counts.min()} row(s); lower "
                "resample.k_neighbors or use 'random_over'."
            ) from None
        raise StageError(f"resample.method '{r.method}' (resample.sampling_strategy={r.sampling_strategy!r}): {err}") from None
    if hasattr(sampler, "sample_indices_"):  # selected rows (over- and under-samplers, cleaning)
        return x_out, y_out, origin[sampler.sample_indices_]
    # the SMOTE family keeps its input rows in order and appends the new ones
    return x_out, y_out, np.concatenate([origin, np.full(len(x_out) - len(x), -1)])


def class_weights(counts: np.ndarray, method: str, beta: float) -> np.ndarray:
    """Loss weight per class, inverse to its size or to its effective number of samples, mean row weight 1."""
    counts = np.asarray(counts, dtype=np.float64)
    effective = counts if method == "inverse_frequency" else (1.0 - beta**counts) / (1.0 - beta)
    w = 1.0 / effective
    return w * counts.sum() / (w * counts).sum()


def run(params: Params, root: str | Path = ".") -> dict[str, Any]:
    root = Path(root)
    schema = Schema.load(root / paths.SCHEMA)
    train = read_split(root / paths.CORRECTED, "train")
    out_frame = resample(train, schema, params.resample, params.seed)
    counts = train[schema.label].value_counts()
    after = out_frame.groupby(schema.label)["weight"].sum() if "weight" in out_frame else out_frame[schema.label].value_counts()
    priors = {
        "classes": [str(c) for c in schema.classes],
        "counts": [int(counts.get(c, 0)) for c in schema.classes],
    }
    metrics = {
        "method": params.resample.method,
        "rows_in": len(train),
        "rows_out": len(out_frame),
        "synthetic_rows": int(out_frame["synthetic"].sum()),
        "imbalance_ratio_in": float(counts.max() / counts.min()),
        "imbalance_ratio_out": float(after.max() / after.min()),
        "rows_per_class": {str(c): int((out_frame[schema.label] == c).sum()) for c in schema.classes},
        "weight_per_class": {str(c): float(after.get(c, 0.0)) for c in schema.classes},
    }
    with tracking.stage_run("resample", params, root), Outputs(root) as out:
        folder = out.dir(paths.RESAMPLED)
        out_frame.to_parquet(folder / "train.parquet", index=False)
        (folder / "priors.json").write_text(dumps(priors) + "\n")
        out.write_json(paths.metrics("resample"), metrics)
        tracking.log_metrics(metrics)
    return metrics


if __name__ == "__main__":
    stage_main("resample", run)
