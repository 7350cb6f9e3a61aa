"""Teacher quality under label noise and a long tail, against the peers; training throughput.

A table with 8 long-tailed classes (10:1) gets 30% class-dependent label noise
in its training rows; the test rows keep their true labels. In one script:

- scikit-learn's HistGradientBoostingClassifier and MLPClassifier fitted on
  the noisy labels;
- the tamis teacher (ingest -> validate -> audit -> correct -> resample ->
  train, the stages' own ``run``) with each loss, with and without the audit's
  correction, and with each way of balancing;
- the same teacher trained on the clean labels, the reference for the 95% bar.

Every model is scored on the clean test rows: macro-F1, and the recall of the
rarest class beside the mean recall, averaged over ``--seeds`` tables (each
with its own noise draw; one seed varies macro-F1 by a few points). Then the
training loop's throughput (rows per second per epoch, default train params)
at 10k, 100k and 1M rows.

    OMP_NUM_THREADS=1 python -m benchmarks.train_quality [--quick]

On a shared 2-core machine one torch thread is the fair setting: two intra-op
threads contending with other processes made the small MLP's steps 5-20x slower.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from benchmarks.common import (
    ROOT,
    confusion_noise,
    encode_for_sklearn,
    machine,
    make_table,
)

RESULTS = ROOT / "benchmarks" / "results" / "train_quality.json"
NOISE, IMBALANCE, CLASSES = 0.30, 10.0, 8

# (name, labels, overrides); all but the plain baseline and "no audit correction" act on the audit's flags.
VARIANTS: list[tuple[str, str, list[str]]] = [
    ("default: elr, temperature sampling, prior correction", "noisy", []),
    ("default, no audit correction", "noisy", ["correct.label_issue=keep"]),
    ("loss ce", "noisy", ["train.loss=ce"]),
    ("loss label_smoothing", "noisy", ["train.loss=label_smoothing"]),
    ("loss gce", "noisy", ["train.loss=gce"]),
    ("loss sce", "noisy", ["train.loss=sce"]),
    ("elr + mixup 0.2", "noisy", ["train.mixup=0.2"]),
    ("random_over (full balance)", "noisy", ["resample.method=random_over"]),
    ("random_over, no prior correction", "noisy", ["resample.method=random_over", "train.prior_correction=false"]),
    ("temperature, no prior correction", "noisy", ["train.prior_correction=false"]),
    ("no resampling", "noisy", ["resample.method=none"]),
    ("smotenc", "noisy", ["resample.method=smotenc"]),
    ("effective_number weights", "noisy", ["resample.method=effective_number"]),
    ("quantile numbers", "noisy", ["train.numeric_transform=quantile"]),
    ("one-hot categoricals", "noisy", ["train.categorical=onehot"]),
    # what train did before: CE on fully oversampled rows, 60 epochs, no correction of any kind
    ("plain: ce, random_over, no audit correction, no prior correction", "noisy",
     ["correct.label_issue=keep", "train.loss=ce", "resample.method=random_over", "train.prior_correction=false",
      "train.epochs=60"]),
    ("clean labels (reference)", "clean", ["correct.label_issue=keep"]),
]
UNCORRECTED = ("default, no audit correction", "plain: ce, random_over, no audit correction, no prior correction")
QUICK = {"default: elr, temperature sampling, prior correction", "default, no audit correction", "loss ce",
         "loss gce", "plain: ce, random_over, no audit correction, no prior correction", "clean labels (reference)"}


def scores(pred: np.ndarray, y: np.ndarray, n_classes: int, rarest: int) -> dict[str, Any]:
    from sklearn.metrics import f1_score, recall_score

    recall = recall_score(y, pred, labels=np.arange(n_classes), average=None, zero_division=0)
    return {
        "macro_f1": float(f1_score(y, pred, labels=np.arange(n_classes), average="macro", zero_division=0)),
        "mean_recall": float(recall.mean()),
        "rarest_recall": float(recall[rarest]),
    }


def peers(train: pd.DataFrame, test: pd.DataFrame, classes: np.ndarray, seed: int) -> dict[str, np.ndarray]:
    """Test predictions (class indices) of the scikit-learn peers fitted on the noisy labels."""
    from sklearn.compose import make_column_transformer
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    features = [c for c in train.columns if c != "label"]
    categorical = [c for c in features if not pd.api.types.is_numeric_dtype(train[c])]
    numeric = [c for c in features if c not in categorical]
    y = np.searchsorted(classes, train["label"].to_numpy())
    both = encode_for_sklearn(pd.concat([train[features], test[features]]))
    x_train, x_test = both[: len(train)], both[len(train) :]
    hgb = HistGradientBoostingClassifier(
        categorical_features=[features.index(c) for c in categorical], random_state=seed
    ).fit(x_train, y)
    mlp = make_pipeline(
        make_column_transformer((StandardScaler(), numeric), (OneHotEncoder(handle_unknown="ignore"), categorical)),
        MLPClassifier(hidden_layer_sizes=(256, 128), early_stopping=True, max_iter=200, random_state=seed),
    ).fit(train[features], y)
    return {
        "HistGradientBoostingClassifier": hgb.predict(x_test),
        "MLPClassifier": mlp.predict(test[features]),
    }


class Workspace:
    """One label set's pipeline up to the audit, run once; correct -> resample -> train per variant."""

    def __init__(self, folder: Path, train: pd.DataFrame, test: pd.DataFrame, base: list[str]):
        from stages import audit, ingest, validate
        from tamis.config import apply_overrides, load_params

        self.root = folder
        folder.mkdir(parents=True)
        train.to_csv(folder / "train.csv", index=False)
        test.to_csv(folder / "test.csv", index=False)
        self.raw = apply_overrides(
            load_params(ROOT / "params.yaml").model_dump(by_alias=True, mode="json"),
            [f"data.train={folder / 'train.csv'}", f"data.test={folder / 'test.csv'}", "data.inject_noise=null"]
            + base,
        )
        params = self.params([])
        for stage in (ingest, validate, audit):
            stage.run(params, folder)

    def params(self, overrides: list[str]):
        from tamis.config import apply_overrides, parse_params

        return parse_params(apply_overrides(self.raw, overrides))

    def teacher(self, overrides: list[str], test: pd.DataFrame) -> tuple[np.ndarray, float]:
        """Clean-test predicted labels and the wall time of correct -> resample -> train."""
        from stages import correct, resample, train
        from tamis.nets import Table, load_model, logits_of

        params = self.params(overrides)
        start = time.perf_counter()
        for stage in (correct, resample, train):
            stage.run(params, self.root)
        wall = time.perf_counter() - start
        model, encoder, _ = load_model(self.root / "models/teacher.pt")
        y = encoder.labels(test["label"])
        pred = logits_of(model, Table.of(*encoder.transform(test), y)).argmax(1).numpy()
        return np.array(encoder.classes, dtype=object)[pred], wall


