import json

import numpy as np
import pandas as pd
import pytest
import stage_chain
import torch
from conftest import mixed_table

from tamis import calibration, compression
from tamis.config import CompressParams, ConfigError, parse_params
from tamis.nets import MLP, Table, load_model
from tamis.serving import Predictor


def test_pruning_removes_the_units_nothing_listens_to():
    torch.manual_seed(0)
    model = MLP(3, [], 2, [8], 0.0).eval()
    with torch.no_grad():
        model.head.weight[:, 1::2] = 0.0  # odd units reach nothing
    table = Table.of(np.random.default_rng(0).normal(size=(64, 3)), np.zeros((64, 0)), np.zeros(64))
    small = compression.prune(model, 0.5, table)
    assert small.arch["hidden"] == [4] and small.body[0].weight.shape == (4, 3) and small.head.weight.shape == (2, 4)
    assert torch.equal(small.body[0].weight, model.body[0].weight[0::2])
    assert torch.equal(small.body[1].weight, model.body[1].weight[0::2])  # LayerNorm entries follow their units
    assert torch.equal(small.head.weight, model.head.weight[:, 0::2])


def test_smoothing_the_inputs_leaves_the_function_unchanged():
    torch.manual_seed(0)
    model = MLP(3, [4], 3, [8], 0.0).eval()
    num = torch.randn(16, 3) * torch.tensor([1.0, 30.0, 0.1])
    cat = torch.randint(0, 4, (16, 1))
    cal = {"method": "vector", "on": "logits", "scale": [1.2, 0.8, 1.0], "bias": [0.1, 0.0, -0.1]}
    smooth = compression.smooth_scales(model, num.numpy(), 0.5)
    assert not np.allclose(smooth, 1.0)
    logits, probs = compression.Exported(model, cal, smooth)(num, cat)
    with torch.no_grad():
        assert torch.allclose(logits, model(num, cat), atol=1e-5)
        assert torch.allclose(probs, calibration.Calibration(cal)(model(num, cat)), atol=1e-6)
    assert np.array_equal(compression.smooth_scales(model, num.numpy(), 0.0), np.ones(3))


def test_pruning_everything_is_a_config_error_naming_the_param():
    with pytest.raises(ConfigError, match=r"compress.prune_ratios: each ratio must be in \(0, 1\)"):
        parse_params({"compress": {"prune_ratios": [0.5, 1.0]}})


def _report(f1, ece, recalls):
    return {"macro_f1": f1, "ece": ece, "per_class_recall": recalls}


def test_gate_bounds_f1_ece_every_class_recall_and_batch_dependence():
    c = CompressParams()
    ref = _report(0.90, 0.02, [0.9, 0.9])
    rows = np.array([200, 10])  # one row of the small class is worth 0.1 of its recall
    assert compression.gate(_report(0.895, 0.025, [0.88, 0.8]), ref, 0.0, rows, ["a", "b"], c)["passed"]
    failures = compression.gate(_report(0.88, 0.04, [0.8, 0.9]), ref, 1e-2, rows, ["a", "b"], c)["failures"]
    assert len(failures) == 4
    assert "compress.max_f1_drop" in failures[0] and "compress.max_ece_rise" in failures[1]
    assert "class 'a'" in failures[2] and "with the batch" in failures[3]
    assert not compression.gate(_report(0.9, 0.02, [0.9, 0.8]), ref, 0.0, rows, ["a", "b"], c, recall_rows=0)["passed"]


def test_choose_ships_the_smallest_passing_variant_else_the_best_f1():
    def v(size, f1, passed):
        return {"size_bytes": size, "calib": {"macro_f1": f1, "ece": 0.01}, "gate": {"passed": passed}}

    assert compression.pick_shipped({"a": v(300, 0.9, True), "b": v(100, 0.8, True), "c": v(50, 0.7, False)}) == ("b", True)
    assert compression.pick_shipped({"a": v(300, 0.9, False), "b": v(100, 0.8, False)}) == ("a", False)


