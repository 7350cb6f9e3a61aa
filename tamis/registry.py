"""The MLflow model registry as tamis uses it: versions, aliases with a history, rollback, lineage, and
scoring a version with its own logged code.

MLflow keeps no alias history, so every move of ``champion`` is appended to a
JSON list on the registered model (tag ``tamis_alias_history``, newest last)
and stamped on the versions involved. Versions are found by listing and
filtering in Python, never by a filter string built from a name: a model
called ``churn's model`` must work.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pandas as pd

from tamis.data import table_stem, user_names
from tamis.errors import StageError

CHAMPION, CHALLENGER = "champion", "challenger"
HISTORY_TAG = "tamis_alias_history"
HISTORY_KEEP = 50  # alias moves kept on the model (a tag holds at most 5000 characters)
DIGEST_TAG = "tamis_model_digest"
ROLLED_BACK_TAG = "tamis_rolled_back"


def model_name(configured: str, source: str, label: str) -> str:
    """``promote.model_name``, or for ``auto`` ``tamis-<data source>-<label>``: other data starts its own line.

    (Data whose file name changes every night should set ``promote.model_name``.)
    """
    if configured != "auto":
        return configured
    stem = source.split(":", 1)[1] if source.startswith("sklearn:") else table_stem(Path(source))
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", f"tamis-{stem}-{label}").strip("-")


def versions(client, name: str) -> list[Any]:
    """Every version of registered model ``name``, oldest first."""
    found = [v for v in client.search_model_versions() if v.name == name]
    return sorted(found, key=lambda v: int(v.version))


def by_alias(client, name: str, alias: str) -> Any | None:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def history(client, name: str) -> list[dict[str, Any]]:
    """The recorded moves of ``champion``, oldest first: ``{at, from, to, reason, kind}``."""
    from mlflow.exceptions import MlflowException

    try:
        tags = client.get_registered_model(name).tags
    except MlflowException:
        return []
    return json.loads(tags.get(HISTORY_TAG, "[]"))


def move_champion(client, name: str, version: int, reason: str, kind: str = "promote") -> dict[str, Any]:
    """Point ``champion`` at ``version`` and record the move (what, when, why) on the model and the versions."""
    before = by_alias(client, name, CHAMPION)
    event = {
        "at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "from": int(before.version) if before else None,
        "to": int(version),
        "reason": reason[:500],
        "kind": kind,
    }
    client.set_registered_model_alias(name, CHAMPION, str(version))
    events = (history(client, name) + [event])[-HISTORY_KEEP:]
    client.set_registered_model_tag(name, HISTORY_TAG, json.dumps(events))
    client.set_model_version_tag(name, str(version), "tamis_champion_since", event["at"])
    if before is not None:
        client.set_model_version_tag(name, before.version, "tamis_champion_until", event["at"])
    return event


def rollback(client, name: str, reason: str, to: int | None = None) -> dict[str, Any]:
    """Move ``champion`` back: to ``to``, or to the version that was champion before the current one."""
    current = by_alias(client, name, CHAMPION)
    if current is None:
        raise StageError(f"model '{name}' has no champion to roll back.")
    if to is None:
        earlier = [e for e in history(client, name) if e["to"] == int(current.version) and e["from"] is not None]
        if not earlier:
            raise StageError(
                f"model '{name}' has no recorded champion before v{current.version}; name one with --to VERSION."
            )
        to = earlier[-1]["from"]
    known = {int(v.version) for v in versions(client, name)}
    if to not in known:
        raise StageError(f"model '{name}' has no version {to}; `tamis models` lists {sorted(known)}.")
    if to == int(current.version):
        raise StageError(f"v{to} of '{name}' is already the champion.")
    event = move_champion(client, name, to, reason, kind="rollback")
    client.set_model_version_tag(name, current.version, ROLLED_BACK_TAG, f"{event['at']}: {reason}"[:5000])
    return event


def describe(client, name: str) -> list[dict[str, Any]]:
    """One row per version: metrics, data hashes, commit, gate, aliases and how it was promoted."""
    from mlflow.exceptions import MlflowException

    try:
        aliases = client.get_registered_model(name).aliases  # {alias: version}; search results may leave them out
    except MlflowException:
        return []
    rows = []
    for v in versions(client, name):
        t = v.tags
        rows.append(
            {
                "version": int(v.version),
                "aliases": sorted(a for a, number in aliases.items() if str(number) == str(v.version)),
                "macro_f1": t.get("tamis_test_macro_f1", ""),
                "ece": t.get("tamis_test_ece", ""),
                "gate": t.get("tamis_gate_passed", ""),
                "data": t.get("tamis_dvc_validated", "")[:10],
                "commit": t.get("tamis_git_commit", "")[:10],
                "decision": t.get("tamis_promotion", ""),
                "rolled_back": ROLLED_BACK_TAG in t,
            }
        )
    return rows


def lineage(client, name: str, version: int) -> dict[str, Any]:
    """What reproduces a version: its data hashes, git commit, parent run and that run's params."""
    from mlflow.exceptions import MlflowException

    try:
        v = client.get_model_version(name, str(version))
    except MlflowException:
        raise StageError(f"model '{name}' has no version {version}; `tamis models` lists its versions.") from None
    parent = v.tags.get("tamis_parent_run_id")
    params: dict[str, str] = {}
    if parent:
        try:
            params = dict(client.get_run(parent).data.params)
        except MlflowException:
            params = {}
    return {
        "version": int(v.version),
        "git_commit": v.tags.get("tamis_git_commit"),
        "parent_run_id": parent,
        "run_id": v.run_id,
        "data": {k.removeprefix("tamis_dvc_"): val for k, val in v.tags.items() if k.startswith("tamis_dvc_")},
        "params": params,
        "promotion": v.tags.get("tamis_promotion_reason"),
    }


# a fresh interpreter with no cwd or PYTHONPATH on sys.path: the model's logged code (MLflow puts its code/
# folder first on sys.path) is the only tamis it can import
_PREDICT = """
import sys
import mlflow.pyfunc
import pandas as pd
model = mlflow.pyfunc.load_model(sys.argv[1])
model.predict(pd.read_parquet(sys.argv[2])).to_parquet(sys.argv[3])
"""


def predict_isolated(model_uri: str, frame: pd.DataFrame, tracking_uri: str, timeout: int = 600) -> pd.DataFrame:
    """``model_uri``'s pyfunc predictions of ``frame``, computed in a separate ``python -I`` process.

    The version is scored with the code it was logged with, not with this tree's modules, and ``frame`` (validated
    rows) goes in under the user's column names, as a served table would.
    """
    with tempfile.TemporaryDirectory(prefix="tamis-score-") as tmp:
        src, dst = Path(tmp) / "in.parquet", Path(tmp) / "out.parquet"
        frame.rename(columns=user_names(frame.columns)).to_parquet(src, index=False)
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        env["MLFLOW_TRACKING_URI"] = tracking_uri
        env.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        proc = subprocess.run(
            [sys.executable, "-I", "-c", _PREDICT, model_uri, str(src), str(dst)],
            cwd=tmp, env=env, capture_output=True, text=True, timeout=timeout,
        )
        if proc.returncode != 0:
            last = [ln for ln in proc.stderr.splitlines() if ln.strip()][-1:] or ["no output"]
            raise RuntimeError(f"{model_uri} could not predict: {last[0].strip()}")
        return pd.read_parquet(dst)
