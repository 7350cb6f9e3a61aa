"""A tamis workspace: the pipeline's code and config in a fresh git + DVC repo.

``tamis init DIR`` uses it to start a project of one's own; the tests and the
benchmarks use it to run the real pipeline in a temp dir.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

SOURCE = Path(__file__).resolve().parents[1]
# what a tamis checkout needs to run; venvs, outputs and caches stay behind
FILES = ("tamis", "stages", "flows", "docs", "data/fixes", "params.yaml", "dvc.yaml", "pyproject.toml", "prefect.yaml", ".gitignore", "Makefile")


def _run(cwd: Path, *cmd: str) -> None:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed in {cwd}: {proc.stderr.strip() or proc.stdout.strip()}")


def create(dest: str | Path, source: Path = SOURCE) -> Path:
    """Copy the pipeline into ``dest`` (new or empty), then ``git init``, ``dvc init`` and a first commit."""
    dest = Path(dest).resolve()
    if dest.exists() and any(dest.iterdir()):
        raise FileExistsError(f"{dest} is not empty; tamis init wants a new or empty folder.")
    dest.mkdir(parents=True, exist_ok=True)
    for name in FILES:
        src = source / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        elif src.exists():
            shutil.copy2(src, dest / name)
    _run(dest, "git", "init", "-q")
    _run(dest, "git", "config", "user.email", "tamis@localhost")
    _run(dest, "git", "config", "user.name", "tamis")
    _run(dest, sys.executable, "-m", "dvc", "init", "-q")
    _run(dest, "git", "add", "-A")
    _run(dest, "git", "commit", "-qm", "tamis workspace")
    return dest
