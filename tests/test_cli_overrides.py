"""What ``tamis run --set data.train=...`` carries over from params.yaml when it points at other data."""

from __future__ import annotations

from conftest import mixed_table

from flows.cli import without_inherited_noise, without_inherited_test


def tables(tmp_path):
    """An earlier run's train and test tables, then a new table of other columns and a new day of the first."""
    mixed_table(100).to_csv(tmp_path / "a_train.csv", index=False)
    mixed_table(40, seed=1).to_csv(tmp_path / "a_test.csv", index=False)
    mixed_table(100, seed=2).rename(columns={"x1": "height", "label": "kind"}).to_parquet(tmp_path / "b.parquet")
    mixed_table(100, seed=3).to_csv(tmp_path / "a_next.csv", index=False, sep=";")
    return {"data": {"train": str(tmp_path / "a_train.csv"), "test": str(tmp_path / "a_test.csv"), "label": "label"}}


def test_a_test_table_of_other_columns_is_not_inherited_by_new_data(tmp_path, capsys):
    raw = tables(tmp_path)
    moved = [f"data.train={tmp_path / 'b.parquet'}", "data.label=kind"]
    assert without_inherited_test(moved, raw) == [*moved, "data.test=null"]
    note = capsys.readouterr().err
    assert f"data.test ({tmp_path / 'a_test.csv'}, from an earlier run) lacks column(s) 'height', 'kind' of the new" in note


def test_a_test_table_that_fits_stays_and_one_the_command_sets_is_never_touched(tmp_path, capsys):
    raw = tables(tmp_path)
    nightly = [f"data.train={tmp_path / 'a_next.csv'}"]  # a scheduled retrain: new rows, the same fixed test set
    assert without_inherited_test(nightly, raw) == nightly
    given = [f"data.train={tmp_path / 'b.parquet'}", f"data.test={tmp_path / 'a_test.csv'}", "data.label=kind"]
    assert without_inherited_test(given, raw) == given  # the user asked for it: ingest says what is wrong with it
    same = [f"data.train={tmp_path / 'a_train.csv'}"]
    assert without_inherited_test(same, raw) == same
    assert capsys.readouterr().err == ""


def test_demo_noise_is_switched_off_only_when_the_data_moves_and_the_command_does_not_set_it(tmp_path):
    raw = tables(tmp_path)
    moved = [f"data.train={tmp_path / 'b.parquet'}"]
    assert without_inherited_noise(moved, raw) == [*moved, "data.inject_noise=null"]
    assert without_inherited_noise([*moved, "data.inject_noise.rate=0.2"], raw) == [*moved, "data.inject_noise.rate=0.2"]
    assert without_inherited_noise([f"data.train={tmp_path / 'a_train.csv'}"], raw) == [f"data.train={tmp_path / 'a_train.csv'}"]
