"""The label-review loop: export the suspects, a scripted reviewer fixes some, apply, re-run ingest / validate / audit."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import mixed_table

from flows.cli import main
from stages import audit, ingest, validate
from tamis import paths, review
from tamis.config import parse_params
from tamis.data import feature_columns

FAST_AUDIT = {"folds": 3, "epochs": 6, "hidden": [16], "batch_size": 32, "hgb_max_iter": 30}


@pytest.fixture(autouse=True)
def _one_process(monkeypatch):
    monkeypatch.setenv("TAMIS_JOBS", "1")


def test_row_keys_follow_the_content_not_the_position_nor_the_types(tmp_path):
    raw = mixed_table(50)
    raw["flag"] = raw["x1"] > 0  # a bool column
    raw["code"] = ["07", "x"] * 25  # text that partly reads as numbers
    keys = review.row_keys(raw, ["x1", "x2", "color", "flag", "code"])
    assert len(set(keys)) == 50
    shuffled = raw.sample(frac=1.0, random_state=0)
    assert list(review.row_keys(shuffled, ["code", "flag", "color", "x2", "x1"])) == list(keys[shuffled.index])
    typed = raw.astype({"color": "string", "flag": "string", "code": "string"})  # as validate writes categoricals
    typed.to_parquet(tmp_path / "t.parquet")
    assert list(review.row_keys(pd.read_parquet(tmp_path / "t.parquet"), ["x1", "x2", "color", "flag", "code"])) == list(keys)
    raw.loc[3, "x1"] += 1e-9
    assert review.row_keys(raw, ["x1", "x2", "color", "flag", "code"])[3] != keys[3]


@pytest.fixture(scope="module")
def audited(tmp_path_factory) -> tuple[Path, dict]:
    """ingest -> validate -> audit on a small table with 15% flipped training labels."""
    root = tmp_path_factory.mktemp("review")
    mixed_table(600).to_csv(root / "table.csv", index=False)
    raw = {"data": {"train": str(root / "table.csv"), "inject_noise": {"rate": 0.15, "seed": 3}}, "audit": FAST_AUDIT}
    params = parse_params(raw)
    mp = pytest.MonkeyPatch()
    mp.setenv("TAMIS_JOBS", "1")
    for stage in (ingest, validate, audit):
        stage.run(params, root)
    mp.undo()
    return root, raw


def run_cli(*argv: str, capsys) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_export_review_apply_rerun(audited, tmp_path, capsys):
    root = tmp_path / "repo"
    shutil.copytree(audited[0], root)
    params = parse_params(audited[1])
    out = tmp_path / "review.csv"
    code, said, _ = run_cli("review", "export", "--repo", str(root), "--out", str(out), capsys=capsys)
    assert code == 0 and "to review" in said
    exported = pd.read_csv(out, dtype={"row_key": str})
    issues = pd.read_parquet(root / paths.ISSUES)
    flag_cols = [c for c in issues.columns if c.startswith("is_") and c.endswith("_issue")]
    assert len(exported) == issues[flag_cols].any(axis=1).sum()  # every flagged row, all issue types
    assert exported["severity"].is_monotonic_increasing  # worst first
    assert {"x1", "x2", "color", "given_label", "suggested_label", "label_quality", "issues", "reviewed_label", "decision"} <= set(exported.columns)
    assert exported["reviewed_label"].isna().all() and exported["decision"].isna().all()

    # the reviewer: the first 30 training rows flagged as mislabelled, judged against the truth
    truth = pd.read_parquet(root / paths.TRUTH).set_index("row_id")
    todo = exported[(exported["split"] == "train") & exported["issues"].str.contains("label")].head(30).copy()
    flipped = todo["row_id"].map(truth["flipped"]).to_numpy(bool)
    assert 0 < flipped.sum() < len(todo)  # some hits, some false alarms: the precision means something
    todo["decision"] = np.where(flipped, "relabel", "keep")
    todo["reviewed_label"] = np.where(flipped, todo["row_id"].map(truth["true_label"]), "")
    filled = exported.astype({"decision": object, "reviewed_label": object})
    filled.loc[todo.index, ["decision", "reviewed_label"]] = todo[["decision", "reviewed_label"]]
    filled.to_csv(out, index=False)
    code, said, err = run_cli("review", "apply", str(out), "--repo", str(root), capsys=capsys)
    assert code == 0, err
    fixes = review.read_fixes(root)
    assert len(fixes) == 30 and (fixes["decision"] == "relabel").sum() == flipped.sum()

    for stage in (ingest, validate, audit):
        stage.run(params, root)
    train = pd.read_parquet(root / "data/validated/train.parquet")
    keys = review.row_keys(train, feature_columns(train, "label"))
    fixed = dict(zip(todo["row_key"], np.where(flipped, todo["reviewed_label"], todo["given_label"])))
    carried = train[np.isin(keys, list(fixed))].assign(row_key=lambda t: keys[t.index])
    assert len(carried) == 30 and (carried["label"] == carried["row_key"].map(fixed)).all()
    assert not pd.read_parquet(root / paths.TRUTH).set_index("row_id").loc[todo["row_id"], "flipped"].any()
    issues = pd.read_parquet(root / paths.ISSUES)
    assert issues["reviewed"].sum() == 30 and not issues.loc[issues["reviewed"], "is_label_issue"].any()
    metrics = json.loads((root / paths.metrics("audit")).read_text())["review"]
    assert metrics["trusted_rows"] == 30 and metrics["decisions"] == {"keep": 30 - flipped.sum(), "relabel": flipped.sum(), "drop": 0}
    assert metrics["label_issue_precision"] == pytest.approx(flipped.mean())
    meta = json.loads((root / "data/raw/meta.json").read_text())["label_fixes"]
    assert meta["matched"] == 30 and meta["relabelled"] == flipped.sum() and meta["md5"] == review.fixes_digest(root)

    code, said, _ = run_cli("review", "export", "--repo", str(root), "--out", str(out), capsys=capsys)
    again = pd.read_csv(out, dtype={"row_key": str})
    # reviewed rows are never flagged again, but for leakage: a copy across splits leaks whatever its label
    assert (again.loc[again["row_key"].isin(set(fixed)), "issues"] == "leakage").all()
    assert again["row_key"].isin(set(fixed)).sum() < len(fixed)


def bad_review(frame: pd.DataFrame, case: str) -> pd.DataFrame:
    frame = frame.head(5).astype({"decision": object, "reviewed_label": object}).copy()
    frame["decision"] = "keep"
    frame["reviewed_label"] = ""
    if case == "unknown_decision":
        frame.loc[2, "decision"] = "fix"
    elif case == "unknown_row":
        frame.loc[1, "row_key"] = "0123456789abcdef"
    elif case == "unknown_class":
        frame.loc[0, ["decision", "reviewed_label"]] = ["relabel", "c9"]
    elif case == "twice":
        frame.loc[4, "row_key"] = frame.loc[3, "row_key"]
    elif case == "relabel_without_label":
        frame.loc[0, "decision"] = "relabel"
    elif case == "no_decision_column":
        frame = frame.drop(columns=["decision"])
    elif case == "nothing_decided":
        frame["decision"] = ""
    return frame


BAD = [
    ("unknown_decision", r"line 4 \(row_key \w+\): decision 'fix' should be one of keep, relabel, drop\.$"),
    ("unknown_row", r"line 3 \(row_key 0123456789abcdef\): no row of the current data has this row_key"),
    ("unknown_class", r"line 2 \(row_key \w+\): reviewed_label 'c9' is not one of the classes \['c0', 'c1', 'c2'\]\.$"),
    ("twice", r"review\.csv: row_key \w+ has more than one decision; keep one line per row\.$"),
    ("relabel_without_label", r"line 2 \(row_key \w+\): decision relabel needs a reviewed_label\.$"),
    ("no_decision_column", r"review\.csv: column 'decision' is missing"),
    ("nothing_decided", r"review\.csv: no row has a decision"),
]


@pytest.mark.parametrize("case, message", BAD, ids=[b[0] for b in BAD])
def test_a_bad_review_file_is_one_sentence_and_changes_no_fix(audited, tmp_path, capsys, case, message):
    root = audited[0]
    out = tmp_path / "review.csv"
    assert main(["review", "export", "--repo", str(root), "--out", str(out), "--top", "5"]) == 0
    before = (root / paths.LABEL_FIXES).read_bytes() if (root / paths.LABEL_FIXES).exists() else None
    bad_review(pd.read_csv(out, dtype={"row_key": str}), case).to_csv(out, index=False)
    code, _, err = run_cli("review", "apply", str(out), "--repo", str(root), capsys=capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("tamis: "), err
    import re

    assert re.search(message, lines[0]), lines[0]
    after = (root / paths.LABEL_FIXES).read_bytes() if (root / paths.LABEL_FIXES).exists() else None
    assert after == before
