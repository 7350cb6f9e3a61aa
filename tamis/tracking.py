"""MLflow: where runs go, one nested run per stage, lineage tags.

A pipeline run is one parent MLflow run. The flow creates a child run per stage
and hands its id to the stage process in ``TAMIS_RUN_ID``; the stage logs its
params, metrics and artifacts into it. After DVC has run the stage, the flow
tags the child with the stage's dependency hashes from ``dvc.lock``. A stage
run by plain ``dvc repro`` (no flow) logs into a run of its own.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tamis import dvcfiles
from tamis.errors import StageError

RUN_ENV = "TAMIS_RUN_ID"
STAGE_TAG = "tamis.stage"
EXECUTED_TAG = "tamis.executed"
PREFLIGHT_TIMEOUT = 5.0  # seconds: an outage is said at once, not after a stage has run


# mlflow.set_tracking_uri also exports MLFLOW_TRACKING_URI; the URIs set here are
# remembered so that a default is never mistaken for the user's own setting
_DEFAULTS_SET: set[str] = set()


def user_tracking_uri() -> str | None:
    """``MLFLOW_TRACKING_URI`` when the user set it (not when tamis's default put it there)."""
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    return uri if uri and uri not in _DEFAULTS_SET else None


def tracking_uri(root: str | Path = ".") -> str:
    """``MLFLOW_TRACKING_URI`` when set, else a SQLite file in the repository."""
    return user_tracking_uri() or f"sqlite:///{Path(root).resolve() / 'mlflow.db'}"


def masked(uri: str) -> str:
    """``uri`` with its password hidden (``https://user:***@host``): every URI tamis prints or logs goes through this."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(uri)
    if parts.password is None:
        return uri
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{parts.username}:***@{host}"))


def preflight(uri: str) -> None:
    """An http(s) tracking server must answer within ``PREFLIGHT_TIMEOUT`` before a run starts (else bad input)."""
    if not uri.startswith(("http://", "https://")):
        return
    import requests

    try:
        reply = requests.get(f"{uri.rstrip('/')}/health", timeout=PREFLIGHT_TIMEOUT)
        problem = f"it answered HTTP {reply.status_code}" if reply.status_code >= 500 else None
    except requests.RequestException as err:
        problem = f"{type(err).__name__}"
    if problem:
        raise StageError(
            f"MLFLOW_TRACKING_URI: the MLflow tracking server {masked(uri)} is unreachable ({problem});"
            " start it or point MLFLOW_TRACKING_URI at one that runs."
        )


def experiment_id(name: str, root: str | Path = ".") -> str:
    """Set the tracking URI and return the experiment's id, creating it if new.

    A new experiment on a local SQLite store (the default, or one that
    ``MLFLOW_TRACKING_URI`` names) keeps its artifacts beside the database
    (``mlartifacts/``), not under ``mlruns/`` wherever the process happened to
    start; a tracking server decides for itself.
    """
    import mlflow

    uri = tracking_uri(root)
    if user_tracking_uri() is None:
        _DEFAULTS_SET.add(uri)
    mlflow.set_tracking_uri(uri)
    exp = mlflow.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    db = uri.removeprefix("sqlite:///") if uri.startswith("sqlite:///") else None
    location = (Path(db).resolve().parent / "mlartifacts").as_uri() if db and db != ":memory:" else None
    return mlflow.create_experiment(name, artifact_location=location)


def git_commit(root: str | Path = ".") -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True, timeout=10
        )
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def flatten(metrics: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """Nested metrics to ``a.b.c`` keys; lists become ``name.0``, ``name.1``; non-numbers dropped."""
    out: dict[str, float] = {}
    items = metrics.items() if isinstance(metrics, dict) else enumerate(metrics)
    for key, value in items:
        name = f"{prefix}{key}"
        if isinstance(value, bool):
            out[name] = float(value)
        elif isinstance(value, (int, float)) and value == value:
            out[name] = float(value)
        elif isinstance(value, (dict, list)):
            out.update(flatten(value, f"{name}."))
    return out


def declared_params(keys: list[str], params: Any) -> dict[str, Any]:
    """The values of ``keys`` (``train``, ``resample.method``), flattened as DVC records them in dvc.lock."""
    data = params.model_dump(by_alias=True, mode="json")
    out: dict[str, Any] = {}
    for key in keys:
        node: Any = data
        for part in key.split("."):
            node = node[part]
        out.update(flatten_params(node, f"{key}.") if isinstance(node, dict) and node else {key: node})
    return out


@contextlib.contextmanager
def stage_run(
    stage: str, params: Any, root: str | Path = ".", parent_run_id: str | None = None, keys: list[str] | None = None
) -> Iterator[Any]:
    """The MLflow run a stage logs into, with the params dvc.yaml declares for it (or ``keys``), commit and stage tags.

    Inside a flow the run already exists (``TAMIS_RUN_ID``); otherwise a new one
    starts, nested under ``parent_run_id`` when given.
    """
    import mlflow

    exp_id = experiment_id(params.tracking.experiment, root)
    run_id = os.environ.get(RUN_ENV)
    if run_id:
        kwargs: dict[str, Any] = {"run_id": run_id}
    else:
        kwargs = {"experiment_id": exp_id, "run_name": stage, "parent_run_id": parent_run_id}
    with mlflow.start_run(**kwargs) as run:
        mlflow.set_tags({STAGE_TAG: stage, "tamis.git_commit": git_commit(root)})
        logged = declared_params(dvcfiles.stage_params(stage, root) if keys is None else keys, params)
        mlflow.log_params({k: str(v)[:6000] for k, v in logged.items()})
        yield run
        mlflow.set_tag(EXECUTED_TAG, "true")


def flatten_params(section: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in section.items():
        if isinstance(value, dict) and value:
            out.update(flatten_params(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def metric_key(key: str) -> str:
    """``key`` as MLflow accepts a metric name: column and class names (quotes, unicode, ``?``) carry any character."""
    return re.sub(r"[^A-Za-z0-9_\-. :/]", "_", key)[:250]


def log_metrics(metrics: dict[str, Any], prefix: str = "") -> None:
    import mlflow

    flat = flatten(metrics)
    if flat:
        mlflow.log_metrics({metric_key(f"{prefix}{k}"): v for k, v in flat.items()})


def log_dataset(frame: Any, name: str, source: str, context: str) -> str:
    """Record a table as a run input (MLflow computes its digest); returns the digest.

    ``source`` is a file path (recorded as the dataset's source) or ``sklearn:<name>``
    (kept as a tag: MLflow resolves sources by URI and knows no such scheme).
    """
    import warnings

    import mlflow

    with warnings.catch_warnings():  # MLflow's schema hints about integer columns are not for our users
        warnings.simplefilter("ignore")
        if source.startswith("sklearn:"):
            dataset = mlflow.data.from_pandas(frame, name=name)
            mlflow.set_tag(f"tamis.source.{name}", source)
        else:
            dataset = mlflow.data.from_pandas(frame, source=str(Path(source).resolve()), name=name)
    mlflow.log_input(dataset, context=context)
    return dataset.digest
