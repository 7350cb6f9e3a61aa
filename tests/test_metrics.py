import numpy as np
import pytest

from tamis.metrics import (
    adaptive_ece,
    bootstrap_values,
    brier,
    calibration_report,
    classification,
    classwise_ece,
    ece,
    ece_floor,
    interval,
    mce,
    nll,
    softmax,
)


def test_ece_is_zero_when_confidence_matches_accuracy():
    # 10 rows at confidence 0.8, 8 of them right
    probs = np.tile([0.8, 0.2], (10, 1))
    y = np.array([0] * 8 + [1] * 2)
    assert ece(probs, y) == pytest.approx(0.0)


def test_ece_measures_overconfidence():
    probs = np.tile([0.9, 0.1], (10, 1))
    y = np.array([0] * 6 + [1] * 4)  # 60% right at 90% confidence
    assert ece(probs, y) == pytest.approx(0.3)


def test_ece_bins_are_equal_width_by_confidence():
    probs = np.array([[0.95, 0.05], [0.55, 0.45]])
    y = np.array([0, 1])
    # bin of 0.95: right (gap 0.05); bin of 0.55: wrong (gap 0.55); weights 1/2 each
    assert ece(probs, y, bins=15) == pytest.approx((0.05 + 0.55) / 2)


def test_nll_brier_and_classification():
    probs = np.array([[0.7, 0.3], [0.2, 0.8], [0.6, 0.4]])
    y = np.array([0, 1, 1])
    assert nll(probs, y) == pytest.approx(-(np.log(0.7) + np.log(0.8) + np.log(0.4)) / 3)
    assert brier(probs, y) == pytest.approx(((0.3**2 * 2) + (0.2**2 * 2) + (0.6**2 * 2)) / 3)
    report = classification(probs, y)
    assert report["accuracy"] == pytest.approx(2 / 3)
    assert report["per_class_recall"] == [1.0, 0.5]
    assert report["macro_f1"] == pytest.approx(2 / 3)  # class 0: P=.5 R=1; class 1: P=1 R=.5


def test_softmax_temperature_keeps_argmax_and_softens():
    z = np.array([[2.0, 1.0, 0.0]])
    hot, cool = softmax(z, 0.5), softmax(z, 4.0)
    assert hot.argmax() == cool.argmax() == 0
    assert hot.max() > softmax(z).max() > cool.max()
    assert np.allclose(cool.sum(1), 1.0)


def test_adaptive_ece_uses_equal_mass_bins():
    # 4 rows at 0.6 (half right), 4 at 0.9 (all right): one equal-width bin of 2 hides both gaps
    probs = np.array([[0.6, 0.4]] * 4 + [[0.9, 0.1]] * 4)
    y = np.array([0, 0, 1, 1, 0, 0, 0, 0])
    assert ece(probs, y, bins=2) == pytest.approx(0.0)
    assert adaptive_ece(probs, y, bins=2) == pytest.approx(0.1)


def test_mce_is_the_worst_bin():
    probs = np.array([[0.6, 0.4]] * 4 + [[0.9, 0.1]] * 4)
    y = np.array([0, 1, 1, 1, 0, 0, 0, 0])  # 25% right at 0.6, all right at 0.9
    assert mce(probs, y) == pytest.approx(0.35)
    assert ece(probs, y) == pytest.approx((0.35 + 0.1) / 2)


def test_classwise_ece_scores_every_class():
    probs = np.tile([0.7, 0.2, 0.1], (10, 1))
    assert classwise_ece(probs, np.array([0] * 7 + [1] * 2 + [2])) == pytest.approx(0.0)
    # all class 0: class 0 under by 0.3, class 1 over by 0.2, class 2 over by 0.1
    assert classwise_ece(probs, np.zeros(10, dtype=int)) == pytest.approx((0.3 + 0.2 + 0.1) / 3)


def test_bootstrap_interval_brackets_the_estimate_and_is_seeded():
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(3), size=300)
    y = rng.integers(0, 3, 300)
    report = calibration_report(probs, y, resamples=100, seed=1)
    for name in ("ece", "adaptive_ece", "classwise_ece", "mce", "nll", "brier"):
        low, high = report["ci95"][name]
        assert low <= report[name] <= high and low < high
    assert calibration_report(probs, y, resamples=100, seed=1)["ci95"] == report["ci95"]
    assert "ci95" not in calibration_report(probs, y)


def test_ece_floor_shrinks_with_rows_and_vanishes_for_certain_models():
    rng = np.random.default_rng(0)
    small, large = rng.dirichlet(np.ones(3) * 0.5, size=80), rng.dirichlet(np.ones(3) * 0.5, size=8000)
    # a perfectly calibrated model on 80 rows still shows an ECE of several points; on 8,000 far less
    assert ece_floor(small) > 0.04 and ece_floor(large) < 0.4 * ece_floor(small)
    assert ece_floor(np.eye(3)[rng.integers(0, 3, 50)]) == 0.0  # confidence 1: always right, no gap
    assert ece_floor(small, seed=3) == ece_floor(small, seed=3)


def test_paired_difference_interval_tells_a_worse_model_from_noise():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 400)
    honest = np.where(y[:, None] == np.arange(2), 0.8, 0.2)
    honest = np.where(rng.random(400)[:, None] < 0.2, 1 - honest, honest)  # right 80% of the time at confidence 0.8
    sure = np.where(honest > 0.5, 0.99, 0.01)  # the same answers, over-confident
    metric = lambda p, t: ece(p, t)
    paired = lambda a, b, n: interval(bootstrap_values(metric, a, y, n, seed=0) - bootstrap_values(metric, b, y, n, seed=0))
    low, high = paired(sure, honest, 200)
    assert 0 < low <= ece(sure, y) - ece(honest, y) <= high  # worse beyond the rows' noise
    low, high = paired(honest, honest, 50)
    assert low == high == 0.0  # one seed, the same rows: the difference is paired


def test_the_calibration_check_calls_a_shipped_model_worse_only_beyond_rounding():
    """A shipped teacher whose calibration is the identity is the raw teacher as float32 ONNX: ~1e-8 apart."""
    from stages.evaluate import calibration_check

    rng = np.random.default_rng(0)
    z = rng.normal(size=(400, 3)) * 2.0
    raw = softmax(z)
    y = np.array([rng.choice(3, p=p) for p in softmax(z * 0.5)])  # raw is over-confident in every bin
    hair = calibration_check(softmax(np.log(raw) * (1 + 1e-6)), raw, y, 15, 200, 0)  # a hair sharper: worse by ~1e-7
    assert hair["minus_raw_ci95"][0] > 0 and not hair["worse_than_raw"]
    assert calibration_check(softmax(np.log(raw) * 3.0), raw, y, 15, 200, 0)["worse_than_raw"]
