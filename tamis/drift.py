"""The drift gate: a profile of the data, and the new data's profile against the last accepted one.

As TFX's ExampleValidator compares a span with the previous one, validate
compares each new input with the data of the last *accepted* run: schema
changes (feature columns added, removed, retyped), new or vanished classes,
new categories, and a distribution statistic per column and for the label.
Numbers: the two-sample Kolmogorov-Smirnov statistic (``scipy.stats.ks_2samp``)
against the accepted column's quantile sketch (0 same, 1 disjoint; blind to
units, so one threshold serves every column). Categories and the label: the
Jensen-Shannon distance of the shares (``scipy.spatial.distance.jensenshannon``,
base 2, also 0..1).

A profile is small JSON (``PROFILE_QUANTILES`` quantiles per number, shares of
at most ``MAX_CATEGORIES`` values per category), so the accepted one can be
kept beside the repository for as long as it stays the reference.
"""

from __future__ import annotations

import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tamis import paths, reports
from tamis.config import DriftParams, DriftRule
from tamis.contract import StageError, dumps, read_json

PROFILE_QUANTILES = 101  # quantiles kept per numeric column: KS against them is within ~1/100 of KS against the rows
MAX_CATEGORIES = 1000  # categories kept per column, most frequent first; the rest pooled as OTHER
OTHER = "<other>"
WORST_PLOTS = 3  # before/after plots for this many of the worst findings
LABEL_CHECKS = ("label", "new_class", "vanished_class")  # findings about the label column, not a feature


def profile(frame: pd.DataFrame, label: str, numeric: list[str], categorical: list[str], lineage: dict,
            left_out: dict[str, str] | None = None) -> dict:
    """What the drift gate compares: per column its kind, null share and distribution; the label's shares; and
    the columns validate left out this time, with why (a column left out is not a column the data lost)."""
    columns: dict[str, Any] = {}
    for col in numeric:
        values = frame[col].to_numpy(dtype=np.float64, na_value=np.nan)
        known = values[~np.isnan(values)]
        entry: dict[str, Any] = {"kind": "numeric", "null_share": float(1.0 - len(known) / max(len(values), 1))}
        if len(known):
            q = np.quantile(known, np.linspace(0.0, 1.0, PROFILE_QUANTILES), method="inverted_cdf")
            entry.update(mean=float(known.mean()), std=float(known.std()), quantiles=q.tolist())
        columns[col] = entry
    for col in categorical:
        s = frame[col]
        columns[col] = {"kind": "categorical", "null_share": float(s.isna().mean()), "shares": shares(s.dropna())}
    return {
        "rows": len(frame),
        "label": {"column": label, "shares": shares(frame[label].dropna())},
        "columns": columns,
        "left_out": dict(left_out or {}),
        "lineage": lineage,
    }


def shares(values: pd.Series) -> dict[str, float]:
    """Share of each value (as text), most frequent first; beyond ``MAX_CATEGORIES`` pooled as ``OTHER``."""
    counts = values.astype(str).value_counts()
    out = {str(k): float(v) / max(len(values), 1) for k, v in counts.head(MAX_CATEGORIES).items()}
    if len(counts) > MAX_CATEGORIES:
        out[OTHER] = float(counts.iloc[MAX_CATEGORIES:].sum()) / len(values)
    return out


@dataclass
class Finding:
    """One comparison: what was compared, the statistic, its threshold and the verdict (ok / warn / stop)."""

    column: str
    check: str  # the params key under validate.drift
    statistic: str
    value: float | None
    threshold: float | None
    verdict: str
    detail: str = ""

    @property
    def severity(self) -> float:
        """How far past its threshold (schema and class findings rank first)."""
        if self.value is None or not self.threshold:
            return float("inf") if self.verdict != "ok" else 0.0
        return self.value / self.threshold

    def sentence(self) -> str:
        where = f"{'label' if self.check in LABEL_CHECKS else 'feature'} column '{self.column}'"
        if self.value is None:
            return f"{where}: {self.detail} (validate.drift.{self.check}: {self.verdict})"
        return (
            f"{where}: {self.statistic} {self.value:.3f} > {self.threshold:g}"
            f" (validate.drift.{self.check}.threshold; {self.detail})"
        )


