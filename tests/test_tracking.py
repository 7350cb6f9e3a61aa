"""Where MLflow keeps what tamis logs."""

from __future__ import annotations

from tamis import tracking


def test_a_sqlite_store_keeps_its_artifacts_beside_the_database_not_in_the_working_directory(tmp_path, monkeypatch):
    store, elsewhere = tmp_path / "store", tmp_path / "elsewhere"
    store.mkdir()
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store / 'mlflow.db'}")
    from mlflow import MlflowClient

    experiment_id = tracking.experiment_id("tamis", tmp_path / "repo")
    experiment = MlflowClient(f"sqlite:///{store / 'mlflow.db'}").get_experiment(experiment_id)
    assert experiment.artifact_location == (store / "mlartifacts").as_uri()
    assert not (elsewhere / "mlruns").exists()
