"""A small workspace with a trained teacher, then calibrate / distill / compress run on it in-process.

Built once per test session (each step on a copy of the one before), so the
calibrate, distill and compress tests share one teacher. The splits are
written the way validate and correct write them; resample, train, calibrate,
distill and compress are the real stages.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from stages import calibrate, compress, distill, resample, train
from tamis.config import apply_overrides, parse_params
from tamis.contract import dumps

SMALL = [
    "train.hidden=[48, 24]",
    "train.epochs=10",
    "train.min_steps=0",
    "train.hgb_max_iter=40",
    "distill.hidden=[16]",
    "distill.epochs=10",
    "calibrate.bootstrap=20",
    "compress.finetune_epochs=3",
    "compress.quant_rows=128",
]
STEPS = {"resample": resample.run, "train": train.run, "calibrate": calibrate.run, "distill": distill.run, "compress": compress.run}
_built: dict[str, Path] = {}


def params_of(root: Path):
    return parse_params(yaml.safe_load((root / "params.yaml").read_text()))


def set_params(root: Path, *overrides: str) -> None:
    raw = apply_overrides(yaml.safe_load((root / "params.yaml").read_text()), list(overrides))
    (root / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))


def write_splits(root: Path, frame: pd.DataFrame, seed: int = 0) -> None:
    """data/validated/{train,calib,test}.parquet + schema.json and data/corrected/{train,calib}.parquet (as correct writes them)."""
    rng = np.random.default_rng(seed)
    frame = frame.reset_index(drop=True)
    frame.insert(0, "row_id", np.arange(len(frame)))
    split = rng.choice(["train", "calib", "test"], size=len(frame), p=[0.6, 0.2, 0.2])
    folder = root / "data/validated"
    folder.mkdir(parents=True, exist_ok=True)
    frame["color"] = frame["color"].astype("string")
    for name in ("train", "calib", "test"):
        frame[split == name].to_parquet(folder / f"{name}.parquet", index=False)
    classes = sorted(frame["label"].unique())
    schema = {"label": "label", "numeric": ["x1", "x2"], "categorical": ["color"], "classes": classes}
    (folder / "schema.json").write_text(dumps(schema))
    corrected = root / "data/corrected"
    corrected.mkdir(parents=True, exist_ok=True)
    frame[split == "train"].to_parquet(corrected / "train.parquet", index=False)
    frame[split == "calib"].to_parquet(corrected / "calib.parquet", index=False)
    write_audit_probs(root, frame, split, classes)


def write_audit_probs(root: Path, frame: pd.DataFrame, split: np.ndarray, classes: list) -> None:
    """data/audit/issues.parquet's out-of-sample class probabilities (what calibrate reads of the audit):
    5-fold logistic regression on the training rows, their average for the others, as the audit computes them."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_predict

    x = pd.get_dummies(frame[["x1", "x2", "color"]], dtype=float).to_numpy()
    y = np.searchsorted(np.array(classes), frame["label"].to_numpy())
    train = split == "train"
    probs = np.zeros((len(frame), len(classes)))
    model = LogisticRegression(max_iter=500)
    probs[train] = cross_val_predict(model, x[train], y[train], cv=5, method="predict_proba")
    probs[~train] = model.fit(x[train], y[train]).predict_proba(x[~train])
    issues = pd.DataFrame({"row_id": frame["row_id"].to_numpy(), "split": split, "given_label": frame["label"].to_numpy()})
    for i in range(len(classes)):
        issues[f"prob_{i}"] = probs[:, i]
    (root / "data/audit").mkdir(parents=True, exist_ok=True)
    issues.to_parquet(root / "data/audit/issues.parquet", index=False)


def built(tmp_path_factory, upto: str, frame: pd.DataFrame) -> Path:
    """A workspace where every stage up to ``upto`` has run (shared, do not modify: copy it)."""
    if upto in _built:
        return _built[upto]
    names = list(STEPS)
    before = names[names.index(upto) - 1] if upto != names[0] else None
    root = tmp_path_factory.mktemp(f"chain-{upto}")
    if before is None:
        shutil.rmtree(root)
        root.mkdir()
        (root / "params.yaml").write_text(yaml.safe_dump(apply_overrides({}, SMALL)))
        write_splits(root, frame)
    else:
        shutil.rmtree(root)
        shutil.copytree(built(tmp_path_factory, before, frame), root)
    STEPS[upto](params_of(root), root)
    _built[upto] = root
    return root


def copy_of(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst
