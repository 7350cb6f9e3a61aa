"""The blessing gate and the registry's history: pure rules, then a real MLflow registry (SQLite)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tamis import registry
from tamis.config import PromoteParams
from tamis.contract import StageError
from tamis.promotion import Scores, decide, row_digests, score


def scores(f1: float, ece: float = 0.02, recall: dict | None = None, rows: int = 200) -> Scores:
    recall = recall or {"a": 0.9, "b": 0.9}
    return Scores(f1, ece, recall, {c: rows // len(recall) for c in recall}, rows)


def test_a_better_challenger_moves_champion():
    assert decide(scores(0.92), scores(0.90), True, PromoteParams()).move


def test_a_tie_or_a_worse_model_does_not():
    tie = decide(scores(0.90), scores(0.90), True, PromoteParams())
    assert not tie.move and "a tie" in tie.reason
    assert not decide(scores(0.85), scores(0.90), True, PromoteParams()).move
    assert not decide(scores(0.905), scores(0.90), True, PromoteParams(min_gain=0.01)).move


def test_better_f1_with_twice_the_ece_or_a_lost_class_does_not():
    worse_ece = decide(scores(0.95, ece=0.05), scores(0.90, ece=0.02), True, PromoteParams())
    assert not worse_ece.move and "promote.max_ece_rise" in worse_ece.reason
    lost = decide(scores(0.95, recall={"a": 1.0, "b": 0.5}), scores(0.90, recall={"a": 0.9, "b": 0.9}), True, PromoteParams())
    assert not lost.move and "class 'b'" in lost.reason


def test_a_failed_compress_gate_is_never_champion_first_version_included():
    first = decide(scores(0.99), None, False, PromoteParams())
    assert not first.move and "compress gate" in first.reason
    assert decide(scores(0.99), None, True, PromoteParams()).move


def test_absolute_floors_apply_without_a_champion_too():
    assert not decide(scores(0.60), None, True, PromoteParams(min_macro_f1=0.7)).move
    assert not decide(scores(0.90, ece=0.2), None, True, PromoteParams(max_ece=0.05)).move


def test_row_digests_follow_values_not_column_order_or_index():
    frame = pd.DataFrame({"x": [1.0, 2.0, 3.0], "c": ["a", "b", "a"]}, index=[7, 8, 9])
    same = frame[["c", "x"]].reset_index(drop=True)
    assert np.array_equal(row_digests(frame, ["x", "c"]), row_digests(same, ["c", "x"]))
    other = frame.assign(x=[1.0, 2.5, 3.0])
    assert (row_digests(frame, ["x", "c"]) != row_digests(other, ["x", "c"])).tolist() == [False, True, False]


def test_score_reads_pyfunc_output():
    pred = pd.DataFrame({"label": ["a", "b", "b"], "proba_a": [0.9, 0.2, 0.4], "proba_b": [0.1, 0.8, 0.6]})
    s = score(pred, pd.Series(["a", "b", "a"]))
    assert s.recall == {"a": 0.5, "b": 1.0} and s.support == {"a": 2, "b": 1} and s.rows == 3
    assert 0.0 < s.macro_f1 < 1.0 and 0.0 <= s.ece <= 1.0


# ---- a real registry: tiny pyfunc models logged from code --------------------------------------------

STUB = '''
import mlflow.pyfunc
import pandas as pd

MARK = "{mark}"


class Stub(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input, params=None):
        return pd.DataFrame({{"label": [MARK] * len(model_input), "proba_" + MARK: 1.0}})


mlflow.models.set_model(Stub())
'''


@pytest.fixture
def store(tmp_path, monkeypatch):
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment("t")
    return uri


def log_stub(tmp_path: Path, name: str, mark: str) -> int:
    """Register a pyfunc whose logged code (its own ``tamis`` package) answers ``mark`` for every row."""
    import mlflow

    code = tmp_path / f"code-{mark}" / "tamis"
    code.mkdir(parents=True)
    (code / "__init__.py").write_text("")
    (code / "serving.py").write_text(STUB.format(mark=mark))
    with mlflow.start_run():
        info = mlflow.pyfunc.log_model(
            name="model", python_model=str(code / "serving.py"), code_paths=[str(code)], registered_model_name=name
        )
    return int(info.registered_model_version)


def test_a_version_is_scored_with_its_own_logged_code_not_this_tree(tmp_path, store):
    log_stub(tmp_path, "stub", "logged")
    pred = registry.predict_isolated("models:/stub/1", pd.DataFrame({"x": [1.0, 2.0]}), store)
    assert pred["label"].tolist() == ["logged", "logged"]  # the tree's tamis/serving.py would need an ONNX model
    from tamis import serving

    assert not hasattr(serving, "MARK")


def test_rollback_restores_the_previous_champion_and_models_shows_the_history(tmp_path, store):
    from mlflow import MlflowClient

    client, name = MlflowClient(store), "churn's model"  # a quote in the name: no filter strings
    for mark in ("one", "two", "three"):
        log_stub(tmp_path, name, mark)
    registry.move_champion(client, name, 1, "no champion yet")
    registry.move_champion(client, name, 3, "better")
    event = registry.rollback(client, name, "v3 misbehaves in production")
    assert (event["from"], event["to"]) == (3, 1)
    assert int(registry.by_alias(client, name, registry.CHAMPION).version) == 1
    assert [(e["kind"], e["from"], e["to"]) for e in registry.history(client, name)] == [
        ("promote", None, 1), ("promote", 1, 3), ("rollback", 3, 1)
    ]
    rows = {r["version"]: r for r in registry.describe(client, name)}
    assert rows[1]["aliases"] == ["champion"] and rows[3]["rolled_back"] and not rows[2]["rolled_back"]
    registry.rollback(client, name, "try two", to=2)
    assert int(registry.by_alias(client, name, registry.CHAMPION).version) == 2
    with pytest.raises(StageError, match="has no version 9"):
        registry.rollback(client, name, "typo", to=9)


def test_cli_models_and_rollback_work_on_a_named_model(tmp_path, store):
    from mlflow import MlflowClient

    log_stub(tmp_path, "my model", "a")
    log_stub(tmp_path, "my model", "b")
    client = MlflowClient(store)
    registry.move_champion(client, "my model", 1, "first")
    registry.move_champion(client, "my model", 2, "second")
    cli = [sys.executable, "-m", "flows.cli"]
    root = Path(__file__).resolve().parents[1]
    back = subprocess.run([*cli, "rollback", "--repo", str(root), "--name", "my model", "--reason", "bad night"],
                          capture_output=True, text=True, timeout=120)
    assert back.returncode == 0, back.stderr
    assert "from v2 back to v1" in back.stdout
    listing = subprocess.run([*cli, "models", "--repo", str(root), "--name", "my model"], capture_output=True, text=True, timeout=120)
    assert listing.returncode == 0, listing.stderr
    assert "rollback v2 -> v1: bad night" in listing.stdout
    again = subprocess.run([*cli, "rollback", "--repo", str(root), "--name", "nobody", "--reason", "x"],
                           capture_output=True, text=True, timeout=120)
    assert again.returncode == 2 and again.stderr.strip().splitlines()[-1] == "tamis: model 'nobody' has no champion to roll back."


def test_lineage_names_what_reproduces_a_version(tmp_path, store):
    from mlflow import MlflowClient

    client = MlflowClient(store)
    log_stub(tmp_path, "lined", "x")
    client.set_model_version_tag("lined", "1", "tamis_git_commit", "abc123")
    client.set_model_version_tag("lined", "1", "tamis_dvc_validated", "d41d8c")
    out = registry.lineage(client, "lined", 1)
    assert out["version"] == 1 and out["git_commit"] == "abc123" and out["data"] == {"validated": "d41d8c"}
    assert out["run_id"] == client.get_model_version("lined", "1").run_id
    with pytest.raises(StageError, match="has no version 5"):
        registry.lineage(client, "lined", 5)
