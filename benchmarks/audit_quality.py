"""Audit quality and scale: tamis's audit against cleanlab's CleanLearning on the same noisy data.

Quality: long-tailed (10:1) generated tables with 20% and 40% class-dependent
noise (flips towards the classes a clean model confuses), and digits. For
each, in one script:

- label-issue detection precision / recall / F1 over the noisy table's rows:
  tamis's audit (the real pipeline, ``dvc repro``) and
  ``CleanLearning(HistGradientBoostingClassifier)``;
- clean-test macro-F1 of tamis's shipped model, of the CleanLearning model,
  and of tamis and the same HGB trained on the clean labels.

Scale: the audit stage alone (``python -m stages.audit``, default params) on
generated tables of 50k and 200k rows x 50 feature columns: wall and CPU
seconds, and their growth (linear would be 4.0).

    python -m benchmarks.audit_quality [--quick] [--part quality|scale|all]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from benchmarks.common import (
    ROOT,
    confusion_noise,
    detection_scores,
    digits_table,
    encode_for_sklearn,
    machine,
    make_table,
    run_tamis,
)
from flows import workspace

RESULTS = ROOT / "benchmarks/results/audit_quality.json"


def split_table(frame: pd.DataFrame, test_share: float, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    from sklearn.model_selection import train_test_split

    train, test = train_test_split(frame, test_size=test_share, random_state=seed, stratify=frame["label"])
    return train.reset_index(drop=True), test.reset_index(drop=True)


def macro_f1(y_true, y_pred) -> float:
    from sklearn.metrics import f1_score

    return float(f1_score(y_true, y_pred, average="macro"))


def peer(train: pd.DataFrame, noisy: pd.Series, test: pd.DataFrame, seed: int) -> dict[str, Any]:
    """CleanLearning on HistGradientBoosting: its label issues and its clean-test macro-F1; HGB on clean labels."""
    from cleanlab.classification import CleanLearning
    from sklearn.ensemble import HistGradientBoostingClassifier

    X, X_test = encode_for_sklearn(train.drop(columns=["label"])), encode_for_sklearn(test.drop(columns=["label"]))
    classes = np.unique(train["label"].to_numpy())
    y_noisy = np.searchsorted(classes, noisy.to_numpy())  # cleanlab wants class indices
    start = time.perf_counter()
    cl = CleanLearning(HistGradientBoostingClassifier(random_state=seed), seed=seed)
    found = cl.find_label_issues(X, y_noisy)
    cl.fit(X, y_noisy, label_issues=found)
    seconds = time.perf_counter() - start
    clean_hgb = HistGradientBoostingClassifier(random_state=seed).fit(X, train["label"].to_numpy())
    return {
        "flags": found["is_label_issue"].to_numpy(),
        "macro_f1": macro_f1(test["label"], classes[cl.predict(X_test)]),
        "clean_hgb_macro_f1": macro_f1(test["label"], clean_hgb.predict(X_test)),
        "seconds": seconds,
    }


def tamis_flags(issues: pd.DataFrame, n_rows: int) -> np.ndarray:
    """The audit's flags over the rows of the training file (its train and calib splits)."""
    rows = issues[issues["split"].isin(["train", "calib"])]
    flags = np.zeros(n_rows, dtype=bool)
    flags[rows["row_id"].to_numpy()] = rows["is_label_issue"].to_numpy(bool)
    return flags


def quality_case(name: str, frame: pd.DataFrame, rate: float, workdir: Path, seed: int = 0) -> dict[str, Any]:
    train, test = split_table(frame, 0.25, seed)
    noisy, flipped = confusion_noise(train, rate, seed)
    noisy_train = train.assign(label=noisy)
    print(f"[{name}] {len(train)} train rows, {flipped.mean():.1%} flipped; tamis on noisy labels ...", flush=True)
    tamis = run_tamis(workdir / f"{name}-noisy", noisy_train, test)
    print(f"[{name}] tamis on clean labels ...", flush=True)
    clean = run_tamis(workdir / f"{name}-clean", train, test)
    print(f"[{name}] CleanLearning(HGB) ...", flush=True)
    other = peer(train, noisy, test, seed)
    return {
        "case": name,
        "rows": len(train),
        "noise": float(flipped.mean()),
        "tamis_detection": detection_scores(tamis_flags(tamis["issues"], len(train)), flipped),
        "peer_detection": detection_scores(other["flags"], flipped),
        "tamis_macro_f1": tamis["macro_f1"],
        "peer_macro_f1": other["macro_f1"],
        "tamis_clean_macro_f1": clean["macro_f1"],
        "hgb_clean_macro_f1": other["clean_hgb_macro_f1"],
        "tamis_seconds": tamis["wall_seconds"],
        "peer_seconds": other["seconds"],
    }


