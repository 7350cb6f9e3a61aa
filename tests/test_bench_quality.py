"""benchmarks.quality's bookkeeping, without running tamis: cells are stored and resumed, a tie adds a seed."""

from __future__ import annotations

import pytest

from benchmarks import quality


def fake_run(gap: float, calls: list):
    """one_run's shape: tamis's shipped model ``gap`` macro-F1 above every peer."""
    def one_run(name, frame, rate, seed, workdir, overrides):
        calls.append((name, rate, seed))
        row = lambda f1: {"accuracy": f1, "macro_f1": f1, "rarest_recall": f1, "ece": 0.05}
        models = {m: row(0.8) for m in (*quality.PEERS, quality.CEILING)}
        models |= {m: row(0.8 + gap) for m in quality.TAMIS.values()}
        check = {"ece": 0.05, "raw_teacher_ece": 0.04, "ece_floor": 0.02, "minus_raw": 0.01, "minus_raw_low": -0.01,
                 "minus_raw_high": 0.03, "worse_than_raw": float(seed == 1)}
        return {**models, "tamis_seconds": 1.0, "cell_seconds": 2.0, "flipped_share": rate,
                "tamis_final_model": f"variants/student{seed}.onnx", quality.CHECK: check,
                "diagnostics": {"calibrate": {"method": "temperature", "temperature": 1.5 + seed}}}

    return one_run


@pytest.fixture
def bench(tmp_path, monkeypatch):
    monkeypatch.setattr(quality, "CELLS", tmp_path / "cells")
    monkeypatch.setattr(quality, "write_result", lambda name, result: None)
    return tmp_path


def test_cells_are_stored_resumed_and_reported_by_table_and_noise(bench, monkeypatch):
    calls: list = []
    monkeypatch.setattr(quality, "one_run", fake_run(0.05, calls))
    argv = ["--tables", "tabular-8", "--noise", "0", "0.2", "--seeds", "0", "1"]
    result = quality.main(argv)
    assert len(calls) == 4 and len(list((bench / "cells" / "full").glob("*.json"))) == 4
    assert set(result["cells"]) == {"tabular-8, 0% noise", "tabular-8, 20% noise"}
    assert result["cells"]["tabular-8, 20% noise"]["seeds"] == [0, 1]
    assert result["cells"]["tabular-8, 20% noise"]["models"]["tamis_final_model"] == ["variants/student0.onnx",
                                                                                     "variants/student1.onnx"]
    quality.main(argv)
    assert len(calls) == 4  # resumed: nothing ran again
    reported = quality.main(["--report", "--noise", "0.35"])  # the stored cells, whatever was asked to run
    assert len(calls) == 4 and set(reported["cells"]) == set(result["cells"])
    quality.main([*argv, "--fresh"])
    assert len(calls) == 8
    assert "Held-out" not in quality.table(result) and "tabular-8 | 20% | 2 |" in quality.table(result)
    # the shipped ECE against the raw teacher's: seed 1 was worse beyond its interval, and the floor is reported
    assert "| 0.050 / 0.050 / 0.050 | 0.020 | 1 of 2 |" in quality.table(result), quality.table(result)
    # issue 11's done-when per noisy seed (the 0% cells have nothing to detect): 0.05 > 0.03, seed 1 worse than raw
    assert [(r["noise"], r["seed"]) for r in result["done_when"]] == [(0.2, 0), (0.2, 1)]
    report = quality.table(result)
    assert "| tabular-8 | 20% | 1 | 0.050 (0.020) | no | 0.040 | yes | +0.050 (HGB (noisy labels)) | 106% | n.r. / n.r.  |" in report
    assert "| shipped ECE ≤ 0.03 | 0 of 2 |" in report and "| never above the raw teacher's ECE beyond its interval | 1 of 2 |" in report
    assert "| shipped macro-F1 ≥ every noisy-label peer | 2 of 2 |" in report and "at 20% noise | 2 of 2 |" in report
    import json
    stored = json.loads((bench / "cells" / "full" / "tabular-8_noise20_seed1.json").read_text())
    assert stored["diagnostics"]["calibrate"]["temperature"] == 2.5 and "diagnostics" not in stored["models"]


def test_a_tie_with_a_peer_adds_a_third_seed(bench, monkeypatch):
    calls: list = []
    monkeypatch.setattr(quality, "one_run", fake_run(0.005, calls))
    result = quality.main(["--tables", "tabular-8", "--noise", "0.2"])
    assert [seed for _, _, seed in calls] == [0, 1, 2]
    assert result["cells"]["tabular-8, 20% noise"]["seeds"] == [0, 1, 2]


def test_keep_leaves_each_cells_workspace_where_replay_finds_it(bench, monkeypatch):
    calls: list = []
    run = fake_run(0.05, calls)

    def one_run(name, frame, rate, seed, workdir, overrides):
        (workdir / "repo").mkdir()
        return run(name, frame, rate, seed, workdir, overrides)

    monkeypatch.setattr(quality, "one_run", one_run)
    quality.main(["--tables", "tabular-8", "--noise", "0.2", "--seeds", "0", "--no-tie-seed", "--keep", str(bench / "kept")])
    assert [p.name for p in (bench / "kept").iterdir()] == ["tabular-8_20_0"] and (bench / "kept/tabular-8_20_0/repo").is_dir()
    quality.main(["--tables", "tabular-8", "--noise", "0.2", "--seeds", "0", "--no-tie-seed", "--fresh", "--keep", str(bench / "kept")])
    assert len(calls) == 2  # a fresh run of the same cell replaces its kept workspace


def test_calibration_bounds_counts_the_true_noise_matrix_by_clean_class():
    import numpy as np

    from benchmarks.calibration_bounds import true_noise

    clean = np.array([0, 0, 0, 0, 1, 1])
    given = np.array([0, 0, 0, 1, 1, 1])  # a quarter of class 0 flipped to 1; class 1 untouched; class 2 has no row
    t = true_noise(clean, given, 3)
    assert np.allclose(t, [[0.75, 0.25, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
