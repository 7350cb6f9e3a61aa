"""The whole pipeline, for real: a git + DVC workspace, the Prefect flow on the
local ephemeral API, MLflow on a SQLite file, small data and few epochs."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import FAST, set_params

from flows import workspace

pytestmark = pytest.mark.e2e


def declared_outputs(repo: Path) -> list[str]:
    stages = yaml.safe_load((repo / "dvc.yaml").read_text())["stages"]
    paths = []
    for stage in stages.values():
        for kind in ("outs", "metrics", "plots"):
            for entry in stage.get(kind, []):
                paths.append(entry if isinstance(entry, str) else next(iter(entry)))
    return paths


@pytest.fixture(scope="module")
def flow_runs(tmp_path_factory, prefect_api):
    """Three flow runs in one workspace: first, nothing changed, a calibration param changed."""
    import os

    base = tmp_path_factory.mktemp("e2e")
    repo = workspace.create(base / "repo")
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{base / 'mlflow.db'}"
    try:
        from flows.retrain import retrain

        first = retrain(repo=str(repo), overrides=FAST + ["data.inject_noise.rate=0.15"])
        second = retrain(repo=str(repo))
        third = retrain(repo=str(repo), overrides=["calibrate.bootstrap=100"])
        yield repo, first, second, third
    finally:
        os.environ.pop("MLFLOW_TRACKING_URI", None)


@pytest.fixture
def mlflow_client(flow_runs, monkeypatch, tmp_path_factory):
    from mlflow import MlflowClient

    repo = flow_runs[0]
    uri = f"sqlite:///{repo.parent / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    import mlflow

    mlflow.set_tracking_uri(uri)
    return MlflowClient(uri)


def test_every_stage_ran_and_wrote_its_outputs(flow_runs):
    repo, first, _, _ = flow_runs
    assert all(s["executed"] for s in first["stages"] if s["stage"] != "fingerprint")
    missing = [p for p in declared_outputs(repo) if not (repo / p).exists()]
    assert not missing
    assert (repo / "dvc.lock").exists()


def test_evaluate_metrics_are_sane(flow_runs):
    repo = flow_runs[0]
    ev = json.loads((repo / "metrics/evaluate.json").read_text())
    assert set(ev["by_model"]) == {"teacher", "teacher_calibrated", "student", "final"}
    assert ev["accuracy"] == ev["by_model"]["final"]["accuracy"] and ev["macro_f1"] == ev["by_model"]["final"]["macro_f1"]
    for name, m in ev["by_model"].items():
        assert 0.5 < m["accuracy"] <= 1.0, name  # digits with a few epochs is far above chance (0.1)
        assert m["size_bytes"] > 0 and len(m["per_class_recall"]) == 10
    # a 4-epoch teacher is under-confident; every calibrated model must be far closer to honest
    for name in ("teacher_calibrated", "student", "final"):
        assert ev["by_model"][name]["ece"] < 0.15, name
    assert ev["by_model"]["teacher_calibrated"]["ece"] <= ev["by_model"]["teacher"]["ece"] + 0.02
    assert ev["by_model"]["final"]["size_bytes"] < ev["by_model"]["teacher"]["size_bytes"]
    audit = ev["audit"]  # noise was injected: the audit is scored against the truth
    assert audit["flipped"] > 50 and audit["precision"] > 0.3 and audit["recall"] > 0.3


def test_mlflow_parent_run_has_one_child_per_stage_with_lineage(flow_runs, mlflow_client):
    repo, first, _, _ = flow_runs
    parent = first["parent_run_id"]
    children = mlflow_client.search_runs(
        [mlflow_client.get_run(parent).info.experiment_id], f"tags.mlflow.parentRunId = '{parent}'"
    )
    run = mlflow_client.get_run(parent).data
    assert run.params["train.epochs"] == "4" and len(run.params) > 100  # logged in batches of 100
    assert {"macro_f1", "wall_seconds", "seconds.train", "seconds.promote"} <= set(run.metrics)
    stages = [c.data.tags["tamis.stage"] for c in children]
    dvc_stages = list(yaml.safe_load((repo / "dvc.yaml").read_text())["stages"])
    assert sorted(stages) == sorted(dvc_stages + ["promote"])
    train = next(c for c in children if c.data.tags["tamis.stage"] == "train")
    assert train.data.tags["tamis.executed"] == "true"
    assert train.data.params["train.epochs"] == "4"
    assert "calib.macro_f1" in train.data.metrics
    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]["train"]["deps"]
    for dep in lock:
        assert train.data.tags[f"dvc.dep.{dep['path']}"] == dep["md5"]
    assert re.fullmatch(r"[0-9a-f]{40}", train.data.tags["tamis.git_commit"])
    ingest = next(c for c in children if c.data.tags["tamis.stage"] == "ingest")
    assert mlflow_client.get_run(ingest.info.run_id).inputs.dataset_inputs  # the data digest


def test_champion_is_registered_loads_and_predicts(flow_runs, mlflow_client):
    import mlflow.pyfunc
    import pandas as pd

    repo, first, _, _ = flow_runs
    promoted = first["promote"]
    assert promoted["champion_moved"] and promoted["version"] == 1
    version = mlflow_client.get_model_version_by_alias("tamis", "champion")
    assert int(version.version) == 1
    assert int(mlflow_client.get_model_version_by_alias("tamis", "challenger").version) == 1
    assert version.tags["tamis_parent_run_id"] == first["parent_run_id"]
    assert version.tags["tamis_dvc_validated"]  # DVC's hash of the accepted data
    model = mlflow.pyfunc.load_model("models:/tamis@champion")
    test = pd.read_parquet(repo / "data/validated/test.parquet")
    pred = model.predict(test.drop(columns=["row_id", "label"]))
    assert len(pred) == len(test)
    probs = pred[[c for c in pred.columns if c.startswith("proba_")]].to_numpy()
    assert probs.shape[1] == 10 and np.allclose(probs.sum(1), 1.0, atol=1e-4)
    assert (pred["label"].astype(int).to_numpy() == test["label"].to_numpy()).mean() > 0.5


def test_nothing_changed_runs_nothing_and_registers_nothing(flow_runs):
    _, first, second, _ = flow_runs
    assert [s["executed"] for s in second["stages"]] == [False] * len(second["stages"])
    assert second["promote"]["registered"] is False
    assert second["promote"]["version"] == first["promote"]["version"]


def test_runtime_settings_rerun_nothing(flow_runs):
    """--jobs / --threads only set parallelism: after a full run, changing them executes no stage."""
    repo = flow_runs[0]
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{repo.parent / 'mlflow.db'}"}
    proc = subprocess.run(
        [sys.executable, "-m", "flows.cli", "run", "--repo", str(repo), "--jobs", "1", "--threads", "2"],
        capture_output=True, text=True, timeout=300, env=env,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "0 stage(s) ran: none, all up to date" in proc.stdout, proc.stdout[-2000:]


def test_calibration_change_reruns_only_calibrate_and_after(flow_runs):
    _, _, _, third = flow_runs
    ran = {s["stage"] for s in third["stages"] if s["executed"]}
    assert "calibrate" in ran
    assert ran <= {"calibrate", "distill", "compress", "evaluate"}


def test_dvc_repro_reruns_only_calibrate_and_after(flow_runs, tmp_path):
    repo = flow_runs[0]
    set_params(repo, "calibrate.bootstrap=120")
    proc = subprocess.run(
        [sys.executable, "-m", "dvc", "repro"], cwd=repo, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr
    ran = set(re.findall(r"Running stage '(\w+)'", proc.stdout))
    assert "calibrate" in ran
    assert ran <= {"fingerprint", "calibrate", "distill", "compress", "evaluate"}  # fingerprint only hashes inputs


def test_cli_refuses_an_unknown_key_before_running(tmp_path):
    repo = workspace.create(tmp_path / "repo")
    proc = subprocess.run(
        [sys.executable, "-m", "flows.cli", "run", "--repo", str(repo), "--set", "train.epohcs=3"],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 2
    assert "unknown key 'train.epohcs'" in proc.stderr.strip().splitlines()[-1]
    assert "epohcs" not in (repo / "params.yaml").read_text()


def test_champion_moves_only_for_a_model_at_least_as_good(flow_runs, mlflow_client):
    """Runs last in this module: it replaces the workspace's student twice."""
    import torch

    from stages import compress, distill, promote
    from tamis.config import apply_overrides, parse_params, read_raw
    from tamis.nets import load_model, save_model

    repo = flow_runs[0]
    params = parse_params(read_raw(repo / "params.yaml"))
    champion = int(mlflow_client.get_model_version_by_alias("tamis", "champion").version)

    student, encoder, _ = load_model(repo / "models/student.pt")
    torch.manual_seed(1)
    for p in student.parameters():
        p.data = torch.randn_like(p) * 0.01  # an untrained student: near chance
    identity = {"method": "temperature", "on": "logits", "scale": 1.0, "bias": [0.0] * 10}
    save_model(repo / "models/student.pt", student, encoder, calibration=identity)
    compress.run(params, repo)
    worse = promote.run(params, repo)
    assert worse["registered"] and worse["challenger_macro_f1"] < worse["champion_macro_f1"]
    assert not worse["champion_moved"] and worse["champion_version"] == champion
    assert int(mlflow_client.get_model_version_by_alias("tamis", "challenger").version) == worse["version"]

    better_params = parse_params(apply_overrides(read_raw(repo / "params.yaml"), ["distill.epochs=25"]))
    distill.run(better_params, repo)
    compress.run(better_params, repo)
    better = promote.run(better_params, repo)
    assert better["challenger_macro_f1"] > better["champion_macro_f1"]
    assert better["champion_moved"] and better["champion_version"] == better["version"] > worse["version"]


