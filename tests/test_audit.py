"""Audit: planted problems are found, test rows are audited without training on them, bad input stops cleanly."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from stages import audit, evaluate, ingest
from tamis import paths
from tamis.config import ConfigError, NoiseParams, parse_params
from tamis.contract import StageError, dumps

FAST_AUDIT = {
    "folds": 3,
    "repeats": 1,
    "epochs": 6,
    "hidden": [16],
    "batch_size": 32,
    "hgb_max_iter": 30,
}


@pytest.fixture(autouse=True)
def _one_process(monkeypatch):
    """Folds in this process: the tests run small audits, where starting workers costs more than it saves."""
    monkeypatch.setenv("TAMIS_JOBS", "1")


def clusters(n: int, seed: int) -> pd.DataFrame:
    """Three well separated classes, numeric and categorical columns."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 3
    frame = pd.DataFrame({"label": np.array(["a", "b", "c"])[y]})
    for j, sign in enumerate((1.0, -1.0, 0.5, 0.0)):
        frame[f"x{j + 1}"] = rng.normal(size=n) + sign * 4.0 * y
    frame["color"] = np.array(["red", "green", "blue"])[y]
    return frame


def write_validated(root: Path, splits: dict[str, pd.DataFrame]) -> None:
    folder = root / "data/validated"
    folder.mkdir(parents=True, exist_ok=True)
    for name, frame in splits.items():
        frame.insert(0, "row_id", np.arange(len(frame), dtype=np.int64))
        frame["color"] = frame["color"].astype("string")
        frame.to_parquet(folder / f"{name}.parquet", index=False)
    numeric = ["x1", "x2", "x3", "x4"]
    schema = {"label": "label", "numeric": numeric, "categorical": ["color"], "classes": ["a", "b", "c"]}
    (folder / "schema.json").write_text(dumps(schema))


@pytest.fixture
def planted(tmp_path) -> Path:
    """Train row 0 mislabelled, train row 1 an outlier, test row 0 a copy of train row 3 (same class)."""
    train, calib, test = clusters(180, 0), clusters(45, 1), clusters(45, 2)
    train.loc[0, "label"] = "c"  # its features say a
    train.loc[1, ["x1", "x2"]] = [60.0, 60.0]
    features = ["x1", "x2", "x3", "x4", "color"]
    test.loc[0, features] = train.loc[3, features].to_numpy()
    write_validated(tmp_path, {"train": train, "calib": calib, "test": test})
    return tmp_path


def test_leakage_stands_down_where_rows_are_profiles_not_records():
    """A few coarse columns (Arrests' colour, sex, employed, checks): a copy across splits is the same profile."""
    from tamis.data import Schema

    rng = np.random.default_rng(0)
    n = 600
    coarse = pd.DataFrame({"sex": rng.choice(["f", "m"], n), "checks": rng.integers(0, 4, n).astype(float),
                           "label": rng.choice(["no", "yes"], n), "split": rng.choice(["train", "test"], n, p=[0.8, 0.2])})
    schema = Schema(label="label", numeric=["checks"], categorical=["sex"], classes=["no", "yes"])
    flag, score, counts = audit.leakage(coarse, schema, [np.array([], dtype=int)] * n, np.ones(n), 0.01)
    assert not flag.any() and (score == 1.0).all() and counts["repeated_profiles"] > 0.9
    # a table of records written out twice: each record twice, no profile three times, so copies are leaks
    records = pd.DataFrame({"sex": rng.choice(["f", "m"], 300), "checks": rng.normal(size=300), "label": "no"})
    doubled = pd.concat([records, records], ignore_index=True)
    doubled["split"] = rng.choice(["train", "test"], 600, p=[0.8, 0.2])
    flag, _, counts = audit.leakage(doubled, schema, [np.array([], dtype=int)] * 600, np.ones(600), 0.01)
    assert counts["repeated_profiles"] == 0.0 and 100 < flag.sum() < 300


def test_a_table_of_few_coarse_columns_is_audited(tmp_path):
    """Titanic's sex, class and age: most rows have k identical neighbours, so k-NN distances are mostly 0."""
    def coarse(n, seed):
        frame = clusters(n, seed)
        for c in ("x1", "x2", "x3", "x4"):
            frame[c] = frame[c].round(-1)  # a handful of values per column
        return frame

    write_validated(tmp_path, {"train": coarse(240, 0), "calib": coarse(60, 1), "test": coarse(60, 2)})
    metrics = audit.run(parse_params({"audit": FAST_AUDIT}), tmp_path)
    issues = pd.read_parquet(tmp_path / paths.ISSUES)
    assert issues["underperforming_group_score"].notna().all() and len(issues) == 360
    assert metrics["leakage"]["repeated_profiles"] > 0.1 and not issues["is_leakage_issue"].any()


