"""Validate: a great-expectations gate between the raw table and everything after it.

The suite is built from the params and the inferred schema: columns present in
every split, label never null, at least two classes, every class with enough
rows for the audit's folds, numeric columns numeric and finite, few nulls, no
class in calib / test that train lacks. A broken table stops here with one
sentence naming the file and the column; an accepted one is written, typed,
to ``data/validated/`` with its schema.

Then the drift gate (``tamis/drift.py``): the input's profile against the
profile of the last accepted run (``data/accepted/profile.json``, written by the
flow after promote, read here but no DVC dependency: see docs/design.md). A
``stop`` finding ends the stage with one sentence naming the column and the
statistic; the first run, with nothing accepted yet, passes and says so. The
new profile goes to ``data/profile.json``, the comparison to
``reports/validation.html``.
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tamis import drift, paths, registry, reports, tracking
from tamis.config import Params
from tamis.contract import Outputs, StageError, dumps, read_json, stage_main
from tamis.data import ROW_ID, SPLITS, Schema, feature_columns, read_split, shown

NUMBER = r"^\s*[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?\s*$"


def infer_schema(train: pd.DataFrame, params: Params) -> Schema:
    """Numeric or categorical per column: explicit params first, then the values.

    A text column whose values mostly parse as numbers (``validate.numeric_share``)
    is a numeric column with some bad values, not a categorical one; the suite
    then names the bad values.
    """
    d = params.data
    features = feature_columns(train, d.label)
    for key, listed in (("data.numeric", d.numeric), ("data.categorical", d.categorical)):
        unknown = [c for c in listed or [] if c not in features]
        if unknown:
            raise StageError(f"{key}: column(s) {unknown} are not in {d.train}.")
    numeric, categorical = [], []
    for col in features:
        s = train[col]
        if d.numeric and col in d.numeric:
            numeric.append(col)
        elif d.categorical and col in d.categorical:
            categorical.append(col)
        elif pd.api.types.is_bool_dtype(s):
            categorical.append(col)
        elif pd.api.types.is_numeric_dtype(s):
            numeric.append(col)
        else:
            values = s.dropna()
            parsed = pd.to_numeric(values, errors="coerce").notna().mean() if len(values) else 0.0
            (numeric if parsed >= params.validate_.numeric_share else categorical).append(col)
    classes = sorted(train[d.label].dropna().unique().tolist(), key=lambda v: (str(type(v)), v))
    return Schema(label=d.label, numeric=numeric, categorical=categorical, classes=classes)


@dataclass
class Check:
    """One expectation with the sentence a user reads when it fails."""

    expectation: Any
    message: str


def _suite_checks(frame: pd.DataFrame, split: str, schema: Schema, params: Params, where: str) -> list[Check]:
    import great_expectations as gx

    E = gx.expectations
    label = schema.label
    checks = [
        Check(E.ExpectColumnToExist(column=c), f"{where}: column '{c}' is missing")
        for c in [label, *schema.features]
    ]
    present = set(frame.columns)
    checks.append(
        Check(
            E.ExpectTableColumnsToMatchSet(column_set=[ROW_ID, label, *schema.features], exact_match=True),
            f"{where}: columns differ from the training table's",
        )
    )
    if label in present:
        checks.append(Check(E.ExpectColumnValuesToNotBeNull(column=label), f"{where}: label column '{label}' has nulls"))
        if split == "train":
            checks.append(
                Check(
                    E.ExpectColumnUniqueValueCountToBeBetween(column=label, min_value=2),
                    f"{where}: label column '{label}' holds only one class; a classifier needs at least two",
                )
            )
        else:
            checks.append(
                Check(
                    E.ExpectColumnValuesToBeInSet(column=label, value_set=schema.classes),
                    f"{where}: label column '{label}' holds classes the training split lacks",
                )
            )
    allowed_nulls = 1.0 - params.validate_.max_null_fraction
    for col in schema.numeric:
        if col not in present:
            continue
        if not pd.api.types.is_numeric_dtype(frame[col]):
            checks.append(
                Check(
                    E.ExpectColumnValuesToMatchRegex(column=col, regex=NUMBER),
                    f"{where}: column '{col}' should be numeric but holds non-numeric values",
                )
            )
        else:
            checks.append(
                Check(
                    E.ExpectColumnValuesToBeBetween(column=col, min_value=-1e300, max_value=1e300),
                    f"{where}: numeric column '{col}' holds infinite values",
                )
            )
    for col in schema.features:
        if col in present:
            checks.append(
                Check(
                    E.ExpectColumnValuesToNotBeNull(column=col, mostly=allowed_nulls),
                    f"{where}: column '{col}' has more than {params.validate_.max_null_fraction:.0%} missing values"
                    " (validate.max_null_fraction)",
                )
            )
    return checks


def _gx_validate(batches: dict[str, tuple[pd.DataFrame, list[Check]]]) -> dict[str, tuple[list[str], dict]]:
    """Run each split's checks as a great-expectations suite in one ephemeral context.

    Returns, per split, (failure sentences, GX result as JSON).
    """
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
    logging.getLogger("great_expectations").setLevel(logging.ERROR)
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    ctx = gx.get_context(mode="ephemeral")
    ctx.variables.progress_bars = ProgressBarsConfig(globally=False)
    source = ctx.data_sources.add_pandas("tamis")
    out = {}
    for split, (frame, checks) in batches.items():
        batch_def = source.add_dataframe_asset(split).add_batch_definition_whole_dataframe("all")
        # built in one go: add_expectation compares each new one with all before it (quadratic)
        suite = ctx.suites.add(gx.ExpectationSuite(name=f"tamis-{split}", expectations=[c.expectation for c in checks]))
        result = batch_def.get_batch(batch_parameters={"dataframe": frame}).validate(suite, result_format="SUMMARY")
        by_id = {r.expectation_config.id: r for r in result.results}
        failures = []
        for check in checks:
            res = by_id.get(check.expectation.id)
            if res is None or res.success:
                continue
            examples = res.result.get("partial_unexpected_list") or []
            failures.append(check.message + (f" (e.g. {shown(examples[0])})" if examples else ""))
        out[split] = (failures, result.to_json_dict())
    return out


def class_counts_check(train: pd.DataFrame, schema: Schema, folds: int, where: str) -> list[str]:
    """Every class needs at least ``audit.folds`` rows, or the audit's K-fold cannot stratify.

    great-expectations has no per-value count expectation, so this one is pandas.
    """
    counts = train[schema.label].value_counts()
    small = counts[counts < folds]
    if small.empty:
        return []
    cls, n = small.index[0], int(small.iloc[0])
    return [
        f"{where}: class {shown(cls)} has {n} training row(s), fewer than audit.folds={folds}"
        " (add rows, merge the class, or lower audit.folds)"
    ]


def typed(frame: pd.DataFrame, schema: Schema) -> pd.DataFrame:
    """Numeric columns as float64, categorical as strings (nulls kept)."""
    out = frame[[ROW_ID, schema.label, *schema.features]].copy()
    for col in schema.numeric:
        out[col] = pd.to_numeric(out[col], errors="raise").astype(np.float64)
    for col in schema.categorical:
        out[col] = out[col].astype("string")
    return out


def drift_gate(frames: dict[str, pd.DataFrame], schema: Schema, params: Params, root: Path, meta: dict):
    """(new profile, findings, accepted profile or None): the typed input against the last accepted data."""
    rows = pd.concat(list(frames.values()), ignore_index=True)
    lineage = {"source": meta["source"], "rows": meta["rows"]}
    new = drift.profile(rows, schema.label, schema.numeric, schema.categorical, lineage)
    reference = drift.accepted(root, registry.model_name(params.promote.model_name, params.data.train, params.data.label))
    findings = [] if reference is None else drift.compare(reference, new, params.validate_.drift)
    return new, findings, reference


def report_html(report: dict[str, Any], findings, reference, new) -> str:
    """reports/validation.html: the suite's verdict per split, then the drift table."""
    rows = [[split, "passed" if r["success"] else "failed", "; ".join(r["failures"]) or "-"] for split, r in report["splits"].items()]
    suite = reports.table(["split", "great-expectations suite", "problems"], rows)
    return reports.page("tamis validation", f"<h1>Validation</h1>{suite}{drift.report_html(findings, reference, new)}")


