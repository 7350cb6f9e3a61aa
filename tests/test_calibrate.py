import json

import numpy as np
import pandas as pd
import pytest
import stage_chain
import torch
from conftest import mixed_table
from sklearn.metrics import f1_score

from stages import calibrate
from tamis import calibration
from tamis.config import CalibrateParams, ConfigError, Params, parse_params
from tamis.contract import StageError
from tamis.metrics import ece, nll, noise_corrected_ece, noise_corrected_macro_f1, softmax


def _sampled(n, k=4, seed=0, distort=lambda z: z * 3.0):
    """Labels drawn from softmax(z); the calibrator sees distort(z)."""
    rng = np.random.default_rng(seed)
    z = rng.normal(scale=2.0, size=(n, k))
    y = np.array([rng.choice(k, p=p) for p in softmax(z)])
    return distort(z), y


@pytest.mark.parametrize("method", calibration.METHODS)
def test_every_method_gives_distributions_that_survive_json(method):
    logits, y = _sampled(400)
    cal = calibration.fit_map(method, logits, y)
    p = calibration.apply_map(cal, logits)
    assert p.shape == logits.shape and (p > 0).all() and np.allclose(p.sum(1), 1.0)
    assert np.array_equal(calibration.apply_map(json.loads(json.dumps(cal)), logits), p)
    if method == "none":  # the identity candidate: the model's own softmax
        assert np.allclose(p, softmax(logits))
    else:
        assert nll(p, y) < nll(softmax(logits), y)  # 3x overconfident logits: every method helps in-sample


def _noisy(n: int, flip: float, seed: int = 0):
    """Calibrated logits (labels drawn from softmax(z)), then a known share of labels flipped to the next class."""
    rng = np.random.default_rng(seed)
    k = 4
    z = rng.normal(scale=3.0, size=(n, k))
    clean = np.array([rng.choice(k, p=p) for p in softmax(z)])
    noise = (1 - flip) * np.eye(k) + flip * np.roll(np.eye(k), 1, axis=1)  # T[true, given]
    given = np.array([rng.choice(k, p=noise[c]) for c in clean])
    return z, clean, given, noise


def test_forward_corrected_fits_recover_the_clean_calibration_from_noisy_labels():
    z, clean, given, noise = _noisy(3000, 0.3)
    plain = calibration.fit_map("temperature", z, given)
    aware = calibration.fit_map("temperature", z, given, calibration.Settings(noise=noise))
    assert plain["temperature"] > 1.5  # noisy labels teach under-confidence
    assert abs(aware["temperature"] - 1.0) < 0.15  # z is calibrated for the clean labels
    iso = calibration.apply_map(calibration.fit_map("isotonic", z, given, calibration.Settings(noise=noise)), z)
    assert ece(iso, clean) < ece(calibration.apply_map(calibration.fit_map("isotonic", z, given), z), clean)


def test_a_noise_aware_fit_sharpens_a_model_that_learned_the_noisy_labels_and_softens_an_over_confident_one():
    # a model that learned the noisy labels' own distribution (the plain fit finds it about right) is under-confident
    # about the clean labels: the forward-corrected fit sharpens it, and the clean-label ECE falls
    z, clean, given, noise = _noisy(3000, 0.3, seed=3)
    learned = np.log(softmax(z) @ noise)  # the noisy-label posterior as logits
    assert abs(calibration.fit_map("temperature", learned, given)["temperature"] - 1.0) < 0.15
    aware = calibration.fit_map("temperature", learned, given, calibration.Settings(noise=noise))
    assert aware["temperature"] < 0.9
    assert ece(calibration.apply_map(aware, learned), clean) < ece(softmax(learned), clean)
    vector = calibration.fit_map("vector", learned, given, calibration.Settings(noise=noise))
    assert ece(calibration.apply_map(vector, learned), clean) < ece(softmax(learned), clean)
    # and softening still happens where the model is over-confident
    sharp = calibration.fit_map("temperature", z * 3.0, given, calibration.Settings(noise=noise))
    assert sharp["temperature"] > 2.0