def js_distance(before: dict[str, float], after: dict[str, float]) -> float:
    from scipy.spatial.distance import jensenshannon

    keys = sorted(set(before) | set(after))
    p = np.array([before.get(k, 0.0) for k in keys])
    q = np.array([after.get(k, 0.0) for k in keys])
    if p.sum() == 0 or q.sum() == 0:
        return 0.0 if p.sum() == q.sum() else 1.0
    return float(jensenshannon(p, q, base=2))


def ks_statistic(before: list[float], after: list[float]) -> float:
    from scipy.stats import ks_2samp

    return float(ks_2samp(before, after).statistic)


def _rule(check: str, column: str, statistic: str, value: float, rule: DriftRule, detail: str) -> Finding:
    over = rule.action != "off" and value > rule.threshold
    return Finding(column, check, statistic, value, rule.threshold, rule.action if over else "ok", detail)


def _flag(check: str, column: str, action: str, detail: str) -> Finding:
    return Finding(column, check, "", None, None, action, detail)


def compare(before: dict, after: dict, d: DriftParams) -> list[Finding]:
    """Every check of the new profile ``after`` against the accepted ``before``, worst first."""
    found: list[Finding] = []
    old, new = before["columns"], after["columns"]
    if d.columns != "off":
        why = after.get("left_out") or {}
        found += [_flag("columns", c, d.columns, f"left out of the features this run ({why[c]})" if c in why
                        else "removed since the accepted data") for c in old if c not in new]
        found += [_flag("columns", c, d.columns, "new since the accepted data") for c in new if c not in old]
        found += [
            _flag("columns", c, d.columns, f"was {old[c]['kind']}, now {new[c]['kind']}")
            for c in new
            if c in old and old[c]["kind"] != new[c]["kind"]
        ]
    label = after["label"]["column"]
    old_classes, new_classes = before["label"]["shares"], after["label"]["shares"]
    if d.new_class != "off":
        found += [_flag("new_class", label, d.new_class, f"new class {c!r}") for c in new_classes if c not in old_classes]
    if d.vanished_class != "off":
        found += [
            _flag("vanished_class", label, d.vanished_class, f"class {c!r} is gone")
            for c in old_classes
            if c not in new_classes
        ]
    found.append(_rule("label", label, "JS distance", js_distance(old_classes, new_classes), d.label, "class shares"))
    for col, now in new.items():
        was = old.get(col)
        if was is None or was["kind"] != now["kind"]:
            continue
        rise = now["null_share"] - was["null_share"]
        found.append(_rule("null_share", col, "null share rise", rise, d.null_share, f"{was['null_share']:.1%} -> {now['null_share']:.1%}"))
        if now["kind"] == "numeric" and "quantiles" in was and "quantiles" in now:
            detail = f"median {was['quantiles'][len(was['quantiles']) // 2]:.3g} -> {now['quantiles'][len(now['quantiles']) // 2]:.3g}"
            found.append(_rule("numeric", col, "KS statistic", ks_statistic(was["quantiles"], now["quantiles"]), d.numeric, detail))
        elif now["kind"] == "categorical":
            found.append(_rule("categorical", col, "JS distance", js_distance(was["shares"], now["shares"]), d.categorical, "category shares"))
            unseen = [c for c in now["shares"] if c not in was["shares"] and c != OTHER]
            if unseen and d.new_category != "off":
                found.append(_flag("new_category", col, d.new_category, f"new categor{'y' if len(unseen) == 1 else 'ies'} {unseen[:3]}"))
    return sorted(found, key=lambda f: ({"stop": 0, "warn": 1, "ok": 2}[f.verdict], -f.severity))


def metrics_of(findings: list[Finding], reference: dict | None) -> dict[str, Any]:
    """The gate's numbers for metrics/validate.json and MLflow."""
    if reference is None:
        return {"reference": None, "stops": 0, "warnings": 0}
    # MLflow keys allow letters, digits and _-. /: other characters of a column name become _
    stat = {re.sub(r"[^\w.\- /]", "_", f"{f.check}.{f.column}"): f.value for f in findings if f.value is not None}
    return {
        "reference": reference.get("accepted", {}).get("parent_run_id", "unknown run"),
        "stops": sum(f.verdict == "stop" for f in findings),
        "warnings": sum(f.verdict == "warn" for f in findings),
        "statistics": stat,
    }


