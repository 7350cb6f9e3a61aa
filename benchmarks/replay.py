"""Replay a kept workspace's later stages under other params, on a copy: what one choice changes, cell by cell.

Each workspace (a ``repo`` the pipeline ran in, as ``python -m benchmarks.quality --keep DIR`` keeps them) is
copied without its MLflow store; the ``--from`` stage and every later one up to evaluate run in this process with
this checkout's code and the workspace's params plus ``--set``. One JSON line per workspace gives each model's test
macro-F1 and ECE as evaluate scores them, the shipped variant, and each compress variant's macro-F1 drop against the
calibrated teacher on the calib split and whether it passed the gate, and each replayed stage's seconds.

    python -m benchmarks.replay WORKSPACE [WORKSPACE ...] --from distill --set distill.transfer_rows=0 [--set ...]
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any
from unittest import mock

from tamis.config import apply_overrides, parse_params, read_raw

LATER = ("correct", "resample", "train", "calibrate", "distill", "compress", "evaluate")


def replay(repo: Path, start: str, overrides: list[str], into: Path) -> dict[str, Any]:
    shutil.copytree(repo, into, ignore=shutil.ignore_patterns("mlflow.db", "mlartifacts", ".git", ".dvc"))
    params = parse_params(apply_overrides(read_raw(into / "params.yaml"), overrides), "params.yaml with --set overrides")
    # the copy's runs stay in the copy; the environment is as it was afterwards
    with mock.patch.dict(os.environ, {"MLFLOW_TRACKING_URI": f"sqlite:///{into / 'mlflow.db'}"}):
        seconds = {}
        for stage in LATER[LATER.index(start):]:
            started = time.perf_counter()
            importlib.import_module(f"stages.{stage}").run(params, into)
            seconds[stage] = round(time.perf_counter() - started, 1)
    read = lambda name: json.loads((into / "metrics" / f"{name}.json").read_text())
    evaluate = read("evaluate")
    variants = read("compress").get("variants", {})
    return {
        "workspace": str(repo),
        "set": overrides,
        "shipped": evaluate["final_model"],
        "test": {k: {"macro_f1": v["macro_f1"], "ece": v["ece"]} for k, v in evaluate["by_model"].items()},
        "gate": {k: {"macro_f1_drop": v["gate"]["macro_f1_drop"], "passed": v["gate"]["passed"]} for k, v in variants.items()},
        "seconds": seconds,
    }


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("workspaces", nargs="+", type=Path)
    parser.add_argument("--from", dest="start", choices=LATER, required=True)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    args = parser.parse_args(argv)
    out = []
    for repo in args.workspaces:
        with tempfile.TemporaryDirectory(prefix="tamis-replay-") as tmp:
            out.append(replay(repo.resolve(), args.start, args.overrides, Path(tmp) / "repo"))
        print(json.dumps(out[-1]), flush=True)
    return out


if __name__ == "__main__":
    main()
