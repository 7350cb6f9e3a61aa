"""The whole pipeline, for real: a git + DVC workspace, the Prefect flow on the
local ephemeral API, MLflow on a SQLite file, small data and few epochs."""

from __future__ import annotations

import json
import os
import re
import socket
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
    os.environ["TAMIS_DVC_REMOTE"] = str(base / "dvc-remote")  # the cache a second clone shares (below)
    try:
        from flows.retrain import retrain

        first = retrain(repo=str(repo), overrides=FAST + ["data.inject_noise.rate=0.15"])
        second = retrain(repo=str(repo))
        third = retrain(repo=str(repo), overrides=["calibrate.bootstrap=100"])
        yield repo, first, second, third
    finally:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
        os.environ.pop("TAMIS_DVC_REMOTE", None)


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
    if not ev["final_model"].startswith("variants/teacher."):  # a student shipped: compression made it smaller
        assert ev["by_model"]["final"]["size_bytes"] < ev["by_model"]["teacher"]["size_bytes"]
    else:  # the gate sent the calibrated teacher: the same model, as ONNX
        assert ev["by_model"]["final"]["accuracy"] == pytest.approx(ev["by_model"]["teacher_calibrated"]["accuracy"], abs=0.01)
    from stages import evaluate

    check = ev["calibration_check"]  # the shipped ECE against the raw teacher's, beyond the test rows' noise or not
    assert check["ece"] == pytest.approx(ev["ece"]) and check["raw_teacher_ece"] == pytest.approx(ev["by_model"]["teacher"]["ece"])
    low, high = check["minus_raw_ci95"]
    assert low <= check["minus_raw"] <= high and check["worse_than_raw"] == (low > evaluate.ECE_TOLERANCE)
    assert 0 < check["ece_floor"] < 0.05  # 450 test rows of a ~0.95-accurate model: a floor of a point or two
    audit = ev["audit"]  # noise was injected: the audit is scored against the truth
    assert audit["flipped"] > 50 and audit["precision"] > 0.3 and audit["recall"] > 0.3


def test_mlflow_parent_run_has_one_child_per_stage_with_lineage(flow_runs, mlflow_client):
    repo, first, _, _ = flow_runs
    parent = first["parent_run_id"]
    children = mlflow_client.search_runs(
        [mlflow_client.get_run(parent).info.experiment_id], f"tags.mlflow.parentRunId = '{parent}'"
    )
    run = mlflow_client.get_run(parent).data
    from tamis.config import load_params
    from tamis.tracking import flatten_params

    every = flatten_params(load_params(repo / "params.yaml").model_dump(by_alias=True, mode="json"))
    assert run.params["train.epochs"] == "4" and set(run.params) == set(every)  # every param (batches of 100)
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


NAME = "tamis-digits-label"  # promote.model_name auto: tamis-<data source>-<label>


def test_champion_is_registered_loads_and_predicts(flow_runs, mlflow_client):
    import mlflow.pyfunc
    import pandas as pd

    repo, first, _, _ = flow_runs
    promoted = first["promote"]
    assert promoted["model_name"] == NAME and promoted["version"] == 1 and promoted["registered"]
    gate_passed = json.loads((repo / "metrics/compress.json").read_text())["gate"]["passed"]
    # the first version is champion only if its compress gate passed
    assert promoted["champion_moved"] == gate_passed
    assert (promoted["champion_version"] == 1) == gate_passed
    version = mlflow_client.get_model_version(NAME, "1")
    assert int(mlflow_client.get_model_version_by_alias(NAME, "challenger").version) == 1
    assert version.tags["tamis_parent_run_id"] == first["parent_run_id"]
    assert version.tags["tamis_dvc_validated"]  # DVC's hash of the accepted data
    assert version.tags["tamis_gate_passed"] == str(gate_passed).lower() and version.tags["tamis_promotion_reason"]
    model = mlflow.pyfunc.load_model(f"models:/{NAME}/1")
    test = pd.read_parquet(repo / "data/validated/test.parquet")
    pred = model.predict(test.drop(columns=["row_id", "label"]))
    assert len(pred) == len(test)
    probs = pred[[c for c in pred.columns if c.startswith("proba_")]].to_numpy()
    assert probs.shape[1] == 10 and np.allclose(probs.sum(1), 1.0, atol=1e-4)
    assert (pred["label"].astype(int).to_numpy() == test["label"].to_numpy()).mean() > 0.5


