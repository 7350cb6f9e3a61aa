"""Quality: tamis against what a user would run instead, on the same noisy data.

For each dataset (digits; generated long-tailed tables), each noise level
(class-dependent flips in the training rows only; test labels stay clean) and
each seed, in this one script:

- HistGradientBoostingClassifier and scikit-learn's MLPClassifier on the noisy labels;
- cleanlab's CleanLearning(HistGradientBoostingClassifier) on the noisy labels;
- the same tree model on the clean labels (the ceiling);
- tamis (the real pipeline through ``dvc repro``): teacher, calibrated teacher, shipped model.

Reported on the clean test split: accuracy, macro-F1, recall of the rarest
class, ECE (15 bins); and for the two audits (tamis, CleanLearning) label-error
detection precision / recall / F1 against the injected flips.

    python -m benchmarks.quality [--quick] [--seeds 0 1 2]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from benchmarks.common import (
    confusion_noise,
    detection_scores,
    digits_table,
    encode_for_sklearn,
    machine,
    make_table,
    run_tamis,
    write_result,
)
from tamis.metrics import classification


def datasets(quick: bool) -> dict[str, pd.DataFrame]:
    out = {"digits": digits_table(), "tabular-8": make_table(4000 if quick else 8000, n_classes=8, seed=11)}
    if not quick:
        out["tabular-16"] = make_table(16000, n_numeric=20, n_categorical=4, n_classes=16, seed=12)
    return out


def split(frame: pd.DataFrame, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    from sklearn.model_selection import train_test_split

    train, test = train_test_split(frame, test_size=0.25, random_state=seed, stratify=frame["label"])
    return train.reset_index(drop=True), test.reset_index(drop=True)


def scores(probs: np.ndarray, y: np.ndarray, rarest: int) -> dict[str, float]:
    m = classification(probs, y)
    return {"accuracy": m["accuracy"], "macro_f1": m["macro_f1"], "rarest_recall": m["per_class_recall"][rarest], "ece": m["ece"]}


def peers(train: pd.DataFrame, noisy: pd.Series, test: pd.DataFrame, classes: np.ndarray, rarest: int,
          seed: int) -> tuple[dict[str, Any], np.ndarray]:
    """Scores of the peer models, and CleanLearning's label-issue flags per training row."""
    from cleanlab.classification import CleanLearning
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.neural_network import MLPClassifier
    from sklearn.preprocessing import StandardScaler

    x_train = encode_for_sklearn(train.drop(columns=["label"]))
    x_test = encode_for_sklearn(test.drop(columns=["label"]))
    y_clean = np.searchsorted(classes, train["label"].to_numpy())
    y_noisy = np.searchsorted(classes, noisy.to_numpy())
    y_test = np.searchsorted(classes, test["label"].to_numpy())
    hgb = lambda: HistGradientBoostingClassifier(random_state=seed)
    out: dict[str, Any] = {}
    out["HGB (noisy labels)"] = scores(hgb().fit(x_train, y_noisy).predict_proba(x_test), y_test, rarest)
    scaler = StandardScaler().fit(x_train)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mlp = MLPClassifier(hidden_layer_sizes=(256, 128), early_stopping=True, max_iter=200, random_state=seed)
        mlp.fit(scaler.transform(x_train), y_noisy)
    out["sklearn MLP (noisy labels)"] = scores(mlp.predict_proba(scaler.transform(x_test)), y_test, rarest)
    cl = CleanLearning(hgb(), seed=seed, cv_n_folds=5)
    cl.fit(x_train, y_noisy)
    out["CleanLearning(HGB)"] = scores(cl.predict_proba(x_test), y_test, rarest)
    out["HGB (clean labels, ceiling)"] = scores(hgb().fit(x_train, y_clean).predict_proba(x_test), y_test, rarest)
    return out, cl.label_issues_df["is_label_issue"].to_numpy()


