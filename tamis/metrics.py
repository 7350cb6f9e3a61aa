"""Classification and calibration metrics as pure functions of (probs, labels).

ECE uses 15 equal-width confidence bins by default, the setting most papers
report, so numbers here compare with the literature; adaptive (equal-mass)
ECE, classwise ECE and MCE are beside it because equal-width bins at high
confidence hold most rows and hide what the other bins do.
"""

from __future__ import annotations

from typing import Any

import numpy as np

# scikit-learn's metrics are imported where they are used: the promote step of a no-op run imports this module
# for ``ece`` only, and scikit-learn's import is most of a second of it

ECE_BINS = 15  # equal-width confidence bins of every ECE / MCE tamis reports (one place for the count)


def _bins(score: np.ndarray, bins: int, equal_mass: bool = False) -> np.ndarray:
    """Bin index per row: equal-width bins on [0, 1], or equal-mass bins (same row count each)."""
    if equal_mass:
        return np.minimum(np.argsort(np.argsort(score, kind="stable"), kind="stable") * bins // len(score), bins - 1)
    edges = np.linspace(0.0, 1.0, bins + 1)
    return np.clip(np.digitize(score, edges[1:-1], right=True), 0, bins - 1)


def _gaps(score: np.ndarray, hit: np.ndarray, bins: int, equal_mass: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(share of rows, |mean hit - mean score|) per non-empty bin."""
    which = _bins(score, bins, equal_mass)
    count = np.bincount(which, minlength=bins)
    hits, scores = np.bincount(which, weights=hit, minlength=bins), np.bincount(which, weights=score, minlength=bins)
    used = count > 0  # one pass per sum, not a mask per bin: the bootstraps call this hundreds of times
    return count[used] / len(score), np.abs(hits[used] - scores[used]) / count[used]


def _weighted_gap(score: np.ndarray, hit: np.ndarray, bins: int, equal_mass: bool = False) -> float:
    """The row-weighted mean of the bins' |mean hit - mean score|: an ECE of any score against any hit."""
    share, gap = _gaps(score, hit, bins, equal_mass)
    return float((share * gap).sum())


def _top1(probs: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    probs, y = np.asarray(probs), np.asarray(y)
    return probs.max(axis=1), (probs.argmax(axis=1) == y).astype(np.float64)


def ece(probs: np.ndarray, y: np.ndarray, bins: int = ECE_BINS) -> float:
    """Expected calibration error of the top-1 confidence, equal-width bins."""
    if len(y) == 0:
        return float("nan")
    return _weighted_gap(*_top1(probs, y), bins)


def adaptive_ece(probs: np.ndarray, y: np.ndarray, bins: int = ECE_BINS) -> float:
    """ECE with equal-mass bins: every bin holds the same number of rows, so none is nearly empty."""
    if len(y) == 0:
        return float("nan")
    return _weighted_gap(*_top1(probs, y), bins, equal_mass=True)


def mce(probs: np.ndarray, y: np.ndarray, bins: int = ECE_BINS) -> float:
    """Maximum calibration error: the worst equal-width bin's gap."""
    if len(y) == 0:
        return float("nan")
    return float(_gaps(*_top1(probs, y), bins)[1].max())


def classwise_ece(probs: np.ndarray, y: np.ndarray, bins: int = ECE_BINS) -> float:
    """Mean over classes of the ECE of p(class k) against 1[y = k] (every probability, not just the top one)."""
    probs, y = np.asarray(probs), np.asarray(y)
    if len(y) == 0:
        return float("nan")
    return float(np.mean([_weighted_gap(probs[:, k], (y == k).astype(np.float64), bins) for k in range(probs.shape[1])]))


def nll(probs: np.ndarray, y: np.ndarray, eps: float = 1e-12) -> float:
    probs = np.asarray(probs)
    return float(-np.log(np.clip(probs[np.arange(len(y)), y], eps, 1.0)).mean())


def brier(probs: np.ndarray, y: np.ndarray) -> float:
    probs = np.asarray(probs)
    onehot = np.eye(probs.shape[1])[y]
    return float(((probs - onehot) ** 2).sum(axis=1).mean())


def classification(probs: np.ndarray, y: np.ndarray, bins: int = ECE_BINS) -> dict[str, float | list[float]]:
    """The numbers every stage reports for a model on a labelled split."""
    from sklearn.metrics import accuracy_score, recall_score

    probs, y = np.asarray(probs), np.asarray(y)
    pred = probs.argmax(axis=1)
    labels = np.arange(probs.shape[1])
    return {
        "accuracy": float(accuracy_score(y, pred)),
        "macro_f1": macro_f1(probs, y),
        "ece": ece(probs, y, bins),
        "nll": nll(probs, y),
        "brier": brier(probs, y),
        "per_class_recall": recall_score(y, pred, labels=labels, average=None, zero_division=0).tolist(),
    }


def macro_f1(probs: np.ndarray, y: np.ndarray) -> float:
    from sklearn.metrics import f1_score

    probs = np.asarray(probs)
    return float(f1_score(y, probs.argmax(axis=1), labels=np.arange(probs.shape[1]), average="macro", zero_division=0))


CALIBRATION_METRICS = {
    "ece": ece,
    "adaptive_ece": adaptive_ece,
    "classwise_ece": classwise_ece,
    "mce": mce,
    "nll": lambda p, y, bins: nll(p, y),
    "brier": lambda p, y, bins: brier(p, y),
}


def calibration_report(probs: np.ndarray, y: np.ndarray, bins: int = ECE_BINS, resamples: int = 0, seed: int = 0) -> dict[str, Any]:
    """Every calibration metric; with ``resamples`` > 0 also a 95% bootstrap interval for each."""
    probs, y = np.asarray(probs), np.asarray(y)
    out: dict[str, Any] = {name: fn(probs, y, bins) for name, fn in CALIBRATION_METRICS.items()}
    if resamples:
        out["ci95"] = {
            name: bootstrap_ci(lambda p, t, fn=fn: fn(p, t, bins), probs, y, resamples, seed)
            for name, fn in CALIBRATION_METRICS.items()
        }
    return out


def bootstrap_ci(
    metric, probs: np.ndarray, y: np.ndarray, resamples: int = 200, seed: int = 0, level: float = 0.95
) -> list[float]:
    """Percentile bootstrap interval [low, high] of ``metric(probs, y)`` over rows drawn with replacement."""
    return interval(bootstrap_values(metric, probs, y, resamples, seed), level)


def bootstrap_values(metric, probs: np.ndarray, y: np.ndarray, resamples: int = 200, seed: int = 0) -> np.ndarray:
    """``metric(probs, y)`` on each of ``resamples`` row sets drawn with replacement. The same seed draws the same
    rows, so two models' values subtract pairwise: what they share cancels in the difference's interval."""
    rng = np.random.default_rng(seed)
    n = len(y)
    return np.array([metric(probs[idx], y[idx]) for idx in (rng.integers(0, n, n) for _ in range(resamples))])


def interval(values: np.ndarray, level: float = 0.95) -> list[float]:
    """The central ``level`` percentile interval [low, high] of bootstrap values."""
    tail = (1.0 - level) / 2 * 100
    return [float(v) for v in np.percentile(values, [tail, 100 - tail])]


def ece_floor(probs: np.ndarray, bins: int = ECE_BINS, draws: int = 200, seed: int = 0) -> float:
    """The ECE a perfectly calibrated model with these confidences still shows on this many rows.

    The median over outcome sets drawn from the model's own top-1 confidences
    (each row right with probability ``max p``). On 80 test rows it is several
    points; a measured ECE near it is sampling noise, not miscalibration.
    """
    conf = np.asarray(probs).max(axis=1)
    if len(conf) == 0:
        return float("nan")
    rng = np.random.default_rng(seed)
    return float(np.median([_weighted_gap(conf, (rng.random(len(conf)) < conf).astype(np.float64), bins) for _ in range(draws)]))


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64) / temperature
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _clean_counts(given: np.ndarray, unmix: np.ndarray, k: int) -> np.ndarray:
    """How many of these rows' clean labels are each class, estimated from their given labels: the given histogram
    h is the clean one mixed by T (h = h_clean T), so h T^-1, clipped at 0."""
    return np.clip(np.bincount(given, minlength=k).astype(np.float64) @ unmix, 0.0, None)


def noise_corrected_macro_f1(pred: np.ndarray, y: np.ndarray, noise: np.ndarray | None) -> float:
    """Macro-F1 of predictions ``pred`` against the clean labels, estimated from noisy ones ``y`` (``noise`` None:
    ``y`` taken as clean). Each predicted class's column of the confusion matrix is unmixed through T^-1."""
    k = len(noise) if noise is not None else int(max(pred.max(), y.max())) + 1
    unmix = np.eye(k) if noise is None else np.linalg.inv(noise)
    confusion = np.stack([_clean_counts(y[pred == c], unmix, k) for c in range(k)], axis=1)  # [clean, predicted]
    right, predicted, actual = np.diag(confusion), confusion.sum(axis=0), confusion.sum(axis=1)
    return float(np.mean(np.where(predicted + actual > 0, 2 * right / np.maximum(predicted + actual, 1e-12), 0.0)))


def noise_corrected_ece(probs: np.ndarray, y: np.ndarray, noise: np.ndarray, bins: int = ECE_BINS) -> float:
    """ECE against the clean labels, estimated from noisy ones ``y`` with ``noise[true, given] = P(given | true)``.

    Per confidence bin and predicted class, the given labels unmixed through T^-1
    estimate how many of the bin's predictions are truly right (clipped to [0, 1]).
    """
    conf, pred = probs.max(axis=1), probs.argmax(axis=1)
    which = _bins(conf, bins)
    unmix = np.linalg.inv(noise)
    k = probs.shape[1]
    total = 0.0
    for b in np.unique(which):
        rows = which == b
        right = 0.0
        for c in np.unique(pred[rows]):
            hits = rows & (pred == c)
            right += float(min(_clean_counts(y[hits], unmix, k)[c], hits.sum()))
        total += abs(right / rows.sum() - conf[rows].mean()) * rows.sum()
    return float(total / len(y))
