"""Calibration under noisy calibration labels: which fit keeps the shipped probabilities honest on a clean test?

For each table and noise level (class-dependent flips in the training table;
the calibration split is carved from it, so its labels are as noisy as real
ones would be; the test table stays clean), the real pipeline runs up to
``train`` once; then, on the same teacher, in this process:

- ``raw``: the teacher's own softmax;
- ``plain``: the calibrators chosen and fitted on the given (noisy) labels, as
  tamis did before (no identity candidate);
- ``noise_aware``: forward-corrected fits with the calibration split's noise
  matrix estimated from the audit's out-of-sample probabilities, identity among
  the candidates, chosen by cross-validated forward-corrected NLL;

each on the trusted calibration split (audit-flagged rows dropped, the
default) and on the whole calibration split. Reported: ECE (15 bins) and
macro-F1 on the clean test table.

    python -m benchmarks.calibration_noise [--quick]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from benchmarks.common import confusion_noise, machine, make_table, run_tamis, write_result
from tamis import calibration, paths
from tamis.calibration import Settings
from tamis.data import noisy_rows, read_calib, read_split
from tamis.metrics import ECE_BINS, classification, softmax
from tamis.nets import Table, load_model, logits_of

NOISE = (0.0, 0.2, 0.35)


def tables(quick: bool) -> dict[str, pd.DataFrame]:
    from sklearn.datasets import load_breast_cancer, load_digits, load_wine

    out = {}
    for name, loader in (("digits", load_digits), ("breast_cancer", load_breast_cancer), ("wine", load_wine)):
        bunch = loader(as_frame=True)
        frame = bunch.frame.rename(columns={"target": "label"})
        frame.columns = [str(c) for c in frame.columns]
        out[name] = frame
    out["tabular-8"] = make_table(3000 if quick else 6000, n_classes=8, seed=11)
    if quick:
        out.pop("wine")
    return out


def split(frame: pd.DataFrame, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    from sklearn.model_selection import train_test_split

    train, test = train_test_split(frame, test_size=0.25, random_state=seed, stratify=frame["label"])
    return train.reset_index(drop=True), test.reset_index(drop=True)


def calib_rows(repo: Path, trusted: bool) -> pd.DataFrame:
    return read_calib(repo) if trusted else read_split(repo / paths.VALIDATED, "calib")


def variants(repo: Path, label: str, seed: int) -> dict[str, dict[str, float]]:
    teacher, encoder, _ = load_model(repo / paths.TEACHER)
    test = read_split(repo / paths.VALIDATED, "test")
    y_test = encoder.labels(test[label], "test")
    test_logits = logits_of(teacher, Table.of(*encoder.transform(test), y_test)).numpy()
    issues = pd.read_parquet(repo / paths.ISSUES)
    out = {"raw": pick(classification(softmax(test_logits), y_test, ECE_BINS))}
    settings = Settings(seed=seed)
    for trusted in (True, False):
        calib = calib_rows(repo, trusted)
        y = encoder.labels(calib[label], "calib")
        logits = logits_of(teacher, Table.of(*encoder.transform(calib), y)).numpy()
        tag = "trusted" if trusted else "all"
        plain, _, _ = calibration.select("auto", calibration.METHODS[1:], logits, y, settings)
        out[f"plain/{tag}"] = pick(classification(calibration.apply_map(plain, test_logits), y_test, ECE_BINS)) | {
            "method": plain["method"]
        }
        noise = calibration.noise_matrix(*noisy_rows(issues, encoder))  # as calibrate estimates it
        aware, _, _ = calibration.select("auto", calibration.METHODS, logits, y, Settings(seed=seed, noise=noise))
        out[f"noise_aware/{tag}"] = pick(classification(calibration.apply_map(aware, test_logits), y_test, ECE_BINS)) | {
            "method": aware["method"], "estimated_noise": float(1 - np.trace(noise) / len(noise))
        }
    return out


def pick(m: dict[str, Any]) -> dict[str, float]:
    return {"ece": m["ece"], "macro_f1": m["macro_f1"]}


VARIANTS = ("raw", "plain/trusted", "noise_aware/trusted", "plain/all", "noise_aware/all")


def table(result: dict[str, Any]) -> str:
    head = (
        "| table | noise | raw teacher | plain, trusted calib | **noise-aware, trusted calib** (default) | plain, all calib | "
        "noise-aware, all calib | estimated calib noise (trusted) |\n|---|---|---|---|---|---|---|---|\n"
    )
    body = ""
    for c in result["cells"]:
        cells = [f"{c[v]['ece']:.3f}" + (f" ({c[v]['method']})" if "method" in c[v] else "") for v in VARIANTS]
        body += f"| {c['table']} ({c['rows']} train rows) | {c['noise']:.0%} | " + " | ".join(cells)
        body += f" | {c['noise_aware/trusted']['estimated_noise']:.1%} |\n"
    return head + body + "\nECE (15 bins) of the calibrated teacher on the clean test table; macro-F1 is in the results file.\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="digits, breast_cancer and a 3k-row generated table")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", default=str(Path(tempfile.gettempdir()) / "tamis-calibration-noise"),
                        help="where each cell's pipeline runs (kept, so a re-run only re-analyses)")
    args = parser.parse_args(argv)
    cells = []
    for name, frame in tables(args.quick).items():
        train, test = split(frame, args.seed)
        for rate in NOISE:
            noisy = train.copy()
            if rate:
                noisy["label"] = confusion_noise(train, rate, args.seed)[0].to_numpy()
            work = Path(args.workdir) / f"{name}-{rate}-{args.seed}"
            if not (work / "repo" / paths.TEACHER).exists():  # a finished cell's pipeline is kept for re-analysis
                shutil.rmtree(work, ignore_errors=True)
                work.mkdir(parents=True)
                run_tamis(work, noisy, test, targets=["train"])
            cell = {"table": name, "noise": rate, "rows": len(train), **variants(work / "repo", "label", args.seed)}
            cells.append(cell)
            print(cell, flush=True)
    result = {"cells": cells, "machine": machine(), "seed": args.seed, "quick": args.quick}
    write_result("calibration_noise", result)
    return result


if __name__ == "__main__":
    main()
