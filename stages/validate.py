"""Validate: a great-expectations gate between the raw table and everything after it.

The suite is built from the params and the inferred schema: columns present in
every split, label never null, at least two classes, every class with enough
rows for the audit's folds, numeric columns numeric and finite, few nulls in the
training split (calib and test rows are filled whatever their share), no class
in calib / test that train lacks. A broken table stops here with one sentence
naming the file and the column; an accepted one is written, typed,
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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tamis import drift, paths, registry, reports, tracking
from tamis.config import Params
from tamis.contract import Outputs, StageError, dumps, read_json, stage_main, warn
from tamis.data import (
    MAX_ID_LIKE_CLASSES,
    ROW_ID,
    SPLITS,
    Schema,
    as_numbers,
    date_format,
    feature_columns,
    infinite,
    looks_like_id,
    read_split,
    shown,
)

NUMBER = r"^\s*[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?\s*$"


def mostly_missing(train: pd.DataFrame, params: Params) -> dict[str, float]:
    """Feature columns (not listed by the user) missing in more than ``validate.max_null_fraction`` of the
    training rows, with their share, when ``validate.mostly_missing`` is drop; the check refuses them otherwise."""
    d = params.data
    v = params.validate_
    if v.mostly_missing != "drop" or train.empty:
        return {}
    listed = set(d.numeric or []) | set(d.categorical or [])
    shares = train[[c for c in feature_columns(train, d.label) if c not in listed]].isna().mean()
    return {str(c): float(share) for c, share in shares.items() if share > v.max_null_fraction}


def without(frames: dict[str, pd.DataFrame], columns) -> dict[str, pd.DataFrame]:
    """Every split without ``columns`` (left out of the features), where it has them."""
    return {s: f.drop(columns=[c for c in columns if c in f.columns]) for s, f in frames.items()}


# what a row-number column is called when a table is written with its index: R (rownames, write.csv's ""), pandas
# (an unnamed or "index" column), readr ("...1"), databases
ROW_NUMBER_NAMES = frozenset({"rownames", "unnamed: 0", "", "index", "id", "rowid", "row_number", "rownumber", "idx",
                              "...1"})


FREE_TEXT_WORDS = 3  # a text column whose values have this many words or more (median) is prose, not a name


def identifiers(rows: pd.DataFrame, schema: Schema, params: Params) -> dict[str, str]:
    """Feature columns (not listed by the user) that name a row instead of describing it, with why, when
    ``validate.identifiers`` is drop: text with a new value in most rows (ids, names, free text) and whole numbers
    that number the rows (each row its own, within a range at most twice the rows: 1..n, or a sample of a numbered
    table; or any range under a row number's name, ``ROW_NUMBER_NAMES``: AER's CPS1985 has 534 rows numbered in
    1..1100 by occupation, and its ``rownames`` alone gave a tree 1.00 macro-F1 against 0.38 without). A measurement is not like that: n values drawn from a range of 2n repeat about n / 4 times.
    ``rows`` is every row of data.train (the train and calib splits, and test when carved from it).

    A model learns nothing that carries over from them: an unseen text value is the "unseen" code at test time,
    and a row number only separates the rows a table happens to be sorted by (often the class)."""
    d = params.data
    if params.validate_.identifiers != "drop" or len(rows) <= MAX_ID_LIKE_CLASSES:
        return {}
    listed = set(d.numeric or []) | set(d.categorical or [])
    found = {}
    for col in [c for c in rows.columns if c in schema.features and c not in listed]:  # in the table's order
        s = rows[col]
        if col in schema.categorical and looks_like_id(s):
            found[col] = f"{s.nunique()} distinct values in {s.notna().sum()} rows"
            if s.dropna().astype(str).str.split().str.len().median() >= FREE_TEXT_WORDS:  # a review, a description
                found[col] += "; free text, which tamis makes no features of"
        elif col in schema.numeric and pd.api.types.is_integer_dtype(s) and not s.isna().any() and s.is_unique:
            if int(s.max()) - int(s.min()) + 1 <= 2 * len(s):
                found[col] = f"{len(s)} distinct whole numbers in {int(s.min())}..{int(s.max())}, one per row"
            elif str(col).strip().lower() in ROW_NUMBER_NAMES:
                found[col] = f"named like a row number, {len(s)} distinct whole numbers, one per row"
    return found


def unseen_categories(frames: dict[str, pd.DataFrame], schema: Schema) -> dict[str, dict[str, Any]]:
    """Per categorical feature, the test rows whose value no training row had (how many, what share, a few values):
    a user's own test file can hold a shop, a product line the training export lacks."""
    test, train, out = frames["test"], frames["train"], {}
    for col in schema.categorical:
        new = test[col].notna() & ~test[col].isin(set(train[col].dropna()))
        if new.any():
            out[col] = {"rows": int(new.sum()), "share": float(new.mean()),
                        "examples": sorted(map(str, test.loc[new, col].unique()))[:3]}
    return out


