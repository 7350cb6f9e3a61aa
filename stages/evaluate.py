"""Evaluate: every model of the pipeline on the untouched test split.

Teacher, calibrated teacher, student and the shipped ONNX model are scored on
the same rows: accuracy, macro-F1, ECE (15 equal-width bins), NLL, Brier,
per-class recall and size on disk. The top-level ``accuracy`` / ``macro_f1`` /
``ece`` are the shipped model's. Where demo noise was injected, the audit is
scored against the truth (precision and recall of its label-issue flags); this
is the only stage that reads ``data/truth/``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tamis import paths, tracking
from tamis.calibration import apply_map
from tamis.config import Params
from tamis.contract import Outputs, read_json, stage_main, warn
from tamis.data import ROW_ID, read_split
from tamis.metrics import ECE_BINS, bootstrap_values, classification, ece, ece_floor, interval, softmax
from tamis.nets import Table, describe, load_model, logits_of
from tamis.serving import Predictor

ECE_TOLERANCE = 1e-4  # a shipped ECE this close to the raw teacher's is the same number (the card prints 4 decimals)


def audit_scores(issues: pd.DataFrame, truth: pd.DataFrame) -> dict[str, float] | None:
    """Precision / recall / F1 of the audit's flags against the injected flips."""
    if truth.empty:
        return None
    if "split" in issues.columns:  # the truth covers the train split only
        issues = issues[issues["split"] == "train"]
    joined = issues[[ROW_ID, "is_label_issue"]].merge(truth[[ROW_ID, "flipped"]], on=ROW_ID, how="inner")
    flagged, flipped = joined["is_label_issue"].to_numpy(bool), joined["flipped"].to_numpy(bool)
    hits = int((flagged & flipped).sum())
    precision = hits / flagged.sum() if flagged.sum() else 0.0
    recall = hits / flipped.sum() if flipped.sum() else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "flipped": int(flipped.sum()), "flagged": int(flagged.sum())}


def trusted_test(
    probs: np.ndarray, y: np.ndarray, test: pd.DataFrame, issues: pd.DataFrame, bins: int
) -> dict[str, Any] | None:
    """The shipped model on all test rows and on those the audit does not flag as mislabelled."""
    if "split" not in issues.columns:
        return None
    test_issues = issues.loc[issues["split"] == "test", [ROW_ID, "is_label_issue"]]
    flags = test[[ROW_ID]].merge(test_issues, on=ROW_ID, how="left")
    trusted = ~flags["is_label_issue"].fillna(False).to_numpy(bool)
    pick = lambda m: {k: m[k] for k in ("accuracy", "macro_f1", "ece")}
    return {
        "rows": len(y),
        "flagged": int((~trusted).sum()),
        "all": pick(classification(probs, y, bins)),
        "trusted": pick(classification(probs[trusted], y[trusted], bins)) if trusted.any() else None,
    }


def calibration_check(final: np.ndarray, raw: np.ndarray, y: np.ndarray, bins: int, resamples: int, seed: int) -> dict[str, Any]:
    """The shipped model's test ECE against the raw teacher's, with bootstrap intervals, and the ECE floor.

    Calibration is fitted on noisy calib labels, so it can make a model worse;
    the paired interval of the difference says whether it did beyond what the
    test rows can tell, and the floor what a perfectly calibrated model would
    still show on them (on a few dozen rows, several points).
    """
    metric = lambda p, t: ece(p, t, bins)
    check: dict[str, Any] = {"ece": ece(final, y, bins), "raw_teacher_ece": ece(raw, y, bins),
                             "ece_floor": ece_floor(final, bins, seed=seed), "rows": len(y)}
    check["minus_raw"] = check["ece"] - check["raw_teacher_ece"]
    if resamples:
        shipped = bootstrap_values(metric, final, y, resamples, seed)
        teacher = bootstrap_values(metric, raw, y, resamples, seed)  # the same resampled rows: paired
        check["ece_ci95"], check["raw_teacher_ece_ci95"] = interval(shipped), interval(teacher)
        check["minus_raw_ci95"] = interval(shipped - teacher)
        # worse by more than rounding: a shipped teacher whose calibration is the identity differs from the raw one by
        # float32 ONNX against torch (~1e-8), and a paired interval of ~1e-8 wide lies above 0 for that alone
        check["worse_than_raw"] = check["minus_raw_ci95"][0] > ECE_TOLERANCE
    return check


def missing_values(train: pd.DataFrame, encoder) -> dict[str, dict[str, Any]]:
    """Feature columns with missing training values and what the encoder fills them with (training and serving alike)."""
    out = {}
    for j, col in enumerate(encoder.numeric):
        if train[col].isna().any():
            out[col] = {"share": float(train[col].isna().mean()), "filled_with": f"training median {encoder.fill[j]:.6g}"}
    for col in encoder.categorical:
        if train[col].isna().any():
            out[col] = {"share": float(train[col].isna().mean()), "filled_with": "the missing / unseen category"}
    return out


