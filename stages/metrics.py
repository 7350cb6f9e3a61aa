"""Classification and calibration metrics as pure functions of (probs, labels).

ECE uses 15 equal-width confidence bins by default, the setting most papers
report, so numbers here compare with the literature.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import accuracy_score, f1_score, recall_score


def ece(probs: np.ndarray, y: np.ndarray, bins: int = 15) -> float:
    """Expected calibration error of the top-1 confidence, equal-width bins."""
    probs, y = np.asarray(probs), np.asarray(y)
    if len(y) == 0:
        return float("nan")
    conf = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == y).astype(np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, bins - 1)
    total = 0.0
    for b in range(bins):
        mask = which == b
        if mask.any():
            total += mask.mean() * abs(correct[mask].mean() - conf[mask].mean())
    return float(total)


def nll(probs: np.ndarray, y: np.ndarray, eps: float = 1e-12) -> float:
    probs = np.asarray(probs)
    return float(-np.log(np.clip(probs[np.arange(len(y)), y], eps, 1.0)).mean())


def brier(probs: np.ndarray, y: np.ndarray) -> float:
    probs = np.asarray(probs)
    onehot = np.eye(probs.shape[1])[y]
    return float(((probs - onehot) ** 2).sum(axis=1).mean())


def classification(probs: np.ndarray, y: np.ndarray, bins: int = 15) -> dict[str, float | list[float]]:
    """The numbers every stage reports for a model on a labelled split."""
    probs, y = np.asarray(probs), np.asarray(y)
    pred = probs.argmax(axis=1)
    labels = np.arange(probs.shape[1])
    return {
        "accuracy": float(accuracy_score(y, pred)),
        "macro_f1": float(f1_score(y, pred, labels=labels, average="macro", zero_division=0)),
        "ece": ece(probs, y, bins),
        "nll": nll(probs, y),
        "brier": brier(probs, y),
        "per_class_recall": recall_score(y, pred, labels=labels, average=None, zero_division=0).tolist(),
    }


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64) / temperature
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)
