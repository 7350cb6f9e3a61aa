"""Calibrators: fitted on a model's logits, stored as plain JSON, applied by numpy and baked into ONNX.

- parametric, a linear map then softmax, exported as graph ops:
  ``temperature`` (logits / T, T fitted as log T so it stays positive),
  ``vector`` (per-class scale and bias on the logits), ``matrix`` (full
  matrix and bias on the logits) and ``dirichlet`` (full matrix and bias on
  the log-probabilities); matrix and Dirichlet are regularised with ODIR, an
  L2 penalty on the off-diagonal weights and the biases (``calibrate.odir``);
- one-vs-rest, a monotone map per class then renormalisation:
  ``isotonic`` (piecewise linear) and ``histogram`` binning (equal-mass bins).

Only temperature scaling can never change the predicted class. ``select``
scores candidates by out-of-fold NLL over stratified folds and takes the
simplest within one standard error of the best. Used by the calibrate,
distill, compress and evaluate stages; it is a library, not a stage, so a
change to one stage's report does not re-run the others.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from torch import nn

from tamis.errors import StageError
from tamis.metrics import ECE_BINS, ece, noise_corrected_macro_f1, softmax

PARAMETRIC = ("none", "temperature", "vector", "matrix", "dirichlet")
METHODS = ("none", "temperature", "vector", "histogram", "matrix", "dirichlet", "isotonic")  # simplest first
FLOOR = 1e-4  # one-vs-rest maps can reach 0; a floor keeps the NLL finite
FULL_MATRIX = ("matrix", "dirichlet")
MAX_FULL_MATRIX_CLASSES = 50  # above this, matrix / Dirichlet fit K(K+1) weights: slow, and no calib split has rows for them
MAX_ITER = 500  # L-BFGS iterations of the parametric fits (matrix / dirichlet may need a few hundred)
# temperature and vector scaling never sharpen on a calib split where every argmax is already right: with no wrong
# answer the likelihood falls without end as T -> 0. (Until commit e4407f5 the teacher's noise-aware fits also never
# sharpened past a plain fit; since ``calibrate.max_label_noise`` caps T, that bound changed no overlapping table's fit
# (diamonds, gss_vocab, titanic, seattle_weather) and kept separable ones under-confident: digits at 35% noise 0.061
# against 0.036 test ECE unbounded, over 20 tuning cells 0.0754 against 0.0728, no cell worse.)
SHARPEN_NEEDS_AN_ERROR = ("temperature", "vector")
# A noise-aware temperature or vector fit may sharpen the model's logits at most 1 / NOISE_AWARE_MIN_TEMPERATURE times.
# Once the noise matrix's flip rate reaches the model's error rate, the forward-corrected likelihood explains every
# disagreement as a flipped label and rewards sharpening without end: on two small clean tables run with the README's
# command (MASS Cars93, 93 rows; vega cars, 406 rows) vector scaling took scales of 623 and 161, every probability was
# 0 or 1 and the test NLL went 0.78 -> 7.27 and 0.60 -> 6.82. Over 21 kept quality workspaces the legitimate
# noise-aware fits lay at T 0.91-8.6 (teachers) and >= 0.46 (students, KD-softened); the two below were the same
# runaway (T 0.05 and 0.015). The teacher's own calibration is held tighter (``teacher_min_temperature``).
NOISE_AWARE_MIN_TEMPERATURE = 0.4
# Temperature and vector fits start from the best of these temperatures. The forward-corrected likelihood is not
# convex in T: for a teacher far too sure of itself it rises from T = 1 to a ridge, then falls to its minimum at a large
# T, and a fit started at T = 1 ran downhill the other way, to hard 0/1 answers (titanic at 35% noise: T = 0.015, test
# ECE 0.238; the minimum at T = 8 gives 0.058).
TEMPERATURE_GRID = tuple(float(t) for t in np.geomspace(0.05, 100.0, 34))
# A temperature fitted on fewer than TEMPERATURE_PRIOR_BELOW calibration rows gets a Gaussian prior on log T at 0 (the
# model's own softmax) worth TEMPERATURE_PRIOR_ROWS rows: on 20-40 rows with one or two wrong answers the likelihood
# alone sharpens to T ~ 0.1-0.3. Across simulated cells (2-5 class margins, models 0.5-2x as sharp as calibrated)
# it cut the worst cell's test-NLL loss against T=1 from +0.054 to +0.013 at 20 rows and changed nothing measurable
# from 100 rows (benchmarks/temperature_prior.py), so larger splits are fitted as before: on digits' 270 calib rows
# the prior's nudge to T alone tipped a borderline student through the compress gate (test ECE 0.025 against 0.008).
TEMPERATURE_PRIOR_ROWS = 2.0
TEMPERATURE_PRIOR_BELOW = 100
# what ``auto`` tries when the labels are noisy, in order: the maps that cannot sharpen, and the identity. A matrix or
# Dirichlet map sharpened diamonds from 0.208 to 0.250 test ECE; isotonic / histogram undo the noise through T^-1 and
# moved titanic's argmax on 15-26% of rows (macro-F1 0.777 -> 0.69). Named explicitly, every method is still fitted.
NOISE_AWARE = ("temperature", "none", "vector")


@dataclass(frozen=True)
class Settings:
    """How calibrators are fitted and scored: the ODIR penalty, histogram bins, folds and their seed, and the
    calibration labels' noise matrix ``noise[true, given] = P(given | true)`` (None: labels taken as clean)."""

    odir: float = 1.0
    histogram_bins: int = 15
    folds: int = 5
    seed: int = 0
    noise: np.ndarray | None = None
    min_temperature: float = NOISE_AWARE_MIN_TEMPERATURE  # with noise: the smallest temperature (1 / largest vector scale) a fit may reach


