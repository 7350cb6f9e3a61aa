"""The label-review loop: the audit's suspects out to a person, their decisions back in as label fixes.

``tamis review export`` writes the rows the audit flags (every issue type,
worst first) with their features, given and suggested label, scores and two
empty columns, ``reviewed_label`` and ``decision``. ``tamis review apply``
checks the filled file and merges it into the label-fix table
``data/fixes/labels.csv`` (git-tracked, a dependency of ingest and audit):
ingest applies the fixes before anything else, and the audit trusts the
reviewed rows (never flags them again) and reports how often its flags were
right on them.

A fix is keyed by the row's content, a hash of its feature values
(``row_keys``), not by its position: a row keeps its key when the file is
re-ordered, grows or moves between splits. Rows with the same feature values
share a key, and a fix applies to all of them.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tamis import paths
from tamis.config import AUDIT_ISSUE_TYPES
from tamis.contract import Outputs, StageError
from tamis.data import ROW_ID, SPLITS, Schema, feature_columns, issue_columns, label_key, read_split

ROW_KEY = "row_key"
DECISIONS = ("keep", "relabel", "drop")
FIX_COLUMNS = [ROW_KEY, "decision", "label", "given_label", "issues", "reviewed_at", "source"]
TRUSTED = ("keep", "relabel")  # reviewed rows that stay in the data, with a label a person vouched for
NOT_CLEARED = ("leakage",)  # a row copied across splits leaks whatever its label: review does not clear it
_NULL_HASH = np.uint64(0x9E3779B97F4A7C15)


def row_keys(frame: pd.DataFrame, columns: list[str]) -> np.ndarray:
    """A 16-hex-digit key per row from its values in ``columns`` (order-free).

    Values that read as numbers hash as float64 and the rest as text, nulls as
    one constant, so the raw table (ingest) and its typed copy (validate: floats
    and strings) give every row the same key.
    """
    hashes = []
    for col in sorted(columns):
        s = frame[col]
        if pd.api.types.is_bool_dtype(s):
            num = np.full(len(s), np.nan)
        else:
            num = pd.to_numeric(s, errors="coerce").astype("float64").to_numpy(na_value=np.nan)
        text = pd.util.hash_array(s.astype(str).to_numpy(dtype=object))
        h = np.where(np.isnan(num), text, pd.util.hash_array(np.nan_to_num(num) + 0.0))
        hashes.append(np.where(s.isna().to_numpy(), _NULL_HASH, h))
    combined = pd.util.hash_pandas_object(pd.DataFrame(np.column_stack(hashes)), index=False).to_numpy()
    return np.array([f"{h:016x}" for h in combined], dtype=object)


def read_fixes(root: str | Path) -> pd.DataFrame:
    """The label-fix table (empty when there is none yet), every column as text."""
    path = Path(root) / paths.LABEL_FIXES
    if not path.exists() or not path.read_text().strip():
        return pd.DataFrame(columns=FIX_COLUMNS, dtype=object)
    fixes = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = [c for c in FIX_COLUMNS if c not in fixes.columns]
    if missing:
        raise StageError(f"{path}: column(s) {missing} are missing; it is written by tamis review apply.")
    return fixes


def fixes_digest(root: str | Path) -> str:
    """md5 of the label-fix table, the lineage of the fixes a run used ("none" without one)."""
    path = Path(root) / paths.LABEL_FIXES
    return hashlib.md5(path.read_bytes()).hexdigest() if path.exists() else "none"


def apply_fixes(frame: pd.DataFrame, label: str, fixes: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, int]]:
    """``frame`` with the reviewed labels set and the dropped rows removed; counts of what changed."""
    if fixes.empty:
        return frame, {"relabelled": 0, "dropped": 0, "matched": 0}
    keys = row_keys(frame, feature_columns(frame, label))
    by_key = fixes.set_index(ROW_KEY)
    matched = np.isin(keys, by_key.index.to_numpy())
    decision = pd.Series(keys[matched]).map(by_key["decision"]).to_numpy()
    classes = {label_key(v): v for v in frame[label].dropna().unique()}
    out = frame.copy()
    labels = out[label].to_numpy(dtype=object).copy()
    idx = np.flatnonzero(matched)
    wanted = pd.Series(keys[matched]).map(by_key["label"]).to_numpy()
    relabelled = 0
    for i, d, new in zip(idx, decision, wanted):
        if d in TRUSTED:
            if label_key(new) not in classes:
                raise StageError(f"{paths.LABEL_FIXES}: reviewed label {new!r} is not a class of the data (column '{label}').")
            value = classes[label_key(new)]
            relabelled += label_key(labels[i]) != label_key(value)
            labels[i] = value
    out[label] = pd.Series(labels, index=out.index).astype(frame[label].dtype)
    drop = np.zeros(len(out), dtype=bool)
    drop[idx[decision == "drop"]] = True
    return out[~drop], {"relabelled": int(relabelled), "dropped": int(drop.sum()), "matched": int(matched.sum())}


def trusted(keys: np.ndarray, fixes: pd.DataFrame) -> np.ndarray:
    """Which rows a person reviewed and kept (with their label or a new one)."""
    return np.isin(keys, fixes.loc[fixes["decision"].isin(TRUSTED), ROW_KEY].to_numpy())


def precision(fixes: pd.DataFrame, issue_types: list[str]) -> dict[str, Any]:
    """How often the audit's flags were right on the reviewed rows (a person's decisions as the truth).

    A flag is confirmed when the reviewer dropped the row or gave it another
    label; ``keep`` (or the same label again) is a false alarm.
    """
    if fixes.empty:
        return {"reviewed": 0}
    confirmed = (fixes["decision"] == "drop") | (
        (fixes["decision"] == "relabel") & (fixes["label"].map(label_key) != fixes["given_label"].map(label_key))
    )
    flagged_as = fixes["issues"].str.split(",")
    out: dict[str, Any] = {
        "reviewed": len(fixes),
        "decisions": {d: int((fixes["decision"] == d).sum()) for d in DECISIONS},
        "precision": {},
    }
    for issue in issue_types:
        has = flagged_as.map(lambda types, issue=issue: issue in types).to_numpy(bool)
        if has.any():
            out["precision"][issue] = float(confirmed[has].mean())
    out["label_issue_precision"] = out["precision"].get("label")
    return out


# ---- tamis review export / apply ----


def _current_rows(root: Path) -> tuple[pd.DataFrame, Schema]:
    schema = Schema.load(root / paths.SCHEMA)
    rows = pd.concat([read_split(root / paths.VALIDATED, s).assign(split=s) for s in SPLITS], ignore_index=True)
    rows.insert(0, ROW_KEY, row_keys(rows, schema.features))
    return rows, schema


def export(root: str | Path, top: int | None = None) -> pd.DataFrame:
    """The rows the audit flags, worst first: key, features, given / suggested label, scores, reasons, two empty columns."""
    root = Path(root)
    if not (root / paths.ISSUES).exists():
        raise StageError(f"{root / paths.ISSUES} is missing: run the pipeline (tamis run) before exporting a review.")
    issues = pd.read_parquet(root / paths.ISSUES)
    rows, schema = _current_rows(root)
    types = [t for t in AUDIT_ISSUE_TYPES if issue_columns(t)[0] in issues.columns]
    flags = np.column_stack([issues[issue_columns(t)[0]].to_numpy(bool) for t in types])
    scores = np.column_stack([issues[issue_columns(t)[1]].to_numpy(np.float64) for t in types])
    issues = issues.assign(
        issues=[",".join(t for t, f in zip(types, row) if f) for row in flags],
        severity=np.where(flags, scores, np.inf).min(axis=1),
    )
    flagged = issues[flags.any(axis=1)].sort_values(["severity", "label_quality"], kind="stable")
    if top is not None:
        flagged = flagged.head(top)
    score_cols = [issue_columns(t)[1] for t in types]
    out = flagged[["split", ROW_ID, "issues", "severity", "given_label", "predicted_label", *score_cols]]
    out = out.rename(columns={"predicted_label": "suggested_label"})
    out = out.merge(rows[[ROW_KEY, "split", ROW_ID, *schema.features]], on=["split", ROW_ID], how="left")
    out.insert(0, ROW_KEY, out.pop(ROW_KEY))
    return out.assign(reviewed_label="", decision="")


def _check(review: pd.DataFrame, where: str, known: set[str], classes: list[Any]) -> pd.DataFrame:
    """The decided rows of a filled review file; any problem is one sentence naming the row and the column."""
    for col in (ROW_KEY, "given_label", "issues", "reviewed_label", "decision"):
        if col not in review.columns:
            raise StageError(f"{where}: column '{col}' is missing; start from a file of tamis review export.")
    review = review.assign(decision=review["decision"].str.strip().str.lower(), reviewed_label=review["reviewed_label"].str.strip())
    decided = review[review["decision"] != ""]
    if decided.empty:
        raise StageError(f"{where}: no row has a decision; fill the decision column with keep, relabel or drop.")
    by_class = {label_key(c): c for c in classes}
    for line, r in zip(decided.index + 2, decided.itertuples()):
        at = f"{where}: line {line} (row_key {r.row_key})"
        if r.decision not in DECISIONS:
            raise StageError(f"{at}: decision '{r.decision}' should be one of keep, relabel, drop.")
        if r.row_key not in known:
            raise StageError(f"{at}: no row of the current data has this row_key; export the review again.")
        if r.reviewed_label and label_key(r.reviewed_label) not in by_class:
            raise StageError(f"{at}: reviewed_label '{r.reviewed_label}' is not one of the classes {classes}.")
        if r.decision == "relabel" and not r.reviewed_label:
            raise StageError(f"{at}: decision relabel needs a reviewed_label.")
        if r.decision == "keep" and r.reviewed_label and label_key(r.reviewed_label) != label_key(r.given_label):
            raise StageError(f"{at}: decision keep but reviewed_label '{r.reviewed_label}' differs from the given label; use relabel.")
    twice = decided[ROW_KEY][decided[ROW_KEY].duplicated()]
    if len(twice):
        raise StageError(f"{where}: row_key {twice.iloc[0]} has more than one decision; keep one line per row.")
    return decided


def apply(root: str | Path, review_file: str | Path) -> dict[str, Any]:
    """Check a filled review file and merge its decisions into ``data/fixes/labels.csv`` (a later decision wins)."""
    root, review_file = Path(root), Path(review_file)
    if not review_file.is_file():
        raise StageError(f"{review_file}: no such file; write one with tamis review export.")
    try:
        review = pd.read_csv(review_file, dtype=str, keep_default_na=False)
    except Exception as err:  # the parser's words name the problem
        raise StageError(f"{review_file}: could not read it as CSV ({type(err).__name__}: {err}).") from None
    rows, schema = _current_rows(root)
    decided = _check(review, str(review_file), set(rows[ROW_KEY]), schema.classes)
    new = pd.DataFrame(
        {
            ROW_KEY: decided[ROW_KEY].to_numpy(),
            "decision": decided["decision"].to_numpy(),
            "label": np.where(decided["decision"] == "drop", "",
                              np.where(decided["reviewed_label"] != "", decided["reviewed_label"], decided["given_label"])),
            "given_label": decided["given_label"].to_numpy(),
            "issues": decided["issues"].to_numpy(),
            "reviewed_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "source": review_file.name,
        }
    )
    old = read_fixes(root)
    merged = pd.concat([old[~old[ROW_KEY].isin(new[ROW_KEY])], new], ignore_index=True).sort_values(ROW_KEY)
    with Outputs(root) as out:
        merged[FIX_COLUMNS].to_csv(out.path(paths.LABEL_FIXES), index=False)
    return {
        "decided": len(new),
        "undecided": int(len(review) - len(decided)),
        "fixes": len(merged),
        "decisions": {d: int((new["decision"] == d).sum()) for d in DECISIONS},
        "path": str(root / paths.LABEL_FIXES),
    }
