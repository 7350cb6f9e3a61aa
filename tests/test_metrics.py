import numpy as np
import pytest

from stages.metrics import brier, classification, ece, nll, softmax


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