def throughput(sizes: list[int], seed: int) -> list[dict[str, Any]]:
    """Rows per second of a training epoch at each size: the default params' loop (loss, sampler), no validation.

    The fastest of epochs 2-4 (the first warms up; on a shared machine the slower ones measure the neighbours);
    an epoch's time includes ELR's refresh of its targets.
    """
    import torch

    from tamis.config import load_params
    from tamis.data import Encoder, Schema
    from tamis.nets import MLP, Table, TemperatureSampler, fit
    from stages.train import make_loss

    params = load_params(ROOT / "params.yaml")
    t, r = params.train, params.resample
    out = []
    for n in sizes:
        frame = make_table(n_rows=n, n_classes=CLASSES, imbalance=IMBALANCE, seed=seed)
        features = [c for c in frame.columns if c != "label"]
        numeric = [c for c in features if pd.api.types.is_numeric_dtype(frame[c])]
        schema = Schema("label", numeric, [c for c in features if c not in numeric], sorted(frame["label"].unique()))
        enc = Encoder.fit(frame, schema, t.numeric_transform)
        y = enc.labels(frame["label"])
        table = Table.of(*enc.transform(frame), y)
        torch.manual_seed(seed)
        dim = t.embedding_dim if t.categorical == "embedding" else 0
        model = MLP(len(numeric), enc.cardinalities, CLASSES, t.hidden, t.dropout, dim)
        loss_fn, refresh = make_loss(t, model, table)
        epochs = 4
        sampler = TemperatureSampler(y, CLASSES, r.temperature_start, r.temperature_end, epochs)
        result = fit(model, table, loss_fn, epochs=epochs, batch_size=t.batch_size, lr=t.lr,
                     weight_decay=t.weight_decay, seed=seed, mixup=t.mixup, on_epoch=refresh,
                     sampler=sampler if r.method == "temperature" else None)
        seconds = min(result.epoch_seconds[1:])
        out.append({"rows": n, "epoch_seconds": seconds, "rows_per_second": n / seconds})
        print(f"  throughput {n:>9,} rows: {seconds:8.2f} s/epoch, {n / seconds:,.0f} rows/s", flush=True)
    for row in out:
        row["time_growth_vs_smallest"] = row["epoch_seconds"] / out[0]["epoch_seconds"]
        row["rows_growth_vs_smallest"] = row["rows"] / out[0]["rows"]
    return out