def test_a_noise_aware_fit_sharpens_no_further_than_its_bound_and_the_teacher_not_past_its_own_softmax():
    z, clean, given, noise = _noisy(3000, 0.3, seed=3)
    learned = np.log(softmax(z) @ noise)  # under-confident about the clean labels: the aware fit wants T < 0.9
    held = calibration.Settings(noise=noise, min_temperature=1.0)
    assert calibration.fit_map("temperature", learned, given, held)["temperature"] >= 1.0 - 1e-9
    assert max(calibration.fit_map("vector", learned, given, held)["scale"]) <= 1.0 + 1e-9
    assert calibration.Settings(noise=noise).min_temperature == calibration.NOISE_AWARE_MIN_TEMPERATURE
    # the teacher's bound: its own softmax, unless a plain fit on the same labels sharpens too
    loose = calibration.Settings(noise=noise)
    assert calibration.teacher_min_temperature(z * 3.0, given, loose) == 1.0  # over-confident: plain T > 1
    plain = calibration.fit_map("temperature", z * 0.5, clean)["temperature"]
    assert 0.4 < plain < 0.9 and calibration.teacher_min_temperature(z * 0.5, clean, loose) == pytest.approx(plain)
    assert calibration.teacher_min_temperature(z * 0.1, clean, loose) == calibration.NOISE_AWARE_MIN_TEMPERATURE


@pytest.mark.parametrize("noisy", [False, True])
def test_a_calib_split_with_no_wrong_prediction_never_sharpens(noisy):
    # 20 rows, every argmax right, the model under-confident: the likelihood alone would push T to 0
    rng = np.random.default_rng(0)
    y = np.arange(20) % 3
    z = rng.normal(scale=0.3, size=(20, 3))
    z[np.arange(20), y] += 1.0
    settings = calibration.Settings(noise=0.95 * np.eye(3) + 0.025 * (1 - np.eye(3)) if noisy else None)
    assert calibration.fit_map("temperature", z, y, settings)["temperature"] >= 1.0 - 1e-9
    assert max(calibration.fit_map("vector", z, y, settings)["scale"]) <= 1.0 + 1e-9
    z[0] = np.roll(z[0], 1)  # one wrong answer: now the fit may learn how sharp to be
    assert calibration.fit_map("temperature", z, y, settings)["temperature"] < 1.0


def test_the_prior_on_log_t_holds_a_tiny_split_back_from_sharpening_and_fades_with_rows(monkeypatch):
    rng = np.random.default_rng(0)
    y = np.arange(20) % 4
    tiny = rng.normal(scale=0.3, size=(20, 4))
    tiny[np.arange(20), y] += 2.0
    tiny[0] = 0.0
    tiny[0, (y[0] + 1) % 4] = 0.5  # 19 right answers and one near miss
    large = rng.normal(size=(3000, 5))
    large[np.arange(3000), rng.integers(0, 5, 3000)] += 4.0
    p = np.exp(large - large.max(1, keepdims=True))
    drawn = ((p / p.sum(1, keepdims=True)).cumsum(1) > rng.random((3000, 1))).argmax(1)  # calibrated: the right T is 1
    with_prior = [calibration.fit_map("temperature", *d)["temperature"] for d in ((tiny, y), (large, drawn))]
    monkeypatch.setattr(calibration, "TEMPERATURE_PRIOR_ROWS", 0.0)
    alone = [calibration.fit_map("temperature", *d)["temperature"] for d in ((tiny, y), (large, drawn))]
    assert alone[0] < 0.35 and with_prior[0] > alone[0] + 0.1  # the likelihood alone sharpens on one near miss
    assert with_prior[1] == pytest.approx(alone[1], rel=0.01) and with_prior[1] == pytest.approx(1.0, abs=0.1)