def one_run(name: str, frame: pd.DataFrame, rate: float, seed: int, workdir: Path, overrides: list[str]) -> dict[str, Any]:
    train, test = split(frame, seed)
    if rate > 0:
        noisy, flipped = confusion_noise(train, rate, seed=seed)
    else:
        noisy, flipped = train["label"].copy(), np.zeros(len(train), bool)
    classes = np.array(sorted(frame["label"].unique()))
    counts = train["label"].value_counts()
    rarest = int(np.searchsorted(classes, counts.idxmin()))
    result, cl_flags = peers(train, noisy, test, classes, rarest, seed)
    tamis = run_tamis(workdir, train.assign(label=noisy), test, overrides)
    for key, label in (("teacher", "tamis teacher"), ("teacher_calibrated", "tamis calibrated teacher"), ("final", "tamis shipped model")):
        m = tamis["by_model"][key]
        result[label] = {"accuracy": m["accuracy"], "macro_f1": m["macro_f1"],
                         "rarest_recall": m["per_class_recall"][rarest], "ece": m["ece"]}
    issues = tamis["issues"]
    if "split" in issues.columns:
        issues = issues[issues["split"] == "train"]
    # both audits scored on the rows tamis audits: ingest carves the calibration rows out first
    rows = issues["row_id"].to_numpy()
    result["tamis shipped model"]["detection"] = detection_scores(issues["is_label_issue"].to_numpy(), flipped[rows])
    result["CleanLearning(HGB)"]["detection"] = detection_scores(cl_flags[rows], flipped[rows])
    result["tamis_wall_seconds"] = tamis["wall_seconds"]
    print(f"  {name} noise={rate:.0%} seed={seed}: tamis macro-F1 {result['tamis shipped model']['macro_f1']:.3f}"
          f" vs HGB {result['HGB (noisy labels)']['macro_f1']:.3f} ({tamis['wall_seconds']:.0f} s)", flush=True)
    return result


def aggregate(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean and spread (population std) of every number across seeds."""
    out: dict[str, Any] = {}
    for model, row in runs[0].items():
        if not isinstance(row, dict):
            continue
        out[model] = {}
        for key, value in row.items():
            if isinstance(value, dict):
                out[model][key] = {k: _mean_std([r[model][key][k] for r in runs]) for k in value}
            else:
                out[model][key] = _mean_std([r[model][key] for r in runs])
    return out


def _mean_std(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(values), "std": statistics.pstdev(values) if len(values) > 1 else 0.0}


def table(result: dict[str, Any]) -> str:
    lines = []
    for key, cell in result["cells"].items():
        lines += [f"**{key}** ({result['seeds']} seed(s); mean ± std)", "",
                  "| model | accuracy | macro-F1 | rarest-class recall | ECE | detection P / R / F1 |",
                  "|---|---|---|---|---|---|"]
        for model, row in cell.items():
            det = row.get("detection")
            det_s = (f"{det['precision']['mean']:.2f} / {det['recall']['mean']:.2f} / {det['f1']['mean']:.2f}"
                     if det else "")
            lines.append(
                f"| {model} | {_fmt(row['accuracy'])} | {_fmt(row['macro_f1'])} | {_fmt(row['rarest_recall'])} | "
                f"{_fmt(row['ece'])} | {det_s} |"
            )
        lines.append("")
    return "\n".join(lines)


def _fmt(stat: dict[str, float]) -> str:
    return f"{stat['mean']:.3f} ± {stat['std']:.3f}"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="one seed, 20% noise, smaller tables, fewer epochs")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--noise", type=float, nargs="+", default=[0.0, 0.2, 0.4])
    parser.add_argument("--datasets", nargs="+", default=None, help="run only these (digits, tabular-8, tabular-16)")
    args = parser.parse_args(argv)
    seeds = [0] if args.quick else args.seeds
    noise = [0.2] if args.quick else args.noise
    overrides = ["audit.epochs=10", "train.epochs=20", "distill.epochs=20"] if args.quick else []
    cells: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="tamis-quality-") as tmp:
        for name, frame in datasets(args.quick).items():
            if args.datasets and name not in args.datasets:
                continue
            for rate in noise:
                runs = [one_run(name, frame, rate, s, Path(tmp) / f"{name}-{rate}-{s}", overrides) for s in seeds]
                cells[f"{name}, {rate:.0%} noise"] = aggregate(runs)
    result = {"cells": cells, "seeds": len(seeds), "quick": args.quick, "machine": machine()}
    write_result("quality", result)
    print(table(result))
    return result


if __name__ == "__main__":
    main()
