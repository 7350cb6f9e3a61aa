"""Bad input stops a stage with one sentence and exit code 2, and loses nothing.

A workspace first ingests and validates a good table; each case then points it
at a broken one and runs the stages as DVC would. The accepted data and its
report must be byte-for-byte what they were.
"""

from __future__ import annotations

import hashlib
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import mixed_table, run_stage, set_params

from flows import workspace
from tamis.data import load_source

KEPT = ("data/validated", "reports/validation.json", "metrics/validate.json")


def snapshot(repo: Path) -> dict[str, str]:
    out = {}
    for rel in KEPT:
        path = repo / rel
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for f in files:
            out[str(f.relative_to(repo))] = hashlib.md5(f.read_bytes()).hexdigest()
    return out


@pytest.fixture(scope="module")
def good_workspace(tmp_path_factory) -> Path:
    """A workspace whose ingest and validate ran on a good table."""
    base = tmp_path_factory.mktemp("bad-input")
    repo = workspace.create(base / "good")
    mixed_table(300).to_csv(base / "good.csv", index=False)
    set_params(repo, f"data.train={base / 'good.csv'}", "data.inject_noise=null")
    for stage in ("ingest", "validate"):
        proc = run_stage(repo, stage)
        assert proc.returncode == 0, proc.stderr
    return repo


def broken(frame: pd.DataFrame, case: str) -> pd.DataFrame:
    frame = frame.copy()
    if case == "label_nulls":
        frame.loc[[3, 50], "label"] = None
    elif case == "one_class":
        frame["label"] = "c0"
    elif case == "tiny_class":
        frame.loc[frame.index[:3], "label"] = "rare"  # 3 rows in all, fewer than audit.folds=5
    elif case == "non_numeric":
        frame["x1"] = frame["x1"].astype(object)
        frame.loc[7, "x1"] = "abc"
    elif case == "no_label":
        frame = frame.drop(columns=["label"])
    elif case == "infinite":
        frame.loc[5, "x2"] = np.inf
    elif case == "label_spellings":
        frame.loc[frame.index[:4], "label"] = ["C0", "c0 ", "C1", "c1"]
    elif case == "id_label":
        frame["label"] = [f"row-{i}" for i in range(len(frame))]
    elif case == "int_tiny_class":
        frame["label"] = frame["label"].str[1:].astype(int)
        frame.loc[frame.index[:3], "label"] = 6
    elif case == "reserved":
        frame = frame.rename(columns={"label": "split"})  # a label named like a column tamis adds
    elif case == "duplicate_columns":
        frame = pd.concat([frame, frame[["x1"]]], axis=1)  # the CSV header says x1 twice
    return frame


def write_input(case: str, tmp_path: Path) -> list[str]:
    """The broken input of ``case`` on disk; returns the params that point at it."""
    bad = tmp_path / "bad.csv"
    frame = broken(mixed_table(300), case)
    if case == "missing_file":
        return [f"data.train={tmp_path / 'missing.csv'}"]
    if case == "unknown_key":
        return ["train.epohcs=3"]
    if case == "directory":
        return [f"data.train={tmp_path}"]
    frame.to_csv(bad, index=False)
    if case == "stray_test_label":
        test = mixed_table(60, seed=1)
        test.loc[4, "label"] = "c9"
        test.to_csv(tmp_path / "test.csv", index=False)
        return [f"data.train={bad}", f"data.test={tmp_path / 'test.csv'}", "data.rare_classes=refuse"]
    if case == "reserved":
        return [f"data.train={bad}", "data.label=split"]
    if case in ("tiny_class", "int_tiny_class"):  # dropped with a warning unless asked to refuse (below)
        return [f"data.train={bad}", "data.rare_classes=refuse"]
    if case == "label_nulls":  # likewise
        return [f"data.train={bad}", "data.missing_labels=refuse"]
    if case in ("non_numeric", "infinite"):  # likewise (read as missing)
        return [f"data.train={bad}", "validate.non_numeric=refuse"]
    return [f"data.train={bad}"]