def test_one_se_never_prefers_a_worse_candidate_for_being_measured_less_precisely():
    """digits' student: temperature 0.0026 above the best (SE 0.0017), the identity 0.0034 above (SE 0.0054)."""
    rng = np.random.default_rng(0)
    best = rng.normal(0.12, 0.05, 270)
    rows = {"vector": best, "temperature": best + 0.0026 + rng.normal(0, 0.028, 270), "none": best + 0.0034 + rng.normal(0, 0.089, 270)}
    rows = {k: v - (v.mean() - rows_mean) for k, v, rows_mean in
            ((k, v, best.mean() + {"vector": 0.0, "temperature": 0.0026, "none": 0.0034}[k]) for k, v in rows.items())}
    chosen, gaps = calibration.within_one_se(rows, ("temperature", "none", "vector"))
    assert gaps["temperature"]["nll_gap"] > gaps["temperature"]["nll_gap_se"]  # not within its own SE
    assert gaps["none"]["nll_gap"] <= gaps["none"]["nll_gap_se"]  # the identity is, being noisier
    assert chosen == "temperature"  # closer to the best than the accepted identity, and first in order
    rows["temperature"] = rows["temperature"] + 0.01  # now worse than the identity: the identity is chosen
    assert calibration.within_one_se(rows, ("temperature", "none", "vector"))[0] == "none"


def test_auto_with_noisy_labels_tries_only_maps_that_cannot_sharpen_temperature_first():
    z, _, given, noise = _noisy(600, 0.2, seed=4)
    _, scores, _ = calibration.select("auto", calibration.METHODS, z, given, calibration.Settings(noise=noise))
    assert tuple(scores) == calibration.NOISE_AWARE == ("temperature", "none", "vector")
    reasons = calibration.skipped(calibration.METHODS, 4, noisy=True)
    assert set(reasons) == {"matrix", "dirichlet", "isotonic", "histogram"}
    named, _, _ = calibration.select("matrix", calibration.METHODS, z, given, calibration.Settings(noise=noise))
    assert named["method"] == "matrix"  # a named method is still fitted as asked


def test_auto_keeps_the_identity_when_the_model_is_already_calibrated_for_the_clean_labels():
    z, _, given, noise = _noisy(1500, 0.25, seed=1)
    cal, scores, _ = calibration.select("auto", calibration.METHODS, z, given, calibration.Settings(noise=noise))
    assert "none" in scores and cal["method"] in ("none", "temperature")
    assert abs(softmax(z).max(1).mean() - calibration.apply_map(cal, z).max(1).mean()) < 0.03


def test_noise_corrected_ece_sees_through_the_label_noise():
    z, clean, given, noise = _noisy(4000, 0.3, seed=2)
    p = softmax(z)
    assert ece(p, given) > 0.15 and ece(p, clean) < 0.03
    assert noise_corrected_ece(p, given, noise) < 0.05
    assert noise_corrected_ece(p, clean, np.eye(4)) == pytest.approx(ece(p, clean))


def test_noise_matrix_from_out_of_sample_probabilities():
    z, clean, given, noise = _noisy(3000, 0.3, seed=3)
    estimate = calibration.noise_matrix(given, softmax(z))
    assert np.allclose(estimate.sum(1), 1.0) and np.abs(estimate - noise).max() < 0.15
    assert np.trace(calibration.noise_matrix(clean, softmax(z))) / 4 > np.trace(estimate) / 4 + 0.15


def test_a_noise_matrix_past_the_cap_is_shrunk_towards_the_identity_every_flip_alike():
    z, _, given, noise = _noisy(3000, 0.4, seed=6)
    t = calibration.noise_matrix(given, softmax(z))
    assert calibration.noise_rate(t) > 0.3
    cut = calibration.capped(t, 0.2)
    assert calibration.noise_rate(cut) == pytest.approx(0.2) and np.allclose(cut.sum(1), 1.0)
    off = ~np.eye(4, dtype=bool)
    assert np.allclose(cut[off] / t[off], 0.2 / calibration.noise_rate(t))  # the estimate's shape is kept
    assert calibration.capped(t, 0.9) is t  # below the cap: as estimated


@pytest.mark.parametrize("method", calibration.PARAMETRIC)
def test_parametric_calibrators_are_the_same_map_in_torch(method):
    logits, y = _sampled(300)
    cal = calibration.fit_map(method, logits, y)
    graph = calibration.Calibration(cal)(torch.as_tensor(logits, dtype=torch.float32)).numpy()
    assert np.abs(graph - calibration.apply_map(cal, logits)).max() < 1e-5


def test_one_vs_rest_calibrators_cannot_go_into_the_graph():
    logits, y = _sampled(100)
    with pytest.raises(StageError, match="distill.calibration"):
        calibration.Calibration(calibration.fit_map("isotonic", logits, y))


