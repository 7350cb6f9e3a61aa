"""Large-data defaults: what the audit's step cap costs where it binds.

``audit.max_steps`` (20,000 optimiser steps per fold fit) cuts the audit's epochs above ~100k training rows (1M
rows: 3 of 25), which is what keeps the 1M-row pipeline inside 30 minutes. On a generated table (45 numeric + 5
categorical columns, 8 classes, a 10:1 tail) with 20% class-dependent noise and a clean test file, the audit runs
twice on the same validated data: with the default cap, and with a cap that never binds (all 25 epochs). Reported:
label-issue detection precision / recall / F1 against the injected flips, the audit's out-of-sample accuracy on
the noisy labels, and wall seconds.

    python -m benchmarks.large_defaults [--rows 300000] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pandas as pd

from benchmarks.audit_quality import split_table, tamis_flags
from benchmarks.common import confusion_noise, detection_scores, machine, make_table, set_params, write_result
from flows import workspace

ARMS = {"default (max_steps 20000)": [], "no cap (all epochs)": ["audit.max_steps=1000000000"]}


def audit_arm(repo: Path, overrides: list[str], flipped, env: dict[str, str]) -> dict[str, Any]:
    set_params(repo, overrides)
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "stages.audit"], cwd=repo, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-3000:])
    metrics = json.loads((repo / "metrics/audit.json").read_text())
    issues = pd.read_parquet(repo / "data/audit/issues.parquet")
    return {
        "seconds": wall,
        "detection": detection_scores(tamis_flags(issues, len(flipped)), flipped),
        "out_of_sample_accuracy": metrics["out_of_sample_accuracy"],
        "train_rows": metrics["rows"],
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=300_000, help="rows of the generated table (a quarter is test)")
    parser.add_argument("--quick", action="store_true", help="150,000 rows")
    args = parser.parse_args(argv)
    rows = 150_000 if args.quick else args.rows
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    with tempfile.TemporaryDirectory(prefix="tamis-large-") as tmp:
        work = Path(tmp)
        train, test = split_table(make_table(rows, n_numeric=45, n_categorical=5, seed=1), 0.25, 0)
        noisy, flipped = confusion_noise(train, 0.2, seed=0)
        train.assign(label=noisy).to_parquet(work / "train.parquet")
        test.to_parquet(work / "test.parquet")
        repo = workspace.create(work / "repo")
        set_params(repo, [f"data.train={work / 'train.parquet'}", f"data.test={work / 'test.parquet'}", "data.inject_noise=null"])
        subprocess.run([sys.executable, "-m", "dvc", "repro", "validate"], cwd=repo, env=env, check=True, capture_output=True)
        arms = {}
        for name, overrides in ARMS.items():
            print(f"[large_defaults] audit, {name} ...", flush=True)
            arms[name] = audit_arm(repo, overrides, flipped, env)
    result = {"rows": rows, "noise": float(flipped.mean()), "arms": arms, "machine": machine()}
    write_result("large_defaults", result)
    print(table(result))
    return result


def table(result: dict[str, Any]) -> str:
    arms = result["arms"]
    train_rows = next(iter(arms.values()))["train_rows"]
    lines = [
        f"{result['rows']:,} rows ({train_rows:,} training rows), {result['noise']:.1%} of the training file's labels flipped.",
        "",
        "| audit | detection precision | recall | F1 | out-of-sample accuracy (noisy labels) | wall seconds |",
        "|---|---|---|---|---|---|",
    ]
    for name, arm in arms.items():
        d = arm["detection"]
        lines.append(f"| {name} | {d['precision']:.3f} | {d['recall']:.3f} | {d['f1']:.3f} | "
                     f"{arm['out_of_sample_accuracy']:.4f} | {arm['seconds']:.1f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