def shipped_why(metrics: dict[str, Any]) -> str:
    if Path(metrics["final_model"]).name.startswith("teacher."):
        return "no student variant passed compress's gate, so the calibrated teacher ships"
    return "the variant compress's gate chose"


def model_card(metrics: dict[str, Any], classes: list[Any]) -> str:
    rows = "\n".join(
        f"| {name} | {m['accuracy']:.4f} | {m['macro_f1']:.4f} | {m['ece']:.4f} | {m['size_bytes']:,} |"
        for name, m in metrics["by_model"].items()
    )
    final = metrics["by_model"]["final"]
    recalls = "\n".join(f"| {c} | {r:.3f} |" for c, r in zip(classes, final["per_class_recall"]))
    audit = metrics.get("audit")
    audit_txt = (
        f"Against the injected noise ({audit['flipped']} flipped labels), the audit flagged {audit['flagged']} rows: "
        f"precision {audit['precision']:.3f}, recall {audit['recall']:.3f}.\n"
        if audit
        else "No noise was injected, so the audit is not scored here.\n"
    )
    check = metrics.get("calibration_check")
    calibration_txt = ""
    if check:
        calibration_txt = (
            f"\nShipped ECE {check['ece']:.4f} against the raw (uncalibrated) teacher's {check['raw_teacher_ece']:.4f}"
        )
        if "minus_raw_ci95" in check:
            lo, hi = check["minus_raw_ci95"]
            verdict = "worse than raw" if check["worse_than_raw"] else ("better than raw" if hi < 0 else "no difference the test rows can tell")
            calibration_txt += f"; the difference {check['minus_raw']:+.4f} has a 95% bootstrap interval [{lo:+.4f}, {hi:+.4f}]: {verdict}"
        calibration_txt += (
            f". A perfectly calibrated model with the shipped model's confidences would still show an ECE of about "
            f"{check['ece_floor']:.4f} on these {check['rows']} rows.\n"
        )
    label_check = metrics.get("label_issue_check")
    if label_check:
        verdict = ("acted on them" if label_check["helps"] else
                   "kept them as they came, labels and rows (`correct.label_issue_check`)")
        audit_txt += (
            f"\nBefore acting on the audit's label issues, trees fitted out of fold with and without the actions scored "
            f"a macro-F1 of {label_check['macro_f1_acted']:.4f} against {label_check['macro_f1_as_given']:.4f} on the "
            f"held-out rows' given labels (difference {label_check['gain']:+.4f}, standard error "
            f"{label_check['gain_se']:.4f}), so `correct` {verdict}.\n"
        )
    trusted = metrics.get("trusted_test")
    if trusted:
        audit_txt += (
            f"\nThe audit flags {trusted['flagged']} of {trusted['rows']} test labels as likely wrong; on the other "
            f"rows the shipped model's macro-F1 is {trusted['trusted']['macro_f1']:.4f} "
            f"({trusted['all']['macro_f1']:.4f} on all).\n"
        )
    filled = metrics.get("missing_values") or {}
    filled_txt = (
        "\n".join(f"| {c} | {m['share']:.1%} | {m['filled_with']} |" for c, m in filled.items())
        if filled else "| (none) | 0% | |"
    )
    left_out = metrics.get("columns_left_out") or {}
    if left_out:
        filled_txt += "\n\nLeft out of the features, missing in more than `validate.max_null_fraction` of the training rows: " + \
            ", ".join(f"{c} ({share:.0%} missing)" for c, share in left_out.items()) + "."
    not_numbers = metrics.get("non_numbers_as_missing") or {}
    if not_numbers:
        filled_txt += "\n\nValues of numeric columns that were not numbers, read as missing and filled " \
            "(`validate.non_numeric`): " + ", ".join(
                f"{c} ({n['values']}, such as {', '.join(map(repr, n['examples']))})" for c, n in not_numbers.items()) + "."
    ids = metrics.get("identifiers_left_out") or {}
    if ids:
        filled_txt += "\n\nLeft out of the features as identifiers, naming rows rather than describing them " \
            "(`validate.identifiers`): " + ", ".join(f"{c} ({why})" for c, why in ids.items()) + "."
    dropped = metrics.get("rare_classes_dropped") or {}
    dropped_txt = (
        "\nClasses too rare to learn and check (fewer training rows than `audit.folds`, or no calibration row) were "
        "left out, so the model never predicts them: "
        + ", ".join(f"{c} ({sum(n.values())} row(s), {n['test']} of them test rows)" for c, n in dropped.items()) + ".\n"
        if dropped else ""
    )
    unlabelled = {split: n for split, n in (metrics.get("unlabelled_rows_dropped") or {}).items() if n}
    if unlabelled:
        dropped_txt += ("\nRows with no label were left out (`data.missing_labels`): "
                        + ", ".join(f"{n} of the {split} table" for split, n in unlabelled.items()) + ".\n")
    return f"""# Model card

Shipped model: `{metrics['final_model']}` ({shipped_why(metrics)}), evaluated on
{metrics['test_rows']} test rows that no stage trained or calibrated on.
Teacher: {metrics.get('teacher', 'MLP')} (`train.teacher`, see metrics/train.json).
{dropped_txt}
| model | accuracy | macro-F1 | ECE (15 bins) | size (bytes) |
|---|---|---|---|---|
{rows}
{calibration_txt}
## Per-class recall of the shipped model

| class | recall |
|---|---|
{recalls}

## Missing values

Training rows with a missing feature value, and what replaces it (the same in training, the ONNX model's encoder and serving):

| column | share missing (train) | filled with |
|---|---|---|
{filled_txt}

## Audit

{audit_txt}"""


