import json
import math

import numpy as np
import pytest

from tamis.contract import Outputs, dumps


def test_outputs_appear_together_on_success(tmp_path):
    (tmp_path / "data" / "old").mkdir(parents=True)
    (tmp_path / "data" / "old" / "stale.txt").write_text("stale")
    with Outputs(tmp_path) as out:
        folder = out.dir("data/old")
        (folder / "new.txt").write_text("new")
        out.write_json("metrics/m.json", {"a": 1})
        assert not (tmp_path / "metrics" / "m.json").exists()  # nothing visible before the end
    assert (tmp_path / "data/old/new.txt").read_text() == "new"
    assert not (tmp_path / "data/old/stale.txt").exists()  # a folder is replaced as a whole
    assert json.loads((tmp_path / "metrics/m.json").read_text()) == {"a": 1}
    assert not list(tmp_path.glob(".tamis-out-*"))


def test_failure_leaves_previous_outputs_intact(tmp_path):
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "m.pt").write_text("good")
    with pytest.raises(RuntimeError, match="boom"):
        with Outputs(tmp_path) as out:
            out.path("models/m.pt").write_text("half-written")
            raise RuntimeError("boom")
    assert (tmp_path / "models" / "m.pt").read_text() == "good"
    assert not list(tmp_path.glob(".tamis-out-*"))


def test_declared_but_unwritten_output_is_an_error(tmp_path):
    (tmp_path / "keep.txt").write_text("good")
    with pytest.raises(RuntimeError, match="never wrote"):
        with Outputs(tmp_path) as out:
            out.path("keep.txt")
    assert (tmp_path / "keep.txt").read_text() == "good"


def test_dumps_handles_numpy_and_non_finite():
    text = dumps({"a": np.float32(0.5), "b": np.arange(2), "c": math.nan, "d": np.int64(3)})
    assert json.loads(text) == {"a": 0.5, "b": [0, 1], "c": None, "d": 3}