def test_the_parent_run_the_stage_runs_and_dvc_lock_record_the_same_params(flow_runs, mlflow_client):
    """The third run's --set (calibrate.bootstrap=100) is what its parent, its stage runs and dvc.lock hold."""
    from tamis.tracking import flatten_params

    repo, _, _, third = flow_runs
    parent = mlflow_client.get_run(third["parent_run_id"])
    assert parent.data.params["calibrate.bootstrap"] == "100"
    children = mlflow_client.search_runs(
        [parent.info.experiment_id], f"tags.mlflow.parentRunId = '{third['parent_run_id']}'"
    )
    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    executed = [c for c in children if c.data.tags.get("tamis.executed") == "true"]
    assert "calibrate" in {c.data.tags["tamis.stage"] for c in executed}
    for child in executed:
        stage = child.data.tags["tamis.stage"]
        if stage == "promote":
            continue
        recorded = {k: str(v) for k, v in flatten_params(lock[stage]["params"]["params.yaml"]).items()}
        assert child.data.params == recorded, stage
        assert {k: parent.data.params[k] for k in recorded} == recorded, stage


def test_nothing_changed_runs_nothing_and_registers_nothing(flow_runs):
    _, first, second, _ = flow_runs
    assert [s["executed"] for s in second["stages"]] == [False] * len(second["stages"])
    assert second["promote"]["registered"] is False
    assert second["promote"]["version"] == first["promote"]["version"]


def test_a_second_clone_sharing_the_dvc_remote_runs_no_stage(flow_runs, tmp_path):
    """A fresh clone (a new worker) with the same params: every stage comes from the remote's run-cache."""
    from flows.retrain import retrain

    repo, _, _, third = flow_runs
    clone = workspace.create(tmp_path / "clone", source=repo)  # the same code and params.yaml
    result = retrain(repo=str(clone))
    assert [s["stage"] for s in result["stages"] if s["executed"]] == []
    assert [s["stage"] for s in result["stages"] if not s["restored"]] == ["fingerprint"]  # it only hashes the inputs
    assert result["promote"]["registered"] is False and result["promote"]["version"] == third["promote"]["version"]
    shipped = Path("models") / result["evaluate"]["final_model"]
    assert (clone / shipped).read_bytes() == (repo / shipped).read_bytes()
    assert (clone / "dvc.lock").read_text() == (repo / "dvc.lock").read_text()


def test_a_stage_failing_under_dvc_repro_keeps_its_last_good_outputs(flow_runs):
    """DVC deletes a stage's outputs before running it; the failed stage puts them back from the cache."""
    repo = flow_runs[0]
    outputs = ("models/teacher.pt", "metrics/train.json", "plots/train_curve.csv")
    before = {p: (repo / p).read_bytes() for p in outputs}
    params = (repo / "params.yaml").read_text()
    set_params(repo, "train.loss=focal")  # refused when train loads its params
    try:
        proc = subprocess.run([sys.executable, "-m", "dvc", "repro", "--single-item", "train"], cwd=repo,
                              capture_output=True, text=True, timeout=300)
    finally:
        (repo / "params.yaml").write_text(params)
    assert proc.returncode != 0
    assert "train.loss" in proc.stderr and "kept its last good outputs" in proc.stderr, proc.stderr[-2000:]
    assert {p: (repo / p).read_bytes() for p in outputs} == before


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
    # the CLI started the local Prefect server itself (flows/local_server.py), so Prefect started none of its own,
    # and the server that ran the flow is gone once the command has returned
    out = proc.stdout + proc.stderr
    assert "Starting temporary server" not in out, out[-2000:]
    port = int(re.search(r"View at http://127\.0\.0\.1:(\d+)/", out).group(1))
    with socket.socket() as sock:
        assert sock.connect_ex(("127.0.0.1", port)) != 0


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


def ensure_champion(client, name: str) -> int:
    """The comparison tests need a champion; a first version whose FAST-trained gate failed is made one by hand."""
    from tamis import registry

    champion = registry.by_alias(client, name, registry.CHAMPION)
    if champion is None:
        registry.move_champion(client, name, 1, "made champion by the test", kind="manual")
        return 1
    return int(champion.version)


OPEN_GATE = [f"compress.{k}=1" for k in ("max_f1_drop", "max_ece_rise", "max_class_recall_drop", "max_batch_shift")]


