"""The stage contract: one-sentence errors, all-or-nothing outputs, a CLI entry.

Every stage writes its outputs through :class:`Outputs`, so a stage that fails
half-way leaves the previous good outputs exactly as they were, and raises
:class:`StageError` for bad input, which the CLI entry turns into one line on
stderr and exit code 2 (flows do not retry exit code 2: bad input stays bad).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tamis.config import load_params
from tamis.errors import BAD_INPUT_EXIT, StageError

__all__ = ["BAD_INPUT_EXIT", "Outputs", "StageError", "dumps", "read_json", "stage_main"]


class Outputs:
    """Stage outputs written to a scratch folder and moved into place together.

    ``path("models/teacher.pt")`` returns where to write now; on a clean exit of
    the ``with`` block every written path replaces its target (files and whole
    folders), and on an exception nothing in the workspace changes.
    """

    def __init__(self, root: str | Path = "."):
        self.root = Path(root).resolve()
        self._targets: dict[Path, Path] = {}
        self._scratch: Path | None = None

    def __enter__(self) -> Outputs:
        self._scratch = Path(tempfile.mkdtemp(prefix=".tamis-out-", dir=self.root))
        return self

    def path(self, rel: str | Path) -> Path:
        """Scratch path standing in for ``rel``; its parent folder exists."""
        assert self._scratch is not None, "use Outputs as a context manager"
        target = (self.root / rel).resolve()
        tmp = self._scratch / f"{len(self._targets)}-{target.name}"
        self._targets[target] = tmp
        return tmp

    def dir(self, rel: str | Path) -> Path:
        """Scratch folder standing in for folder ``rel`` (replaced as a whole)."""
        tmp = self.path(rel)
        tmp.mkdir(parents=True)
        return tmp

    def write_json(self, rel: str | Path, obj: Any) -> Path:
        tmp = self.path(rel)
        tmp.write_text(dumps(obj) + "\n")
        return tmp

    def __exit__(self, exc_type, exc, tb) -> None:
        assert self._scratch is not None
        try:
            if exc_type is None:
                missing = [str(t) for t, tmp in self._targets.items() if not tmp.exists()]
                if missing:
                    raise RuntimeError(f"stage declared outputs it never wrote: {missing}")
                for target, tmp in self._targets.items():
                    _replace(tmp, target)
        finally:
            shutil.rmtree(self._scratch, ignore_errors=True)


def _replace(src: Path, target: Path) -> None:
    """Move ``src`` onto ``target``; a folder target is swapped as a whole."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if src.is_dir() and target.exists():
        old = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:8]}")
        os.replace(target, old)
        os.replace(src, target)
        shutil.rmtree(old, ignore_errors=True) if old.is_dir() else old.unlink()
    else:
        if target.is_dir():
            shutil.rmtree(target)
        os.replace(src, target)


def _clean(obj: Any) -> Any:
    """JSON-safe copy: numpy scalars to Python, NaN/inf to None."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item) and getattr(obj, "ndim", 1) == 0:
        obj = obj.item()
    if hasattr(obj, "tolist"):
        return _clean(obj.tolist())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def dumps(obj: Any) -> str:
    return json.dumps(_clean(obj), indent=2, sort_keys=False)


def read_json(path: str | Path) -> Any:
    path = Path(path)
    if not path.exists():
        raise StageError(f"{path} is missing: run the stage that writes it first (dvc repro).")
    return json.loads(path.read_text())


def stage_main(name: str, run: Callable[..., dict]) -> None:
    """``python -m stages.<name>``: load params.yaml, run, one clear line on bad input."""
    try:
        params = load_params("params.yaml")
        run(params)
    except StageError as err:
        print(f"tamis {name}: {err}", file=sys.stderr)
        sys.exit(BAD_INPUT_EXIT)
