import hashlib
import json

import numpy as np
import pandas as pd
import pytest
from conftest import mixed_table

from stages import resample
from tamis.config import ResampleParams, parse_params
from tamis.contract import StageError
from tamis.data import ROW_ID, Encoder, Schema

SCHEMA = Schema(label="label", numeric=["x1", "x2"], categorical=["color"], classes=["c0", "c1", "c2"])


def long_tail(sizes=(120, 40, 12), weight=1.0) -> pd.DataFrame:
    """A corrected-like training split: classes of the given sizes, typed as validate writes them."""
    frame = mixed_table(600)
    parts = [frame[frame["label"] == c].iloc[:n] for c, n in zip(SCHEMA.classes, sizes)]
    out = pd.concat(parts).reset_index(drop=True)
    out.insert(0, ROW_ID, np.arange(len(out)) * 10)
    out["color"] = out["color"].astype("string")
    out["weight"] = weight
    return out


@pytest.mark.parametrize(
    "method, balanced, new_rows",
    [
        ("random_over", True, False),
        ("smote", True, True),
        ("smotenc", True, True),
        ("adasyn", False, True),
        ("borderline_smote", True, True),
        ("random_under", True, False),
        ("tomek_links", False, False),
        ("smote_tomek", False, True),
    ],
)
def test_samplers_keep_originals_mark_copies_and_write_raw_columns(method, balanced, new_rows):
    train = long_tail()
    out = resample.resample(train, SCHEMA, ResampleParams(method=method), seed=0)
    counts = out["label"].value_counts()
    assert (counts.max() == counts.min()) == balanced
    assert counts.min() / counts.max() > 12 / 120  # every method narrows the 10:1 gap
    originals = out[~out["synthetic"]]
    assert originals[ROW_ID].is_unique and set(originals[ROW_ID]) <= set(train[ROW_ID])
    merged = originals.merge(train, on=ROW_ID, suffixes=("", "_in"))
    assert (merged["x1"] == merged["x1_in"]).all() and (merged["label"] == merged["label_in"]).all()
    made = out[out[ROW_ID] == -1]
    assert bool(len(made)) == new_rows and made["synthetic"].all()
    if new_rows:  # raw values: categories from the training categories, numbers inside the class's range
        assert set(made["color"]) <= set(train["color"])
        for c, rows in made.groupby("label"):
            src = train[train["label"] == c]["x1"]
            assert rows["x1"].between(src.min() - 1e-9, src.max() + 1e-9).all()
    num, cat = Encoder.fit(originals, SCHEMA).transform(out)  # train's encoder reads every row
    assert np.isfinite(num).all() and (cat > 0).all()


def test_resample_is_deterministic():
    a = resample.resample(long_tail(), SCHEMA, ResampleParams(method="smotenc"), seed=3)
    b = resample.resample(long_tail(), SCHEMA, ResampleParams(method="smotenc"), seed=3)
    pd.testing.assert_frame_equal(a, b)


def test_sampling_strategy_is_passed_through():
    out = resample.resample(long_tail(), SCHEMA, ResampleParams(method="smote", sampling_strategy={"c2": 60}), 0)
    assert out["label"].value_counts().to_dict() == {"c0": 120, "c1": 40, "c2": 60}


def test_loss_reweighting_multiplies_existing_weights():
    train = long_tail(weight=0.5)
    inv = resample.resample(train, SCHEMA, ResampleParams(method="inverse_frequency"), 0)
    totals = inv.groupby("label")["weight"].sum()
    assert np.allclose(totals, totals.iloc[0]) and len(inv) == len(train) and not inv["synthetic"].any()
    assert inv["weight"].mean() == pytest.approx(0.5)  # class weights average 1 per row, times 0.5
    eff = resample.resample(train, SCHEMA, ResampleParams(method="effective_number", beta=0.99), 0)
    w = eff.groupby("label")["weight"].first()
    assert w["c0"] < w["c1"] < w["c2"]  # rarer classes weigh more ...
    assert w["c2"] / w["c0"] < inv.groupby("label")["weight"].first().pipe(lambda s: s["c2"] / s["c0"])  # ... less so


@pytest.mark.parametrize(
    "method, frame_kw, message",
    [
        ("smote", {"sizes": (120, 40, 1)}, r"resample\.k_neighbors=5 .* class 'c2' has 1 row"),
        ("smotenc", {}, r"resample\.method: 'smotenc' needs categorical feature columns"),
    ],
)
def test_sampler_that_cannot_run_names_the_param(method, frame_kw, message):
    schema = SCHEMA if method != "smotenc" else Schema("label", ["x1", "x2"], [], SCHEMA.classes)
    train = long_tail(**frame_kw)
    with pytest.raises(StageError, match=message):
        resample.resample(train if method != "smotenc" else train.drop(columns="color"), schema,
                          ResampleParams(method=method), 0)


def test_bad_strategy_names_the_param():
    with pytest.raises(StageError, match=r"resample\.sampling_strategy"):
        resample.resample(long_tail(), SCHEMA, ResampleParams(method="random_under", sampling_strategy=5.0), 0)


def test_stage_resamples_the_train_split_only(tmp_path, monkeypatch):
    """Calib and test are read by later stages from data/validated and never pass through resample."""
    full = mixed_table(600)
    full.insert(0, ROW_ID, np.arange(len(full)))
    full["color"] = full["color"].astype("string")
    splits = {"train": full.iloc[:300], "calib": full.iloc[300:450], "test": full.iloc[450:]}
    (tmp_path / "data/validated").mkdir(parents=True)
    (tmp_path / "data/corrected").mkdir(parents=True)
    for name, part in splits.items():
        part.to_parquet(tmp_path / f"data/validated/{name}.parquet", index=False)
    (tmp_path / "data/validated/schema.json").write_text(json.dumps(SCHEMA.save_dict()))
    long = pd.concat([splits["train"][splits["train"]["label"] != "c2"], splits["train"][splits["train"]["label"] == "c2"][:20]])
    long.assign(weight=1.0).to_parquet(tmp_path / "data/corrected/train.parquet", index=False)
    digest = {n: hashlib.md5((tmp_path / f"data/validated/{n}.parquet").read_bytes()).hexdigest() for n in ("calib", "test")}
    params = parse_params({"resample": {"method": "smotenc"}})
    metrics = resample.run(params, tmp_path)
    assert sorted(p.name for p in (tmp_path / "data/resampled").iterdir()) == ["priors.json", "train.parquet"]
    out = pd.read_parquet(tmp_path / "data/resampled/train.parquet")
    kept = set(out.loc[out[ROW_ID] >= 0, ROW_ID])
    assert kept <= set(splits["train"][ROW_ID]) and not kept & set(full.iloc[300:][ROW_ID])
    assert {n: hashlib.md5((tmp_path / f"data/validated/{n}.parquet").read_bytes()).hexdigest() for n in digest} == digest
    priors = json.loads((tmp_path / "data/resampled/priors.json").read_text())
    assert priors["counts"] == [int((long["label"] == c).sum()) for c in SCHEMA.classes]
    assert metrics["imbalance_ratio_out"] == pytest.approx(1.0) and metrics["synthetic_rows"] > 0
