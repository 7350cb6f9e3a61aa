import numpy as np
import pytest
import torch
import torch.nn.functional as F

from stages.calibrate import fit_temperature
from stages.contract import StageError
from stages.data import Encoder
from stages.losses import cross_entropy, kd_loss, soft_cross_entropy
from stages.nets import MLP, Table, fit, load_model, logits_of, resolve_device, save_model


def test_cross_entropy_matches_torch_and_honours_weights():
    logits, y = torch.randn(6, 3), torch.tensor([0, 1, 2, 0, 1, 2])
    assert cross_entropy(logits, y) == pytest.approx(F.cross_entropy(logits, y).item())
    w = torch.tensor([1.0, 1.0, 1.0, 0.0, 0.0, 0.0])
    assert cross_entropy(logits, y, w) == pytest.approx(F.cross_entropy(logits[:3], y[:3]).item())


def test_label_smoothing_differs_from_plain_ce():
    logits, y = torch.tensor([[5.0, 0.0, 0.0]]), torch.tensor([0])
    assert cross_entropy(logits, y, smoothing=0.1) > cross_entropy(logits, y)


def test_soft_cross_entropy_equals_ce_on_one_hot():
    logits, y = torch.randn(4, 3), torch.tensor([0, 2, 1, 0])
    assert soft_cross_entropy(logits, F.one_hot(y, 3).float()) == pytest.approx(F.cross_entropy(logits, y).item())


def test_kd_loss_is_zero_for_equal_logits_and_positive_otherwise():
    z = torch.randn(5, 4)
    assert kd_loss(z, z.clone(), 4.0).item() == pytest.approx(0.0, abs=1e-6)
    assert kd_loss(z, torch.randn(5, 4), 4.0).item() > 0


def _blobs(n=300, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    num = (rng.normal(size=(n, 2)) + np.stack([y, -y], 1)).astype(np.float32)
    return num, np.zeros((n, 0), dtype=np.int64), y


def _fit(seed):
    num, cat, y = _blobs()
    torch.manual_seed(seed)
    model = MLP(2, [], 3, [16], 0.0)
    result = fit(model, Table.of(num, cat, y), lambda z, b: cross_entropy(z, b.y), epochs=15, batch_size=32,
                 lr=1e-2, weight_decay=0.0, seed=seed)
    return model, result


def test_fit_learns_and_is_deterministic():
    (m1, r1), (m2, _) = _fit(0), _fit(0)
    assert r1.history[-1]["train_loss"] < r1.history[0]["train_loss"] * 0.7
    for a, b in zip(m1.state_dict().values(), m2.state_dict().values()):
        assert torch.equal(a, b)


def test_early_stopping_keeps_the_best_epoch():
    num, cat, y = _blobs()
    val = Table.of(*_blobs(seed=1))
    model = MLP(2, [], 3, [16], 0.0)
    result = fit(model, Table.of(num, cat, y), lambda z, b: cross_entropy(z, b.y), epochs=40, batch_size=32,
                 lr=1e-2, weight_decay=0.0, seed=0, val=val, patience=3)
    best = min(result.history, key=lambda r: r["val_nll"])
    assert result.best_epoch == best["epoch"]
    assert F.cross_entropy(logits_of(model, val), val.y).item() == pytest.approx(best["val_nll"], rel=1e-5)


def test_one_hot_categoricals_reach_the_model():
    model = MLP(0, [3], 2, [4], 0.0)
    num = torch.zeros((3, 0))
    out = model.eval()(num, torch.tensor([[0], [1], [2]]))
    assert not torch.allclose(out[0], out[1])


def test_checkpoint_round_trip(tmp_path):
    model = MLP(2, [3], 4, [8], 0.1).eval()
    enc = Encoder(numeric=["a", "b"], categorical=["c"], classes=[0, 1, 2, 3], categories={"c": ["x", "y"]})
    save_model(tmp_path / "m.pt", model, enc, temperature=1.5)
    loaded, enc2, ckpt = load_model(tmp_path / "m.pt")
    num, cat = torch.randn(5, 2), torch.randint(0, 3, (5, 1))
    assert torch.equal(model(num, cat), loaded(num, cat))
    assert enc2 == enc and ckpt["temperature"] == 1.5


def test_cuda_without_cuda_is_a_clear_error():
    if torch.cuda.is_available():
        assert resolve_device("cuda").type == "cuda"
    else:
        with pytest.raises(StageError, match="device: 'cuda' was asked for but torch sees no CUDA"):
            resolve_device("cuda")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")


def test_temperature_scaling_recovers_the_true_temperature():
    rng = np.random.default_rng(0)
    true_logits = rng.normal(scale=2.0, size=(4000, 5))
    probs = np.exp(true_logits) / np.exp(true_logits).sum(1, keepdims=True)
    y = np.array([rng.choice(5, p=p) for p in probs])
    t, converged = fit_temperature(true_logits * 3.0, y)  # logits 3x overconfident
    assert converged and t == pytest.approx(3.0, rel=0.08)