def test_planted_label_outlier_and_leak_are_found(planted):
    metrics = audit.run(parse_params({"audit": FAST_AUDIT}), planted)
    issues = pd.read_parquet(planted / paths.ISSUES)
    assert issues["split"].value_counts().to_dict() == {"train": 180, "calib": 45, "test": 45}
    train = issues[issues["split"] == "train"].set_index("row_id")
    assert train.at[0, "is_label_issue"] and train.at[0, "predicted_label"] == "a"
    assert train["label_quality"].idxmin() == 0
    assert train.at[1, "is_outlier_issue"] and issues["outlier_score"].idxmin() == 1
    leaks = issues[issues["is_leakage_issue"]][["split", "row_id"]].values.tolist()
    assert sorted(leaks) == [["test", 0], ["train", 3]]
    assert (issues.loc[issues["is_leakage_issue"], "leakage_score"] == 0.0).all()
    assert metrics["leakage"] == {"exact": 2, "near": 0, "repeated_profiles": 0.0}
    for column in ("el2n", "near_duplicate_score", "non_iid_score", "underperforming_group_score", "null_score"):
        assert issues[column].notna().all(), column
    assert train.at[0, "el2n"] > train["el2n"].median()  # a wrong label is learned late
    noise = metrics["noise"]
    assert np.allclose(np.asarray(noise["noise_matrix"]).sum(axis=0), 1.0)
    assert set(noise["noise_rate_per_class"]) == {"a", "b", "c"}
    report = (planted / paths.AUDIT_REPORT).read_text()
    assert "data:image/png;base64," in report and "leakage" in report


def test_a_small_table_repeats_its_folds(planted):
    """auto: about 1,000 held-out rows, at most 5 repeats; each repeat a new shuffle whose fold models all count."""
    assert [audit.fold_repeats("auto", n) for n in (40, 180, 212, 400, 834, 50_000)] == [5, 5, 5, 2, 1, 1]
    assert audit.fold_repeats(3, 50_000) == 3
    params = lambda repeats: parse_params({"audit": {**FAST_AUDIT, "models": "hgb", "issue_types": ["label"],
                                                     "repeats": repeats}})
    probs = {}
    for repeats in (1, 2):
        metrics = audit.run(params(repeats), planted)
        assert metrics["fold_repeats"] == repeats
        issues = pd.read_parquet(planted / paths.ISSUES)
        train = issues[issues["split"] == "train"].set_index("row_id")
        assert train.at[0, "is_label_issue"]  # the planted flip is found either way
        probs[repeats] = issues[[c for c in issues.columns if c.startswith("prob_")]].to_numpy()
    assert np.allclose(probs[2].sum(axis=1), 1.0)
    assert not np.allclose(probs[1], probs[2])  # the second shuffle's fold models were averaged in


def test_test_rows_are_audited_without_training_on_them(planted):
    params = parse_params({"audit": {**FAST_AUDIT, "models": "mlp", "issue_types": ["label"]}})
    audit.run(params, planted)
    before = pd.read_parquet(planted / paths.ISSUES)
    test = pd.read_parquet(planted / "data/validated/test.parquet")
    test.loc[3, "label"] = "b" if test.loc[3, "label"] != "b" else "a"
    test.to_parquet(planted / "data/validated/test.parquet", index=False)
    audit.run(params, planted)
    after = pd.read_parquet(planted / paths.ISSUES)
    probs = [c for c in after.columns if c.startswith("prob_")]
    assert np.array_equal(before[probs].to_numpy(), after[probs].to_numpy())  # test labels never reach a model
    test_rows = after[after["split"] == "test"].set_index("row_id")
    assert test_rows.at[3, "is_label_issue"] and test_rows["label_quality"].idxmin() == 3


def test_featureless_table_stops_and_keeps_outputs(tmp_path):
    constant = {"x1": 1.0, "x2": 2.0, "x3": 0.0, "x4": 0.0, "color": "red"}
    splits = {s: clusters(30, i).assign(**constant) for i, s in enumerate(("train", "calib", "test"))}
    write_validated(tmp_path, splits)
    old = tmp_path / paths.ISSUES
    old.parent.mkdir(parents=True)
    old.write_text("previous")
    with pytest.raises(StageError, match="no numeric or categorical column varies"):
        audit.run(parse_params({"audit": FAST_AUDIT}), tmp_path)
    assert old.read_text() == "previous"


