import numpy as np
import pandas as pd
import pytest

from tamis.contract import StageError
from tamis.data import ROW_ID, Encoder, Schema, load_source, noise_splits, noisy_rows, split_frame


def test_load_sklearn_dataset_names_label_column():
    frame = load_source("sklearn:iris", "species")
    assert "species" in frame and len(frame) == 150 and frame["species"].nunique() == 3


@pytest.mark.parametrize(
    "source, message",
    [
        ("sklearn:mnist", "unknown scikit-learn dataset 'mnist'"),
        ("/nope/train.csv", "file '/nope/train.csv' does not exist"),
    ],
)
def test_load_source_errors(source, message):
    with pytest.raises(StageError, match=message):
        load_source(source, "label")


def test_load_csv_parquet_and_bad_suffix(tmp_path):
    frame = pd.DataFrame({"a": [1.0, 2.0], "label": ["x", "y"]})
    frame.to_csv(tmp_path / "t.csv", index=False)
    frame.to_parquet(tmp_path / "t.parquet")
    (tmp_path / "t.xlsx").write_text("?")
    pd.testing.assert_frame_equal(load_source(str(tmp_path / "t.csv"), "label"), frame)
    pd.testing.assert_frame_equal(load_source(str(tmp_path / "t.parquet"), "label"), frame)
    with pytest.raises(StageError, match=r"should be a \.csv, \.tsv or \.txt file .* or a \.parquet file"):
        load_source(str(tmp_path / "t.xlsx"), "label")


@pytest.mark.parametrize("name", ["t.csv.gz", "t.csv.bz2", "t.csv.xz", "t.csv.zip", "t.tsv.gz", "t.TXT"])
def test_compressed_and_tab_separated_csvs_are_read_like_a_csv(tmp_path, name, capsys):
    frame = pd.DataFrame({"a": [1.5, 2.0, 3.0], "b": ["u", "v", "w"], "label": ["007", "012", "007"]})
    frame.to_csv(tmp_path / name, index=False, sep="\t" if ".tsv" in name else ",")
    got = load_source(str(tmp_path / name), "label")
    pd.testing.assert_frame_equal(got, frame)  # the label codes keep their text, as in a plain CSV
    assert ("tab-separated" in capsys.readouterr().err) == (".tsv" in name)
    from tamis.data import column_names

    assert column_names(str(tmp_path / name), "label") == ["a", "b", "label"]


def test_a_csv_saved_by_a_western_european_spreadsheet_is_read_with_a_note(tmp_path, capsys):
    """Windows-1252: é and ’ are one byte each, which UTF-8 refuses; CRLF line ends."""
    frame = pd.DataFrame({"région": ["Rhône", "Côte d’Or", "Rhône"], "x": [1.0, 2.0, 3.0], "cépage": ["Mérlot", "Syrah", "Mérlot"]})
    frame.to_csv(tmp_path / "w.csv", index=False, encoding="cp1252", lineterminator="\r\n")
    got = load_source(str(tmp_path / "w.csv"), "cépage")
    pd.testing.assert_frame_equal(got, frame)
    assert "is not UTF-8; read it as cp1252" in capsys.readouterr().err
    frame.to_csv(tmp_path / "u.csv", index=False, encoding="utf-8-sig")  # UTF-8 with a BOM: no note, same names
    pd.testing.assert_frame_equal(load_source(str(tmp_path / "u.csv"), "cépage"), frame)
    assert "UTF-8" not in capsys.readouterr().err


def test_a_compressed_tables_model_is_named_for_the_table():
    from tamis.registry import model_name

    assert model_name("auto", "/data/sales.csv.gz", "churn") == model_name("auto", "/data/sales.csv", "churn") == "tamis-sales-churn"
    assert model_name("auto", "/data/v1.2_sales.csv", "churn") == "tamis-v1.2_sales-churn"


def test_split_is_stratified_disjoint_and_complete():
    labels = np.repeat(["a", "b", "c"], [500, 300, 200])
    frame = pd.DataFrame({ROW_ID: np.arange(1000), "label": labels})
    rest, carved = split_frame(frame, "label", 0.2, seed=0)
    assert len(carved) == 200 and len(rest) == 800
    assert set(rest[ROW_ID]).isdisjoint(carved[ROW_ID])
    assert carved["label"].value_counts().to_dict() == {"a": 100, "b": 60, "c": 40}


def test_split_survives_a_class_of_one_row():
    frame = pd.DataFrame({ROW_ID: np.arange(21), "label": ["a"] * 10 + ["b"] * 10 + ["lonely"]})
    rest, carved = split_frame(frame, "label", 0.3, seed=0)
    assert len(rest) + len(carved) == 21