def one_seed(seed: int, n_rows: int, variants, base: list[str], tmp: Path) -> list[dict[str, Any]]:
    """Every peer and teacher variant on one table (its own noise draw), scored on its clean test rows."""
    frame = make_table(n_rows=n_rows, n_classes=CLASSES, imbalance=IMBALANCE, seed=seed)
    test = frame.sample(frac=0.25, random_state=seed).sort_index()
    clean = frame.drop(test.index).reset_index(drop=True)
    test = test.reset_index(drop=True)
    noisy_labels, flipped = confusion_noise(clean, NOISE, seed=seed)
    noisy = clean.assign(label=noisy_labels)
    classes = np.array(sorted(frame["label"].unique()))
    y_test = np.searchsorted(classes, test["label"].to_numpy())
    rarest = int(np.argmin(np.bincount(np.searchsorted(classes, clean["label"].to_numpy()), minlength=CLASSES)))
    print(f"seed {seed}: {len(clean)} training rows ({flipped.mean():.1%} labels flipped), {len(test)} clean test "
          f"rows, {CLASSES} classes {IMBALANCE:g}:1, rarest class {classes[rarest]}", flush=True)
    rows: list[dict[str, Any]] = []
    for name, pred in peers(noisy, test, classes, seed).items():
        rows.append({"model": name, "labels": "noisy", "seed": seed, **scores(pred, y_test, CLASSES, rarest)})
    spaces = {
        labels: Workspace(tmp / f"{labels}-{seed}", data, test, base + [f"seed={seed}"])
        for labels, data in (("noisy", noisy), ("clean", clean))
        if any(v[1] == labels for v in variants)
    }
    for name, labels, overrides in variants:
        predicted, wall = spaces[labels].teacher(base + [f"seed={seed}"] + overrides, test)
        pred = np.searchsorted(classes, predicted.astype(str))
        rows.append({"model": f"teacher: {name}", "labels": labels, "seed": seed,
                     **scores(pred, y_test, CLASSES, rarest), "seconds": wall, "overrides": overrides})
    for row in rows:
        print(f"  {row['model']}: macro-F1 {row['macro_f1']:.4f}, rarest recall {row['rarest_recall']:.3f}", flush=True)
    return rows