def dates_as_days(frames: dict[str, pd.DataFrame], params: Params) -> tuple[dict[str, pd.DataFrame], dict[str, str | None]]:
    """(frames, {date column: its text format, None for timestamps}): date and time columns as days since 1970, a
    number a model can use (as text a date is new in every row). A Parquet file's timestamps, and text columns of
    dates (``validate.numeric_share`` of the training values: ISO, or day-first / month-first numbers where the
    column says which) unless data.categorical lists them."""
    d = params.data
    train = frames["train"]
    dates: dict[str, str | None] = {}
    for c in feature_columns(train, d.label):
        if pd.api.types.is_datetime64_any_dtype(train[c]):
            dates[c] = None
        elif c not in (d.categorical or []) and (fmt := date_format(train[c], params.validate_.numeric_share)):
            dates[c] = fmt
    # as_numbers reads a timestamp column as a timestamp whatever the format says
    return {s: f.assign(**{c: as_numbers(f[c], fmt) for c, fmt in dates.items() if c in f.columns}) for s, f in frames.items()}, dates


def non_numbers(frames: dict[str, pd.DataFrame], schema: Schema, params: Params) -> dict[str, dict[str, Any]]:
    """Values of numeric columns that are not numbers ('?', 'n/a', 'rotary' among cylinder counts), per column:
    how many, and the first few, when ``validate.non_numeric`` is missing (they are then read as missing values);
    with refuse the suite names them instead."""
    if params.validate_.non_numeric != "missing":
        return {}
    found = {}
    for col in schema.numeric:
        texts = [f[col].dropna() for f in frames.values() if col in f.columns and not pd.api.types.is_numeric_dtype(f[col])]
        values = pd.concat(texts) if texts else pd.Series(dtype=object)
        wrong = values[~values.astype(str).str.contains(NUMBER)]
        numbers = [f[col][_infinite(f[col])] for f in frames.values() if col in f.columns and pd.api.types.is_numeric_dtype(f[col])]
        wrong = pd.concat([wrong.astype(str), *(n.astype(str) for n in numbers)])  # +-inf: a division by zero upstream
        if len(wrong):
            found[col] = {"values": int(len(wrong)), "examples": list(dict.fromkeys(wrong))[:3]}
    return found


def _infinite(s: pd.Series) -> pd.Series:
    """:func:`tamis.data.infinite` of a numeric column, as a mask beside it."""
    return pd.Series(infinite(s.to_numpy(dtype=np.float64, na_value=np.nan)), index=s.index)


