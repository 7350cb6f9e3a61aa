"""What dvc.yaml declares and dvc.lock recorded, read for the flow and for lineage tags."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tamis.yamlio import load_yaml

SOURCE = Path(__file__).resolve().parents[1]  # the checkout this package came from


def stages(root: str | Path = ".") -> dict[str, dict[str, Any]]:
    """dvc.yaml's stages, in file order (which is DAG order); a folder without one uses this checkout's."""
    path = Path(root) / "dvc.yaml"
    path = path if path.exists() else SOURCE / "dvc.yaml"
    return (load_yaml(path.read_text()) or {}).get("stages", {})


def stage_params(stage: str, root: str | Path = ".") -> list[str]:
    """The params keys (``train``, ``resample.method``) dvc.yaml says ``stage`` depends on."""
    keys: list[str] = []
    for item in stages(root).get(stage, {}).get("params", []):
        if isinstance(item, str):
            keys.append(item)
        else:  # {params file: [keys]}
            keys.extend(k for values in item.values() for k in values)
    return keys


def lock_hashes(stage: str, root: str | Path = ".", kind: str = "deps") -> dict[str, str]:
    """A stage's ``deps`` (or ``outs``) hashes as DVC recorded them in dvc.lock (path -> md5)."""
    entry = lock_entry(stage, root)
    return {d["path"]: d.get("md5") or d.get("hash", "") for d in entry.get(kind, [])}



def lock_entry(stage: str, root: str | Path = ".") -> dict[str, Any]:
    """What dvc.lock recorded for ``stage`` (cmd, deps, params, outs); empty when nothing was."""
    lock = Path(root) / "dvc.lock"
    if not lock.exists():
        return {}
    return (load_yaml(lock.read_text()) or {}).get("stages", {}).get(stage, {})
