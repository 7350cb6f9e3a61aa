"""The retraining flow: every DVC stage as a Prefect task, then promote.

Each task runs its stage through ``dvc repro --single-item``, so DVC decides
what changed and an unchanged stage is skipped; the flow adds retries (not for
bad input, which stays bad), one MLflow parent run per pipeline run with a
child per stage tagged with DVC's dependency hashes, a schedule
(``prefect.yaml`` / ``tamis serve``) and the final registry promotion. A run
that gets through promote is accepted: its data profile becomes the drift
gate's reference (``data/accepted/profile.json``) for the next run.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.exceptions import TerminationSignal

from flows import dvc_session
from tamis import drift, dvcfiles, lock, paths, processes, tracking
from tamis.contract import NOTE_PREFIX, warning_prefix
from tamis.errors import StageError
from tamis.config import (
    Params,
    apply_overrides,
    load_params,
    parse_params,
    read_raw,
)


# how a stop reaches the flow: tamis's own SIGINT handler, or Prefect's SIGTERM bridge (it swaps tamis's out while a flow runs)
STOPPED = (processes.Interrupted, TerminationSignal, KeyboardInterrupt)


class StageFailed(RuntimeError):
    """A DVC stage exited non-zero; ``bad_input`` when the stage said why in one line."""

    def __init__(self, stage: str, message: str, bad_input: bool):
        super().__init__(f"stage '{stage}' failed: {message}")
        self.stage, self.message, self.bad_input = stage, message, bad_input


class _NoTracebackForBadInput(logging.Filter):
    """Prefect logs a failed task and flow with the exception's traceback; for bad input (a stage's one sentence)
    that is ~40 lines of tamis internals above the sentence, so the record keeps its line and loses the traceback.
    A crash keeps its traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, StageError) or getattr(exc, "bad_input", False):
            record.exc_info, record.exc_text = None, None
        return True


def quiet_bad_input() -> None:
    """Install the filter on Prefect's run loggers, once (a scheduled ``tamis serve`` runs the flow again)."""
    for name in ("prefect.task_runs", "prefect.flow_runs"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _NoTracebackForBadInput) for f in logger.filters):
            logger.addFilter(_NoTracebackForBadInput())


def stage_names(repo: Path) -> list[str]:
    """The stages of dvc.yaml, in file order (which is DAG order)."""
    return list(dvcfiles.stages(repo))


def dvc(repo: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run DVC from this environment, with this environment's ``python`` first on PATH (in the run's one DVC
    process while ``dvc_session.session`` is open)."""
    env = dict(env or os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return dvc_session.run(repo, list(args), env)


REMOTE_ENV = "TAMIS_DVC_REMOTE"  # a folder, s3://..., gs://...: where clones and workers share stage results
SHARED_REMOTE = "tamis-shared"


def shared_remote(repo: Path) -> str | None:
    """The DVC remote this run shares its stages through, or None.

    ``TAMIS_DVC_REMOTE`` becomes the default remote of this clone (in
    ``.dvc/config.local``, never committed); without it, a default remote the
    repository configures itself (``dvc remote add -d``) is used.
    """
    import configparser

    url = os.environ.get(REMOTE_ENV, "").strip()
    if url.startswith("{{"):  # prefect.yaml's template with the variable unset when deploying
        url = ""
    local = repo / ".dvc" / "config.local"
    if url:
        if "://" not in url:
            url = str(Path(url).expanduser().resolve())
        if f"url = {url}\n" not in (local.read_text() if local.exists() else ""):
            for args in (("remote", "add", "--local", "--force", SHARED_REMOTE, url), ("remote", "default", "--local", SHARED_REMOTE)):
                proc = dvc(repo, *args)
                if proc.returncode != 0:
                    raise RuntimeError(f"{REMOTE_ENV}={tracking.masked(url)}: DVC refused it as a remote: {_last_error(proc)}")
        return SHARED_REMOTE
    for name in ("config.local", "config"):
        config = configparser.ConfigParser()
        config.read(repo / ".dvc" / name)
        if config.has_option("core", "remote"):
            return config.get("core", "remote")
    return None


def push_shared(repo: Path, remote: str) -> str:
    """After the stages: their outputs and DVC's run-cache to the shared remote. A failed push is a warning, not a failed run."""
    proc = dvc(repo, "push", "--run-cache", "--remote", remote)
    return "pushed" if proc.returncode == 0 else f"not pushed: {_last_error(proc)}"