def test_temperature_keeps_every_prediction():
    logits, y = _sampled(300)
    p = calibration.apply_map(calibration.fit_map("temperature", logits, y), logits)
    assert np.array_equal(p.argmax(1), logits.argmax(1))


def test_odir_shrinks_the_off_diagonal_weights():
    logits, y = _sampled(300, seed=1)
    weak = np.asarray(calibration.fit_map("matrix", logits, y, calibration.Settings(odir=0.0))["scale"])
    strong = np.asarray(calibration.fit_map("matrix", logits, y, calibration.Settings(odir=100.0))["scale"])
    off = lambda w: np.abs(w - np.diag(np.diag(w))).sum()
    assert off(strong) < 0.2 * off(weak)


def test_auto_takes_temperature_when_one_temperature_is_the_whole_story():
    logits, y = _sampled(2000, seed=2)
    cal, scores, oof = calibration.select("auto", calibration.METHODS, logits, y, calibration.Settings())
    assert cal["method"] == "temperature" and cal["temperature"] == pytest.approx(3.0, rel=0.1)
    assert set(scores) == set(calibration.METHODS) and oof.shape == logits.shape
    assert all(s["nll_gap"] >= 0 for s in scores.values())


def test_auto_takes_a_richer_map_when_classes_are_miscalibrated_differently():
    # class 0's logit is inflated: only a per-class map can undo it
    logits, y = _sampled(3000, seed=3, distort=lambda z: z + np.array([2.5, 0.0, 0.0, 0.0]))
    cal, scores, _ = calibration.select("auto", calibration.METHODS, logits, y, calibration.Settings())
    assert cal["method"] != "temperature"
    assert scores["temperature"]["nll_gap"] > scores["temperature"]["nll_gap_se"]
    assert scores[cal["method"]]["argmax_changed"] > 0  # documented: a per-class map may change predictions


def test_auto_refuses_a_map_that_buys_nll_by_predicting_only_the_head_class():
    # 97:3 binary labels and a weak model: the NLL-best one-vs-rest map calls (nearly) every row the head class
    rng = np.random.default_rng(0)
    y = rng.choice(2, size=2000, p=[0.97, 0.03])
    z = rng.normal(size=(2000, 2))
    z[np.arange(2000), y] += 1.0
    s = calibration.Settings()
    cal, scores, _ = calibration.select("auto", calibration.METHODS, z, y, s)
    row_nll = {m: calibration.label_nll(calibration.out_of_fold(m, z, y, s), y, None) for m in scores}
    by_nll, _ = calibration.within_one_se(row_nll, tuple(scores))  # what auto took before the guard
    assert "moves the argmax" in scores[by_nll]["refused"]
    assert (calibration.apply_map(calibration.fit_map(by_nll, z, y, s), z).argmax(1) == 1).mean() < 0.01
    own = noise_corrected_macro_f1(z.argmax(1), y, None)
    assert "refused" not in scores[cal["method"]] and scores[cal["method"]]["macro_f1"] >= own
    assert scores["temperature"]["macro_f1"] == pytest.approx(own)  # a temperature never moves it, so never refused


def test_noise_corrected_macro_f1_sees_through_the_label_noise():
    z, clean, given, noise = _noisy(4000, 0.3, seed=5)
    pred = z.argmax(1)
    truth = f1_score(clean, pred, average="macro")
    assert abs(noise_corrected_macro_f1(pred, given, noise) - truth) < 0.03
    assert f1_score(given, pred, average="macro") < truth - 0.1  # the noisy labels alone understate it
    assert noise_corrected_macro_f1(pred, clean, None) == pytest.approx(truth)


def test_out_of_fold_scores_no_row_with_a_map_fitted_on_it():
    logits, y = _sampled(300, seed=4)
    cal = calibration.fit_map("isotonic", logits, y)
    in_sample = nll(calibration.apply_map(cal, logits), y)
    assert nll(calibration.out_of_fold("isotonic", logits, y, calibration.Settings()), y) > in_sample


def test_unknown_method_is_an_error_naming_the_param():
    with pytest.raises(ConfigError, match="calibrate.method: Input should be 'auto', 'none', 'temperature'"):
        parse_params({"calibrate": {"method": "platt"}})
    with pytest.raises(StageError, match="calibrate.method: unknown method 'platt'"):
        calibration.fit_map("platt", *_sampled(50))