@pytest.fixture(scope="module")
def compressed(tmp_path_factory):
    return stage_chain.built(tmp_path_factory, "compress", mixed_table(800, 4))


def test_stage_exports_prunes_quantises_and_ships_what_the_gate_chose(compressed):
    metrics = json.loads((compressed / "metrics/compress.json").read_text())
    variants = metrics["variants"]
    names = {f"{m}.{k}" for m in ("student", "pruned50") for k in ("fp32", "int8_dynamic", "int8_static")}
    assert set(variants) - {"teacher.fp32"} == names
    assert metrics["models"]["pruned50"]["hidden"] == [8]  # half of distill.hidden [16], really smaller
    for name, v in variants.items():
        assert (compressed / "models" / v["file"]).stat().st_size == v["size_bytes"]
        assert v["gate"]["passed"] == (not v["gate"]["failures"])
        if name.endswith("fp32"):
            assert v["parity_max_abs_error"] < 1e-4 and v["gate"]["batch_shift"] < 1e-4
        else:
            assert 0.0 <= v["top1_agreement_with_fp32"] <= 1.0
    students = {n: v for n, v in variants.items() if not n.startswith("teacher.")}
    chosen, passed = compression.pick_shipped(students)
    if passed:  # the smallest passing student variant ships
        assert (metrics["chosen"], metrics["gate"]["passed"]) == (chosen, True) and "teacher.fp32" not in variants
    else:  # never a failing student variant: the calibrated teacher
        assert metrics["chosen"] == "teacher.fp32" and metrics["gate"]["fallback"] == "teacher"
    serving = json.loads((compressed / "models/serving.json").read_text())
    assert serving["model"] == metrics["final_model"] == variants[metrics["chosen"]]["file"]
    for key in ("teacher", "shipped"):
        assert set(metrics[key]["latency_ms"]) == {"batch_1", "batch_256"} and metrics[key]["size_bytes"] > 0


def test_the_shipped_graph_applies_the_students_calibration(compressed):
    predictor = Predictor.load(compressed / "models", "variants/student.fp32.onnx")
    frame = pd.read_parquet(compressed / "data/validated/test.parquet")
    num, cat = predictor.encoder.transform(frame)
    _, _, ckpt = load_model(compressed / "models/student.pt")
    logits = predictor.logits_encoded(num, cat).astype(np.float64)
    assert np.abs(predictor.proba_encoded(num, cat) - calibration.apply_map(ckpt["calibration"], logits)).max() < 1e-5
    shipped = Predictor.load(compressed / "models").predict(frame)
    assert list(shipped.columns) == ["label"] + [f"proba_c{k}" for k in range(4)] and len(shipped) == len(frame)


@pytest.mark.parametrize("teacher", ["auto", "hgb"])
def test_when_no_student_variant_passes_the_calibrated_teacher_ships(compressed, tmp_path, teacher):
    from stages import calibrate, compress, train

    root = stage_chain.copy_of(compressed, tmp_path / "strict")
    strict = [f"compress.{k}=0" for k in ("max_f1_drop", "max_ece_rise", "max_class_recall_drop")]
    stage_chain.set_params(root, *strict, "compress.max_batch_shift=1e-12", "compress.quantize=[int8_static]",
                           f"train.teacher={teacher}", "train.hgb_max_iter=30")
    if teacher == "hgb":  # a tree teacher exports as the same kind of graph
        train.run(stage_chain.params_of(root), root)
        calibrate.run(stage_chain.params_of(root), root)
        assert load_model(root / "models/teacher.pt")[0].arch["kind"] == "forest"
    metrics = compress.run(stage_chain.params_of(root), root)
    assert metrics["chosen"] == "teacher.fp32" and metrics["gate"]["fallback"] == "teacher"
    assert "shipping the calibrated teacher" in metrics["gate"]["warning"]
    assert not any(n.startswith("teacher.int8") for n in metrics["variants"])  # the fallback ships in FP32
    serving = json.loads((root / "models/serving.json").read_text())
    assert serving["model"] == "variants/teacher.fp32.onnx"
    model, _, _ = load_model(root / "models/teacher.pt")
    cal = json.loads((root / "models/calibration.json").read_text())
    frame = pd.read_parquet(root / "data/validated/test.parquet")
    predictor = Predictor.load(root / "models")
    num, cat = predictor.encoder.transform(frame)
    if cal["method"] in calibration.PARAMETRIC:  # the graph is the calibrated teacher itself
        logits = model(torch.as_tensor(num), torch.as_tensor(cat)).detach().numpy()
        assert np.abs(predictor.proba_encoded(num, cat) - calibration.apply_map(cal, logits)).max() < 1e-4


