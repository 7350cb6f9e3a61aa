"""Column types a Parquet file carries (timestamps, booleans, pandas categories) reach the model as features."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from conftest import mixed_table, run_stage, set_params, validate_csv

from flows import workspace
from tamis.data import Encoder, Schema


def typed_table(n: int = 300) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    frame = mixed_table(n)
    frame["when"] = pd.Timestamp("2024-01-01") + pd.to_timedelta(rng.integers(0, 30, n), unit="D")
    frame["when_utc"] = (frame["when"] + pd.Timedelta(hours=6)).dt.tz_localize("UTC")
    frame["flag"] = frame["x1"] > 0
    frame["grade"] = pd.Categorical(rng.choice(["a", "b", "c"], n))
    return frame


def test_timestamps_are_days_since_1970_in_validate_and_serving(tmp_path):
    repo = workspace.create(tmp_path / "repo")
    frame = typed_table()
    frame.to_parquet(tmp_path / "t.parquet")
    set_params(repo, f"data.train={tmp_path / 't.parquet'}", "data.inject_noise=null")
    for stage in ("ingest", "validate"):
        proc = run_stage(repo, stage)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert "not numbers" not in proc.stderr
    schema = Schema(**json.loads((repo / "data/validated/schema.json").read_text()))
    assert {"x1", "x2", "when", "when_utc"} <= set(schema.numeric) and {"color", "flag", "grade"} <= set(schema.categorical)
    train = pd.read_parquet(repo / "data/validated/train.parquet")
    days = (pd.Timestamp("2024-01-01") - pd.Timestamp("1970-01-01")).days
    assert train["when"].between(days, days + 29).all() and (train["when_utc"] - train["when"]).round(6).eq(0.25).all()
    encoder = Encoder.fit(train, schema)
    served = frame.drop(columns=["label"]).iloc[:5]  # serving gets the timestamps as the user has them
    num, _ = encoder.transform(served)
    j = schema.numeric.index("when")
    got = num[:, j] * encoder.scale[j] + encoder.center[j]
    assert got == pytest.approx((served["when"] - pd.Timestamp("1970-01-01")).dt.days.to_numpy(), abs=1e-3)


def test_iso_date_text_is_days_too_and_serving_reads_it_the_same_way(tmp_path):
    """seattle-weather's 'date' column: as text a date is new in every row (an identifier); as days it is a feature."""
    frame = typed_table().drop(columns=["when_utc", "grade"])
    frame["when"] = frame["when"].dt.strftime("%Y-%m-%d")
    frame["month"] = pd.to_datetime(frame["when"]).dt.strftime("%b")  # 'Jan': text, not an ISO date
    repo, proc = validate_csv(tmp_path, frame)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "column(s) 'when' hold dates: read as days since 1970-01-01." in proc.stdout and "identifiers" not in proc.stderr
    schema = Schema(**json.loads((repo / "data/validated/schema.json").read_text()))
    assert "when" in schema.numeric and "month" in schema.categorical
    encoder = Encoder.fit(pd.read_parquet(repo / "data/validated/train.parquet"), schema)
    num, _ = encoder.transform(frame.drop(columns=["label"]).iloc[:5])
    j = schema.numeric.index("when")
    days = (pd.to_datetime(frame["when"].iloc[:5]) - pd.Timestamp("1970-01-01")).dt.days.to_numpy()
    assert num[:, j] * encoder.scale[j] + encoder.center[j] == pytest.approx(days, abs=1e-3)


@pytest.mark.parametrize("values, expected", [
    (["31/12/2020", "01/02/2021", None], "%d/%m/%Y"),
    (["12/31/20", "1/2/21"], "%m/%d/%y"),
    (["13.01.2024", "02.01.2024"], "%d.%m.%Y"),
    (["2020-01-31", "2020-02-01"], "ISO8601"),
    (["01/02/2020", "03/04/2020"], None),  # January or February: the column cannot say
    (["12/31/2020", "31/12/2020"], None),  # both orders in one column
    (["1/2/2020", "1/13/20"], None),  # two- and four-digit years
    (["1.5", "2.25"], None),
])
def test_date_format_reads_the_day_month_order_from_the_column(values, expected):
    from tamis.data import date_format

    assert date_format(pd.Series(values, dtype=object), 0.9) == expected


def test_numeric_dates_are_days_in_the_order_the_column_shows_and_serving_keeps_that_order(tmp_path):
    """A US export's 12/31/2020 and a German one's 31.12.2020 are dates (as text, new in every row: an identifier);
    serving reads one row such as 01/05/2024 in the order the training column showed, which the row alone cannot."""
    frame = typed_table().drop(columns=["when_utc", "grade"])
    when = frame.pop("when")
    frame["us"] = when.dt.strftime("%m/%d/%Y")
    frame["eu"] = when.dt.strftime("%d.%m.%Y")
    frame["either"] = when.dt.strftime("%m/") + when.dt.day.clip(upper=12).map("{:02d}".format) + "/2024"
    repo, proc = validate_csv(tmp_path, frame)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "column(s) 'us' (%m/%d/%Y), 'eu' (%d.%m.%Y) hold dates" in proc.stdout
    schema = Schema(**json.loads((repo / "data/validated/schema.json").read_text()))
    assert {"us", "eu"} <= set(schema.numeric) and "either" in schema.categorical
    assert schema.date_formats == {"us": "%m/%d/%Y", "eu": "%d.%m.%Y"}
    train = pd.read_parquet(repo / "data/validated/train.parquet")
    days = (pd.Timestamp("2024-01-01") - pd.Timestamp("1970-01-01")).days
    assert train["us"].between(days, days + 29).all() and train["us"].equals(train["eu"])
    encoder = Encoder.fit(train, schema)
    served = frame.drop(columns=["label"])[when.dt.day <= 12].iloc[:5]  # each row alone reads either way
    num, _ = encoder.transform(served)
    expected = (when[served.index] - pd.Timestamp("1970-01-01")).dt.days.to_numpy()
    for column in ("us", "eu"):
        j = schema.numeric.index(column)
        assert num[:, j] * encoder.scale[j] + encoder.center[j] == pytest.approx(expected, abs=1e-3)


def test_test_rows_with_categories_training_never_had_are_counted_for_a_warning():
    from stages.validate import infer_schema, unseen_categories
    from tamis.config import Params

    train = mixed_table(200)
    test = mixed_table(50, seed=1)
    test.loc[test.index[:10], "color"] = "Premium"  # a value the training export lacks
    params = Params()
    params.data.label = "label"
    schema = infer_schema(train, params)
    found = unseen_categories({"train": train, "test": test}, schema)
    assert found == {"color": {"rows": 10, "share": 0.2, "examples": ["Premium"]}}
    assert unseen_categories({"train": train, "test": mixed_table(50, seed=1)}, schema) == {}
