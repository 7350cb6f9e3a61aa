"""Missing feature values are normal: a few are filled (and the model card says how); too many are refused."""

from __future__ import annotations

import numpy as np
import pandas as pd
from conftest import mixed_table, run_stage, set_params, validate_csv

from flows import workspace
from stages.evaluate import missing_values
from tamis.data import Encoder, Schema


def holey(frame: pd.DataFrame, share: float, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = frame.copy()
    frame.loc[rng.random(len(frame)) < share, "x1"] = np.nan
    frame["color"] = frame["color"].astype(object)
    frame.loc[rng.random(len(frame)) < share, "color"] = None
    return frame


def test_a_few_missing_values_pass_validate_and_are_filled_the_same_way_everywhere(tmp_path):
    repo = workspace.create(tmp_path / "repo")
    holey(mixed_table(300), 0.1).to_csv(tmp_path / "holes.csv", index=False)
    set_params(repo, f"data.train={tmp_path / 'holes.csv'}", "data.inject_noise=null")
    for stage in ("ingest", "validate"):
        proc = run_stage(repo, stage)
        assert proc.returncode == 0, proc.stderr
    train = pd.read_parquet(repo / "data/validated/train.parquet")
    schema = Schema(**__import__("json").loads((repo / "data/validated/schema.json").read_text()))
    assert "x1" in schema.numeric and "color" in schema.categorical
    encoder = Encoder.fit(train, schema)
    num, cat = encoder.transform(train)
    assert np.isfinite(num).all()
    x1 = schema.numeric.index("x1")
    median = np.nanmedian(train["x1"].to_numpy(dtype=float))
    filled = (num[train["x1"].isna().to_numpy(), x1] * encoder.scale[x1] + encoder.center[x1])
    assert np.allclose(filled, median, atol=1e-4)
    assert (cat[train["color"].isna().to_numpy(), schema.categorical.index("color")] == 0).all()  # missing / unseen code
    said = missing_values(train, encoder)
    assert set(said) == {"x1", "color"} and 0.03 < said["x1"]["share"] < 0.2
    assert said["x1"]["filled_with"].startswith("training median") and "missing" in said["color"]["filled_with"]


def test_a_column_mostly_missing_is_left_out_with_a_warning_by_default(tmp_path):
    """An all-empty column, or Titanic's cabin (77% missing): the peers train on such tables, so tamis does too."""
    import json

    frame = mixed_table(300)
    frame["notes"] = np.nan
    repo, proc = validate_csv(tmp_path, frame)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "column(s) 'notes' (100% missing) missing in more than validate.max_null_fraction=0.5" in proc.stderr
    schema = json.loads((repo / "data/validated/schema.json").read_text())
    assert "notes" not in schema["numeric"] + schema["categorical"] and {"x1", "x2", "color"} <= set(schema["numeric"] + schema["categorical"])
    assert json.loads((repo / "metrics/validate.json").read_text())["columns_left_out"] == {"notes": 1.0}


def test_a_column_mostly_missing_is_refused_naming_it_when_asked(tmp_path):
    _, proc = validate_csv(tmp_path, holey(mixed_table(300), 0.7), "validate.mostly_missing=refuse")
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    assert "column 'x1' has more than 50% missing values (validate.max_null_fraction)" in last or "column 'color'" in last


def test_only_the_training_split_is_held_to_max_null_fraction(tmp_path):
    """A small test split can be mostly missing in a column by chance; its rows are filled like any other."""
    holey(mixed_table(40, seed=1), 0.7, seed=1).to_csv(tmp_path / "test.csv", index=False)
    repo, proc = validate_csv(tmp_path, holey(mixed_table(300), 0.2), f"data.test={tmp_path / 'test.csv'}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    test = pd.read_parquet(repo / "data/validated/test.parquet")
    assert test["x1"].isna().mean() > 0.5 and len(test) == 40
