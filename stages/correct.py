"""Correct: act on the audit's findings in the training split, one strategy per issue type.

Each issue type has a strategy in params (``correct.<type>``; the label check's
is ``correct.label_issue``):

- ``keep`` leaves a flagged row as it is; ``drop`` removes it;
- ``relabel`` (label issues) gives it the audit's predicted label when that
  label's out-of-sample probability reaches ``correct.relabel_threshold``, and
  applies ``correct.relabel_fallback`` otherwise;
- ``weight`` sets its loss weight to its score for the issue (label quality
  for label issues; lower is worse), at least ``correct.min_weight``; train
  and distill read the ``weight`` column.

A row flagged more than once takes the strongest action: drop, then relabel,
then weight (the lowest). Guards: no class loses more than
``correct.max_drop_fraction`` of its rows to drops (the lowest scores go
first; the rest fall back to their next action), and a class left with no rows
or a training set left with one label is an error, with nothing written.
Every changed row is listed in ``data/corrected/changes.parquet`` with its
original label, new label, action and reasons.

The calibration split is written to ``data/corrected/calib.parquet`` without
the rows the audit flags as mislabelled (``correct.calib_label_issue``, at
most ``correct.calib_max_drop_fraction`` of a class, least trusted first):
early stopping, calibration and the compression gate score on it, and a
wrong label there pulls every fitted temperature towards under-confidence.
Its labels are never changed; the test split is never touched.

Before acting on label issues, ``correct.label_issue_check`` asks the table
whether the flags help: out of fold over the training split, trees fitted on
the rows as the plan leaves them and on the rows as they came are scored
against the held-out rows' given labels. Where acting is worse by more than
its bootstrap standard error, the flagged rows (train and calib) are kept as
they came: confident learning flags hard-but-correct rows as readily as
flipped ones where classes are small or overlap (a clean 26-class table lost
27% of its rows to it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tamis import paths, tracking
from tamis.config import AUDIT_ISSUE_TYPES, CorrectParams, Params
from tamis.contract import Outputs, StageError, stage_main, warn
from tamis.data import ROW_ID, Encoder, Schema, issue_columns, read_split
from tamis.trees import categorical_mask, fit_hgb, hgb_inputs

PARAM_OF = {"label": "label_issue", "null": "null_values"}  # the others are named as their issue type
CHECK_ROWS = 10_000  # the label-issue check fits its trees on at most this many training rows (a stratified sample)
CHECK_FOLDS = 3      # ... in this many folds (at most audit.folds: validate guarantees every class that many rows)
CHECK_ITER = 50      # ... boosting this many iterations at CHECK_LEARNING_RATE
CHECK_LEARNING_RATE = 0.1  # scikit-learn's default: at 0.2 the trees diverged on a 25-class table with a 50:1 tail
                           # (macro-F1 0.09 out of fold, 0.73 at 0.1) and the check compared two coin tosses; digits 0.922 / 0.924
CHECK_DRAWS = 200    # bootstrap draws for the standard error of the check's macro-F1 difference


def plan(issues: pd.DataFrame, c: CorrectParams) -> pd.DataFrame:
    """Per training row: ``action`` (keep / drop / relabel / weight), ``new_label``, ``weight``, ``reason``."""
    n = len(issues)
    given = issues["given_label"].to_numpy(dtype=object)
    predicted = issues["predicted_label"].to_numpy(dtype=object)
    probs = issues[[col for col in issues.columns if col.startswith("prob_")]].to_numpy()
    confident = (probs.max(axis=1) >= c.relabel_threshold) & (predicted != given)
    drop, relabel = np.zeros(n, bool), np.zeros(n, bool)
    weight, severity = np.ones(n), np.ones(n)
    reasons: list[list[str]] = [[] for _ in range(n)]
    for issue in AUDIT_ISSUE_TYPES:
        strategy = getattr(c, PARAM_OF.get(issue, issue))
        if strategy == "keep":
            continue
        flag_col, score_col = issue_columns(issue)
        if flag_col not in issues.columns:
            raise StageError(
                f"correct.{PARAM_OF.get(issue, issue)}: '{strategy}' needs the audit's {issue} check, which "
                f"{paths.ISSUES} lacks; add {issue} to audit.issue_types or set it to keep."
            )
        flagged = issues[flag_col].to_numpy(bool)
        score = issues[score_col].to_numpy(np.float64)
        wants = {strategy: flagged}
        if strategy == "relabel":
            wants = {"relabel": flagged & confident, c.relabel_fallback: flagged & ~confident}
        for action, mask in wants.items():
            if action == "drop":
                drop |= mask
                severity[mask] = np.minimum(severity[mask], score[mask])
            elif action == "relabel":
                relabel |= mask
            elif action == "weight":
                weight[mask] = np.minimum(weight[mask], np.maximum(score[mask], c.min_weight))
        for i in np.flatnonzero(flagged):
            reasons[i].append(issue)
    drop &= within_budget(drop, severity, given, c.max_drop_fraction)
    action = np.select([drop, relabel, weight < 1.0], ["drop", "relabel", "weight"], "keep").astype(object)
    return pd.DataFrame(
        {
            "action": action,
            "new_label": np.where(action == "relabel", predicted, given),
            "weight": np.where(action == "weight", weight, 1.0),
            "reason": [",".join(r) for r in reasons],
        },
        index=issues.index,
    )


def within_budget(drop: np.ndarray, severity: np.ndarray, labels: np.ndarray, max_fraction: float) -> np.ndarray:
    """The drops each class can afford: at most ``max_fraction`` of its rows, lowest severity first."""
    keep = np.zeros(len(drop), bool)
    for cls in pd.unique(labels):
        members = np.flatnonzero(labels == cls)
        budget = int(np.floor(len(members) * max_fraction + 1e-9))
        wanted = members[drop[members]]
        keep[wanted[np.argsort(severity[wanted], kind="stable")][:budget]] = True
    return keep


def label_issue_check(train: pd.DataFrame, schema: Schema, acted: pd.DataFrame, as_given: pd.DataFrame,
                      folds: int, seed: int) -> dict[str, Any] | None:
    """Does acting on the label flags help a model of this table? Trees fitted out of fold on the training rows as
    the plan ``acted`` leaves them and as ``as_given`` (label issues kept), both scored by macro-F1 against the
    held-out rows' given labels, every row (the flagged ones are part of the labels' noise). ``helps`` unless acting
    is worse by more than the paired bootstrap standard error. Scoring against noisy labels understates what
    cleaning gains, and the flags were found by models that saw the held-out rows, which overstates it; the check is
    there to catch flags that clearly hurt, not to tune how many to act on. None where a class has under two rows
    (in the sample) to fold."""
    from sklearn.metrics import f1_score
    from sklearn.model_selection import StratifiedKFold, train_test_split

    rows = np.arange(len(train))
    if len(rows) > CHECK_ROWS:
        rows, _ = train_test_split(rows, train_size=CHECK_ROWS, stratify=train[schema.label].astype(str),
                                   random_state=seed)
    sample = train.iloc[rows]
    encoder = Encoder.fit(sample, schema)
    y = encoder.labels(sample[schema.label], "train split")
    present = np.unique(y)
    folds = min(folds, int(np.bincount(y)[present].min()))
    if folds < 2:
        return None
    x = hgb_inputs(*encoder.transform(sample))
    mask = categorical_mask(len(encoder.numeric), encoder.cardinalities)
    predicted = {"acted": np.zeros(len(rows), int), "as_given": np.zeros(len(rows), int)}
    for fit_idx, held in StratifiedKFold(folds, shuffle=True, random_state=seed).split(rows, y):
        for name, plan_ in (("acted", acted), ("as_given", as_given)):
            p = plan_.iloc[rows[fit_idx]]
            use = (p["action"] != "drop").to_numpy()
            labels = encoder.labels(p["new_label"][use], "correct's plan")
            model = fit_hgb(x[fit_idx][use], labels, p["weight"].to_numpy()[use], mask, len(encoder.classes),
                            CHECK_ITER, CHECK_LEARNING_RATE, 31, seed)
            predicted[name][held] = model.predict(x[held])
    score = lambda pred, idx: f1_score(y[idx], pred[idx], average="macro", labels=present, zero_division=0)
    f1_acted, f1_as_given = score(predicted["acted"], slice(None)), score(predicted["as_given"], slice(None))
    rng = np.random.default_rng(seed)
    draws = [score(predicted["acted"], d) - score(predicted["as_given"], d)
             for d in (rng.integers(0, len(y), len(y)) for _ in range(CHECK_DRAWS))]
    gain, se = float(f1_acted - f1_as_given), float(np.std(draws))
    return {"rows": len(y), "folds": folds, "macro_f1_acted": float(f1_acted), "macro_f1_as_given": float(f1_as_given),
            "gain": gain, "gain_se": se, "helps": bool(gain >= -se)}


def check_classes(actions: pd.DataFrame, schema: Schema) -> None:
    """Correction may not empty a class nor leave a single label."""
    left = actions.loc[actions["action"] != "drop", "new_label"].astype(str)
    if left.nunique() < 2:
        raise StageError("correct: after correction all training labels are identical; nothing left to learn.")
    counts = left.value_counts()
    for cls in schema.classes:
        if counts.get(str(cls), 0) == 0:
            had = actions[actions["original_label"].astype(str) == str(cls)]["action"].value_counts()
            raise StageError(
                f"correct: class {cls!r} would be left with no training rows ({had.get('drop', 0)} dropped, "
                f"{had.get('relabel', 0)} relabelled away); lower correct.max_drop_fraction or keep its issues."
            )


def issues_of(all_issues: pd.DataFrame, split: str, rows: pd.DataFrame) -> pd.DataFrame:
    """The audit's rows of one split, checked to match that split row for row."""
    issues = all_issues
    if "split" in issues.columns:
        issues = issues[issues["split"] == split].reset_index(drop=True)
    if len(issues) != len(rows) or not (issues[ROW_ID].to_numpy() == rows[ROW_ID].to_numpy()).all():
        raise StageError(f"{paths.ISSUES} does not match the {split} split row for row; re-run the audit.")
    return issues