def fingerprint_recorded(repo: Path, params: Params) -> bool:
    """Run the always-run ``fingerprint`` stage here; True when dvc.lock already records exactly this run.

    It only hashes the inputs, and most runs find them unchanged: then ``dvc
    repro`` of it (~2 s) would rewrite the same lock entry, so the flow skips
    DVC for it. Any difference (inputs, params, code, command) goes through DVC.
    """
    import hashlib

    from stages import fingerprint

    fingerprint.run(params, repo)
    entry, declared = dvcfiles.lock_entry("fingerprint", repo), dvcfiles.stages(repo).get("fingerprint", {})
    files = {d["path"]: d.get("md5") for d in entry.get("deps", []) + entry.get("outs", [])}
    wanted = {next(iter(o)) if isinstance(o, dict) else o for o in declared.get("outs", [])} | set(declared.get("deps", []))
    same_files = set(files) == wanted and all(
        (repo / p).is_file() and hashlib.md5((repo / p).read_bytes()).hexdigest() == md5 for p, md5 in files.items())
    keys = dvcfiles.stage_params("fingerprint", repo)
    values = params.model_dump(by_alias=True, mode="json")
    current = {key: _lookup(values, key) for key in keys}
    return same_files and entry.get("cmd") == declared.get("cmd") and entry.get("params", {}).get("params.yaml") == current


def _lookup(values: dict, dotted: str) -> Any:
    for part in dotted.split("."):
        values = values.get(part) if isinstance(values, dict) else None
    return values


def changed_stages(repo: Path) -> set[str]:
    """Stages whose own deps, params or outs differ from dvc.lock right now."""
    proc = dvc(repo, "status", "--json")
    if proc.returncode != 0:
        return set(stage_names(repo))  # let each repro find out and say why
    text = proc.stdout.strip()
    status = json.loads(text[text.index("{") :]) if "{" in text else {}
    return {name.split(":")[-1] for name in status}


PID_TAG, HOST_TAG = "tamis.pid", "tamis.host"  # which process owns a RUNNING run (see mark_killed_runs)


def owner_tags() -> dict[str, str]:
    """Tags naming this process, so a later run can tell a RUNNING run whose process died."""
    return {PID_TAG: str(os.getpid()), HOST_TAG: socket.gethostname()}


def mark_killed_runs(client, experiment_id: str) -> list[str]:
    """Runs of this host left RUNNING by a tamis process that is gone (SIGKILL, power cut): mark them KILLED."""
    stale = client.search_runs(
        [experiment_id], f"attributes.status = 'RUNNING' and tags.`{HOST_TAG}` = '{socket.gethostname()}'"
    )
    killed = [r.info.run_id for r in stale if not processes.alive(int(r.data.tags.get(PID_TAG) or 0))]
    for run_id in killed:
        client.set_terminated(run_id, "KILLED")
    return killed


def _not_bad_input(task, task_run, state) -> bool:
    exc = state.result(raise_on_failure=False)
    return not getattr(exc, "bad_input", False)