CASES = [
    # (case, stage that must refuse, what the sentence must say)
    ("missing_file", "ingest", r"^tamis ingest: data\.train: file '.*/missing\.csv' does not exist\.$"),
    ("no_label", "ingest", r"^tamis ingest: data\.label: column 'label' is not in .*bad\.csv \(its columns: 'x1', 'x2', 'color'\)\.$"),
    ("label_nulls", "validate", r"^tamis validate: .*bad\.csv \(train split\): label column 'label' has nulls"),
    ("one_class", "validate", r"^tamis validate: .*bad\.csv \(train split\): label column 'label' holds only one class"),
    ("tiny_class", "validate", r"^tamis validate: .*bad\.csv \(train split\): class 'rare' has \d training row\(s\), fewer than audit\.folds=5"),
    ("non_numeric", "validate", r"^tamis validate: .*bad\.csv \((train|calib|test) split\): column 'x1' should be numeric but holds non-numeric values \(e\.g\. 'abc'\)"),
    ("infinite", "validate", r"^tamis validate: .*bad\.csv \((train|calib|test) split\): numeric column 'x2' holds infinite values"),
    ("unknown_key", "ingest", r"^tamis ingest: params\.yaml: unknown key 'train\.epohcs'; check its spelling"),
    ("label_spellings", "ingest", r"^tamis ingest: data\.label: column 'label' in .*bad\.csv holds labels that differ only by"
     r" case or spaces \('C0', 'c0', 'c0 '; 'C1', 'c1'\); .* set data\.normalize_labels: true"),
    ("id_label", "ingest", r"^tamis ingest: data\.label: column 'label' in .*bad\.csv has 300 distinct values in 300 rows,"
     r" so it is probably an id or a continuous value"),
    ("int_tiny_class", "validate", r"^tamis validate: .*bad\.csv \(train split\): class 6 has \d training row\(s\)"),
    ("directory", "ingest", r"^tamis ingest: data\.train: '.*' is a directory; expected a table file \(\.csv, \.tsv, \.txt, compressed or not, or \.parquet\)\.$"),
    ("duplicate_columns", "ingest", r"^tamis ingest: data\.train: .*bad\.csv has duplicate column names 'x1'"),
    ("reserved", "ingest", r"^tamis ingest: data\.label: the label column 'split' in .*bad\.csv has a name tamis keeps"
     r" for its own columns \(row_id, split, weight, .*\); rename it\.$"),
    ("stray_test_label", "validate", r"^tamis validate: .*test\.csv \(test split\): label column 'label' holds classes"
     r" the training split lacks \(e\.g\. 'c9'\)"),
]


def stage_cli(repo: Path, stage: str, monkeypatch, capsys) -> tuple[int, str]:
    """``python -m stages.<stage>``'s entry point, run in this process (imports are paid once)."""
    import importlib

    monkeypatch.chdir(repo)
    capsys.readouterr()
    from tamis.contract import stage_main

    try:
        stage_main(stage, importlib.import_module(f"stages.{stage}").run)
        code = 0
    except SystemExit as exit_:
        code = exit_.code
    return code, capsys.readouterr().err