def as_missing(frame: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """``frame`` with the values of ``columns`` that are not (finite) numbers set to missing."""
    out = frame.copy()
    for col in [c for c in columns if c in out.columns]:
        if pd.api.types.is_numeric_dtype(out[col]):
            out[col] = out[col].astype(np.float64).mask(_infinite(out[col]))
        else:
            out[col] = out[col].where(out[col].isna() | out[col].astype(str).str.contains(NUMBER))
    return out


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
    """One expectation with the sentence a user reads when it fails.

    ``on`` says which batch it checks: ``"table"`` is the split itself, ``"columns"`` the
    split's column table (``column_table``), one row per column. A column-table check
    fails once per column it lists, and ``message`` then takes the column's name and row.
    """

    expectation: Any
    message: str | Callable[[str, pd.Series], str]
    on: str = "table"


def column_table(frame: pd.DataFrame, schema: Schema) -> pd.DataFrame:
    """One row per expected column, computed with vectorised pandas: what the per-column checks judge.

    A suite of one expectation per column costs great-expectations milliseconds per
    expectation and a scan of every column name per expectation (53 s for 784 columns),
    so the columns' numbers are computed here and three expectations over this table
    judge them all; great-expectations still names each failing column.

    - ``present``: the column is in the split.
    - ``bad_numbers`` (numeric columns): values that fail the numeric check, as the
      per-column expectations counted them: text not matching ``NUMBER``, numbers outside
      +-1e300 (infinite); ``numeric_dtype`` says which of the two it was.
    - ``nonnull_share`` (features): rows not null, as ``mostly`` of a not-null expectation counts them.
    - ``bad_example``, ``null_example``: ``(first offending value,)`` or ``()``, for the sentence.
    """
    columns = [schema.label, *schema.features]
    numeric = set(schema.numeric)
    table = pd.DataFrame(
        {"present": [c in frame.columns for c in columns], "numeric_dtype": False, "bad_numbers": np.nan,
         "nonnull_share": np.nan, "bad_example": [()] * len(columns), "null_example": [()] * len(columns)},
        index=pd.Index(columns, name="column"),
    )
    present = [c for c in schema.features if c in frame.columns]
    nulls = frame[present].isna()
    counts = nulls.sum().to_numpy()
    table.loc[present, "nonnull_share"] = (len(frame) - counts) / len(frame) if len(frame) else 1.0
    for col in nulls.columns[counts > 0]:
        table.at[col, "null_example"] = (frame[col][nulls[col]].iloc[0],)
    numbers = [c for c in present if c in numeric and pd.api.types.is_numeric_dtype(frame[c])]
    texts = [c for c in present if c in numeric and not pd.api.types.is_numeric_dtype(frame[c])]
    values = frame[numbers].to_numpy(dtype=np.float64, na_value=np.nan)
    bad = infinite(values)
    table.loc[numbers, "numeric_dtype"] = True
    table.loc[numbers, "bad_numbers"] = bad.sum(axis=0)
    for j in np.flatnonzero(bad.any(axis=0)):
        table.at[numbers[j], "bad_example"] = (values[np.argmax(bad[:, j]), j],)
    for col in texts:
        text = frame[col].dropna()
        wrong = text[~text.astype(str).str.contains(NUMBER)]
        table.at[col, "bad_numbers"] = len(wrong)
        if len(wrong):
            table.at[col, "bad_example"] = (wrong.iloc[0],)
    return table


def _with_example(sentence: str, examples) -> str:
    """The sentence with the first offending value, when there is one (it may itself be None)."""
    return f"{sentence} (e.g. {shown(examples[0])})" if len(examples) else sentence


def _suite_checks(frame: pd.DataFrame, split: str, schema: Schema, params: Params, where: str) -> list[Check]:
    """The split's checks, in the order their sentences are reported."""
    import great_expectations as gx

    E = gx.expectations
    label = schema.label
    checks = [
        Check(E.ExpectColumnValuesToBeInSet(column="present", value_set=[True]),
              lambda c, row: f"{where}: column '{c}' is missing", on="columns"),
        Check(
            E.ExpectTableColumnsToMatchSet(column_set=[ROW_ID, label, *schema.features], exact_match=True),
            f"{where}: columns differ from the training table's",
        ),
    ]
    if label in frame.columns:
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

    def numbers(c: str, row: pd.Series) -> str:
        if row["numeric_dtype"]:
            said = f"numeric column '{c}' holds infinite values"
        else:
            said = f"column '{c}' should be numeric but holds non-numeric values"
        return _with_example(f"{where}: {said}", row["bad_example"])

    limit = params.validate_.max_null_fraction
    checks.append(Check(E.ExpectColumnValuesToBeBetween(column="bad_numbers", max_value=0), numbers, on="columns"))
    if split == "train":  # the fill is learned here; calib and test rows are filled whatever their share (Cars93's
        checks.append(    # 'AirBags' is 37% missing: a 19-row test split drawn from it can be over half missing)
            Check(
                E.ExpectColumnValuesToBeBetween(column="nonnull_share", min_value=1.0 - limit),
                lambda c, row: _with_example(
                    f"{where}: column '{c}' has more than {limit:.0%} missing values (validate.max_null_fraction)",
                    row["null_example"],
                ),
                on="columns",
            )
        )
    return checks


def _gx_validate(batches: dict[str, tuple[pd.DataFrame, list[Check]]], schema: Schema) -> dict[str, tuple[list[str], dict]]:
    """Run each split's checks as two great-expectations suites (the split, its column table) in one ephemeral context.

    Returns, per split, (failure sentences in check order, GX results as JSON).
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
        data = {"table": frame, "columns": column_table(frame, schema)}
        by_id, json = {}, {}
        for on, batch in data.items():
            batch_def = source.add_dataframe_asset(f"{split}-{on}").add_batch_definition_whole_dataframe("all")
            # built in one go: add_expectation compares each new one with all before it (quadratic)
            suite = ctx.suites.add(
                gx.ExpectationSuite(name=f"tamis-{split}-{on}", expectations=[c.expectation for c in checks if c.on == on])
            )
            # COMPLETE on the column table: every failing column, not the first 20
            result = batch_def.get_batch(batch_parameters={"dataframe": batch}).validate(
                suite, result_format="COMPLETE" if on == "columns" else "SUMMARY"
            )
            by_id.update({r.expectation_config.id: r for r in result.results})
            json[on] = result.to_json_dict()
        failures = []
        for check in checks:
            res = by_id.get(check.expectation.id)
            if res is None or res.success:
                continue
            if check.on == "columns":
                failed = {hit["column"] for hit in res.result.get("unexpected_index_list") or []}
                table = data["columns"]
                failures += [check.message(c, table.loc[c]) for c in table.index if c in failed]
            else:
                failures.append(_with_example(check.message, res.result.get("partial_unexpected_list") or []))
        out[split] = (failures, json)
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
    """Numeric columns as float64, categorical as strings (nulls kept).

    Built in one concat: assigning 784 columns one by one into a frame copies it each time.
    """
    columns = {ROW_ID: frame[ROW_ID], schema.label: frame[schema.label]}
    for col in schema.numeric:
        columns[col] = as_numbers(frame[col])  # the suite has refused (or non_numbers read as missing) other text
    for col in schema.categorical:
        columns[col] = frame[col].astype("string")
    return pd.concat(columns, axis=1)


def drift_gate(frames: dict[str, pd.DataFrame], schema: Schema, params: Params, root: Path, meta: dict,
               left_out: dict[str, str] | None = None):
    """(new profile, findings, accepted profile or None): the typed input against the last accepted data."""
    rows = pd.concat(list(frames.values()), ignore_index=True)
    lineage = {"source": meta["source"], "rows": meta["rows"]}
    new = drift.profile(rows, schema.label, schema.numeric, schema.categorical, lineage, left_out)
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
    frames, dates = dates_as_days({s: read_split(root / paths.RAW, s) for s in SPLITS}, params)
    if dates:
        named = ", ".join(repr(c) if fmt in (None, "ISO8601") else f"{c!r} ({fmt})" for c, fmt in dates.items())
        print(f"tamis validate: column(s) {named} hold dates: read as days since 1970-01-01.")
    sources = {"train": meta["source"]["train"], "calib": meta["source"]["train"]}
    sources["test"] = meta["source"]["test"] or meta["source"]["train"]
    left_out = mostly_missing(frames["train"], params)
    if left_out:
        warn("validate", f"column(s) {', '.join(f'{c!r} ({share:.0%} missing)' for c, share in left_out.items())}"
             f" missing in more than validate.max_null_fraction={params.validate_.max_null_fraction:g} of the training rows:"
             " left out of the features (validate.mostly_missing=refuse stops instead).")
    frames = without(frames, left_out)
    schema = infer_schema(frames["train"], params)
    same_source = ["train", "calib"] + ([] if meta["source"]["test"] else ["test"])
    ids = identifiers(pd.concat([frames[s] for s in same_source], ignore_index=True), schema, params)
    if ids:
        warn("validate", f"column(s) {', '.join(f'{c!r} ({why})' for c, why in ids.items())} look like identifiers,"
             " not features: left out (validate.identifiers=keep, or listing them in data.categorical / data.numeric,"
             " keeps them).")
        frames = without(frames, ids)
        schema = infer_schema(frames["train"], params)
    schema.date_formats = {c: fmt for c, fmt in dates.items() if fmt and c in schema.numeric}  # serving reads them so
    not_numbers = non_numbers(frames, schema, params)
    if not_numbers:
        warn("validate", "numeric column(s) " + ", ".join(
            f"{c!r} ({n['values']} value(s) such as {', '.join(map(repr, n['examples']))})" for c, n in not_numbers.items())
            + " hold values that are not (finite) numbers: read as missing values and filled"
            " (validate.non_numeric=refuse stops instead).")
        frames = {s: as_missing(f, list(not_numbers)) for s, f in frames.items()}
    report: dict[str, Any] = {"schema": schema.save_dict(), "splits": {}, "columns_left_out": left_out,
                              "identifiers_left_out": ids, "non_numbers_as_missing": not_numbers, "dates_as_days": list(dates)}
    failures: list[str] = []
    with tracking.stage_run("validate", params, root):
        import mlflow

        where = {split: f"{sources[split]} ({split} split)" for split in frames}
        batches = {s: (f, _suite_checks(f, s, schema, params, where[s])) for s, f in frames.items()}
        for split, (split_failures, gx_result) in _gx_validate(batches, schema).items():
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
            "columns_left_out": left_out,
            "identifiers_left_out": ids,
            "non_numbers_as_missing": not_numbers,
        }
        if failures:
            mlflow.log_dict(report, "validation.json")
            tracking.log_metrics(metrics)
            more = f" ({len(failures) - 1} more problem(s) in the run's validation.json)" if len(failures) > 1 else ""
            raise StageError(failures[0] + more + ".")
        if not schema.features:
            raise StageError(f"{sources['train']}: no feature columns besides the label '{schema.label}'.")
        frames = {split: typed(frame, schema) for split, frame in frames.items()}
        unseen = unseen_categories(frames, schema)
        if unseen:
            warn("validate", "the test split has categories the training rows never had: " + ", ".join(
                f"{c!r} in {u['rows']} row(s) ({u['share']:.0%}, such as {', '.join(map(repr, u['examples']))})"
                for c, u in unseen.items()) + "; the model reads them as unseen, and its test scores there are a guess.")
        metrics["unseen_test_categories"] = unseen
        left = {**{c: f"{share:.0%} missing" for c, share in left_out.items()}, **{c: f"an identifier: {why}" for c, why in ids.items()}}
        profile, findings, reference = drift_gate(frames, schema, params, root, meta, left)
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
                warn("validate", f"drift: {f.sentence()}")
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
