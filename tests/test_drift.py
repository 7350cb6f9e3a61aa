"""The drift gate: each rule fires on the shift it is for, unchanged data passes, a stop keeps the last good outputs."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import mixed_table

from stages import ingest, validate
from tamis import drift, paths
from tamis.config import DriftParams, parse_params
from tamis.contract import StageError, read_json
from tamis.data import load_source

DEFAULTS = DriftParams()


def profile_of(frame: pd.DataFrame) -> dict:
    features = [c for c in frame.columns if c != "label"]
    numeric = [c for c in features if pd.api.types.is_numeric_dtype(frame[c])]
    categorical = [c for c in features if c not in numeric]
    return drift.profile(frame, "label", numeric, categorical, {"source": "test"})


def verdicts(before: pd.DataFrame, after: pd.DataFrame, d: DriftParams = DEFAULTS) -> dict[tuple[str, str], str]:
    """(check, column) -> verdict of every finding that is not ok."""
    found = drift.compare(profile_of(before), profile_of(after), d)
    return {(f.check, f.column): f.verdict for f in found if f.verdict != "ok"}


@pytest.fixture(scope="module")
def digits() -> pd.DataFrame:
    return load_source("sklearn:digits", "label")


def test_unchanged_data_passes(digits):
    assert verdicts(digits, digits) == {}
    # new rows from the same source are not drift either: two disjoint random halves of digits
    order = np.random.default_rng(0).permutation(len(digits))
    half = len(digits) // 2
    assert verdicts(digits.iloc[order[:half]], digits.iloc[order[half:]]) == {}


def test_a_scaled_column_stops_naming_the_column_and_statistic(digits):
    shifted = digits.copy()
    shifted["pixel_3_4"] = shifted["pixel_3_4"] * 1.5 + 2.0
    found = drift.compare(profile_of(digits), profile_of(shifted), DEFAULTS)
    stops = [f for f in found if f.verdict == "stop"]
    assert [(f.check, f.column) for f in stops] == [("numeric", "pixel_3_4")]
    assert stops[0].sentence().startswith("feature column 'pixel_3_4': KS statistic ")
    assert "validate.drift.numeric.threshold" in stops[0].sentence()


def test_a_dropped_class_stops(digits):
    found = verdicts(digits, digits[digits["label"] != 9])
    assert found[("vanished_class", "label")] == "stop"
    assert all(check in ("vanished_class", "label", "numeric") for check, _ in found)


def test_a_new_class_and_a_removed_column_stop(digits):
    shifted = digits.drop(columns=["pixel_0_0"])
    shifted.loc[shifted.index[:40], "label"] = 10
    found = verdicts(digits, shifted)
    assert found[("new_class", "label")] == "stop" and found[("columns", "pixel_0_0")] == "stop"


def test_a_column_validate_left_out_is_named_as_left_out_not_as_removed(digits):
    """After an upgrade that leaves out R's rownames, the data did not lose a column: the sentence says so."""
    before = digits.assign(rownames=range(len(digits)))
    left = {"rownames": "an identifier: 1797 distinct whole numbers in 0..1796, one per row"}
    after = drift.profile(digits, "label", [c for c in digits.columns if c != "label"], [], {"source": "test"}, left)
    (finding,) = [f for f in drift.compare(profile_of(before), after, DEFAULTS) if f.check == "columns"]
    assert finding.verdict == "stop" and "left out of the features this run (an identifier: 1797 distinct" in finding.sentence()
    plain = [f for f in drift.compare(profile_of(before), profile_of(digits), DEFAULTS) if f.check == "columns"]
    assert "removed since the accepted data" in plain[0].sentence()


def test_a_new_category_warns_and_a_retyped_column_stops():
    before = mixed_table(600)
    after = mixed_table(600, seed=1)
    assert verdicts(before, after) == {}  # another sample of the same table
    after.loc[after.index[:15], "color"] = "purple"  # 2.5% of rows: a new value, the shares barely move
    after["x2"] = after["x2"].round().astype(str)  # numbers became text
    found = verdicts(before, after)
    assert found == {("new_category", "color"): "warn", ("columns", "x2"): "stop"}


def test_a_shifted_category_mix_and_label_mix_stop_and_off_switches_a_rule_off():
    before = mixed_table(600)
    after = mixed_table(600, seed=1)
    after.loc[after["color"] == "red", "color"] = "blue"
    after = pd.concat([after, after[after["label"] == "c0"]] * 1, ignore_index=True)  # c0 twice as common
    found = verdicts(before, after)
    assert found[("categorical", "color")] == "stop" and found[("label", "label")] == "stop"
    relaxed = DriftParams(categorical={"threshold": 0.15, "action": "off"}, label={"threshold": 0.1, "action": "warn"})
    assert verdicts(before, after, relaxed) == {("label", "label"): "warn"}


def snapshot(root: Path) -> dict[str, str]:
    files = [p for rel in ("data/validated", "data/profile.json", "reports", "metrics") for p in
             ((root / rel).rglob("*") if (root / rel).is_dir() else [root / rel]) if p.is_file()]
    return {str(f.relative_to(root)): hashlib.md5(f.read_bytes()).hexdigest() for f in files}


def test_validate_first_accepts_then_stops_on_drift_and_keeps_outputs(tmp_path, capsys):
    source = tmp_path / "table.csv"
    table = mixed_table(300)
    table.to_csv(source, index=False)
    params = parse_params({"data": {"train": str(source), "inject_noise": None}, "audit": {"folds": 3}})
    ingest.run(params, tmp_path)
    first = validate.run(params, tmp_path)
    assert first["drift"]["reference"] is None and "first run" in capsys.readouterr().out
    assert "first run, nothing to compare with" in (tmp_path / paths.VALIDATION_HTML).read_text()
    drift.accept(tmp_path, "tamis-table-label", {"parent_run_id": "run-1", "model_version": 1})
    assert read_json(tmp_path / paths.accepted_profile("tamis-table-label"))["accepted"]["parent_run_id"] == "run-1"

    table.assign(x1=table["x1"] * 3.0).to_csv(source, index=False)
    ingest.run(params, tmp_path)
    before = snapshot(tmp_path)
    with pytest.raises(StageError, match=r"^drift against the accepted data: feature column 'x1': KS statistic 0\.\d+ > 0\.15"):
        validate.run(params, tmp_path)
    assert snapshot(tmp_path) == before

    warn = parse_params({**params.model_dump(by_alias=True), "validate": {"drift": {"numeric": {"threshold": 0.15, "action": "warn"}}}})
    metrics = validate.run(warn, tmp_path)
    assert metrics["drift"] | {"statistics": None} == {"reference": "run-1", "stops": 0, "warnings": 1, "statistics": None}
    assert metrics["drift"]["statistics"]["numeric.x1"] > 0.15 > metrics["drift"]["statistics"]["numeric.x2"]
    html = (tmp_path / paths.VALIDATION_HTML).read_text()
    assert '<tr class="warn"><td>x1</td><td>numeric</td><td>KS statistic</td>' in html
    assert html.count("data:image/png;base64,") == 3  # the worst few, before and after
    assert "drift: feature column 'x1'" in capsys.readouterr().err