def trusted_calib(calib: pd.DataFrame, all_issues: pd.DataFrame, schema: Schema, c: CorrectParams) -> pd.DataFrame:
    """The calibration rows without the ones flagged as mislabelled (within the per-class budget)."""
    if c.calib_label_issue == "keep" or "split" not in all_issues.columns:
        return calib
    issues = issues_of(all_issues, "calib", calib)
    flagged = issues["is_label_issue"].to_numpy(bool)
    labels = calib[schema.label].astype(str).to_numpy()
    drop = within_budget(flagged, issues["label_quality"].to_numpy(), labels, c.calib_max_drop_fraction)
    return calib[~drop]


def run(params: Params, root: str | Path = ".") -> dict[str, Any]:
    root = Path(root)
    schema = Schema.load(root / paths.SCHEMA)
    train = read_split(root / paths.VALIDATED, "train")
    calib = read_split(root / paths.VALIDATED, "calib")
    if not (root / paths.ISSUES).exists():
        raise StageError(f"{root / paths.ISSUES} is missing: run the audit stage first (dvc repro).")
    all_issues = pd.read_parquet(root / paths.ISSUES)
    issues = issues_of(all_issues, "train", train)
    c = params.correct
    original = train[schema.label].to_numpy()
    actions, check = plan(issues, c), None
    check_classes(actions.assign(original_label=original), schema)
    if c.label_issue_check and c.label_issue != "keep" and issues["is_label_issue"].any():
        as_given = plan(issues, c.model_copy(update={"label_issue": "keep"}))
        check = label_issue_check(train, schema, actions, as_given, min(CHECK_FOLDS, params.audit.folds), params.seed)
        if check and not check["helps"]:
            warn("correct", f"acting on the audit's label issues lowered the out-of-fold macro-F1 of a tree model by "
                 f"{-check['gain']:.3f} (standard error {check['gain_se']:.3f}); the flagged train and calib rows are "
                 "kept as they came (correct.label_issue_check)")
            actions, c = as_given, c.model_copy(update={"label_issue": "keep", "calib_label_issue": "keep"})
    trusted = trusted_calib(calib, all_issues, schema, c)
    actions = actions.assign(original_label=original)
    kept = train[(actions["action"] != "drop").to_numpy()].copy()
    kept_actions = actions[actions["action"] != "drop"]
    new_labels = pd.Series(kept_actions["new_label"].to_numpy(), index=kept.index)
    kept[schema.label] = new_labels.astype(train[schema.label].dtype)
    kept["weight"] = kept_actions["weight"].to_numpy()
    changed = actions["action"] != "keep"
    changes = pd.DataFrame(
        {
            ROW_ID: train.loc[changed, ROW_ID].to_numpy(),
            "original_label": actions.loc[changed, "original_label"].to_numpy(),
            "new_label": actions.loc[changed, "new_label"].to_numpy(),
            "action": actions.loc[changed, "action"].to_numpy(),
            "reason": actions.loc[changed, "reason"].to_numpy(),
            "label_quality": issues.loc[changed, "label_quality"].to_numpy(),
            "weight": actions.loc[changed, "weight"].to_numpy(),
        }
    )
    by_class = pd.crosstab(actions["original_label"].astype(str), actions["action"])
    count = lambda cls, act: int(by_class.at[str(cls), act]) if act in by_class.columns else 0
    reasons = actions["reason"].str.split(",").explode().value_counts()
    metrics = {
        "rows_in": len(train),
        "rows_out": len(kept),
        "dropped": int((actions["action"] == "drop").sum()),
        "flagged_kept": int((issues["is_label_issue"].to_numpy() & (actions["action"] == "keep").to_numpy()).sum()),
        "dropped_per_class": {str(k): count(k, "drop") for k in schema.classes},
        "relabelled": int((actions["action"] == "relabel").sum()),
        "weighted": int((actions["action"] == "weight").sum()),
        "actions_per_class": {
            str(k): {a: count(k, a) for a in ("keep", "drop", "relabel", "weight")} for k in schema.classes
        },
        "flagged_per_reason": {str(r): int(n) for r, n in reasons.items() if r},
        "calib_rows_in": len(calib),
        "calib_rows_out": len(trusted),
        "label_issue_check": check,
    }
    with tracking.stage_run("correct", params, root), Outputs(root) as out:
        folder = out.dir(paths.CORRECTED)
        kept.to_parquet(folder / "train.parquet", index=False)
        trusted.to_parquet(folder / "calib.parquet", index=False)
        changes.to_parquet(folder / "changes.parquet", index=False)
        out.write_json(paths.metrics("correct"), metrics)
        tracking.log_metrics(metrics)
    return metrics


if __name__ == "__main__":
    stage_main("correct", run)
