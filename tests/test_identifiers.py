"""Columns that name rows (ids, names, row numbers) are left out of the features: a model would learn the rows."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
from conftest import mixed_table, run_stage, set_params, validate_csv

from stages.validate import identifiers, infer_schema
from tamis.config import Params


def with_ids(n: int = 300) -> pd.DataFrame:
    """A table sorted by class, numbered 1..n, with a customer id, as exports often are."""
    frame = mixed_table(n).sort_values("label", kind="stable").reset_index(drop=True)
    frame.insert(0, "customer", [f"C{7 * i + 1000:05d}" for i in range(n)])
    frame.insert(0, "row", np.arange(1, n + 1))
    frame["age"] = np.random.default_rng(1).integers(18, 90, n)  # whole numbers, many repeats: a feature
    return frame


def test_identifiers_are_text_new_in_most_rows_and_whole_numbers_counting_the_rows():
    frame = with_ids()
    params = Params()
    params.data.label = "label"
    schema = infer_schema(frame, params)
    found = identifiers(frame, schema, params)
    assert set(found) == {"row", "customer"}
    assert found["row"] == "300 distinct whole numbers in 1..300, one per row" and found["customer"].startswith("300 distinct values")
    sample = frame.sample(frac=0.75, random_state=0)  # a user's own split of a numbered table: 1..n with gaps
    assert set(identifiers(sample, infer_schema(sample, params), params)) == {"row", "customer"}
    sample["row"] = sample["row"] * 3  # spread over three times the rows: could be a measurement, kept
    assert set(identifiers(sample, infer_schema(sample, params), params)) == {"customer"}
    named = sample.rename(columns={"row": "rownames"})  # ... unless it has a row number's name (R's row names)
    found = identifiers(named, infer_schema(named, params), params)
    assert set(found) == {"rownames", "customer"} and found["rownames"].startswith("named like a row number")
    named["rownames"] = named["rownames"] % 7  # repeats: not one per row, kept whatever its name
    assert set(identifiers(named, infer_schema(named, params), params)) == {"customer"}
    words = np.array(["good", "bad", "late", "fine", "broken", "fast"])
    reviews = frame.assign(customer=[" ".join(words[[i % 6, i % 5, i % 4]]) + f" order {i}" for i in range(len(frame))])
    found = identifiers(reviews, infer_schema(reviews, params), params)  # free text: said so, as a customer id is not
    assert found["customer"] == "300 distinct values in 300 rows; free text, which tamis makes no features of"
    params.data.categorical = ["customer"]  # the user says it is a category: kept
    assert set(identifiers(frame, infer_schema(frame, params), params)) == {"row"}
    params.validate_.identifiers = "keep"
    assert identifiers(frame, infer_schema(frame, params), params) == {}


def test_validate_leaves_identifiers_out_with_a_warning_and_keep_keeps_them(tmp_path):
    repo, proc = validate_csv(tmp_path, with_ids())
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "tamis validate: warning: column(s) 'row' (300 distinct whole numbers in 1..300, one per row), 'customer' (" in proc.stderr
    schema = json.loads((repo / "data/validated/schema.json").read_text())
    assert set(schema["numeric"] + schema["categorical"]) == {"x1", "x2", "color", "age"}
    assert set(pd.read_parquet(repo / "data/validated/test.parquet").columns) >= {"x1", "age"}
    assert set(json.loads((repo / "metrics/validate.json").read_text())["identifiers_left_out"]) == {"row", "customer"}

    set_params(repo, "validate.identifiers=keep")
    assert run_stage(repo, "validate").returncode == 0
    schema = json.loads((repo / "data/validated/schema.json").read_text())
    assert {"row", "customer"} <= set(schema["numeric"] + schema["categorical"])