def test_the_f1_gate_counts_the_drop_s_standard_error():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 300)
    ref = np.eye(3)[y] * 0.8 + 0.2 / 3
    same = ref.copy()
    assert compression.f1_drop_se(ref, same, y, 0) == 0.0  # the same predictions: no doubt about the drop
    worse = ref.copy()
    flip = rng.choice(300, 12, replace=False)
    worse[flip] = np.roll(worse[flip], 1, axis=1)  # 4% of the rows now wrong
    se = compression.f1_drop_se(ref, worse, y, 0)
    assert 0.005 < se < 0.03 and se == compression.f1_drop_se(ref, worse, y, 0)
    c = CompressParams(max_f1_drop=0.01, f1_drop_se=1.0)
    report = {"macro_f1": 0.895, "ece": 0.02, "per_class_recall": [0.9, 0.9], "macro_f1_drop_se": se}
    reference = _report(0.90, 0.02, [0.9, 0.9])
    rows = np.array([150, 150])
    assert not compression.gate(report, reference, 0.0, rows, ["a", "b"], c)["passed"]  # 0.005 + se > 0.01
    assert compression.gate(report, reference, 0.0, rows, ["a", "b"], CompressParams(f1_drop_se=0.0))["passed"]


def test_a_drop_too_uncertain_to_tell_fails_the_gate_whatever_its_estimate():
    reference, rows = _report(0.90, 0.02, [0.9, 0.9]), np.array([20, 17])
    tiny = {"macro_f1": 0.92, "ece": 0.02, "per_class_recall": [0.9, 0.9], "macro_f1_drop_se": 0.07}  # 37 calib rows
    result = compression.gate(tiny, reference, 0.0, rows, ["a", "b"], CompressParams())
    assert not result["passed"] and result["macro_f1_drop"] < 0  # better on the calib rows, and still not trusted
    assert "compress.max_f1_drop_se 0.02: too few calib rows" in result["failures"][0]
    assert compression.gate({**tiny, "macro_f1_drop_se": 0.015}, reference, 0.0, rows, ["a", "b"], CompressParams())["passed"]


def test_the_bootstrap_macro_f1_is_scikit_learns():
    from sklearn.metrics import f1_score

    rng = np.random.default_rng(1)
    y = rng.integers(0, 4, 200)
    a, b = np.eye(4)[y], np.eye(4)[np.where(rng.random(200) < 0.2, rng.integers(0, 4, 200), y)]
    old, compression.BOOTSTRAP = compression.BOOTSTRAP, 2
    try:
        two = compression.f1_drop_se(a, b, y, 0)
    finally:
        compression.BOOTSTRAP = old
    resamples = np.random.default_rng(0)  # the function's resamples, scored by scikit-learn
    drops = []
    for _ in range(2):
        i = resamples.integers(0, 200, 200)
        drops.append(f1_score(y[i], a.argmax(1)[i], labels=range(4), average="macro", zero_division=0)
                     - f1_score(y[i], b.argmax(1)[i], labels=range(4), average="macro", zero_division=0))
    assert two == pytest.approx(np.std(drops), abs=1e-12) and two > 0
