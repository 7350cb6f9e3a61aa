"""Ingest: read the source table, give rows their ``row_id``, carve train / calib / test.

The split is stratified by label. With ``data.test`` the test table comes from
that file; otherwise it is carved out of ``data.train``. The calibration split
is always carved out of the training rows. Demo noise (``data.inject_noise``)
flips labels in the train split only; the true labels go to ``data/truth/``,
which only evaluate reads.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from stages import tracking
from stages.config import NoiseParams, Params
from stages.contract import Outputs, StageError, dumps, stage_main
from stages.data import ROW_ID, load_source, split_frame

RAW = Path("data/raw")
TRUTH = Path("data/truth/labels.parquet")


def _load(source: str, label: str, key: str) -> pd.DataFrame:
    frame = load_source(source, label, key)
    if label not in frame.columns:
        shown = ", ".join(list(frame.columns)[:8]) + (", ..." if frame.shape[1] > 8 else "")
        raise StageError(f"data.label: column '{label}' is not in {source} (its columns: {shown}).")
    if ROW_ID in frame.columns:
        raise StageError(f"{key}: column '{ROW_ID}' in {source} is reserved for tamis; rename it.")
    frame.insert(0, ROW_ID, np.arange(len(frame), dtype=np.int64))
    return frame


def inject_noise(train: pd.DataFrame, label: str, noise: NoiseParams) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Flip a ``rate`` share of labels uniformly to another class; returns (noisy, truth)."""
    rng = np.random.default_rng(noise.seed)
    labels = train[label]
    classes = np.array(sorted(labels.dropna().unique().tolist()), dtype=object)
    flip = (rng.random(len(train)) < noise.rate) & labels.notna().to_numpy() & (len(classes) > 1)
    noisy = labels.astype(object).to_numpy().copy()
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


def run(params: Params, root: str | Path = ".") -> dict[str, Any]:
    d = params.data
    frame = _load(d.train, d.label, "data.train")
    if d.test:
        rest, test = frame, _load(d.test, d.label, "data.test")
        calib_share = d.calib_size
    else:
        rest, test = split_frame(frame, d.label, d.test_size, params.seed)
        calib_share = d.calib_size / (1.0 - d.test_size)
    train, calib = split_frame(rest, d.label, calib_share, params.seed + 1)
    truth = pd.DataFrame({ROW_ID: [], "true_label": [], "given_label": [], "flipped": []})
    if d.inject_noise is not None:
        train, truth = inject_noise(train, d.label, d.inject_noise)
    meta = {
        "source": {"train": d.train, "test": d.test},
        "rows": {"train": len(train), "calib": len(calib), "test": len(test)},
        "injected_noise": None if d.inject_noise is None else int(truth["flipped"].sum()),
    }
    with tracking.stage_run("ingest", params, ("data",), root), Outputs(root) as out:
        raw = out.dir(RAW)
        for name, part in (("train", train), ("calib", calib), ("test", test)):
            part.reset_index(drop=True).to_parquet(raw / f"{name}.parquet", index=False)
        (raw / "meta.json").write_text(dumps(meta) + "\n")
        truth.astype({"flipped": bool}).to_parquet(out.path(TRUTH), index=False)
        tracking.log_dataset(train, "train", d.train, "training")
        tracking.log_metrics({"rows": meta["rows"]})
    return meta


if __name__ == "__main__":
    stage_main("ingest", run)