def noise_rate(t: np.ndarray) -> float:
    """The class-averaged share of flipped labels of ``T[true, given]``: its mean off-diagonal row mass."""
    return float(1.0 - np.trace(t) / len(t))


def noise_matrix(y: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """``T[true, given]`` of labels ``y`` from out-of-sample ``probs`` (cleanlab's confident learning).

    Shrunk towards the identity by k^2 / (k^2 + n): on a few hundred rows the
    off-diagonal estimates are noisy, and an ill-conditioned T would blow up
    the inversion of the one-vs-rest maps.
    """
    from cleanlab.count import estimate_py_and_noise_matrices_from_probabilities

    k = probs.shape[1]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, given_true, _, _ = estimate_py_and_noise_matrices_from_probabilities(y, probs)
    shrink = k * k / (k * k + len(y))
    t = (1 - shrink) * np.asarray(given_true).T + shrink * np.eye(k)
    while np.linalg.cond(t) > 100 and shrink < 1:
        shrink = min(1.0, shrink + 0.1)
        t = (1 - shrink) * np.asarray(given_true).T + shrink * np.eye(k)
    return t / t.sum(axis=1, keepdims=True)


def capped(t: np.ndarray, max_noise: float) -> np.ndarray:
    """``t`` shrunk towards the identity until its noise rate is at most ``max_noise`` (every flip scaled alike).

    Confident learning cannot tell flipped labels from overlapping classes and
    counts both as noise (0.57 estimated against 0.17 true on gss_vocab and
    seattle_weather, 0.43 against 0.21 on diamonds); a forward-corrected fit
    then leaves the model as over-confident as it came.
    """
    rate = noise_rate(t)
    if rate <= max_noise:
        return t
    keep = max_noise / rate
    return keep * t + (1 - keep) * np.eye(len(t))


def label_nll(p: np.ndarray, y: np.ndarray, noise: np.ndarray | None) -> np.ndarray:
    """Per-row NLL of the given labels: of ``p`` itself, or forward-corrected, of ``p @ T`` (Patrini et al.)."""
    q = p if noise is None else p @ noise
    return -np.log(np.maximum(q[np.arange(len(y)), y], 1e-12))


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """log softmax without underflow: log-probabilities stay finite however far apart the logits are."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def fit_temperature(logits: np.ndarray, y: np.ndarray) -> tuple[float, bool]:
    """(T, converged): the T minimising NLL of softmax(logits / T) on (logits, y), fitted as log T."""
    cal = fit_map("temperature", logits, y, Settings())
    return cal["temperature"], cal["converged"]


def _linear_fit(
    method: str, x: np.ndarray, y: np.ndarray, odir: float, noise: np.ndarray | None = None,
    min_temperature: float = NOISE_AWARE_MIN_TEMPERATURE,
) -> tuple[np.ndarray, np.ndarray, bool]:
    """(W, b, converged) minimising mean NLL of softmax(x W^T + b) (+ ODIR penalty) by L-BFGS.

    The free parameters are log T (temperature: W = I / T, b = 0), a scale and
    bias per class (vector: W diagonal) or the whole W and b (matrix); the
    gradient is exact: d NLL / d(W, b) = (g^T x, sum(g)) with g = d NLL / d logits
    ((softmax - onehot) / n for plain NLL). With ``noise`` the NLL is forward
    corrected: of the given labels under softmax(...) @ T, so the map learns the
    clean-label probabilities (consistent when T is right). Where every row's
    argmax is already right (a small calib split), temperature and vector scaling may not sharpen: 20 right
    answers say nothing about how sure to be, and a fit to them pushes every probability to 1. With ``noise``
    they may sharpen at most to ``min_temperature``, for the same reason (see ``NOISE_AWARE_MIN_TEMPERATURE``).
    """
    from scipy.optimize import minimize

    n, k = x.shape
    onehot = np.eye(k)[y]
    eye = np.eye(k)

    def unpack(theta):
        if method == "temperature":
            return np.exp(-theta[0]) * eye, np.zeros(k)
        if method == "vector":
            return np.diag(theta[:k]), theta[k:]
        return theta[: k * k].reshape(k, k), theta[k * k :]

    def objective(theta):
        w, b = unpack(theta)
        z = x @ w.T + b
        z = z - z.max(axis=1, keepdims=True)
        log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
        if noise is None:
            loss = -(onehot * log_p).sum() / n
            g = (np.exp(log_p) - onehot) / n
        else:
            p = np.exp(log_p)
            q = np.maximum((p @ noise)[np.arange(n), y], 1e-12)
            loss = -np.log(q).sum() / n
            dp = -noise[:, y].T / q[:, None] / n  # d loss / d p
            g = p * (dp - (p * dp).sum(axis=1, keepdims=True))  # through the softmax
        gw, gb = g.T @ x, g.sum(axis=0)
        if method == "temperature":
            prior = TEMPERATURE_PRIOR_ROWS / n if n < TEMPERATURE_PRIOR_BELOW else 0.0
            return loss + prior * theta[0] ** 2, np.array([-np.exp(-theta[0]) * np.trace(gw) + 2 * prior * theta[0]])
        loss += odir * (b**2).mean()  # every penalty is a mean of squares, weighted by odir
        gb = gb + 2 * odir * b / k
        if method == "vector":  # scales shrunk towards their mean (temperature scaling)
            spread = theta[:k] - theta[:k].mean()
            return loss + odir * (spread**2).mean(), np.concatenate([np.diag(gw) + 2 * odir * spread / k, gb])
        off = w - np.diag(np.diag(w))  # ODIR: off-diagonal weights shrunk towards 0
        loss += odir * (off**2).sum() / max(1, k * (k - 1))
        return loss, np.concatenate([(gw + 2 * odir * off / max(1, k * (k - 1))).ravel(), gb])

    min_t = None  # the smallest temperature (largest vector scale) the fit may reach
    if method in SHARPEN_NEEDS_AN_ERROR and (x.argmax(axis=1) == y).all():
        min_t = 1.0  # no wrong prediction to learn from: the NLL falls without end as T -> 0, so never sharpen
    elif method in SHARPEN_NEEDS_AN_ERROR and noise is not None:
        min_t = min_temperature
    bounds = None
    if min_t is not None:
        bounds = [(np.log(min_t), None)] if method == "temperature" else [(None, 1.0 / min_t)] * k + [(None, None)] * k
    init = np.r_[eye.ravel(), np.zeros(k)]  # matrix: the identity map
    if method in SHARPEN_NEEDS_AN_ERROR:  # start from the best of a grid of temperatures, not from T = 1
        grid = [t for t in TEMPERATURE_GRID if min_t is None or t >= min_t]
        starts = [np.log([t]) if method == "temperature" else np.r_[np.full(k, 1.0 / t), np.zeros(k)] for t in grid]
        init = min(starts, key=lambda theta: objective(theta)[0])
    res = minimize(objective, init, jac=True, method="L-BFGS-B", bounds=bounds, options={"maxiter": MAX_ITER})
    w, b = unpack(res.x)
    return w, b, bool(res.success and np.isfinite(res.fun))


def teacher_min_temperature(logits: np.ndarray, y: np.ndarray, s: Settings) -> float:
    """How far the teacher's noise-aware fit may sharpen: not past its own softmax (T = 1) unless a plain fit on the
    same labels sharpens too, and then no further than that fit (never under ``NOISE_AWARE_MIN_TEMPERATURE``).

    Confident learning counts overlapping classes as flips, and once that estimate reaches the teacher's error rate
    the forward-corrected likelihood reads every mistake as a flipped label and asks for a sharper teacher: on vega
    cars (406 rows, clean labels, estimated flip rate 0.245) vector scaling sharpened 2.5x and took the test ECE from
    0.145 to 0.227. Noisy labels only ever make a plain fit softer, so a plain fit that sharpens is evidence the
    teacher is under-confident that the noise estimate cannot fake."""
    plain = fit_map("temperature", logits, y, replace(s, noise=None))
    return float(np.clip(plain["temperature"], NOISE_AWARE_MIN_TEMPERATURE, 1.0))


def fit_map(method: str, logits: np.ndarray, y: np.ndarray, s: Settings = Settings()) -> dict:
    """A calibrator for ``method`` fitted on (logits, y), as JSON-able data."""
    k = logits.shape[1]
    if method == "none":  # the identity: the model's own softmax, always a candidate
        return {"method": "none", "on": "logits", "scale": 1.0, "bias": [0.0] * k, "converged": True}
    if method in PARAMETRIC:
        on = "log_probs" if method == "dirichlet" else "logits"
        x = log_softmax(logits) if on == "log_probs" else np.asarray(logits, dtype=np.float64)
        w, b, converged = _linear_fit("matrix" if method == "dirichlet" else method, x, y, s.odir, s.noise,
                                      s.min_temperature)
        cal = {"method": method, "on": on, "scale": w.tolist(), "bias": b.tolist(), "converged": converged}
        if method == "temperature":
            cal.update(scale=float(w[0, 0]), temperature=float(1.0 / w[0, 0]))
        elif method == "vector":
            cal["scale"] = np.diag(w).tolist()
        return cal
    if method == "isotonic":
        from sklearn.isotonic import IsotonicRegression

        p, maps = softmax(logits), []
        for j in range(k):
            iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(p[:, j], y == j)
            maps.append({"x": iso.X_thresholds_.tolist(), "y": iso.y_thresholds_.tolist()})
        return _unmixed({"method": method, "maps": maps}, s.noise)
    if method == "histogram":
        p, maps = softmax(logits), []
        for j in range(k):
            edges = np.unique(np.quantile(p[:, j], np.linspace(0, 1, s.histogram_bins + 1)[1:-1]))
            which = np.searchsorted(edges, p[:, j], side="right")
            hit = (y == j).astype(np.float64)
            values = [float(hit[which == b].mean()) if (which == b).any() else 0.0 for b in range(len(edges) + 1)]
            maps.append({"edges": edges.tolist(), "values": values})
        return _unmixed({"method": method, "maps": maps}, s.noise)
    raise StageError(f"calibrate.method: unknown method '{method}'; expected auto or one of {', '.join(METHODS)}.")


def _unmixed(cal: dict, noise: np.ndarray | None) -> dict:
    """A one-vs-rest map fits the noisy labels' frequencies; with T it also stores T^-1 to undo the mixing."""
    if noise is not None:
        cal["unmix"] = np.linalg.inv(noise).tolist()
    return cal


def apply_map(cal: dict, logits: np.ndarray) -> np.ndarray:
    """Calibrated probabilities of ``logits`` under calibrator ``cal`` (numpy; the ONNX graph does the same)."""
    logits = np.asarray(logits, dtype=np.float64)
    if cal["method"] in PARAMETRIC:
        x = logits if cal["on"] == "logits" else log_softmax(logits)
        scale = np.asarray(cal["scale"])
        return softmax((x @ scale.T if scale.ndim == 2 else x * scale) + np.asarray(cal["bias"]))
    p = softmax(logits)
    if cal["method"] == "isotonic":
        out = np.stack([np.interp(p[:, j], m["x"], m["y"]) for j, m in enumerate(cal["maps"])], axis=1)
    else:
        out = np.stack(
            [np.asarray(m["values"])[np.searchsorted(m["edges"], p[:, j], side="right")] for j, m in enumerate(cal["maps"])],
            axis=1,
        )
    if "unmix" in cal:  # noisy-label frequencies -> clean ones: p_clean = p_noisy T^-1, clipped and renormalised
        out = out / out.sum(axis=1, keepdims=True) @ np.asarray(cal["unmix"])
    out = np.maximum(out, FLOOR)
    return out / out.sum(axis=1, keepdims=True)


class Calibration(nn.Module):
    """A parametric calibrator as torch ops: logits -> calibrated probabilities (for the ONNX graph)."""

    def __init__(self, cal: dict):
        super().__init__()
        if cal["method"] not in PARAMETRIC:
            raise StageError(
                f"calibration method '{cal['method']}' cannot be baked into the ONNX graph; "
                f"use one of {', '.join(PARAMETRIC)} (distill.calibration)."
            )
        self.on_log_probs = cal["on"] == "log_probs"
        self.register_buffer("scale", torch.as_tensor(cal["scale"], dtype=torch.float32))
        self.register_buffer("bias", torch.as_tensor(cal["bias"], dtype=torch.float32))

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        x = torch.log_softmax(logits, dim=1) if self.on_log_probs else logits
        # x @ W^T written as multiply-and-sum: no int8 quantiser takes it for a layer's weights
        x = (x[:, None, :] * self.scale).sum(-1) if self.scale.dim() == 2 else x * self.scale
        return torch.softmax(x + self.bias, dim=1)


def out_of_fold(method: str, logits: np.ndarray, y: np.ndarray, s: Settings, apply_to: np.ndarray | None = None) -> np.ndarray:
    """Calibrated probabilities of every row from a calibrator fitted without it (stratified folds).

    Scores of calibrated models on the calibration split are taken from these,
    so no model is scored on rows its own calibrator was fitted on. With
    ``apply_to`` the maps fitted on ``logits`` calibrate these other logits of
    the same rows (an int8 model calibrated by its FP32 model's map).
    """
    from sklearn.model_selection import StratifiedKFold

    folds = max(2, min(s.folds, int(np.bincount(y).min())))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a class with fewer rows than folds: some folds lack it
        splits = StratifiedKFold(folds, shuffle=True, random_state=s.seed).split(logits, y)
        oof = np.zeros(logits.shape)
        for fit_idx, held in splits:
            target = logits if apply_to is None else apply_to
            oof[held] = apply_map(fit_map(method, logits[fit_idx], y[fit_idx], s), target[held])
    return oof


def skipped(candidates: tuple[str, ...], n_classes: int, noisy: bool = False) -> dict[str, str]:
    """The candidates ``auto`` leaves out for this many classes and these labels, each with the reason (in the metrics)."""
    out = {}
    if noisy:
        out = {m: f"noisy calib labels: auto tries only {', '.join(NOISE_AWARE)}" for m in candidates if m not in NOISE_AWARE}
    if n_classes > MAX_FULL_MATRIX_CLASSES:
        reason = f"{n_classes} classes > {MAX_FULL_MATRIX_CLASSES}: {n_classes * (n_classes + 1)} weights to fit"
        out.update({m: reason for m in candidates if m in FULL_MATRIX and m not in out})
    return out


def auto_order(candidates: tuple[str, ...], n_classes: int, noisy: bool) -> tuple[str, ...]:
    """The candidates ``auto`` tries, in order: with noisy labels those of ``NOISE_AWARE`` in its order."""
    left_out = skipped(candidates, n_classes, noisy)
    order = tuple(m for m in NOISE_AWARE if m in candidates) if noisy else candidates
    return tuple(m for m in order if m not in left_out)


def within_one_se(row_nll: dict, order: tuple) -> tuple[Any, dict]:
    """(the first of ``order`` whose mean per-row NLL is within one paired standard error of the lowest, each
    candidate's ``nll`` / ``nll_gap`` / ``nll_gap_se``): on a small split a richer choice must be clearly better.
    A candidate closer to the lowest than one so accepted is accepted too: on digits the student's temperature
    (gap 0.0026, SE 0.0017) lost to the identity (gap 0.0034, SE 0.0054) only for being measured more precisely,
    and the identity shipped at test ECE 0.029 against the teacher's 0.008."""
    best = min(order, key=lambda k: row_nll[k].mean())
    gaps = {}
    for k in order:
        gap = row_nll[k] - row_nll[best]
        gaps[k] = {"nll": float(row_nll[k].mean()), "nll_gap": float(gap.mean()),
                   "nll_gap_se": float(gap.std() / np.sqrt(len(gap)))}
    bar = max(g["nll_gap"] for g in gaps.values() if g["nll_gap"] <= g["nll_gap_se"])  # the lowest always qualifies
    return next(k for k in order if gaps[k]["nll_gap"] <= bar), gaps


def select(
    method: str, candidates: tuple[str, ...], logits: np.ndarray, y: np.ndarray, s: Settings
) -> tuple[dict, dict[str, dict[str, float]], np.ndarray]:
    """(calibrator fitted on all of (logits, y), each candidate's out-of-fold scores, the chosen one's out-of-fold probabilities).

    ``auto`` takes the simplest candidate (in ``candidates`` order) whose
    out-of-fold NLL is within one standard error of the lowest (the paired
    standard error of the per-row difference): on a small split a richer map
    must be clearly better to be trusted. A named method is fitted as asked;
    ``auto`` leaves out what :func:`skipped` names and, with noisy labels,
    tries ``NOISE_AWARE`` in its order (temperature first). It also refuses a
    map whose out-of-fold predictions differ from the model's own and score a
    lower macro-F1 (noise-corrected through T): calibration is there to fix
    the probabilities, and a per-class bias that buys NLL by pulling a
    long tail's predictions to its head class costs the decisions (gss_vocab:
    vector scaling moved 24-28% of calib argmaxes, test macro-F1 -0.8 to -2.2
    points). Temperature and the identity never move it, so one always stays.
    """
    tried = auto_order(candidates, logits.shape[1], s.noise is not None) if method == "auto" else (method,)
    oof = {m: out_of_fold(m, logits, y, s) for m in tried}
    row_nll = {m: label_nll(p, y, s.noise) for m, p in oof.items()}  # forward-corrected when the labels are noisy
    _, gaps = within_one_se(row_nll, tried)
    own = logits.argmax(1)
    own_f1 = noise_corrected_macro_f1(own, y, s.noise)
    scores = {}
    for m in tried:
        pred = oof[m].argmax(1)
        scores[m] = {
            **gaps[m],
            "ece": ece(oof[m], y, ECE_BINS),
            "accuracy": float((pred == y).mean()),
            "argmax_changed": float((pred != own).mean()),
            "macro_f1": noise_corrected_macro_f1(pred, y, s.noise),  # against the clean labels, estimated through T
        }
        if (pred != own).any() and scores[m]["macro_f1"] < own_f1:
            scores[m]["refused"] = (
                f"moves the argmax on {scores[m]['argmax_changed']:.1%} of rows and lowers the macro-F1 "
                f"from {own_f1:.4f} to {scores[m]['macro_f1']:.4f}"
            )
    if method == "auto":
        method, _ = within_one_se(row_nll, tuple(m for m in tried if "refused" not in scores[m]))
    return fit_map(method, logits, y, s), scores, oof[method]
