"""Audit: find training rows whose label is probably wrong (confident learning).

Each row's class probabilities come from a model that never saw the row
(stratified K-fold), and cleanlab compares them with the given labels: a row is
a label issue when its given label is confidently contradicted. One row per
training row goes to ``data/audit/issues.parquet``.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from stages import tracking
from stages.config import Params
from stages.contract import Outputs, stage_main
from stages.data import ROW_ID, Encoder, Schema, read_split
from stages.losses import cross_entropy
from stages.nets import MLP, Table, fit, logits_of, resolve_device, seed_everything

VALIDATED = Path("data/validated")
ISSUES = Path("data/audit/issues.parquet")
METRICS = Path("metrics/audit.json")
REPORT = Path("reports/audit.html")


def out_of_sample_probs(frame: pd.DataFrame, schema: Schema, params: Params) -> np.ndarray:
    """Class probabilities for every row from a model trained on the other folds."""
    from sklearn.model_selection import StratifiedKFold

    a = params.audit
    device = resolve_device(params.device)
    y_all = Encoder.fit(frame, schema).labels(frame[schema.label])
    probs = np.zeros((len(frame), len(schema.classes)))
    folds = StratifiedKFold(n_splits=a.folds, shuffle=True, random_state=params.seed)
    for k, (fit_idx, held_idx) in enumerate(folds.split(np.zeros(len(frame)), y_all)):
        seed_everything(params.seed + k)
        part = frame.iloc[fit_idx]
        enc = Encoder.fit(part, schema)
        model = MLP(len(enc.numeric), enc.cardinalities, len(schema.classes), a.hidden, a.dropout).to(device)
        fit(
            model,
            Table.of(*enc.transform(part), y_all[fit_idx], device=device),
            lambda logits, b: cross_entropy(logits, b.y, b.weight),
            epochs=a.epochs,
            batch_size=a.batch_size,
            lr=a.lr,
            weight_decay=a.weight_decay,
            seed=params.seed + k,
            progress=f"audit fold {k + 1}/{a.folds}",
        )
        held = frame.iloc[held_idx]
        logits = logits_of(model, Table.of(*enc.transform(held), y_all[held_idx], device=device))
        probs[held_idx] = logits.softmax(dim=1).cpu().numpy()
    return probs


def find_issues(y: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(is_label_issue, label_quality) from cleanlab's confident learning."""
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    is_issue = find_label_issues(labels=y, pred_probs=probs, filter_by="prune_by_noise_rate")
    return is_issue, get_label_quality_scores(labels=y, pred_probs=probs)


def render_report(issues: pd.DataFrame, metrics: dict[str, Any], worst: int = 20) -> str:
    rows = issues[issues["is_label_issue"]].nsmallest(worst, "label_quality")
    body = "".join(
        f"<tr><td>{r.row_id}</td><td>{html.escape(str(r.given_label))}</td>"
        f"<td>{html.escape(str(r.predicted_label))}</td><td>{r.label_quality:.3f}</td></tr>"
        for r in rows.itertuples()
    )
    per_class = "".join(
        f"<tr><td>{html.escape(str(c))}</td><td>{n}</td></tr>" for c, n in metrics["label_issues_per_class"].items()
    )
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>tamis audit</title></head><body>
<h1>Audit</h1>
<p>{metrics['label_issues']} of {metrics['rows']} training rows ({metrics['label_issue_fraction']:.1%}) look mislabelled;
out-of-sample accuracy against the given labels {metrics['out_of_sample_accuracy']:.3f}.</p>
<h2>Label issues per given class</h2><table><tr><th>class</th><th>issues</th></tr>{per_class}</table>
<h2>Worst {len(rows)} rows</h2>
<table><tr><th>row_id</th><th>given</th><th>predicted</th><th>label quality</th></tr>{body}</table>
</body></html>
"""


def run(params: Params, root: str | Path = ".") -> dict[str, Any]:
    root = Path(root)
    schema = Schema.load(root / VALIDATED / "schema.json")
    train = read_split(root / VALIDATED, "train")
    y = Encoder.fit(train, schema).labels(train[schema.label])
    with tracking.stage_run("audit", params, ("audit",), root):
        probs = out_of_sample_probs(train, schema, params)
        is_issue, quality = find_issues(y, probs)
        classes = np.array(schema.classes, dtype=object)
        issues = pd.DataFrame(
            {
                ROW_ID: train[ROW_ID].to_numpy(),
                "given_label": train[schema.label].to_numpy(),
                "predicted_label": classes[probs.argmax(axis=1)],
                "label_quality": quality,
                "is_label_issue": is_issue,
            }
        )
        for i, cls in enumerate(schema.classes):
            issues[f"prob_{i}"] = probs[:, i]
        per_class = issues[issues["is_label_issue"]]["given_label"].value_counts()
        metrics = {
            "rows": len(issues),
            "label_issues": int(is_issue.sum()),
            "label_issue_fraction": float(is_issue.mean()),
            "out_of_sample_accuracy": float((probs.argmax(axis=1) == y).mean()),
            "label_issues_per_class": {str(c): int(per_class.get(c, 0)) for c in schema.classes},
        }
        tracking.log_metrics(metrics)
        with Outputs(root) as out:
            issues.to_parquet(out.path(ISSUES), index=False)
            out.write_json(METRICS, metrics)
            out.path(REPORT).write_text(render_report(issues, metrics))
        import mlflow

        mlflow.log_artifact(str(root / REPORT))
    return metrics


if __name__ == "__main__":
    stage_main("audit", run)
