"""Correct: act on the audit's label issues in the training split.

``correct.label_issue: drop`` removes flagged rows, ``keep`` leaves them. A guard
never drops more than ``correct.max_drop_fraction`` of any class (the rows with
the lowest label quality go first), so correction cannot empty a class. Every
changed row is listed in ``data/corrected/changes.parquet`` with its original
label, the action and the reason.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from stages import tracking
from stages.config import Params
from stages.contract import Outputs, StageError, stage_main
from stages.data import ROW_ID, Schema, read_split

VALIDATED = Path("data/validated")
ISSUES = Path("data/audit/issues.parquet")
OUT = Path("data/corrected")
METRICS = Path("metrics/correct.json")


def plan_drops(issues: pd.DataFrame, max_fraction: float) -> np.ndarray:
    """Boolean mask of rows to drop: flagged rows, worst first, at most ``max_fraction`` per class."""
    drop = np.zeros(len(issues), dtype=bool)
    for _, group in issues.groupby("given_label", sort=False):
        budget = int(np.floor(len(group) * max_fraction))
        budget = min(budget, len(group) - 1)  # never empty a class
        flagged = group[group["is_label_issue"]].sort_values("label_quality")
        drop[issues.index.get_indexer(flagged.index[: max(budget, 0)])] = True
    return drop


def run(params: Params, root: str | Path = ".") -> dict[str, Any]:
    root = Path(root)
    schema = Schema.load(root / VALIDATED / "schema.json")
    train = read_split(root / VALIDATED, "train")
    if not (root / ISSUES).exists():
        raise StageError(f"{root / ISSUES} is missing: run the audit stage first (dvc repro).")
    issues = pd.read_parquet(root / ISSUES)
    if len(issues) != len(train) or not (issues[ROW_ID].to_numpy() == train[ROW_ID].to_numpy()).all():
        raise StageError(f"{ISSUES} does not match the training split row for row; re-run the audit.")
    c = params.correct
    drop = plan_drops(issues, c.max_drop_fraction) if c.label_issue == "drop" else np.zeros(len(train), bool)
    kept = train[~drop].copy()
    kept["weight"] = 1.0
    if kept[schema.label].nunique() < 2:
        raise StageError("correct: after correction all training labels are identical; nothing left to learn.")
    changes = pd.DataFrame(
        {
            ROW_ID: train.loc[drop, ROW_ID].to_numpy(),
            "original_label": train.loc[drop, schema.label].to_numpy(),
            "action": "drop",
            "reason": "label_issue",
            "label_quality": issues.loc[drop, "label_quality"].to_numpy(),
        }
    )
    dropped = changes["original_label"].value_counts()
    metrics = {
        "rows_in": len(train),
        "rows_out": len(kept),
        "dropped": int(drop.sum()),
        "flagged_kept": int((issues["is_label_issue"].to_numpy() & ~drop).sum()),
        "dropped_per_class": {str(k): int(dropped.get(k, 0)) for k in schema.classes},
    }
    with tracking.stage_run("correct", params, ("correct",), root), Outputs(root) as out:
        folder = out.dir(OUT)
        kept.to_parquet(folder / "train.parquet", index=False)
        changes.to_parquet(folder / "changes.parquet", index=False)
        out.write_json(METRICS, metrics)
        tracking.log_metrics(metrics)
    return metrics


if __name__ == "__main__":
    stage_main("correct", run)
