"""The scheduled deployment and the flow's wiring, without running the pipeline."""

from pathlib import Path

import yaml

from flows.retrain import stage_names, write_params

ROOT = Path(__file__).resolve().parents[1]


def test_prefect_yaml_deploys_the_flow_nightly_on_the_gpu_pool():
    from prefect.flows import load_flow_from_entrypoint

    config = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    (deployment,) = config["deployments"]
    flow = load_flow_from_entrypoint(str(ROOT / deployment["entrypoint"]))
    assert flow.name == "tamis-retrain"
    assert deployment["work_pool"]["name"] == "tamis-gpu"
    assert deployment["schedules"][0]["cron"] == "0 2 * * *"
    assert set(deployment["parameters"]) <= set(flow.parameters.properties)


def test_serve_schedule_builds_a_cron_deployment():
    from flows.retrain import retrain

    deployment = retrain.to_deployment(name="tamis-local", cron="0 2 * * *", parameters={"repo": "."})
    assert deployment.schedules[0].schedule.cron == "0 2 * * *"


def test_stages_run_in_dag_order():
    stages = stage_names(ROOT)
    dvc = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    produced_by = {}
    for name in stages:
        for kind in ("outs", "metrics", "plots"):
            for entry in dvc[name].get(kind, []):
                produced_by[entry if isinstance(entry, str) else next(iter(entry))] = name
    for position, name in enumerate(stages):
        for dep in dvc[name].get("deps", []):
            for out, producer in produced_by.items():
                if dep == out or dep.startswith(out + "/") or out.startswith(dep + "/"):
                    assert stages.index(producer) < position, f"{name} runs before {producer}, which writes {dep}"


def test_write_params_keeps_comments_and_checks_first(tmp_path):
    import pytest

    from tamis.config import ConfigError

    text = (ROOT / "params.yaml").read_text()
    (tmp_path / "params.yaml").write_text(text)
    with pytest.raises(ConfigError):
        write_params(tmp_path, ["train.epochs=-1"])
    assert (tmp_path / "params.yaml").read_text() == text  # refused: untouched
    params = write_params(tmp_path, ["train.epochs=7"])
    written = (tmp_path / "params.yaml").read_text()
    assert params.train.epochs == 7 and "epochs: 7" in written
    assert "# early stopping: epochs without a better train.monitor" in written


def test_prefect_yaml_pull_steps_clone_then_install_into_the_clone():
    """A fresh worker: git_clone first, then the install step in the clone's directory (tests/test_deploy.py runs them)."""
    config = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    (clone, install) = config["pull"]
    assert clone["prefect.deployments.steps.git_clone"] == {"id": "clone-step", "repository": "{{ $TAMIS_GIT_URL }}"}
    step = install["prefect.deployments.steps.run_shell_script"]
    assert step["directory"] == "{{ clone-step.directory }}" and "pip install" in step["script"]
    env = config["deployments"][0]["work_pool"]["job_variables"]["env"]
    assert {"TAMIS_GIT_URL", "MLFLOW_TRACKING_URI"} <= set(env)
