"""Resample: balance the classes of the training split (never calib or test).

``random_over`` duplicates minority-class rows with imbalanced-learn's
RandomOverSampler until ``resample.sampling_strategy`` holds (``auto``: every
class as large as the largest). Copies are marked ``synthetic``; ``none``
passes the rows through.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from stages import tracking
from stages.config import Params
from stages.contract import Outputs, StageError, stage_main
from stages.data import Schema, read_split

VALIDATED = Path("data/validated")
CORRECTED = Path("data/corrected")
OUT = Path("data/resampled")
METRICS = Path("metrics/resample.json")


def oversample_index(labels: np.ndarray, strategy: Any, seed: int) -> np.ndarray:
    """Row positions after random over-sampling, sorted: each original followed by its copies."""
    from imblearn.over_sampling import RandomOverSampler

    sampler = RandomOverSampler(sampling_strategy=strategy, random_state=seed)
    try:
        sampler.fit_resample(np.zeros((len(labels), 1)), labels)
    except ValueError as err:
        raise StageError(f"resample.sampling_strategy: {err}") from None
    return np.sort(sampler.sample_indices_, kind="stable")


def run(params: Params, root: str | Path = ".") -> dict[str, Any]:
    root = Path(root)
    schema = Schema.load(root / VALIDATED / "schema.json")
    train = read_split(root / CORRECTED, "train")
    r = params.resample
    labels = train[schema.label].astype(str).to_numpy()
    if r.method == "random_over":
        index = oversample_index(labels, r.sampling_strategy, params.seed)
    else:
        index = np.arange(len(train))
    out_frame = train.iloc[index].reset_index(drop=True)
    out_frame["synthetic"] = pd.Series(index).duplicated().to_numpy()  # first copy is the original
    before = train[schema.label].value_counts()
    after = out_frame[schema.label].value_counts()
    metrics = {
        "rows_in": len(train),
        "rows_out": len(out_frame),
        "imbalance_ratio_in": float(before.max() / before.min()),
        "imbalance_ratio_out": float(after.max() / after.min()),
        "rows_per_class": {str(c): int(after.get(c, 0)) for c in schema.classes},
    }
    with tracking.stage_run("resample", params, ("resample",), root), Outputs(root) as out:
        out_frame.to_parquet(out.dir(OUT) / "train.parquet", index=False)
        out.write_json(METRICS, metrics)
        tracking.log_metrics(metrics)
    return metrics


if __name__ == "__main__":
    stage_main("resample", run)