def test_a_worse_challenger_never_takes_champion_and_every_decision_is_recorded(flow_runs, mlflow_client):
    """Replaces the workspace's student: an untrained one (near chance) is registered but never champion.

    Its compress gate is opened (else the calibrated teacher would ship instead): the registry's gate must stop it.
    """
    import torch

    from stages import compress, promote
    from tamis.config import apply_overrides, parse_params, read_raw
    from tamis.nets import load_model, save_model

    repo = flow_runs[0]
    params = parse_params(apply_overrides(read_raw(repo / "params.yaml"), OPEN_GATE))
    champion = ensure_champion(mlflow_client, NAME)
    student, encoder, _ = load_model(repo / "models/student.pt")
    torch.manual_seed(1)
    for p in student.parameters():
        p.data = torch.randn_like(p) * 0.01
    identity = {"method": "temperature", "on": "logits", "scale": 1.0, "bias": [0.0] * 10}
    save_model(repo / "models/student.pt", student, encoder, calibration=identity)
    compress.run(params, repo)
    worse = promote.run(params, repo)
    assert worse["registered"] and not worse["champion_moved"] and worse["champion_version"] == champion, worse
    # compress fine-tunes the pruned variant from the teacher, so the shipped one is bad but not always worse
    # overall: the gate stops it on macro-F1, or on a class whose recall it lost
    if "macro-F1" in worse["reason"]:
        assert worse["challenger_macro_f1"] < worse["champion_macro_f1"]
    else:
        assert re.match(r"recall of class '\w+' drops from [\d.]+ to [\d.]+ \(more than promote\.max_class_recall_drop", worse["reason"]), worse
    assert int(mlflow_client.get_model_version_by_alias(NAME, "challenger").version) == worse["version"]
    version = mlflow_client.get_model_version(NAME, str(worse["version"]))
    assert version.tags["tamis_promotion"] == "challenger" and version.tags["tamis_promotion_reason"] == worse["reason"]
    record = mlflow_client.download_artifacts(version.run_id, "promotion.json")
    assert json.loads(Path(record).read_text())["moved"] is False


