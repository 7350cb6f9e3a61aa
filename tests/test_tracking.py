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


def test_metrics_named_after_odd_columns_and_classes_are_logged(tmp_path, monkeypatch):
    """Column and class names carry quotes, unicode, '?'; MLflow refuses such metric names unless cleaned."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    import mlflow

    tracking.experiment_id("tamis", tmp_path)
    with mlflow.start_run() as run:
        tracking.log_metrics({"missing_values": {"größe (cm)?": {"share": 0.1}}, "dropped": {"'c_rare'": 3}})
    logged = mlflow.get_run(run.info.run_id).data.metrics
    assert logged == {"missing_values.gr__e _cm__.share": 0.1, "dropped._c_rare_": 3}
