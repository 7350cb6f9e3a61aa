import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tamis.calibration import fit_temperature
from tamis.contract import StageError
from tamis.data import Encoder
from tamis.losses import cross_entropy, kd_loss, soft_cross_entropy
from tamis.nets import (
    MLP,
    Table,
    fit,
    fit_args,
    load_model,
    logits_of,
    resolve_device,
    save_model,
)


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


def test_max_steps_cuts_the_epochs_of_a_large_table_only():
    from tamis.config import TrainParams

    t = TrainParams(epochs=20, batch_size=32, max_steps=40, min_steps=0)
    assert t.epochs_for(300) == 4  # 10 steps an epoch: 4 epochs fit in 40 steps
    assert t.epochs_for(32) == 20  # 1 step an epoch: the epochs as set
    assert t.epochs_for(10_000) == 1  # never fewer than one pass
    assert t.epochs_for(300, epochs=2) == 2
    num, cat, y = _blobs()
    result = fit(MLP(2, [], 3, [16], 0.0), Table.of(num, cat, y), lambda z, b: cross_entropy(z, b.y),
                 **fit_args(t, len(y)), seed=0)
    assert len(result.history) == t.epochs_for(len(y)) < 20


def test_min_steps_stretches_the_epochs_and_patience_of_a_small_table_only():
    from tamis.config import TrainParams

    t = TrainParams(epochs=20, batch_size=128, min_steps=100, patience=10)
    assert t.epochs_for(128) == 100  # one step an epoch: 100 epochs reach 100 steps
    assert t.patience_for(128, t.patience) == 50  # patience stretched as much: it waits as many steps
    assert t.epochs_for(128 * 10) == 20  # 10 steps an epoch: the 20 epochs as set already take 200 steps
    assert t.patience_for(128 * 10, t.patience) == 10
    assert TrainParams(epochs=20, batch_size=128, min_steps=100, max_steps=50).epochs_for(128) == 50  # max_steps wins


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


# --- robust losses, schedule, sampler, embeddings, prior adjustment ---------------------------------

from tamis.losses import (
    elr_loss,
    generalized_cross_entropy,
    running_average,
    symmetric_cross_entropy,
)
from tamis.nets import TemperatureSampler, tensor_macro_f1, warmup_cosine

LOSSES = {
    "ce": lambda z, y, w: cross_entropy(z, y, w),
    "label_smoothing": lambda z, y, w: cross_entropy(z, y, w, 0.1),
    "gce": lambda z, y, w: generalized_cross_entropy(z, y, w, 0.7),
    "sce": lambda z, y, w: symmetric_cross_entropy(z, y, w, 0.1, 1.0),
    "elr": lambda z, y, w: elr_loss(z, y, torch.full((len(y), 3), 1 / 3), w, 3.0),
}


@pytest.mark.parametrize("name", LOSSES)
def test_every_loss_honours_sample_weights(name):
    torch.manual_seed(0)
    z, y = torch.randn(6, 3), torch.tensor([0, 1, 2, 0, 1, 2])
    loss = LOSSES[name]
    w = torch.tensor([1.0, 2.0, 1.0, 0.0, 0.0, 0.0])
    assert loss(z, y, w).item() == pytest.approx(loss(z[[0, 1, 1, 2]], y[[0, 1, 1, 2]], None).item(), rel=1e-5)
    assert loss(z, y, w).item() != pytest.approx(loss(z, y, None).item(), rel=1e-3)


def test_gce_spans_ce_and_mae_and_sce_adds_a_bounded_reverse_term():
    z, y = torch.randn(8, 4), torch.randint(0, 4, (8,))
    p_y = F.softmax(z, 1)[torch.arange(8), y]
    assert generalized_cross_entropy(z, y, q=1.0).item() == pytest.approx((1 - p_y).mean().item(), rel=1e-5)
    assert generalized_cross_entropy(z, y, q=1e-4).item() == pytest.approx(F.cross_entropy(z, y).item(), rel=1e-3)
    sce = symmetric_cross_entropy(z, y, alpha=0.5, beta=2.0)
    assert sce.item() == pytest.approx(0.5 * F.cross_entropy(z, y).item() + 2.0 * 4.0 * (1 - p_y).mean().item(), rel=1e-5)


def test_elr_rewards_agreement_with_the_running_target():
    z, y = torch.tensor([[3.0, 0.0, 0.0]]), torch.tensor([0])
    agree, disagree = torch.tensor([[1.0, 0.0, 0.0]]), torch.tensor([[0.0, 1.0, 0.0]])
    assert elr_loss(z, y, torch.zeros(1, 3)).item() == pytest.approx(F.cross_entropy(z, y).item(), rel=1e-5)
    assert elr_loss(z, y, agree) < elr_loss(z, y, disagree) < elr_loss(z, y, torch.zeros(1, 3)) + 1e-6
    t = running_average(torch.zeros(1, 3), torch.tensor([[2.0, 1.0, 1.0]]), beta=0.7)
    assert torch.allclose(t, torch.tensor([[0.15, 0.075, 0.075]]))


def test_warmup_then_cosine_to_zero():
    lrs = [warmup_cosine(s, 100, 0.1) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0) and max(lrs) == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:])) and lrs[-1] < 1e-3
    assert warmup_cosine(0, 10, 0.0) == pytest.approx(1.0)


def test_macro_f1_matches_scikit_learn():
    from sklearn.metrics import f1_score

    rng = np.random.default_rng(0)
    y, pred = rng.integers(0, 5, 200), rng.integers(0, 4, 200)  # class 4 never predicted
    expected = f1_score(y, pred, labels=range(6), average="macro", zero_division=0)
    assert tensor_macro_f1(torch.tensor(pred), torch.tensor(y), 6) == pytest.approx(expected)


