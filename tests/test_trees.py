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
        z = forest(torch.as_tensor(num), torch.as_tensor(cat)).numpy()
    ref = _raw(model, hgb_inputs(num, cat))
    assert np.abs(z - ref).max() < 1e-4
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


def test_forest_exports_to_onnx_with_the_same_logits(tmp_path):
    import onnxruntime as ort

    num, cat, y, card = _table(600, 3, seed=2)
    model = fit_hgb(hgb_inputs(num, cat), y, None, categorical_mask(3, card), 3, 8, 0.2, 8, 0)
    forest = Forest.from_sklearn(model).eval()
    cat[::7, 0] = 0
    batch = torch.export.Dim("batch")
    program = torch.onnx.export(forest, (torch.as_tensor(num[:4]), torch.as_tensor(cat[:4])), dynamo=True,
                                input_names=["num", "cat"], output_names=["logits"],
                                dynamic_shapes=({0: batch}, {0: batch}))
    program.save(str(tmp_path / "forest.onnx"))
    session = ort.InferenceSession(str(tmp_path / "forest.onnx"), providers=["CPUExecutionProvider"])
    got = session.run(None, {"num": num, "cat": cat})[0]
    with torch.no_grad():
        want = forest(torch.as_tensor(num), torch.as_tensor(cat)).numpy()
    assert np.abs(got - want).max() < 1e-5