def summarise(rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Per model: means over the seeds (and the macro-F1 range); the quality bars."""
    table = []
    for name in dict.fromkeys(r["model"] for r in rows):
        mine = [r for r in rows if r["model"] == name]
        f1 = [r["macro_f1"] for r in mine]
        table.append({
            "model": name, "labels": mine[0]["labels"], "macro_f1": float(np.mean(f1)),
            "macro_f1_min": min(f1), "macro_f1_max": max(f1),
            "mean_recall": float(np.mean([r["mean_recall"] for r in mine])),
            "rarest_recall": float(np.mean([r["rarest_recall"] for r in mine])),
            "seconds": float(np.mean([r.get("seconds", np.nan) for r in mine])),
        })
    by = {t["model"]: t for t in table}
    default, reference = by[f"teacher: {VARIANTS[0][0]}"], by["teacher: clean labels (reference)"]
    corrected = [t for t in table if t["model"].startswith("teacher:") and t["labels"] == "noisy"
                 and t["model"].removeprefix("teacher: ") not in UNCORRECTED]
    best = max(corrected, key=lambda t: t["macro_f1"])
    per_seed = {}
    for r in rows:
        per_seed.setdefault(r["seed"], {})[r["model"]] = r["macro_f1"]
    summary = {
        "default_vs_clean": default["macro_f1"] / reference["macro_f1"],
        "best_corrected": best["model"],
        "best_corrected_vs_clean": best["macro_f1"] / reference["macro_f1"],
        "default_beats_peers_on_mean": all(
            default["macro_f1"] > by[p]["macro_f1"] for p in ("HistGradientBoostingClassifier", "MLPClassifier")
        ),
        "default_beats_peers_every_seed": all(
            m[default["model"]] > max(m["HistGradientBoostingClassifier"], m["MLPClassifier"]) for m in per_seed.values()
        ),
    }
    return table, summary


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller table, one seed, fewer variants, no 1M rows")
    parser.add_argument("--seeds", type=int, default=None, help="tables (and noise draws) to average over")
    parser.add_argument("--skip-throughput", action="store_true")
    args = parser.parse_args(argv)
    seeds = args.seeds or (1 if args.quick else 5)
    n_rows = 4000 if args.quick else 12000
    variants = [v for v in VARIANTS if not args.quick or v[0] in QUICK]
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="tamis-train-quality-") as tmp:
        for seed in range(seeds):
            rows += one_seed(seed, n_rows, variants, [], Path(tmp))
    table, summary = summarise(rows)
    sizes = [10_000, 100_000] if args.quick else [10_000, 100_000, 1_000_000]
    speed = [] if args.skip_throughput else throughput(sizes, 0)
    import torch

    result = {"quick": args.quick, "seeds": seeds, "rows": int(n_rows * 0.75), "test_rows": int(n_rows * 0.25),
              "noise": NOISE, "imbalance": IMBALANCE, "models": table, "summary": summary, "per_seed": rows,
              "throughput": speed, "machine": {**machine(), "torch_threads": torch.get_num_threads()}}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(table(result))
    return result


def table(result: dict[str, Any]) -> str:
    lines = [
        f"### Teacher under {result['noise']:.0%} class-dependent noise, {result['imbalance']:g}:1 long tail "
        f"({result['rows']} training rows, {result['test_rows']} clean test rows, mean of {result['seeds']} seed(s))",
        "",
        "| model | labels | clean-test macro-F1 (min-max) | mean recall | rarest-class recall | s (correct..train) |",
        "|---|---|---|---|---|---|",
    ]
    for r in result["models"]:
        seconds = "" if np.isnan(r["seconds"]) else f"{r['seconds']:.1f}"
        lines.append(f"| {r['model']} | {r['labels']} | {r['macro_f1']:.4f} ({r['macro_f1_min']:.3f}-"
                     f"{r['macro_f1_max']:.3f}) | {r['mean_recall']:.4f} | {r['rarest_recall']:.4f} | {seconds} |")
    s = result["summary"]
    lines += ["", f"Default teacher / clean reference: {s['default_vs_clean']:.1%}; best corrected variant "
              f"({s['best_corrected']}) / clean reference: {s['best_corrected_vs_clean']:.1%}; default beats both "
              f"peers on the mean: {s['default_beats_peers_on_mean']}, on every seed: "
              f"{s['default_beats_peers_every_seed']}."]
    if result["throughput"]:
        lines += ["", "| rows | s / epoch | rows / s | time growth | rows growth |", "|---|---|---|---|---|"]
        lines += [f"| {r['rows']:,} | {r['epoch_seconds']:.2f} | {r['rows_per_second']:,.0f} | "
                  f"{r['time_growth_vs_smallest']:.1f}x | {r['rows_growth_vs_smallest']:.0f}x |"
                  for r in result["throughput"]]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