def test_temperature_sampler_cools_from_near_uniform_to_the_data_mix():
    y = np.repeat([0, 1, 2], [800, 160, 40])
    sampler = TemperatureSampler(y, 3, start=20.0, end=1.0, epochs=5)
    assert np.allclose(sampler.class_probs(5), [0.8, 0.16, 0.04])
    first = np.bincount(y[sampler(1, torch.Generator().manual_seed(0)).numpy()], minlength=3) / len(y)
    assert np.allclose(first, sampler.class_probs(1), atol=0.04) and first.min() > 0.25
    assert torch.equal(sampler(3, torch.Generator().manual_seed(1)), sampler(3, torch.Generator().manual_seed(1)))


def _with_categories(seed):
    num, _, y = _blobs(seed=seed)
    return num, np.stack([y % 2, (y + 1) % 3], 1), y


def _fit_every_option(seed):
    """Embeddings, ELR with per-row targets, mixup, temperature sampling, macro-F1 early stopping."""
    num, cat, y = _with_categories(0)
    train, val = Table.of(num, cat, y), Table.of(*_with_categories(1))
    torch.manual_seed(seed)
    model = MLP(2, [2, 3], 3, [16], 0.1, embedding_dim=4)
    targets = torch.full((len(train), 3), 1 / 3)
    result = fit(model, train, lambda z, b: elr_loss(z, b.y, targets[b.index], b.weight), epochs=6, batch_size=32,
                 lr=1e-2, weight_decay=0.0, seed=seed, val=val, patience=10, monitor="macro_f1", mixup=0.4,
                 sampler=TemperatureSampler(y, 3, 3.0, 1.0, 6))
    return model, result


def test_fit_with_every_option_is_deterministic_and_keeps_the_best_macro_f1():
    (m1, r1), (m2, r2) = _fit_every_option(0), _fit_every_option(0)
    assert r1.history == r2.history
    for a, b in zip(m1.state_dict().values(), m2.state_dict().values()):
        assert torch.equal(a, b)
    best = max(r1.history, key=lambda r: (r["val_macro_f1"], -r["val_nll"]))
    assert r1.best_epoch == best["epoch"] and best["val_accuracy"] > 0.6


def test_embeddings_learn_per_category_and_export_to_onnx(tmp_path):
    from stages.compress import Exported, export_onnx
    from tamis.serving import Predictor

    model = MLP(2, [3, 5], 4, [8], 0.0, embedding_dim=4).eval()
    assert [e.embedding_dim for e in model.embeddings] == [3, 4]  # at most the category count
    model.logit_adjustment.copy_(torch.tensor([0.5, -0.5, 0.0, 1.0]))
    num = np.random.default_rng(0).normal(size=(20, 2)).astype(np.float32)
    cat = np.stack([np.arange(20) % 3, np.arange(20) % 5], 1).astype(np.int64)
    out = model(torch.as_tensor(num), torch.as_tensor(cat))
    assert not torch.allclose(out[0], model(torch.as_tensor(num[:1]), torch.tensor([[1, 0]]))[0])
    cal = {"method": "temperature", "on": "logits", "scale": 1 / 1.5, "bias": [0.0] * 4}
    export_onnx(Exported(model, cal, np.ones(2)), num, cat, tmp_path / "m.onnx")
    enc = Encoder(numeric=["a", "b"], categorical=["c", "d"], classes=[0, 1, 2, 3])
    probs = Predictor(tmp_path / "m.onnx", {"encoder": enc.to_dict()}).proba_encoded(num, cat)
    assert np.abs(probs - torch.softmax(out / 1.5, 1).detach().numpy()).max() < 1e-5


def test_prior_adjustment_travels_in_the_checkpoint(tmp_path):
    model = MLP(2, [3], 3, [8], 0.0, embedding_dim=2).eval()
    num, cat = torch.randn(4, 2), torch.randint(0, 3, (4, 1))
    plain = model(num, cat)
    model.logit_adjustment.copy_(torch.log(torch.tensor([0.7, 0.2, 0.1])))
    save_model(tmp_path / "m.pt", model, Encoder(numeric=["a", "b"], categorical=["c"], classes=[0, 1, 2]))
    loaded, _, _ = load_model(tmp_path / "m.pt")
    assert torch.allclose(logits_of(loaded, Table.of(num, cat, [0] * 4)), plain + torch.log(torch.tensor([0.7, 0.2, 0.1])))


def test_quantile_encoder_matches_scikit_learn_and_stays_json(tmp_path):
    import json

    import pandas as pd
    from sklearn.preprocessing import QuantileTransformer

    from tamis.data import Schema

    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"a": rng.exponential(size=400), "b": rng.lognormal(size=400), "label": 0})
    enc = Encoder.fit(frame, Schema("label", ["a", "b"], [], [0]), numeric_transform="quantile")
    enc = Encoder.from_dict(json.loads(json.dumps(enc.to_dict())))
    probe = pd.DataFrame({"a": [-1.0, 0.3, 2.0, 50.0], "b": [0.5, 1.0, 3.0, -2.0]})
    qt = QuantileTransformer(n_quantiles=400, output_distribution="normal", random_state=0).fit(frame[["a", "b"]])
    assert np.allclose(enc.transform(probe)[0], qt.transform(probe), atol=1e-5)
    assert np.allclose(enc.transform(frame)[0], qt.transform(frame[["a", "b"]]), atol=1e-5)