def _schema():
    return Schema(label="label", numeric=["x"], categorical=["color"], classes=[0, 1, 2])


def test_encoder_standardises_on_fit_rows_and_fills_nulls():
    train = pd.DataFrame({"x": [1.0, 3.0, np.nan], "color": ["red", "blue", "red"], "label": [0, 1, 2]})
    enc = Encoder.fit(train, _schema())
    num, cat = enc.transform(train)
    assert num.dtype == np.float32 and cat.dtype == np.int64
    assert np.isclose(num[:, 0].mean(), 0.0, atol=1e-6)  # the null took the median, then standardised
    assert enc.cardinalities == [3]  # blue, red + the unseen code


def test_encoder_maps_unseen_category_to_zero_and_round_trips():
    train = pd.DataFrame({"x": [1.0, 2.0], "color": ["red", "blue"], "label": [0, 1]})
    enc = Encoder.from_dict(Encoder.fit(train, _schema()).to_dict())
    _, cat = enc.transform(pd.DataFrame({"x": [0.0, 1.0], "color": ["purple", "red"]}))
    assert cat[:, 0].tolist() == [0, 2]


def test_labels_match_across_int_and_string_and_reject_unknown():
    enc = Encoder(numeric=[], categorical=[], classes=[0, 1, 2])
    assert enc.labels(pd.Series([2, "1", 0.0])).tolist() == [2, 1, 0]
    with pytest.raises(StageError, match="label 7 is not one of the training classes"):
        enc.labels(pd.Series([1, 7]))


def test_noisy_rows_are_the_audited_train_and_calib_rows_of_known_classes():
    encoder = Encoder.fit(pd.DataFrame({"x": [0.0, 1.0], "label": ["a", "b"]}), Schema("label", ["x"], [], ["a", "b"]))
    issues = pd.DataFrame({
        "row_id": [0, 1, 2, 0, 1],
        "split": ["train", "train", "train", "calib", "test"],
        "given_label": ["b", "a", "rare", "a", "b"],
        "prob_0": [0.1, 0.8, 0.5, 0.7, 0.2],
        "prob_1": [0.9, 0.2, 0.5, 0.3, 0.8],
    })
    y, probs = noisy_rows(issues, encoder)
    assert y.tolist() == [1, 0, 0]  # the test row and the dropped class's row are left out
    assert probs.tolist() == [[0.1, 0.9], [0.8, 0.2], [0.7, 0.3]]
    # demo noise (data.inject_noise) flips train labels only: then the calib rows alone carry the calib labels' noise
    assert noise_splits({"rate": 0.1}) == ("calib",) and noise_splits(None) == ("train", "calib")
    y, _ = noisy_rows(issues, encoder, noise_splits({"rate": 0.1}))
    assert y.tolist() == [0]


def test_a_csv_label_keeps_its_codes_where_numbers_would_rename_classes(tmp_path):
    frame = pd.DataFrame({"x": np.arange(6.0), "grade": ["007", "012", "120", "007", "012", "120"]})
    frame.to_csv(tmp_path / "codes.csv", index=False)
    assert load_source(str(tmp_path / "codes.csv"), "grade")["grade"].tolist() == frame["grade"].tolist()
    frame.assign(grade=[0, 1, 2, 0, 1, 2]).to_csv(tmp_path / "ints.csv", index=False)  # plain numbers stay numbers
    got = load_source(str(tmp_path / "ints.csv"), "grade")["grade"]
    assert pd.api.types.is_integer_dtype(got) and got.tolist() == [0, 1, 2, 0, 1, 2]


def test_a_header_written_with_spaces_after_the_commas_is_read_by_its_plain_names(tmp_path, capsys):
    """``x, color, label``: pandas names the columns ' color' and ' label'; a user passes data.label=label."""
    (tmp_path / "t.csv").write_text("x, color, label\n1.5, red, 007\n2.5, blue, 012\n")
    got = load_source(str(tmp_path / "t.csv"), "label")
    assert list(got.columns) == ["x", "color", "label"] and "' color', ' label'" in capsys.readouterr().err
    assert got["x"].tolist() == [1.5, 2.5] and got["label"].tolist() == ["007", "012"]  # codes keep their text
    from tamis.data import as_trained, column_names

    assert column_names(str(tmp_path / "t.csv"), "label") == ["x", "color", "label"]
    served = pd.read_csv(tmp_path / "t.csv")  # serving gets the table as pandas reads it
    assert list(as_trained(served, ["x", "color"]).columns) == ["x", "color", " label"]
    (tmp_path / "twins.csv").write_text("a,a ,label\n1,2,x\n")  # stripping would make two 'a': names stay
    assert list(load_source(str(tmp_path / "twins.csv"), "label").columns) == ["a", "a ", "label"]
