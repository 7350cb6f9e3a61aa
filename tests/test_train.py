import json
import re

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import mixed_table, run_stage
from stage_chain import write_audit_probs

from stages import resample, train
from tamis.config import parse_params
from tamis.data import ROW_ID, Schema
from tamis.nets import load_model

SCHEMA = Schema(label="label", numeric=["x1", "x2"], categorical=["color"], classes=["c0", "c1", "c2"])
FAST = {"epochs": 4, "hidden": [32, 16], "patience": 2, "batch_size": 64, "teacher": "mlp", "min_steps": 0}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """data/validated and data/corrected as the stages before resample write them: a 6:2:1 training split."""
    root = tmp_path_factory.mktemp("ws")
    full = mixed_table(900)
    full.insert(0, ROW_ID, np.arange(len(full)))
    full["color"] = full["color"].astype("string")
    (root / "data/validated").mkdir(parents=True)
    (root / "data/corrected").mkdir(parents=True)
    calib = full.iloc[600:]
    calib.to_parquet(root / "data/validated/calib.parquet", index=False)
    calib.to_parquet(root / "data/corrected/calib.parquet", index=False)
    (root / "data/validated/schema.json").write_text(json.dumps(SCHEMA.save_dict()))
    rest = full.iloc[:600]
    sizes = {"c0": 180, "c1": 60, "c2": 30}
    train_split = pd.concat([rest[rest["label"] == c].iloc[:n] for c, n in sizes.items()])
    train_split.assign(weight=1.0).to_parquet(root / "data/corrected/train.parquet", index=False)
    both = pd.concat([train_split, calib])
    write_audit_probs(root, both, np.array(["train"] * len(train_split) + ["calib"] * len(calib)), SCHEMA.classes)
    return root


def _train(root, resample_kw=None, **train_kw):
    params = parse_params({"resample": resample_kw or {}, "train": {**FAST, **train_kw}})
    resample.run(params, root)
    return train.run(params, root)


def test_train_writes_teacher_curve_and_prior_corrected_checkpoint(workspace):
    metrics = _train(workspace, {"method": "random_over"}, loss="elr", mixup=0.2, categorical="onehot",
                     prior_correction=True)
    curve = pd.read_csv(workspace / "plots/train_curve.csv")
    assert list(curve.columns) == ["epoch", "train_loss", "lr", "val_nll", "val_accuracy", "val_macro_f1"]
    assert metrics["mlp"]["epochs_run"] == len(curve) and metrics["mlp"]["rows_per_second"] > 0
    assert metrics["teacher"] == {"kind": "mlp"}
    model, _, ckpt = load_model(workspace / "models/teacher.pt")
    assert len(model.embeddings) == 0 and model.arch["embedding_dim"] == 0
    assert ckpt["priors"] == pytest.approx([180 / 270, 60 / 270, 30 / 270])
    assert ckpt["training_priors"]["mlp"] == pytest.approx([1 / 3] * 3)  # random_over balanced the classes
    expected = np.log(ckpt["priors"]) - np.log(ckpt["training_priors"]["mlp"])
    assert np.allclose(model.logit_adjustment.numpy(), expected, atol=1e-6) and expected[0] > 0 > expected[2]


def test_train_is_deterministic(workspace):
    a = _train(workspace, loss="gce", numeric_transform="quantile", prior_correction=False)
    model, encoder, _ = load_model(workspace / "models/teacher.pt")
    b = _train(workspace, loss="gce", numeric_transform="quantile", prior_correction=False)
    again = load_model(workspace / "models/teacher.pt")[0].state_dict()
    assert a["calib"] == b["calib"] and all(torch.equal(v, again[k]) for k, v in model.state_dict().items())
    assert len(model.embeddings) == 1 and encoder.numeric_transform == "quantile"
    assert not model.logit_adjustment.any()  # prior_correction off


def test_temperature_sampling_records_the_class_mix_it_trained_with(workspace):
    _train(workspace, {"method": "temperature", "temperature_start": 4.0, "temperature_end": 1.0}, epochs=3,
           patience=5, prior_correction=True)
    model, _, ckpt = load_model(workspace / "models/teacher.pt")
    out = pd.read_parquet(workspace / "data/resampled/train.parquet")
    assert len(out) == 270 and not out["synthetic"].any()  # rows pass through; the loop samples
    best = pd.read_csv(workspace / "plots/train_curve.csv")["val_macro_f1"].idxmax() + 1
    t = 4.0 + (1.0 - 4.0) * (best - 1) / 2
    mix = np.array([180, 60, 30]) ** (1 / t)
    assert ckpt["training_priors"]["mlp"] == pytest.approx(mix / mix.sum(), rel=1e-4)


# With CUDA present the device is fine, and the stage stops at its first missing input instead.
NO_CUDA = r"device: 'cuda' was asked for but torch sees no CUDA device" if not torch.cuda.is_available() else "missing"