@task(retries=2, retry_delay_seconds=5, retry_condition_fn=_not_bad_input, task_run_name="{stage}")
def run_stage(stage: str, repo: str, parent_run_id: str, experiment_id: str, needs_dvc: bool, pull: bool = False) -> dict[str, Any]:
    """One DVC stage in its own MLflow child run; skipped without DVC when nothing upstream changed.

    With ``pull`` (a shared remote), a stage the remote's run-cache has seen
    with the same deps and params is restored from it instead of run.
    """
    from mlflow import MlflowClient

    logger = get_run_logger()
    root = Path(repo)
    client = MlflowClient(tracking.tracking_uri(root))
    child = client.create_run(
        experiment_id,
        run_name=stage,
        tags={"mlflow.parentRunId": parent_run_id, tracking.STAGE_TAG: stage, **owner_tags()},
    ).info.run_id
    start = time.perf_counter()
    if needs_dvc:
        try:
            proc = dvc(root, "repro", "--single-item", *(["--pull"] if pull else []), stage,
                       env={**os.environ, tracking.RUN_ENV: child})
        except STOPPED:
            client.set_terminated(child, "KILLED")
            raise
        for line in [ln for ln in proc.stderr.splitlines() if ln.startswith(NOTE_PREFIX)]:
            logger.info("%s", line)  # how the table was read (a separator, an encoding), a failed stage's too
        if proc.returncode != 0:
            client.set_terminated(child, "FAILED")
            said = [ln for ln in proc.stderr.splitlines() if ln.startswith(f"tamis {stage}: ")]
            message = said[-1].split(": ", 1)[1] if said else _last_error(proc)
            raise StageFailed(stage, message, bad_input=bool(said))
    # a stage's warnings (rows or columns left out, a demo setting on real data) reach the terminal and the summary
    warnings = [ln for ln in proc.stderr.splitlines() if ln.startswith(warning_prefix(stage))] if needs_dvc else []
    for line in warnings:
        logger.warning("%s", line)
    executed = client.get_run(child).data.tags.get(tracking.EXECUTED_TAG) == "true"
    restored = needs_dvc and "is cached - skipping run" in proc.stdout + proc.stderr  # from the run-cache
    tags = {f"dvc.dep.{path}": md5 for path, md5 in dvcfiles.lock_hashes(stage, root).items()}
    if not executed:
        tags[tracking.EXECUTED_TAG] = "false"
    if restored:
        tags["tamis.restored_from_run_cache"] = "true"
    log_batch(client, child, tags=tags)
    client.set_terminated(child, "FINISHED")
    seconds = time.perf_counter() - start
    how = "ran" if executed else "restored from the shared DVC cache" if restored else "unchanged, skipped"
    logger.info("%s: %s in %.1fs", stage, how, seconds)
    return {"stage": stage, "executed": executed, "restored": restored, "seconds": seconds, "warnings": warnings}


def log_batch(client, run_id: str, params: dict | None = None, metrics: dict | None = None, tags: dict | None = None) -> None:
    """Params, metrics and tags in as few requests as MLflow allows (100 params per batch): one call each is slow."""
    from mlflow.entities import Metric, Param, RunTag

    now = int(time.time() * 1000)
    params = [Param(k, v) for k, v in (params or {}).items()]
    for i in range(0, max(len(params), 1), 100):
        client.log_batch(
            run_id,
            params=params[i : i + 100],
            metrics=[Metric(k, float(v), now, 0) for k, v in (metrics or {}).items()] if i == 0 else [],
            tags=[RunTag(k, v) for k, v in (tags or {}).items()] if i == 0 else [],
        )


def _last_error(proc: subprocess.CompletedProcess) -> str:
    lines = [ln for ln in (proc.stderr + proc.stdout).splitlines() if ln.strip()]
    errors = [ln for ln in lines if "ERROR" in ln or "Error" in ln]
    return (errors or lines or ["no output"])[-1].strip()


@task(retries=1, retry_delay_seconds=5)
def promote(repo: str, parent_run_id: str) -> dict[str, Any]:
    from stages import (
        promote as promote_stage,  # imported when needed: it pulls in pandas and the pyfunc model
    )

    return promote_stage.run(load_params(Path(repo) / "params.yaml"), Path(repo), parent_run_id)


def write_params(repo: Path, overrides: list[str]) -> Params:
    """Check the overrides against the whole params file, then write them into it.

    params.yaml stays the single record of what ran (as ``dvc exp run -S`` does);
    comments survive because ruamel.yaml rewrites it.
    """
    path = repo / "params.yaml"
    params = parse_params(apply_overrides(read_raw(path), overrides), f"{path} with --set overrides")
    if overrides:
        from ruamel.yaml import YAML

        rt = YAML()
        rt.preserve_quotes = True
        data = rt.load(path.read_text())
        data = apply_overrides(data, overrides)
        tmp = path.with_name(".params.yaml.tmp")
        with tmp.open("w") as fh:
            rt.dump(data, fh)
        tmp.replace(path)
    return params


