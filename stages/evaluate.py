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

from stages import calibrate, tracking
from stages.config import Params
from stages.contract import Outputs, read_json, stage_main
from stages.data import ROW_ID, read_split
from stages.metrics import classification, softmax
from stages.nets import Table, load_model, logits_of
from stages.serving import Predictor

VALIDATED = Path("data/validated")
TRUTH = Path("data/truth/labels.parquet")
ISSUES = Path("data/audit/issues.parquet")
METRICS = Path("metrics/evaluate.json")
CARD = Path("reports/model_card.md")


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
    trusted = metrics.get("trusted_test")
    if trusted:
        audit_txt += (
            f"\nThe audit flags {trusted['flagged']} of {trusted['rows']} test labels as likely wrong; on the other "
            f"rows the shipped model's macro-F1 is {trusted['trusted']['macro_f1']:.4f} "
            f"({trusted['all']['macro_f1']:.4f} on all).\n"
        )
    return f"""# Model card

Shipped model: `{metrics['final_model']}` (the variant compress's gate chose), evaluated on
{metrics['test_rows']} test rows that no stage trained or calibrated on.

| model | accuracy | macro-F1 | ECE (15 bins) | size (bytes) |
|---|---|---|---|---|
{rows}

## Per-class recall of the shipped model

| class | recall |
|---|---|
{recalls}

## Audit

{audit_txt}"""


def run(params: Params, root: str | Path = ".") -> dict[str, Any]:
    root = Path(root)
    test = read_split(root / VALIDATED, "test")
    bins = params.evaluate.ece_bins
    teacher, encoder, _ = load_model(root / "models/teacher.pt")
    student, _, student_ckpt = load_model(root / "models/student.pt")
    teacher_cal = read_json(root / "models/calibration.json")
    serving = read_json(root / "models/serving.json")
    y = encoder.labels(test[params.data.label], "test split")
    table = Table.of(*encoder.transform(test), y)
    teacher_logits = logits_of(teacher, table).numpy()
    final = Predictor.load(root / "models")
    probs = {
        "teacher": softmax(teacher_logits),
        "teacher_calibrated": calibrate.probs(teacher_cal, teacher_logits),
        "student": calibrate.probs(student_ckpt["calibration"], logits_of(student, table).numpy()),
        "final": final.predict_proba(test),
    }
    sizes = {
        "teacher": (root / "models/teacher.pt").stat().st_size,
        "teacher_calibrated": (root / "models/teacher.pt").stat().st_size,
        "student": (root / "models/student.pt").stat().st_size,
        "final": (root / "models" / serving["model"]).stat().st_size,
    }
    by_model = {name: {**classification(p, y, bins), "size_bytes": sizes[name]} for name, p in probs.items()}
    metrics: dict[str, Any] = {
        "accuracy": by_model["final"]["accuracy"],
        "macro_f1": by_model["final"]["macro_f1"],
        "ece": by_model["final"]["ece"],
        "final_model": serving["model"],
        "test_rows": len(test),
        "classes": [str(c) for c in encoder.classes],
        "by_model": by_model,
    }
    issues = pd.read_parquet(root / ISSUES)
    audit = audit_scores(issues, pd.read_parquet(root / TRUTH))
    if audit:
        metrics["audit"] = audit
    trusted = trusted_test(probs["final"], y, test, issues, bins)
    if trusted:
        metrics["trusted_test"] = trusted
    with tracking.stage_run("evaluate", params, ("evaluate",), root), Outputs(root) as out:
        tracking.log_metrics(metrics)
        out.write_json(METRICS, metrics)
        out.path(CARD).write_text(model_card(metrics, encoder.classes))
    return metrics


if __name__ == "__main__":
    stage_main("evaluate", run)