def run(params: Params, root: str | Path = ".") -> dict[str, Any]:
    root = Path(root)
    test = read_split(root / paths.VALIDATED, "test")
    bins = ECE_BINS
    teacher, encoder, _ = load_model(root / paths.TEACHER)
    student, _, student_ckpt = load_model(root / paths.STUDENT)
    teacher_cal = read_json(root / paths.CALIBRATION)
    serving = read_json(root / paths.SERVING)
    y = encoder.labels(test[params.data.label], "test split")
    table = Table.of(*encoder.transform(test), y)
    teacher_logits = logits_of(teacher, table).numpy()
    final = Predictor.load(root / paths.MODELS)
    probs = {
        "teacher": softmax(teacher_logits),
        "teacher_calibrated": apply_map(teacher_cal, teacher_logits),
        "student": apply_map(student_ckpt["calibration"], logits_of(student, table).numpy()),
        "final": final.predict_proba(test),
    }
    sizes = {
        "teacher": (root / paths.TEACHER).stat().st_size,
        "teacher_calibrated": (root / paths.TEACHER).stat().st_size,
        "student": (root / paths.STUDENT).stat().st_size,
        "final": (root / paths.MODELS / serving["model"]).stat().st_size,
    }
    by_model = {name: {**classification(p, y, bins), "size_bytes": sizes[name]} for name, p in probs.items()}
    meta = read_json(root / paths.RAW / "meta.json")
    validated = read_json(root / paths.metrics("validate"))
    metrics: dict[str, Any] = {
        "accuracy": by_model["final"]["accuracy"],
        "macro_f1": by_model["final"]["macro_f1"],
        "ece": by_model["final"]["ece"],
        "final_model": serving["model"],
        "teacher": describe(teacher.arch),
        "test_rows": len(test),
        "classes": [str(c) for c in encoder.classes],
        "by_model": by_model,
        "missing_values": missing_values(read_split(root / paths.VALIDATED, "train"), encoder),
        "rare_classes_dropped": meta.get("rare_classes_dropped") or {},
        "unlabelled_rows_dropped": meta.get("unlabelled_rows_dropped") or {},
        "columns_left_out": validated.get("columns_left_out") or {},
        "identifiers_left_out": validated.get("identifiers_left_out") or {},
        "non_numbers_as_missing": validated.get("non_numbers_as_missing") or {},
        "label_issue_check": read_json(root / paths.metrics("correct")).get("label_issue_check"),
    }
    issues = pd.read_parquet(root / paths.ISSUES)
    audit = audit_scores(issues, pd.read_parquet(root / paths.TRUTH))
    if audit:
        metrics["audit"] = audit
    check = metrics["calibration_check"] = calibration_check(
        probs["final"], probs["teacher"], y, bins, params.calibrate.bootstrap, params.seed
    )
    if check.get("worse_than_raw"):
        warn("evaluate", f"the shipped model's test ECE {check['ece']:.3f} is above the raw teacher's "
             f"{check['raw_teacher_ece']:.3f} beyond the bootstrap interval: calibration on noisy calib labels, or the "
             "student, made it worse (calibrate.method: none keeps the teacher's own probabilities; see reports/model_card.md).")
    trusted = trusted_test(probs["final"], y, test, issues, bins)
    if trusted:
        metrics["trusted_test"] = trusted
    with tracking.stage_run("evaluate", params, root), Outputs(root) as out:
        tracking.log_metrics(metrics)
        out.write_json(paths.metrics("evaluate"), metrics)
        out.path(paths.MODEL_CARD).write_text(model_card(metrics, encoder.classes))
    return metrics


if __name__ == "__main__":
    stage_main("evaluate", run)