def audit_seconds(n_rows: int, workdir: Path) -> dict[str, Any]:
    """Wall and CPU seconds of the audit stage alone on ``n_rows`` x 50 feature columns (default params)."""
    repo = workspace.create(workdir / f"scale-{n_rows}")
    make_table(n_rows, n_numeric=45, n_categorical=5, seed=1).to_parquet(workdir / f"scale-{n_rows}.parquet")
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["data"]["train"] = str(workdir / f"scale-{n_rows}.parquet")
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    dvc = [sys.executable, "-m", "dvc", "repro", "validate"]
    subprocess.run(dvc, cwd=repo, env=env, check=True, capture_output=True)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "stages.audit"], cwd=repo, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-3000:])
    metrics = json.loads((repo / "metrics/audit.json").read_text())
    return {
        "rows": n_rows,
        "columns": 50,
        "wall_seconds": wall,
        "cpu_seconds": (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime),
        "peak_rss_mb": after.ru_maxrss / 1024,
        "train_rows": metrics["rows"],
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller tables (minutes, not an hour)")
    parser.add_argument("--part", choices=("quality", "scale", "all"), default="all")
    args = parser.parse_args(argv)
    # HistGradientBoosting's OpenMP threads crawl on a busy 2-core machine; the audit's folds run 1 thread each too
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)
    n_gen = 2000 if args.quick else 4000
    scale_rows = (12_500, 50_000) if args.quick else (50_000, 200_000)
    result: dict[str, Any] = {"machine": machine(), "quick": args.quick}
    with tempfile.TemporaryDirectory(prefix="tamis-audit-bench-") as tmp:
        work = Path(tmp)
        if args.part in ("quality", "all"):
            table = make_table(n_gen, seed=0)
            cases = [("generated-20", table, 0.2), ("generated-40", table, 0.4), ("digits-20", digits_table(), 0.2)]
            result["quality"] = [quality_case(name, frame, rate, work) for name, frame, rate in cases]
        if args.part in ("scale", "all"):
            result["scale"] = [audit_seconds(n, work) for n in scale_rows]
            small, large = result["scale"]
            result["scale_growth"] = {
                "rows": large["rows"] / small["rows"],
                "wall": large["wall_seconds"] / small["wall_seconds"],
                "cpu": large["cpu_seconds"] / small["cpu_seconds"],
            }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    if args.part != "all" and RESULTS.exists():  # keep the other part's numbers from an earlier run
        result = {**json.loads(RESULTS.read_text()), **result}
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(table(result))
    return result


def table(result: dict[str, Any]) -> str:
    lines = []
    if "quality" in result:
        lines += [
            "| case | noise | tamis P / R / F1 | CleanLearning(HGB) P / R / F1 | tamis macro-F1 | CL macro-F1 "
            "| tamis clean-label macro-F1 | HGB clean-label macro-F1 |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for q in result["quality"]:
            t, p = q["tamis_detection"], q["peer_detection"]
            lines.append(
                f"| {q['case']} ({q['rows']} rows) | {q['noise']:.1%} "
                f"| {t['precision']:.3f} / {t['recall']:.3f} / **{t['f1']:.3f}** "
                f"| {p['precision']:.3f} / {p['recall']:.3f} / **{p['f1']:.3f}** "
                f"| {q['tamis_macro_f1']:.4f} | {q['peer_macro_f1']:.4f} | {q['tamis_clean_macro_f1']:.4f} "
                f"| {q['hgb_clean_macro_f1']:.4f} |"
            )
    if "scale" in result:
        lines += ["", "| audit stage | wall s | CPU s | peak RSS MiB |", "|---|---|---|---|"]
        for s in result["scale"]:
            lines.append(
                f"| {s['rows']:,} rows x {s['columns']} cols | {s['wall_seconds']:.1f} | {s['cpu_seconds']:.1f} "
                f"| {s['peak_rss_mb']:.0f} |"
            )
        g = result["scale_growth"]
        lines.append(
            f"\nGrowth for {g['rows']:.0f}x rows: wall {g['wall']:.2f}x, CPU {g['cpu']:.2f}x (linear: {g['rows']:.1f}x)."
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