@contextlib.contextmanager
def claim(root: Path) -> Iterator[None]:
    """Own the repository for a run: its lock, then a reachable tracking server; both before anything is written."""
    with lock.hold(root):
        tracking.preflight(tracking.tracking_uri(root))
        yield


@flow(name="tamis-retrain", log_prints=True)
def retrain(repo: str = ".", overrides: list[str] | None = None) -> dict[str, Any]:
    """Run the pipeline in ``repo`` (a tamis checkout with DVC initialised) and promote.

    The run owns the repository (``claim``); its ``overrides`` go into
    params.yaml under the lock, so the parent run, the stage runs and dvc.lock
    record the same values, and a failed run puts params.yaml back as it was.
    """
    root = Path(repo).resolve()
    quiet_bad_input()
    with claim(root):
        before = (root / "params.yaml").read_bytes()
        try:
            with dvc_session.session(root):
                return _run_pipeline(root, list(overrides or []))
        except BaseException:
            if (root / "params.yaml").read_bytes() != before:
                (root / "params.yaml").write_bytes(before)
            raise


def _run_pipeline(root: Path, overrides: list[str]) -> dict[str, Any]:
    from mlflow import MlflowClient

    params = write_params(root, overrides)
    experiment_id = tracking.experiment_id(params.tracking.experiment, root)
    client = MlflowClient(tracking.tracking_uri(root))
    mark_killed_runs(client, experiment_id)
    parent = client.create_run(
        experiment_id,
        run_name=f"retrain-{time.strftime('%Y%m%d-%H%M%S')}",
        tags={"tamis.pipeline": "retrain", "tamis.git_commit": tracking.git_commit(root), **owner_tags()},
    ).info.run_id
    flat = tracking.flatten_params(params.model_dump(by_alias=True, mode="json"))
    log_batch(client, parent, params={key: str(value)[:6000] for key, value in flat.items()})
    stages = stage_names(root)
    remote = shared_remote(root)
    results: list[dict[str, Any]] = []
    start = time.perf_counter()
    try:
        # fingerprint always runs (it hashes the inputs; through DVC only when its lock entry would change);
        # after it, one `dvc status` says which stages changed, and DVC is only asked about those and what follows
        try:
            recorded = fingerprint_recorded(root, params)
        except StageError as err:
            raise StageFailed(stages[0], str(err), bad_input=True) from None
        results.append(run_stage(stages[0], str(root), parent, experiment_id, not recorded))
        pending = changed_stages(root)
        upstream_ran = False
        for stage in stages[1:]:
            needs = upstream_ran or stage in pending
            result = run_stage(stage, str(root), parent, experiment_id, needs, pull=remote is not None)
            results.append(result)
            upstream_ran = upstream_ran or result["executed"] or needs
        shared = push_shared(root, remote) if remote and (upstream_ran or pending) else None
        promote_start = time.perf_counter()
        promoted = promote(str(root), parent)
        promote_seconds = time.perf_counter() - promote_start
        # the run is accepted: its data becomes the drift gate's reference for the next run
        accepted = drift.accept(root, promoted["model_name"], {"parent_run_id": parent, "model_version": promoted["version"],
                                       "champion_moved": promoted["champion_moved"]})
    except BaseException as err:
        client.set_terminated(parent, "KILLED" if isinstance(err, STOPPED) else "FAILED")
        raise
    evaluation = json.loads((root / paths.metrics("evaluate")).read_text())
    metrics = {key: evaluation[key] for key in ("accuracy", "macro_f1", "ece")}
    metrics.update({"wall_seconds": time.perf_counter() - start, "seconds.promote": promote_seconds})
    metrics.update({f"seconds.{r['stage']}": r["seconds"] for r in results})
    log_batch(client, parent, metrics=metrics)
    for report in (paths.MODEL_CARD, paths.VALIDATION_HTML, accepted.relative_to(root), "dvc.lock"):
        if (root / report).exists():
            client.log_artifact(parent, str(root / report))
    client.set_terminated(parent, "FINISHED")
    noise = params.data.inject_noise.model_dump() if params.data.inject_noise else None
    return {"parent_run_id": parent, "stages": results, "promote": promoted, "evaluate": evaluation, "inject_noise": noise,
            "shared_cache": {"remote": remote, "push": shared} if remote else None}
