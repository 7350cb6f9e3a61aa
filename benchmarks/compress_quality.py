"""Is the shipped model small, fast and trustworthy? The whole pipeline on digits and a generated table.

For each dataset the real pipeline runs (``dvc repro`` in a temp workspace) and
this reads what it wrote: the shipped model against the torch teacher (size on
disk and batch-1 / batch-256 latency, both measured by compress in one
process), its test macro-F1 against the calibrated teacher's, its test ECE (15
bins) beside the ECE floor of its test split (the median ECE a perfectly
calibrated model with the same confidences would show: a small test split
cannot measure below it), and what calibration did to the teacher's test ECE
(the halving target applies where the teacher was overconfident: mean
confidence above accuracy).

    python -m benchmarks.compress_quality            # digits + a 100k-row table
    python -m benchmarks.compress_quality --quick    # digits + a 20k-row table
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from benchmarks.common import ROOT, digits_table, machine, make_table, run_tamis

TARGETS = {"smaller": 8.0, "faster": 3.0, "f1_gap": 0.01, "ece": 0.02}


def split(frame: pd.DataFrame, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    from sklearn.model_selection import train_test_split

    return train_test_split(frame, test_size=0.2, random_state=seed, stratify=frame["label"])


def teacher_confidence(repo: Path) -> dict[str, float]:
    """Mean top-1 confidence and accuracy of the uncalibrated teacher on the test split."""
    from tamis.data import read_split
    from tamis.metrics import softmax
    from tamis.nets import Table, load_model, logits_of

    teacher, encoder, _ = load_model(repo / "models/teacher.pt")
    test = read_split(repo / "data/validated", "test")
    y = encoder.labels(test["label"])
    p = softmax(logits_of(teacher, Table.of(*encoder.transform(test), y)).numpy())
    return {"confidence": float(p.max(1).mean()), "accuracy": float((p.argmax(1) == y).mean())}


def measure(name: str, train: pd.DataFrame, test: pd.DataFrame, overrides: list[str], keep: Path | None) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="tamis-compress-") as tmp:
        workdir = keep / name.split()[0] if keep else Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        result = run_tamis(workdir, train, test, overrides)
        repo = Path(result["repo"])
        compress = json.loads((repo / "metrics/compress.json").read_text())
        calibrate = json.loads((repo / "metrics/calibrate.json").read_text())
        distill = json.loads((repo / "metrics/distill.json").read_text())
        conf = teacher_confidence(repo)
    by = result["by_model"]
    overconfident = conf["confidence"] > conf["accuracy"]
    row = {
        "dataset": name,
        "train_rows": len(train),
        "test_rows": len(test),
        "wall_seconds": result["wall_seconds"],
        "shipped": compress["chosen"],
        "gate_passed": compress["gate"]["passed"],
        "calibration": calibrate["method"],
        "student_calibration": distill["calibration"],
        "student_kept": distill["kept"],
        "smaller_than_teacher": compress["shipped"]["smaller_than_teacher"],
        "speedup_batch_1": compress["shipped"]["speedup_batch_1"],
        "speedup_batch_256": compress["shipped"]["speedup_batch_256"],
        "size_bytes": {"teacher": compress["teacher"]["size_bytes"], "shipped": compress["shipped"]["size_bytes"]},
        "latency_ms": {"teacher": compress["teacher"]["latency_ms"], "shipped": compress["shipped"]["latency_ms"]},
        "test": {m: {k: by[m][k] for k in ("accuracy", "macro_f1", "ece", "nll")} for m in by},
        "f1_gap": by["teacher_calibrated"]["macro_f1"] - by["final"]["macro_f1"],
        "teacher_overconfident": overconfident,
        "teacher_confidence": conf,
        "ece_ratio": by["teacher_calibrated"]["ece"] / max(by["teacher"]["ece"], 1e-12),
        "ece_floor": result["calibration_check"]["ece_floor"],  # evaluate's: tamis.metrics.ece_floor
    }
    row["targets"] = {
        "smaller_8x": row["smaller_than_teacher"] >= TARGETS["smaller"],
        "faster_3x_batch_1": row["speedup_batch_1"] >= TARGETS["faster"],
        "f1_within_1pt": row["f1_gap"] <= TARGETS["f1_gap"],
        "ece_at_most_2pct": by["final"]["ece"] <= TARGETS["ece"],
        "calibration_halves_ece": (row["ece_ratio"] <= 0.5) if overconfident else None,
    }
    return row


def table(result: dict[str, Any]) -> str:
    rows = result["rows"]
    head = (
        "| dataset | shipped | gate | smaller (>=8x) | faster b1 (>=3x) | faster b256 | F1 teacher cal / shipped | "
        "ECE shipped (<=2%) | ECE floor | teacher ECE raw -> cal | overconfident |\n|---|---|---|---|---|---|---|---|---|---|---|\n"
    )
    body = ""
    for r in rows:
        t = r["test"]
        body += (
            f"| {r['dataset']} | {r['shipped']} | {'pass' if r['gate_passed'] else 'FAIL'} | "
            f"{r['smaller_than_teacher']:.1f}x | {r['speedup_batch_1']:.1f}x | {r['speedup_batch_256']:.1f}x | "
            f"{t['teacher_calibrated']['macro_f1']:.4f} / {t['final']['macro_f1']:.4f} | {t['final']['ece']:.2%} | {r['ece_floor']:.2%} | "
            f"{t['teacher']['ece']:.2%} -> {t['teacher_calibrated']['ece']:.2%} ({r['calibration']}) | "
            f"{'yes' if r['teacher_overconfident'] else 'no'} |\n"
        )
    return head + body


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a 20k-row generated table instead of 100k")
    parser.add_argument("--rows", type=int, default=None, help="rows of the generated table (before the test split)")
    parser.add_argument("--keep", type=Path, default=None, help="run in this folder and keep the workspaces")
    args = parser.parse_args(argv)
    n_rows = args.rows or (20_000 if args.quick else 100_000)
    # the default demo on both: 10% of the train split's labels flipped (calib and test stay clean)
    noise = ["data.inject_noise={rate: 0.1, seed: 7}"]
    rows = [measure("digits", *split(digits_table()), noise, args.keep)]
    table_name = f"generated {n_rows // 1000}k"
    rows.append(measure(table_name, *split(make_table(n_rows=n_rows, seed=0)), noise, args.keep))
    report = {"machine": machine(), "quick": args.quick, "targets": TARGETS, "rows": rows}
    print(table(report))
    out = ROOT / "benchmarks/results/compress_quality.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, default=lambda o: o.item() if isinstance(o, np.generic) else str(o)))
    print(f"written {out}")
    return report


if __name__ == "__main__":
    main()
