from pathlib import Path

import pytest

from tamis.config import (
    ConfigError,
    Params,
    apply_overrides,
    load_params,
    parse_params,
    read_raw,
)

ROOT = Path(__file__).resolve().parents[1]


def test_repo_params_are_valid_and_complete():
    params = load_params(ROOT / "params.yaml")
    assert params.data.train == "sklearn:digits"
    assert params.data.label == "label"
    # every section of the model is written out in params.yaml, so users see every knob
    raw = read_raw(ROOT / "params.yaml")
    assert set(Params.model_fields) - {"validate_"} | {"validate"} == set(raw)


def test_unknown_key_names_the_key():
    with pytest.raises(ConfigError, match=r"unknown key 'train\.epohcs'"):
        parse_params({"train": {"epohcs": 3}})


def test_wrong_type_names_the_key():
    with pytest.raises(ConfigError, match=r"train\.epochs: .*integer.*'many'"):
        parse_params({"train": {"epochs": "many"}})


def test_impossible_fraction_names_the_key():
    with pytest.raises(ConfigError, match=r"data\.test_size: .*less than 1.*1\.5"):
        parse_params({"data": {"test_size": 1.5}})


def test_a_count_or_auto_takes_nothing_else():
    assert parse_params({"audit": {"repeats": 3}}).audit.repeats == 3
    for bad in (0, "sometimes", 2.5):
        with pytest.raises(ConfigError, match=rf"audit\.repeats: .*at least 1, or 'auto', got {bad!r}"):
            parse_params({"audit": {"repeats": bad}})


def test_splits_must_leave_training_rows():
    with pytest.raises(ConfigError, match=r"data: calib_size \+ test_size is 0\.9"):
        parse_params({"data": {"test_size": 0.5, "calib_size": 0.4}})


def test_unknown_choice_is_rejected():
    with pytest.raises(ConfigError, match=r"device: .*'cpu'.*'tpu'"):
        parse_params({"device": "tpu"})


def test_overrides_are_parsed_as_yaml_and_nested():
    raw = apply_overrides({"train": {"epochs": 60}}, ["train.epochs=5", "train.hidden=[8, 4]", "data.inject_noise.rate=0.2"])
    params = parse_params(raw)
    assert params.train.epochs == 5 and params.train.hidden == [8, 4]
    assert params.data.inject_noise.rate == 0.2
    assert raw is not None and apply_overrides(raw, []) == raw


def test_override_without_equals_is_rejected():
    with pytest.raises(ConfigError, match="key.path=value"):
        apply_overrides({}, ["train.epochs"])


def test_missing_and_malformed_params_file(tmp_path):
    with pytest.raises(ConfigError, match="is missing"):
        load_params(tmp_path / "params.yaml")
    (tmp_path / "params.yaml").write_text("train: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_params(tmp_path / "params.yaml")