@pytest.mark.parametrize(
    "params_text, message",
    [
        ("train:\n  loss: focal\n", r"train\.loss: Input should be 'ce', 'label_smoothing', 'gce', 'sce' or 'elr'"),
        ("device: cuda\n", NO_CUDA),
    ],
)
def test_bad_train_params_stop_with_one_line_naming_the_param(tmp_path, params_text, message):
    (tmp_path / "params.yaml").write_text(params_text)
    proc = run_stage(tmp_path, "train")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert re.search(message, proc.stderr), proc.stderr


def test_tree_teacher_is_the_boosted_model_cut_where_calib_scores_best(workspace):
    from sklearn.ensemble import HistGradientBoostingClassifier

    from tamis.nets import Table, logits_of
    from tamis.trees import categorical_mask, hgb_inputs

    metrics = _train(workspace, {"method": "none"}, teacher="hgb", hgb_max_iter=40, prior_correction=True)
    model, encoder, ckpt = load_model(workspace / "models/teacher.pt")
    assert metrics["teacher"] == {"kind": "hgb"} and "mlp" not in metrics and model.arch["kind"] == "forest"
    train_rows = pd.read_parquet(workspace / "data/resampled/train.parquet")
    calib = pd.read_parquet(workspace / "data/corrected/calib.parquet")
    num, cat = encoder.transform(train_rows)
    ref = HistGradientBoostingClassifier(max_iter=40, categorical_features=categorical_mask(2, encoder.cardinalities),
                                         early_stopping=False, random_state=0)
    ref.fit(hgb_inputs(num, cat), encoder.labels(train_rows["label"]))
    cnum, ccat = encoder.transform(calib)
    staged = list(ref.staged_predict_proba(hgb_inputs(cnum, ccat)))
    best = metrics["hgb"]["best_iteration"]
    y = encoder.labels(calib["label"])
    f1s = [metrics_f1(p, y) for p in staged]
    assert f1s[best - 1] == pytest.approx(max(f1s)) and model.arch["iterations"] == best
    adjusted = np.log(staged[best - 1]) + np.asarray(model.logit_adjustment)
    ours = logits_of(model, Table.of(cnum, ccat, y)).log_softmax(1).numpy()
    assert np.abs(ours - (adjusted - np.log(np.exp(adjusted).sum(1, keepdims=True)))).max() < 1e-4
    assert ckpt["training_priors"]["hgb"] == pytest.approx([180 / 270, 60 / 270, 30 / 270])


def metrics_f1(p, y):
    from sklearn.metrics import f1_score

    return f1_score(y, p.argmax(1), average="macro")


def test_auto_teacher_keeps_the_candidate_with_the_best_noise_aware_score(workspace):
    metrics = _train(workspace, teacher="auto", hgb_max_iter=40)
    choice = metrics["teacher"]
    scores = {k: v["nll"] for k, v in choice["candidates"].items()}
    assert set(scores) == {"mlp_weight_1", "mlp_weight_0.75", "mlp_weight_0.5", "mlp_weight_0.25", "mlp_weight_0"}
    kept = choice["candidates"][f"mlp_weight_{choice['mlp_weight']:g}"]
    assert kept["nll_gap"] <= kept["nll_gap_se"] and choice["noise_aware"]  # within one SE of the best ...
    order = [1, 0.75, 0.5, 0.25, 0]  # ... and the first such, the MLP first
    before = order[: order.index(choice["mlp_weight"])]
    assert all(choice["candidates"][f"mlp_weight_{w:g}"]["nll_gap"] > choice["candidates"][f"mlp_weight_{w:g}"]["nll_gap_se"]
               for w in before)
    assert min(v["nll_gap"] for v in choice["candidates"].values()) == 0.0
    model, _, _ = load_model(workspace / "models/teacher.pt")
    kind = {1.0: "mlp", 0.0: "forest"}.get(choice["mlp_weight"], "blend")
    assert model.arch.get("kind", "mlp") == kind and "mlp" in metrics and "hgb" in metrics


def test_the_teacher_blend_nearest_the_audits_own_mlp_share_is_tried_first(tmp_path):
    """Where the calib split cannot tell the blends apart, the one nearest the audit's out-of-fold MLP share wins."""
    assert train.blend_order(tmp_path) == train.BLEND_GRID  # no audit metrics: the MLP first, as before
    (tmp_path / "metrics").mkdir()
    for share, order in ((0.3, (0.25, 0.5, 0.0, 0.75, 1.0)), (0.625, (0.75, 0.5, 1.0, 0.25, 0.0)), (1.0, train.BLEND_GRID)):
        (tmp_path / "metrics/audit.json").write_text(json.dumps({"model_weights": {"mlp": share, "hgb": 1 - share}}))
        assert train.blend_order(tmp_path) == order, share
    from tamis.calibration import within_one_se

    tie = {w: np.full(16, 0.037) for w in train.BLEND_GRID}  # iris: every blend right on all 16 calib rows
    assert within_one_se(tie, train.blend_order(tmp_path))[0] == 1.0
    (tmp_path / "metrics/audit.json").write_text(json.dumps({"model_weights": {"mlp": 0.3, "hgb": 0.7}}))
    assert within_one_se(tie, train.blend_order(tmp_path))[0] == 0.25