def run(params: Params, root: str | Path = ".") -> dict[str, Any]:
    root = Path(root)
    meta = read_json(root / paths.RAW / "meta.json")
    frames = {s: read_split(root / paths.RAW, s) for s in SPLITS}
    sources = {"train": meta["source"]["train"], "calib": meta["source"]["train"]}
    sources["test"] = meta["source"]["test"] or meta["source"]["train"]
    schema = infer_schema(frames["train"], params)
    report: dict[str, Any] = {"schema": schema.save_dict(), "splits": {}}
    failures: list[str] = []
    with tracking.stage_run("validate", params, root):
        import mlflow

        where = {split: f"{sources[split]} ({split} split)" for split in frames}
        batches = {s: (f, _suite_checks(f, s, schema, params, where[s])) for s, f in frames.items()}
        for split, (split_failures, gx_result) in _gx_validate(batches).items():
            frame = frames[split]
            if split == "train" and not split_failures:
                split_failures += class_counts_check(frame, schema, params.audit.folds, where[split])
            failures += split_failures
            report["splits"][split] = {"success": not split_failures, "failures": split_failures, "gx": gx_result}
        metrics = {
            "success": not failures,
            "rows": {s: len(f) for s, f in frames.items()},
            "classes": len(schema.classes),
            "numeric_columns": len(schema.numeric),
            "categorical_columns": len(schema.categorical),
            "failures": len(failures),
        }
        if failures:
            mlflow.log_dict(report, "validation.json")
            tracking.log_metrics(metrics)
            more = f" ({len(failures) - 1} more problem(s) in the run's validation.json)" if len(failures) > 1 else ""
            raise StageError(failures[0] + more + ".")
        if not schema.features:
            raise StageError(f"{sources['train']}: no feature columns besides the label '{schema.label}'.")
        frames = {split: typed(frame, schema) for split, frame in frames.items()}
        profile, findings, reference = drift_gate(frames, schema, params, root, meta)
        report["drift"] = drift.as_dicts(findings)
        metrics["drift"] = drift.metrics_of(findings, reference)
        html = report_html(report, findings, reference, profile)
        mlflow.log_dict(report, "validation.json")
        mlflow.log_text(html, "validation.html")
        tracking.log_metrics(metrics)
        if reference is None:
            print("tamis validate: no accepted data yet for this model line: first run, accepted without a drift check.")
        for f in findings:
            if f.verdict == "warn":
                print(f"tamis validate (warning): drift: {f.sentence()}", file=sys.stderr)
        stops = [f for f in findings if f.verdict == "stop"]
        if stops:
            more = f"; {len(stops) - 1} more stop(s)" if len(stops) > 1 else ""
            raise StageError(
                f"drift against the accepted data: {stops[0].sentence()}{more}; the comparison is validation.html "
                "in the validate run in MLflow (set the rule's action to warn to accept this data)."
            )
        with Outputs(root) as out:
            folder = out.dir(paths.VALIDATED)
            for split, frame in frames.items():
                frame.to_parquet(folder / f"{split}.parquet", index=False)
            (folder / "schema.json").write_text(dumps(schema.save_dict()) + "\n")
            out.write_json(paths.PROFILE, profile)
            out.write_json(paths.VALIDATION_REPORT, report)
            out.path(paths.VALIDATION_HTML).write_text(html)
            out.write_json(paths.metrics("validate"), metrics)
    return metrics


if __name__ == "__main__":
    stage_main("validate", run)
