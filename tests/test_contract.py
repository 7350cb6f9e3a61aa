import json
import math
import os

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


KILLED_WHILE_MOVING = """\
import os, sys
from pathlib import Path
from tamis.contract import Outputs

root, kill_at = Path(sys.argv[1]), int(sys.argv[2])
real_replace, calls = os.replace, [0]

def replace(src, dst):  # the process dies just before its kill_at-th rename, as a SIGKILL would leave it
    calls[0] += 1
    if calls[0] == kill_at:
        os._exit(9)
    real_replace(src, dst)

with Outputs(root) as out:
    out.write_json("metrics/m.json", {"v": "new"})
    (out.dir("data/d") / "f.txt").write_text("new")
    out.path("models/x.bin").write_text("new")
    os.replace = replace
"""


def outputs_state(root) -> set[str]:
    return {
        json.loads((root / "metrics/m.json").read_text())["v"],
        (root / "data/d/f.txt").read_text(),
        (root / "models/x.bin").read_text(),
    }


@pytest.mark.parametrize("kill_at", range(1, 8))  # 1: before the journal is in place; 2..7: between the six moves
def test_a_stage_killed_between_renames_is_finished_or_undone_by_the_next_start(tmp_path, kill_at):
    import subprocess
    import sys

    for rel, text in (("metrics/m.json", '{"v": "old"}'), ("data/d/f.txt", "old"), ("models/x.bin", "old")):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    proc = subprocess.run([sys.executable, "-c", KILLED_WHILE_MOVING, str(tmp_path), str(kill_at)], capture_output=True)
    assert proc.returncode == 9, proc.stderr
    assert list(tmp_path.glob(".tamis-out-*"))  # the kill left its scratch folder
    with Outputs(tmp_path):  # the next stage's start
        pass
    assert outputs_state(tmp_path) == ({"old"} if kill_at == 1 else {"new"})
    assert not list(tmp_path.glob(".tamis-out-*"))


def test_a_running_stages_scratch_folder_is_left_alone(tmp_path):
    from tamis.contract import recover

    mine = tmp_path / f".tamis-out-{os.getpid()}-abc"
    mine.mkdir()
    stale = tmp_path / "data" / ".d.old-1234abcd"  # the earlier swap's leftover beside its target
    stale.mkdir(parents=True)
    recover(tmp_path)
    assert mine.exists()
    with Outputs(tmp_path) as out:
        out.dir("data/d")
    assert not stale.exists() and (tmp_path / "data/d").is_dir()