def test_drift_stops_the_flow_before_anything_downstream_and_the_champion_stays(flow_runs, mlflow_client, tmp_path):
    """After the accepted runs above, a scaled column in new data stops validate: exit 2, one sentence."""
    from tamis import paths
    from tamis.data import load_source

    repo = flow_runs[0]
    accepted = json.loads((repo / paths.accepted_profile(NAME)).read_text())
    assert mlflow_client.get_run(accepted["accepted"]["parent_run_id"]).info.status == "FINISHED"  # an accepted run
    champion = ensure_champion(mlflow_client, NAME)
    versions = len(mlflow_client.search_model_versions())
    shifted = load_source("sklearn:digits", "label")
    shifted["pixel_3_4"] = shifted["pixel_3_4"] * 1.5 + 2.0
    shifted.to_csv(tmp_path / "shifted.csv", index=False)
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{repo.parent / 'mlflow.db'}"}
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "flows.cli", "run", "--repo", str(repo), "--set", f"data.train={tmp_path / 'shifted.csv'}",
             "--set", f"promote.model_name={NAME}"],  # tonight's data for the same model line
            capture_output=True, text=True, timeout=300, env=env,
        )
    finally:
        set_params(repo, "data.train=sklearn:digits", "promote.model_name=auto")
    said = [ln for ln in proc.stderr.splitlines() if ln.startswith("tamis: ")]
    assert proc.returncode == 2 and len(said) == 1, proc.stderr[-2000:]
    last = said[0]
    assert re.match(r"tamis: stage 'validate' failed: drift against the accepted data: feature column 'pixel_3_4': "
                    r"KS statistic 0\.\d+ > 0\.15 \(validate\.drift\.numeric\.threshold", last), last
    assert json.loads((repo / paths.accepted_profile(NAME)).read_text()) == accepted
    assert int(mlflow_client.get_model_version_by_alias(NAME, "champion").version) == champion
    assert len(mlflow_client.search_model_versions()) == versions  # nothing registered under any name
    experiment = mlflow_client.get_experiment_by_name("tamis").experiment_id
    parent = mlflow_client.search_runs([experiment], "tags.`tamis.pipeline` = 'retrain'", order_by=["start_time DESC"])[0]
    assert parent.info.status == "FAILED"
    stages = {c.data.tags["tamis.stage"] for c in mlflow_client.search_runs([experiment], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")}
    assert stages == {"fingerprint", "ingest", "validate"}  # nothing downstream ran


def test_a_reviewed_resplit_run_records_its_fixes_and_compares_only_unseen_rows(flow_runs, mlflow_client, tmp_path):
    """One extra full pipeline run for two behaviours: export -> a scripted reviewer (the truth) -> apply, then the
    next flow run with another seed, whose re-split puts most of the champion's training rows into the new test split.
    """
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

    ensure_champion(mlflow_client, NAME)
    run = retrain(repo=str(repo), overrides=["seed=1", *OPEN_GATE])  # the compress gate lets any variant through
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
    promoted = run["promote"]
    assert promoted["registered"], promoted
    version = mlflow_client.get_model_version(NAME, str(promoted["version"]))
    assert version.tags["tamis_dvc_labels.csv"]  # the registered model names the fixes' DVC hash

    record = json.loads(Path(mlflow_client.download_artifacts(version.run_id, "promotion.json")).read_text())
    assert record["gate_passed"]
    assert record["excluded_rows"] > record["test_rows"] // 2  # ~80% of rows were in the champion's train + calib
    assert record["compared_rows"] + record["excluded_rows"] == record["test_rows"]
    if record["compared_rows"] >= 50:  # promote.min_rows
        assert record["champion"]["rows"] == record["challenger"]["rows"] == record["compared_rows"]
    else:
        assert not promoted["champion_moved"] and "promote.min_rows" in promoted["reason"]


def test_readme_your_data_commands_end_with_a_registered_model_and_no_injected_noise(flow_runs, tmp_path):
    """After the digits runs (demo noise on), the README's own commands on a CSV with other columns (runs last:
    it points the workspace at other data)."""
    from conftest import mixed_table

    repo = flow_runs[0]
    named = {"x1": "weight", "x2": "split"}  # features named like columns tamis adds: read as weight_ / split_
    table = mixed_table(400, seed=1).rename(columns=named)
    table.loc[table.index[:3], "label"] = "c_rare"  # too few rows to learn: dropped with a note, not refused
    table["visits"] = np.arange(len(table)) % 9  # whole numbers and booleans, as a user's file has them
    table["member"] = np.arange(len(table)) % 3 == 0
    table.to_csv(tmp_path / "my.csv", index=False)
    test = mixed_table(120, seed=2).rename(columns=named)
    test["visits"], test["member"] = np.arange(len(test)) % 7, np.arange(len(test)) % 2 == 0
    test.to_csv(tmp_path / "my_test.csv", index=False)
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{repo.parent / 'mlflow.db'}"}
    cmd = [sys.executable, "-m", "flows.cli", "run", "--repo", str(repo),
           "--set", f"data.train={tmp_path / 'my.csv'}", "--set", f"data.test={tmp_path / 'my_test.csv'}",
           "--set", "data.label=label"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "registered 'tamis-my-label' v1" in proc.stdout, proc.stdout[-2000:]
    assert "no noise injected" in proc.stdout
    assert re.search(r"^  warning   1 class\(es\) too rare to learn and check", proc.stdout, re.M), proc.stdout[-2000:]
    card = (repo / "reports/model_card.md").read_text()
    assert "Classes too rare to learn and check" in card and "c_rare (3 row(s)" in card, card[:1500]
    assert "against the raw (uncalibrated) teacher's" in card and "would still show an ECE of about" in card
    assert not (yaml.safe_load((repo / "params.yaml").read_text())["data"]["inject_noise"])
    truth = __import__("pandas").read_parquet(repo / "data/truth/labels.parquet")
    assert truth.empty or not truth["flipped"].any()
    assert re.search(r"^  warning   column\(s\) 'weight' \(as 'weight_'\), 'split' \(as 'split_'\)", proc.stdout, re.M)
    import mlflow.pyfunc

    mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
    as_read = __import__("pandas").read_csv(tmp_path / "my_test.csv")  # int64 and bool columns, as a user reads it
    assert as_read["visits"].dtype == np.int64 and as_read["member"].dtype == bool
    served = mlflow.pyfunc.load_model("models:/tamis-my-label/1").predict(as_read.drop(columns=["label"]))
    accuracy = json.loads((repo / "metrics/evaluate.json").read_text())["accuracy"]
    assert (served["label"] == test["label"]).mean() == pytest.approx(accuracy, abs=1e-9)  # the user's names, served


def test_replay_reruns_the_later_stages_on_a_copy_and_leaves_the_workspace_as_it_was(flow_runs):
    from benchmarks import replay

    repo = flow_runs[0]
    before = {p: (repo / p).read_bytes() for p in ("metrics/compress.json", "metrics/evaluate.json", "models/serving.json")}
    uri = os.environ["MLFLOW_TRACKING_URI"]
    (result,) = replay.main([str(repo), "--from", "compress", "--set", "compress.prune_ratios=[]",
                             "--set", "compress.quantize=[]"])
    assert list(result["gate"]) in (["student.fp32"], ["student.fp32", "teacher.fp32"])
    assert result["shipped"] in ("variants/student.fp32.onnx", "variants/teacher.fp32.onnx")
    assert {"teacher", "student", "final"} <= set(result["test"]) and 0 < result["test"]["final"]["macro_f1"] <= 1
    assert list(result["seconds"]) == ["compress", "evaluate"] and min(result["seconds"].values()) > 0
    assert {p: (repo / p).read_bytes() for p in before} == before and os.environ["MLFLOW_TRACKING_URI"] == uri