# ---- the accepted profile: the gate's reference, written only when a run is accepted ----


def accepted(root: str | Path, model_name: str) -> dict | None:
    """The last accepted profile of model line ``model_name``, or None before its first accepted run."""
    path = Path(root) / paths.accepted_profile(model_name)
    if not path.exists():
        return None
    try:
        return read_json(path)
    except ValueError:
        raise StageError(f"{path} is not valid JSON; delete it to make the next accepted run the reference.") from None


def accept(root: str | Path, model_name: str, lineage: dict[str, Any]) -> Path:
    """The run's profile (``data/profile.json``) becomes line ``model_name``'s reference, with the accepting run's lineage."""
    root = Path(root)
    current = read_json(root / paths.PROFILE)
    current["accepted"] = {**lineage, "at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    target = root / paths.accepted_profile(model_name)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_text(dumps(current) + "\n")
    tmp.replace(target)
    return target


# ---- report ----


def plot(finding: Finding, before: dict, after: dict) -> str | None:
    """Before / after of one finding: the two CDFs of a number, the two share bars of a category or the label."""
    def get(profile):
        return profile["label"] if finding.check in LABEL_CHECKS else profile["columns"].get(finding.column)

    was, now = get(before), get(after)
    if was is None or now is None:
        return None
    plt = reports.figure()
    fig, ax = plt.subplots(figsize=(4.2, 2.6))
    if "quantiles" in was and "quantiles" in now:
        for prof, name in ((was, "accepted"), (now, "new")):
            q = prof["quantiles"]
            ax.step(q, np.linspace(0, 1, len(q)), where="post", label=name)
        ax.set_ylabel("CDF")
    elif "shares" in was and "shares" in now:
        keys = list(dict.fromkeys([*was["shares"], *now["shares"]]))[:20]
        x = np.arange(len(keys))
        ax.bar(x - 0.2, [was["shares"].get(k, 0.0) for k in keys], 0.4, label="accepted")
        ax.bar(x + 0.2, [now["shares"].get(k, 0.0) for k in keys], 0.4, label="new")
        ax.set_xticks(x, keys, rotation=90, fontsize=7)
        ax.set_ylabel("share")
    else:
        plt.close(fig)
        return None
    ax.set_title(f"{finding.column}: {finding.statistic} {finding.value:.3f}" if finding.value is not None else finding.column, fontsize=9)
    ax.legend(fontsize=7)
    return reports.png(fig, dpi=70)


def report_html(findings: list[Finding], before: dict | None, after: dict) -> str:
    """The drift section of reports/validation.html: one table, worst first, and plots of the worst few."""
    if before is None:
        return (
            "<h2>Drift</h2><p>No accepted data yet for this model line: this is its first run, "
            "nothing to compare with; this data becomes the reference when the run is accepted.</p>"
        )
    acc = before.get("accepted", {})
    stops = sum(f.verdict == "stop" for f in findings)
    warns = sum(f.verdict == "warn" for f in findings)
    head = (
        f"<h2>Drift</h2><p>Against the data accepted by run {acc.get('parent_run_id', '?')} "
        f"({acc.get('at', '?')}, {before.get('rows', '?')} rows; now {after['rows']} rows): "
        f"<b>{stops} stop(s), {warns} warning(s)</b>, {len(findings) - stops - warns} check(s) within threshold.</p>"
    )
    rows = [
        [f.column, f.check, f.statistic or "-", "-" if f.value is None else f"{f.value:.3f}",
         "-" if f.threshold is None else f"{f.threshold:g}", f.verdict, f.detail]
        for f in findings
    ]
    table = reports.table(["column", "check", "statistic", "value", "threshold", "verdict", "detail"], rows,
                          [f.verdict for f in findings])
    worst = [f for f in findings if f.value is not None][:WORST_PLOTS]
    plots = "".join(reports.img(p, f.column) for f in worst if (p := plot(f, before, after)))
    return head + (f"<div>{plots}</div>" if plots else "") + table


def as_dicts(findings: list[Finding]) -> list[dict[str, Any]]:
    return [asdict(f) for f in findings]