def test_dirichlet_stays_finite_on_extreme_logits():
    logits, y = _sampled(200, seed=5, distort=lambda z: z * 500.0)  # softmax underflows to 0 in float64
    p = calibration.apply_map(calibration.fit_map("dirichlet", logits, y), logits)
    assert np.isfinite(p).all() and np.allclose(p.sum(1), 1.0)


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory):
    return stage_chain.built(tmp_path_factory, "calibrate", mixed_table(800, 4))


def test_stage_writes_the_calibrator_its_scores_and_the_reliability_plot(calibrated):
    metrics = json.loads((calibrated / "metrics/calibrate.json").read_text())
    cal = json.loads((calibrated / "models/calibration.json").read_text())
    assert metrics["noise_aware"] and metrics["method"] == cal["method"]
    assert set(metrics["candidates"]) == set(calibration.NOISE_AWARE)  # noisy calib labels: only maps that soften
    assert set(metrics["skipped"]) == set(calibration.METHODS) - set(calibration.NOISE_AWARE)
    chosen = metrics["candidates"][cal["method"]]
    assert chosen["nll_gap"] <= chosen["nll_gap_se"]
    for side in ("before", "after"):
        assert {"ece", "adaptive_ece", "classwise_ece", "mce", "nll", "brier", "ci95"} <= set(metrics[side])
    assert (calibrated / "plots/reliability.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_calib_split_without_a_class_is_refused(calibrated, tmp_path):
    root = stage_chain.copy_of(calibrated, tmp_path / "ws")
    path = root / "data/validated/calib.parquet"  # the rows calibrate fits on (calibrate.calib_rows: all)
    calib = pd.read_parquet(path)
    calib[calib["label"] != "c3"].to_parquet(path, index=False)
    before = (root / "models/calibration.json").read_bytes()
    with pytest.raises(StageError, match=r"calib split lacks class\(es\) \['c3'\]; raise data.calib_size"):
        calibrate.run(stage_chain.params_of(root), root)
    assert (root / "models/calibration.json").read_bytes() == before


def test_many_classes_leave_the_full_matrix_calibrators_out_and_say_so():
    import time

    k = calibration.MAX_FULL_MATRIX_CLASSES + 10
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(k), 12)
    logits = rng.normal(size=(len(y), k)) + 3.0 * np.eye(k)[y]
    start = time.perf_counter()
    _, scores, _ = calibration.select("auto", calibration.PARAMETRIC, logits, y, calibration.Settings())
    assert set(scores) == {"none", "temperature", "vector"}
    assert time.perf_counter() - start < 60
    assert set(calibration.skipped(calibration.METHODS, k)) == {"matrix", "dirichlet"}
    assert calibration.skipped(calibration.METHODS, calibration.MAX_FULL_MATRIX_CLASSES) == {}


def test_noise_aware_temperature_finds_the_minimum_past_the_plateau_of_an_over_confident_model():
    """Forward-corrected NLL is flat near T = 1 for a model at margins of 10-25 (every probability saturated) and has
    its minimum at a large T; a fit started at T = 1 stays on the plateau (titanic at 35% noise: T = 0.015)."""
    rng = np.random.default_rng(0)
    margin = np.r_[rng.uniform(15, 25, 100), rng.uniform(10, 20, 50)]
    agree = np.r_[rng.random(100) < 0.8, rng.random(50) < 0.5]  # sure rows right 80% of the time, the rest a coin toss
    pred = rng.integers(0, 2, 150)
    logits = np.zeros((150, 2))
    logits[np.arange(150), pred] = margin
    y = np.where(agree, pred, 1 - pred)
    noise = np.array([[0.75, 0.25], [0.25, 0.75]])
    cal = calibration.fit_map("temperature", logits, y, calibration.Settings(noise=noise))
    fitted = calibration.label_nll(softmax(logits / cal["temperature"]), y, noise).mean()
    at_one = calibration.label_nll(softmax(logits), y, noise).mean()
    assert cal["temperature"] > 5.0
    assert fitted < at_one - 0.02