@pytest.mark.parametrize("case, stage, message", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_sentence_and_loses_nothing(good_workspace, tmp_path, monkeypatch, capsys, case, stage, message):
    repo = tmp_path / "repo"
    shutil.copytree(good_workspace, repo, symlinks=True)
    before = snapshot(repo)
    set_params(repo, *write_input(case, tmp_path))
    for step in ("ingest", "validate"):
        code, err = stage_cli(repo, step, monkeypatch, capsys)
        if step == stage:
            break
        assert code == 0, err
    said = [ln for ln in err.splitlines() if ln.startswith("tamis ")]
    assert code == 2 and len(said) == 1 and re.search(message, said[0]), err
    assert "np." not in said[0]  # values as the user wrote them
    assert snapshot(repo) == before


def test_a_stage_process_exits_2_with_one_line_and_no_traceback(good_workspace, tmp_path):
    repo = tmp_path / "repo"
    shutil.copytree(good_workspace, repo, symlinks=True)
    before = snapshot(repo)
    set_params(repo, f"data.train={tmp_path / 'missing.csv'}")
    proc = run_stage(repo, "ingest")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == f"tamis ingest: data.train: file '{tmp_path / 'missing.csv'}' does not exist."
    assert "Traceback" not in proc.stderr
    assert snapshot(repo) == before


def test_label_spellings_are_folded_when_asked(good_workspace, tmp_path, monkeypatch, capsys):
    repo = tmp_path / "repo"
    shutil.copytree(good_workspace, repo, symlinks=True)
    write_input("label_spellings", tmp_path)
    set_params(repo, f"data.train={tmp_path / 'bad.csv'}", "data.normalize_labels=true")
    for step in ("ingest", "validate"):
        code, err = stage_cli(repo, step, monkeypatch, capsys)
        assert code == 0, err
    classes = pd.read_parquet(repo / "data/validated/train.parquet")["label"].unique()
    assert sorted(classes) == ["c0", "c1", "c2"]


def test_a_label_column_not_in_the_table_names_the_close_one(tmp_path):
    from stages.ingest import _load
    from tamis.errors import StageError

    mixed_table(20).rename(columns={"label": "Risk Level"}).to_csv(tmp_path / "t.csv", index=False)
    with pytest.raises(StageError, match=r"column 'risk level' is not in .*'Risk Level'\); did you mean 'Risk Level'\?$"):
        _load(str(tmp_path / "t.csv"), "risk level", "data.train")
    with pytest.raises(StageError, match=r"column 'nope' is not in .*'Risk Level'\)\.$"):
        _load(str(tmp_path / "t.csv"), "nope", "data.train")


def test_a_semicolon_separated_file_is_read_with_its_separator(good_workspace, tmp_path, monkeypatch, capsys):
    repo = tmp_path / "repo"
    shutil.copytree(good_workspace, repo, symlinks=True)
    mixed_table(300).to_csv(tmp_path / "semi.csv", sep=";", index=False)
    set_params(repo, f"data.train={tmp_path / 'semi.csv'}")
    code, err = stage_cli(repo, "ingest", monkeypatch, capsys)
    assert code == 0, err
    assert "is ';'-separated; read it so" in err
    assert list(pd.read_parquet(repo / "data/raw/train.parquet").columns) == ["row_id", "x1", "x2", "color", "label"]


def test_a_semicolon_file_with_decimal_commas_reads_its_numbers_as_numbers(tmp_path, capsys):
    frame = mixed_table(50)
    frame["code"] = [f"{i % 3}" for i in range(50)]  # whole numbers as text stay as pandas reads them
    frame.to_csv(tmp_path / "eu.csv", sep=";", decimal=",", index=False)
    got = load_source(str(tmp_path / "eu.csv"), "label")
    assert got["x1"].dtype == np.float64 and np.allclose(got["x1"], frame["x1"])
    assert got["color"].tolist() == frame["color"].tolist() and got["code"].tolist() == list(range(3)) * 16 + [0, 1]
    assert "writes decimals with a comma in 'x1', 'x2'" in capsys.readouterr().err
    frame.to_csv(tmp_path / "dots.csv", sep=";", index=False)  # decimal points: read as before, no note
    assert np.allclose(load_source(str(tmp_path / "dots.csv"), "label")["x1"], frame["x1"])
    assert "decimals with a comma" not in capsys.readouterr().err


def test_rows_without_a_label_are_left_out_with_a_warning_by_default(good_workspace, tmp_path, monkeypatch, capsys):
    """2 of 300 rows have no label: they go (warned, in ingest's meta), the rest is ingested and validated."""
    import json

    repo = tmp_path / "repo"
    shutil.copytree(good_workspace, repo, symlinks=True)
    bad = tmp_path / "bad.csv"
    broken(mixed_table(300), "label_nulls").to_csv(bad, index=False)
    set_params(repo, f"data.train={bad}")
    code, err = stage_cli(repo, "ingest", monkeypatch, capsys)
    assert code == 0, err
    assert re.search(r"warning: 2 of 300 row\(s\) of .*bad\.csv have no value in the label column 'label' and are left out", err)
    meta = json.loads((repo / "data/raw/meta.json").read_text())
    assert meta["unlabelled_rows_dropped"] == {"train": 2} and sum(meta["rows"].values()) == 298
    code, err = stage_cli(repo, "validate", monkeypatch, capsys)
    assert code == 0, err
    table = mixed_table(300)
    table["label"] = table["label"].str[1:].astype(float)  # integer classes; a missing one makes pandas read floats
    table.loc[[3, 50], "label"] = None
    table.to_csv(bad, index=False)
    code, err = stage_cli(repo, "ingest", monkeypatch, capsys)
    assert code == 0, err
    assert pd.read_parquet(repo / "data/raw/train.parquet")["label"].dtype == "int64"  # 1, not 1.0
    broken(mixed_table(300), "label_nulls").assign(label=None).to_csv(bad, index=False)
    code, err = stage_cli(repo, "ingest", monkeypatch, capsys)
    assert code == 2 and "data.train: column 'label' in" in err and "has no labels (every value is missing)" in err


def test_a_test_table_in_another_column_order_with_an_extra_column_is_read(good_workspace, tmp_path, monkeypatch, capsys):
    repo = tmp_path / "repo"
    shutil.copytree(good_workspace, repo, symlinks=True)
    mixed_table(300).to_csv(tmp_path / "train.csv", index=False)
    test = mixed_table(60, seed=1)
    test[list(reversed(test.columns))].assign(notes="x").to_csv(tmp_path / "test.csv")  # with pandas' index column
    set_params(repo, f"data.train={tmp_path / 'train.csv'}", f"data.test={tmp_path / 'test.csv'}")
    code, err = stage_cli(repo, "ingest", monkeypatch, capsys)
    assert code == 0, err
    assert re.search(r"warning: column\(s\) 'notes' of .*test\.csv are not in data\.train and are ignored", err)
    assert re.search(r"warning: column\(s\) 'Unnamed: 0' of .*test\.csv look like a written row index", err)
    code, err = stage_cli(repo, "validate", monkeypatch, capsys)
    assert code == 0, err
    columns = pd.read_parquet(repo / "data/validated/test.parquet").columns
    assert "notes" not in columns and "Unnamed: 0" not in columns


def test_a_class_too_rare_to_learn_is_dropped_with_a_warning_by_default(good_workspace, tmp_path, monkeypatch, capsys):
    """3 rows of class 6 in 300 (fewer training rows than audit.folds): its rows go, the other classes go on."""
    import json

    repo = tmp_path / "repo"
    shutil.copytree(good_workspace, repo, symlinks=True)
    (bad,) = write_input("int_tiny_class", tmp_path)[:1]
    set_params(repo, bad)
    code, err = stage_cli(repo, "ingest", monkeypatch, capsys)
    assert code == 0, err
    warned = [ln for ln in err.splitlines() if "too rare" in ln]
    assert len(warned) == 1 and re.search(r"1 class\(es\) too rare to learn and check, their rows left out: 6 \(3 row\(s\)\); "
                                          r"a class needs audit\.folds=5 training rows and a calibration row", warned[0]), err
    meta = json.loads((repo / "data/raw/meta.json").read_text())
    assert sum(meta["rare_classes_dropped"]["6"].values()) == 3
    assert sum(meta["rows"].values()) == 297
    code, err = stage_cli(repo, "validate", monkeypatch, capsys)
    assert code == 0, err
    labels = pd.concat(pd.read_parquet(repo / f"data/validated/{s}.parquet")["label"] for s in ("train", "calib", "test"))
    assert sorted(labels.unique()) == [0, 1, 2]


def test_a_test_class_the_training_table_lacks_is_dropped_with_a_warning_by_default(good_workspace, tmp_path, monkeypatch, capsys):
    """No model can predict a class it never saw: its test rows go, as a class too rare to learn does."""
    import json

    repo = tmp_path / "repo"
    shutil.copytree(good_workspace, repo, symlinks=True)
    set_params(repo, *write_input("stray_test_label", tmp_path)[:2])
    code, err = stage_cli(repo, "ingest", monkeypatch, capsys)
    assert code == 0, err
    assert re.search(r"warning: 1 class\(es\) too rare to learn and check, their rows left out: 'c9' \(1 row\(s\)\)", err), err
    assert json.loads((repo / "data/raw/meta.json").read_text())["rare_classes_dropped"] == {"c9": {"train": 0, "calib": 0, "test": 1}}
    code, err = stage_cli(repo, "validate", monkeypatch, capsys)
    assert code == 0, err
    assert len(pd.read_parquet(repo / "data/validated/test.parquet")) == 59


def test_values_that_are_not_numbers_are_read_as_missing_by_default_in_training_and_serving(good_workspace, tmp_path,
                                                                                               monkeypatch, capsys):
    """UCI tables write '?' for a missing value; Cars93 counts a rotary engine's cylinders as 'rotary'."""
    import json

    from tamis.data import Encoder, Schema

    repo = tmp_path / "repo"
    shutil.copytree(good_workspace, repo, symlinks=True)
    frame = broken(mixed_table(300), "non_numeric")
    frame.loc[[11, 12], "x1"] = "?"
    frame.to_csv(tmp_path / "q.csv", index=False)
    set_params(repo, f"data.train={tmp_path / 'q.csv'}")
    for step in ("ingest", "validate"):
        code, err = stage_cli(repo, step, monkeypatch, capsys)
        assert code == 0, err
    assert ("tamis validate: warning: numeric column(s) 'x1' (3 value(s) such as 'abc', '?') hold values that are not"
            " (finite) numbers: read as missing values and filled") in err
    splits = {s: pd.read_parquet(repo / f"data/validated/{s}.parquet") for s in ("train", "calib", "test")}
    assert sum(int(f["x1"].isna().sum()) for f in splits.values()) == 3 and splits["train"]["x1"].dtype == np.float64
    assert json.loads((repo / "metrics/validate.json").read_text())["non_numbers_as_missing"]["x1"]["values"] == 3
    schema = Schema(**json.loads((repo / "data/validated/schema.json").read_text()))
    encoder = Encoder.fit(splits["train"], schema)
    served = pd.DataFrame({"x1": ["?", "1.5"], "x2": [0.0, 0.0], "color": ["red", "red"]})
    num, _ = encoder.transform(served)  # serving reads the same value the same way: the training median
    x1 = schema.numeric.index("x1")
    assert num[0, x1] * encoder.scale[x1] + encoder.center[x1] == pytest.approx(np.nanmedian(splits["train"]["x1"]), abs=1e-4)
    assert num[1, x1] * encoder.scale[x1] + encoder.center[x1] == pytest.approx(1.5, abs=1e-4)


def test_infinite_values_are_read_as_missing_by_default_in_training_and_serving(good_workspace, tmp_path, monkeypatch,
                                                                                 capsys):
    """A ratio column divided by zero upstream holds inf; HGB and every model refuse it, a fill does not."""
    import json

    from tamis.data import Encoder, Schema

    repo = tmp_path / "repo"
    shutil.copytree(good_workspace, repo, symlinks=True)
    frame = broken(mixed_table(300), "infinite")
    frame.loc[9, "x2"] = -np.inf
    frame.to_csv(tmp_path / "inf.csv", index=False)
    set_params(repo, f"data.train={tmp_path / 'inf.csv'}")
    for step in ("ingest", "validate"):
        code, err = stage_cli(repo, step, monkeypatch, capsys)
        assert code == 0, err
    assert "numeric column(s) 'x2' (2 value(s) such as 'inf', '-inf') hold values that are not (finite) numbers" in err
    splits = {s: pd.read_parquet(repo / f"data/validated/{s}.parquet") for s in ("train", "calib", "test")}
    assert sum(int(f["x2"].isna().sum()) for f in splits.values()) == 2
    assert all(np.isfinite(f["x2"].dropna()).all() for f in splits.values())
    schema = Schema(**json.loads((repo / "data/validated/schema.json").read_text()))
    encoder = Encoder.fit(splits["train"], schema)
    num, _ = encoder.transform(pd.DataFrame({"x1": [0.0, 0.0], "x2": [np.inf, np.nan], "color": ["red", "red"]}))
    assert np.isfinite(num).all() and num[0].tolist() == num[1].tolist()  # served as a missing value is


def test_tamis_run_on_bad_input_says_one_sentence_without_prefects_traceback(tmp_path):
    """Prefect logs a failed flow with its traceback: ~40 lines of tamis internals above the one sentence."""
    import subprocess
    import sys

    repo = workspace.create(tmp_path / "repo")
    mixed_table(200).to_csv(tmp_path / "t.csv", index=False, sep=";")
    params = (repo / "params.yaml").read_text()
    proc = subprocess.run(
        [sys.executable, "-m", "flows.cli", "run", "--repo", str(repo), "--set", f"data.train={tmp_path / 't.csv'}",
         "--set", "data.label=nope"], capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1] == (
        f"tamis: stage 'ingest' failed: data.label: column 'nope' is not in {tmp_path / 't.csv'} (its columns: 'x1', 'x2', 'color', 'label').")
    assert "Traceback" not in proc.stderr and "Encountered exception during execution" in proc.stderr  # the line stays
    assert (repo / "params.yaml").read_text() == params
    # how the stage read the table (here its separator) is in the run's log too; the flow used to drop it
    assert f"tamis: note: {tmp_path / 't.csv'} is ';'-separated; read it so." in proc.stderr
