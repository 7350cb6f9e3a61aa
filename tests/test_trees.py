"""The tree teacher: scikit-learn's boosted trees re-expressed as a torch module give the same scores, saved,
loaded, cut at an iteration and exported to ONNX."""

import numpy as np
import pytest
import torch

from tamis.data import Encoder, Schema
from tamis.nets import load_model, save_model
from tamis.trees import Blend, Forest, categorical_mask, fit_hgb, hgb_inputs


def _table(n: int, classes: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    num = rng.normal(size=(n, 3)).astype(np.float32)
    cat = np.stack([rng.integers(0, 6, n), rng.integers(1, 40, n), rng.integers(0, 300, n)], axis=1)
    score = num[:, 0] + (cat[:, 0] % 3) + (cat[:, 1] > 20) + 0.002 * cat[:, 2] + rng.normal(size=n)
    y = np.digitize(score, np.quantile(score, np.linspace(0, 1, classes + 1)[1:-1]))
    return num, cat, y, [6, 40, 300]


def _raw(model, x):
    """scikit-learn's raw scores as tamis logits: binary [0, raw], else one per class."""
    raw = model._raw_predict(x)
    return np.hstack([np.zeros_like(raw), raw]) if raw.shape[1] == 1 else raw


@pytest.mark.parametrize("classes", [2, 4])
def test_forest_scores_every_row_as_scikit_learn_does(classes):
    num, cat, y, card = _table(1500, classes)
    mask = categorical_mask(3, card)
    assert mask == [False] * 3 + [True, True, False]  # 300 categories: too many for native splits, a number
    model = fit_hgb(hgb_inputs(num[:1000], cat[:1000]), y[:1000], None, mask, classes, 60, 0.1, 31, 0)
    cat[1200:, 1] = 0  # a code no training row had (tamis's unseen-category code): the missing-value way
    cat[1300:, 0] = 5
    forest = Forest.from_sklearn(model).eval()
    with torch.no_grad():
        z = forest(torch.as_tensor(num), torch.as_tensor(cat)).numpy()  # on CPU: onnxruntime's tree kernel
        walked = forest.walk(torch.as_tensor(num), torch.as_tensor(cat)).numpy()  # as on a GPU
    ref = _raw(model, hgb_inputs(num, cat))
    assert np.abs(z - ref).max() < 1e-4 and np.abs(walked - ref).max() < 1e-4
    assert np.abs(ref[1200:] - _raw(model, hgb_inputs(num[1200:], np.where(cat[1200:] == 0, 1, cat[1200:])))).max() > 0


def test_a_cut_forest_is_the_staged_model_and_survives_a_checkpoint(tmp_path):
    num, cat, y, card = _table(800, 3, seed=1)
    model = fit_hgb(hgb_inputs(num, cat), y, None, categorical_mask(3, card), 3, 40, 0.1, 15, 0)
    staged = list(model.staged_predict_proba(hgb_inputs(num, cat)))
    forest = Forest.from_sklearn(model, 12)
    forest.logit_adjustment.copy_(torch.tensor([0.5, 0.0, -0.5]))
    assert forest.arch["iterations"] == 12 and forest.arch["trees"] == 36
    with torch.no_grad():
        p = (forest(torch.as_tensor(num), torch.as_tensor(cat)) - forest.logit_adjustment).softmax(1).numpy()
    assert np.abs(p - staged[11]).max() < 1e-5
    encoder = Encoder.fit(__import__("pandas").DataFrame({"x": [0.0, 1.0], "label": ["a", "b"]}),
                          Schema(label="label", numeric=["x"], categorical=[], classes=["a", "b", "c"]))
    blend = Blend([forest, Forest.from_sklearn(model)], [0.3, 0.7])
    save_model(tmp_path / "t.pt", blend, encoder, best_epoch=0)
    loaded, _, ckpt = load_model(tmp_path / "t.pt")
    with torch.no_grad():
        a = blend(torch.as_tensor(num), torch.as_tensor(cat))
        b = loaded(torch.as_tensor(num), torch.as_tensor(cat))
    assert ckpt["arch"]["kind"] == "blend" and torch.equal(a, b)
    mix = 0.3 * forest(torch.as_tensor(num), torch.as_tensor(cat)).softmax(1)
    mix += 0.7 * Forest.from_sklearn(model)(torch.as_tensor(num), torch.as_tensor(cat)).softmax(1)
    assert torch.allclose(a.softmax(1), mix, atol=1e-6)


def test_a_forest_exports_to_onnx_as_one_tree_ensemble_node_with_the_same_probabilities(tmp_path):
    """The project's export (the compress fallback's path): each forest of a blend becomes one TreeEnsemble node,
    categorical splits, unseen codes and one-leaf trees included, and the graph scores as torch does."""
    import onnx
    import onnxruntime as ort
    from sklearn.ensemble import HistGradientBoostingClassifier

    from tamis.compression import Exported, export_onnx

    num, cat, y, card = _table(600, 3, seed=2)
    model = fit_hgb(hgb_inputs(num, cat), y, None, categorical_mask(3, card), 3, 8, 0.2, 8, 0)
    stumps = HistGradientBoostingClassifier(max_iter=3, min_samples_leaf=400).fit(hgb_inputs(num, cat), y)
    forests = [Forest.from_sklearn(model), Forest.from_sklearn(stumps)]
    assert forests[0].has_categorical and forests[1].leaf[forests[1].roots].all()  # only one-leaf trees
    teacher = Blend(forests, [0.6, 0.4])
    cat[::7, 0] = 0  # a code no training row had
    identity = {"method": "temperature", "on": "logits", "scale": 1.0, "bias": [0.0] * 3}
    wrapped = Exported(teacher, identity, np.ones(num.shape[1])).eval()
    export_onnx(wrapped, num, cat, tmp_path / "teacher.onnx")
    ops = [n.op_type for n in onnx.load(str(tmp_path / "teacher.onnx")).graph.node]
    assert ops.count("TreeEnsemble") == 2 and "MatMul" not in ops  # the walk's markers are gone
    session = ort.InferenceSession(str(tmp_path / "teacher.onnx"), providers=["CPUExecutionProvider"])
    logits, probs = session.run(None, {"num": num, "cat": cat})
    with torch.no_grad():
        want_logits, want_probs = wrapped(torch.as_tensor(num), torch.as_tensor(cat))
    assert np.abs(logits - want_logits.numpy()).max() < 1e-5 and np.abs(probs - want_probs.numpy()).max() < 1e-6