def test_drift_stops_the_flow_before_anything_downstream_and_the_champion_stays(flow_runs, mlflow_client, tmp_path):
    """After the accepted runs above, a scaled column in new data stops validate: exit 2, one sentence."""
    from tamis import paths
    from tamis.data import load_source

    repo = flow_runs[0]
    accepted = json.loads((repo / paths.ACCEPTED_PROFILE).read_text())
    assert mlflow_client.get_run(accepted["accepted"]["parent_run_id"]).info.status == "FINISHED"  # an accepted run
    champion = mlflow_client.get_model_version_by_alias("tamis", "champion").version
    versions = len(mlflow_client.search_model_versions("name = 'tamis'"))
    shifted = load_source("sklearn:digits", "label")
    shifted["pixel_3_4"] = shifted["pixel_3_4"] * 1.5 + 2.0
    shifted.to_csv(tmp_path / "shifted.csv", index=False)
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{repo.parent / 'mlflow.db'}"}
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "flows.cli", "run", "--repo", str(repo), "--set", f"data.train={tmp_path / 'shifted.csv'}"],
            capture_output=True, text=True, timeout=300, env=env,
        )
    finally:
        set_params(repo, "data.train=sklearn:digits")
    said = [ln for ln in proc.stderr.splitlines() if ln.startswith("tamis: ")]
    assert proc.returncode == 2 and len(said) == 1, proc.stderr[-2000:]
    last = said[0]
    assert re.match(r"tamis: stage 'validate' failed: drift against the accepted data: feature column 'pixel_3_4': "
                    r"KS statistic 0\.\d+ > 0\.15 \(validate\.drift\.numeric\.threshold", last), last
    assert json.loads((repo / paths.ACCEPTED_PROFILE).read_text()) == accepted
    assert mlflow_client.get_model_version_by_alias("tamis", "champion").version == champion
    assert len(mlflow_client.search_model_versions("name = 'tamis'")) == versions
    experiment = mlflow_client.get_experiment_by_name("tamis").experiment_id
    parent = mlflow_client.search_runs([experiment], "tags.`tamis.pipeline` = 'retrain'", order_by=["start_time DESC"])[0]
    assert parent.info.status == "FAILED"
    stages = {c.data.tags["tamis.stage"] for c in mlflow_client.search_runs([experiment], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")}
    assert stages == {"fingerprint", "ingest", "validate"}  # nothing downstream ran


def test_review_loop_through_the_flow_records_the_fixes_it_used(flow_runs, mlflow_client, tmp_path):
    """export -> a scripted reviewer (the truth) -> apply -> the next flow run: the one extra full pipeline run."""
    import pandas as pd

    from flows.cli import main
    from flows.retrain import retrain
    from tamis import paths, review

    repo = flow_runs[0]
    assert main(["review", "export", "--repo", str(repo), "--out", str(tmp_path / "review.csv"), "--top", "40"]) == 0
    filled = pd.read_csv(tmp_path / "review.csv", dtype=str, keep_default_na=False)
    truth = pd.read_parquet(repo / paths.TRUTH).set_index("row_id")
    train = (filled["split"] == "train") & filled["issues"].str.contains("label")
    row = filled["row_id"].astype(int)
    hit = train & row.map(truth["flipped"]).fillna(False).astype(bool)
    filled.loc[train, "decision"] = "keep"
    filled.loc[hit, "decision"] = "relabel"
    filled.loc[hit, "reviewed_label"] = row[hit].map(truth["true_label"]).astype(str)
    filled.to_csv(tmp_path / "review.csv", index=False)
    assert main(["review", "apply", str(tmp_path / "review.csv"), "--repo", str(repo)]) == 0

    run = retrain(repo=str(repo))
    ran = {s["stage"] for s in run["stages"] if s["executed"]}
    assert {"ingest", "validate", "audit", "train"} <= ran
    children = mlflow_client.search_runs(
        [mlflow_client.get_run(run["parent_run_id"]).info.experiment_id], f"tags.mlflow.parentRunId = '{run['parent_run_id']}'"
    )
    ingest_run = next(c for c in children if c.data.tags["tamis.stage"] == "ingest")
    assert ingest_run.data.tags["tamis.label_fixes_md5"] == review.fixes_digest(repo)
    assert ingest_run.data.metrics["label_fixes.matched"] >= train.sum()  # >: a reviewed row's exact copies too
    audit = json.loads((repo / paths.metrics("audit")).read_text())["review"]
    assert audit["trusted_rows"] >= train.sum()
    assert audit["label_issue_precision"] == pytest.approx(hit.sum() / train.sum())
    version = mlflow_client.get_model_version("tamis", str(run["promote"]["version"]))
    assert version.tags["tamis_dvc_labels.csv"]  # the registered model names the fixes' DVC hash