@pytest.mark.parametrize(
    "types, message",
    [(["label", "blurry"], "needs images"), (["label", "leakage"], "needs 'near_duplicate'"), (["outlier"], "'label'")],
)
def test_issue_types_the_data_cannot_serve_are_refused(types, message):
    with pytest.raises(ConfigError, match=message):
        parse_params({"audit": {"issue_types": types}})


def test_evaluate_scores_trusted_test_rows():
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]])
    y = np.array([0, 0, 1, 1])  # the last row is wrong for the model and flagged by the audit
    test = pd.DataFrame({"row_id": [0, 1, 2, 3]})
    issues = pd.DataFrame(
        {
            "row_id": [0, 1, 2, 3, 0],
            "split": ["test"] * 4 + ["train"],
            "is_label_issue": [False, False, False, True, True],
        }
    )
    out = evaluate.trusted_test(probs, y, test, issues, bins=5)
    assert out["flagged"] == 1 and out["all"]["accuracy"] == 0.75 and out["trusted"]["accuracy"] == 1.0
    truth = pd.DataFrame({"row_id": [0], "flipped": [True]})
    assert evaluate.audit_scores(issues, truth)["flagged"] == 1  # train rows only


def test_confusable_noise_flips_towards_confused_classes():
    frame = clusters(300, 0)
    look_alike = ["x1", "x2", "x3", "x4", "color"]
    frame.loc[frame["label"] == "c", look_alike] = frame.loc[frame["label"] == "b", look_alike].values
    frame.insert(0, "row_id", np.arange(len(frame)))
    noisy, truth = ingest.inject_noise(frame, "label", NoiseParams(rate=0.3, seed=0, kind="confusable"))
    changed = (noisy["label"] != frame["label"]).to_numpy()
    assert np.array_equal(changed, truth["flipped"].to_numpy()) and 0.2 < changed.mean() < 0.4
    moved = pd.crosstab(frame.loc[changed, "label"], noisy.loc[changed, "label"]).reindex(
        index=["a", "b", "c"], columns=["a", "b", "c"], fill_value=0
    )
    assert moved.at["b", "c"] > moved.at["b", "a"] and moved.at["c", "b"] > moved.at["c", "a"]  # b and c look alike


def test_issues_metrics_are_json(planted):
    audit.run(parse_params({"audit": {**FAST_AUDIT, "models": "hgb", "issue_types": ["label", "null"]}}), planted)
    metrics = json.loads((planted / paths.metrics("audit")).read_text())
    assert metrics["models"] == "hgb" and metrics["issues"]["null"] == {"train": 0, "calib": 0, "test": 0}


def test_the_family_that_fits_out_of_fold_better_gets_the_weight():
    """A plain average let a weak family drag a strong one down; the mix is chosen by out-of-fold log-loss."""
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 300)
    good = np.full((300, 3), 0.05)
    good[np.arange(300), y] = 0.9
    weak = rng.dirichlet(np.ones(3), 300)
    train_idx = np.arange(300)
    assert audit.mixture_weights({"mlp": weak, "hgb": good}, y, train_idx) == {"mlp": 0.0, "hgb": 1.0}
    assert audit.mixture_weights({"mlp": good, "hgb": weak}, y, train_idx) == {"mlp": 1.0, "hgb": 0.0}
    assert audit.mixture_weights({"hgb": weak}, y, train_idx) == {"hgb": 1.0}


def test_non_iid_order_is_tested_on_a_sample_of_a_large_table(planted, monkeypatch):
    """Above NON_IID_ROWS the permutation test runs on a sample in file order: a table sorted by class is still
    found non-iid, rows outside the sample score 1 and are never flagged, and the sample is the same every run."""
    params = parse_params({"audit": {**FAST_AUDIT, "models": "mlp", "issue_types": ["label", "non_iid"]}})
    for split in ("train", "calib", "test"):  # every split sorted by class: neighbours sit close in the file
        path = planted / f"data/validated/{split}.parquet"
        frame = pd.read_parquet(path).sort_values("label", kind="stable")
        frame.assign(row_id=np.arange(len(frame))).to_parquet(path, index=False)
    monkeypatch.setattr(audit, "NON_IID_ROWS", 120)
    metrics = audit.run(params, planted)
    issues = pd.read_parquet(planted / paths.ISSUES)
    sampled = issues["non_iid_score"] < 1.0
    assert 0 < sampled.sum() <= 120 and len(issues) == 270
    assert not issues.loc[~sampled, "is_non_iid_issue"].any()
    assert metrics["non_iid_p_value"] < 0.05 and metrics["non_iid_rows"] == 120
    audit.run(params, planted)
    assert pd.read_parquet(planted / paths.ISSUES)["non_iid_score"].equals(issues["non_iid_score"])
