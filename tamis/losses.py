"""Loss functions as pure functions of (logits, targets, weights).

Every loss honours per-row weights (from ``correct`` or class re-weighting), so
a down-weighted row counts less in every loss alike.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def weighted_mean(per_row: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    if weight is None:
        return per_row.mean()
    return (per_row * weight).sum() / weight.sum().clamp_min(1e-12)


def cross_entropy(
    logits: torch.Tensor, y: torch.Tensor, weight: torch.Tensor | None = None, smoothing: float = 0.0
) -> torch.Tensor:
    """Cross-entropy; ``smoothing`` > 0 is label smoothing (mass spread over all classes)."""
    return weighted_mean(F.cross_entropy(logits, y, reduction="none", label_smoothing=smoothing), weight)


def soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Cross-entropy against a probability vector per row."""
    return weighted_mean(-(target * F.log_softmax(logits, dim=1)).sum(dim=1), weight)


def kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    temperature: float,
    weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Hinton KD: T^2 * KL(teacher_T || student_T); zero when the logits agree."""
    t = temperature
    p_teacher = F.softmax(teacher_logits / t, dim=1)
    kl = (p_teacher * (F.log_softmax(teacher_logits / t, dim=1) - F.log_softmax(student_logits / t, dim=1))).sum(1)
    return weighted_mean(kl, weight) * t * t


def generalized_cross_entropy(
    logits: torch.Tensor, y: torch.Tensor, weight: torch.Tensor | None = None, q: float = 0.7
) -> torch.Tensor:
    """GCE (Zhang & Sabuncu): (1 - p_y^q) / q, between CE (q -> 0) and the noise-robust MAE (q = 1)."""
    p_y = F.softmax(logits.float(), dim=1).gather(1, y[:, None]).squeeze(1)
    return weighted_mean((1.0 - p_y.clamp_min(1e-12) ** q) / q, weight)


def symmetric_cross_entropy(
    logits: torch.Tensor,
    y: torch.Tensor,
    weight: torch.Tensor | None = None,
    alpha: float = 0.1,
    beta: float = 1.0,
    log_zero: float = -4.0,
) -> torch.Tensor:
    """SCE (Wang et al.): alpha * CE + beta * reverse CE, log 0 taken as ``log_zero``.

    The reverse term -sum_k p_k log onehot_k equals -log_zero * (1 - p_y): bounded, so a wrong label cannot dominate.
    """
    logits = logits.float()
    ce = F.cross_entropy(logits, y, reduction="none")
    rce = -log_zero * (1.0 - F.softmax(logits, dim=1).gather(1, y[:, None]).squeeze(1))
    return weighted_mean(alpha * ce + beta * rce, weight)


def elr_loss(
    logits: torch.Tensor,
    y: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None = None,
    lam: float = 3.0,
) -> torch.Tensor:
    """ELR (Liu et al.): CE + lam * log(1 - <p, t>), t a running average of the model's own predictions per row.

    Early in training the model fits the clean labels first; keeping its
    predictions close to that early consensus stops it memorising the wrong ones.
    """
    logits = logits.float()
    p = F.softmax(logits, dim=1).clamp(1e-4, 1.0 - 1e-4)
    reg = torch.log(1.0 - (p * target).sum(dim=1))
    return weighted_mean(F.cross_entropy(logits, y, reduction="none") + lam * reg, weight)


def running_average(old: torch.Tensor, new: torch.Tensor, beta: float) -> torch.Tensor:
    """ELR's target update: beta * old + (1 - beta) * new (new normalised to sum to 1)."""
    return beta * old + (1.0 - beta) * new / new.sum(dim=1, keepdim=True)


MASKED = -1e9  # a logit whose probability is exactly 0 in float32, yet finite (no NaN gradients)


def non_target_log_softmax(logits: torch.Tensor, y: torch.Tensor, temperature: float) -> torch.Tensor:
    """log-softmax over the non-target classes only: the target column is replaced, its probability is 0."""
    mask = F.one_hot(y, logits.shape[1]).bool()
    return F.log_softmax((logits / temperature).masked_fill(mask, MASKED), dim=1)


def _kl_rows(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """KL(p || q) per row (a column where p is 0 adds 0)."""
    return (log_p.exp() * (log_p - log_q)).sum(1)


def dkd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    y: torch.Tensor,
    temperature: float,
    alpha: float = 1.0,
    beta: float = 8.0,
    weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Decoupled KD (Zhao et al., 2022): alpha * TCKD + beta * NCKD, times T^2.

    TCKD is the KL between the binary (target, rest) distributions; NCKD the KL
    between the distributions over the non-target classes alone, so the
    teacher's "dark knowledge" is not scaled down by its target confidence.
    """
    t = temperature
    mask = F.one_hot(y, student_logits.shape[1]).bool()

    def binary(logits):  # log (p_target, 1 - p_target)
        log_p = F.log_softmax(logits / t, dim=1)
        target = log_p[mask]
        rest = torch.logsumexp(log_p.masked_fill(mask, MASKED), dim=1)
        return torch.stack([target, rest], dim=1)

    tckd = _kl_rows(binary(teacher_logits), binary(student_logits))
    nckd = _kl_rows(non_target_log_softmax(teacher_logits, y, t), non_target_log_softmax(student_logits, y, t))
    return weighted_mean(alpha * tckd + beta * nckd, weight) * t * t


def nkd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    y: torch.Tensor,
    temperature: float = 1.0,
    gamma: float = 1.5,
    weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Normalised KD (Yang et al., 2023): -t_target * log s_target + gamma * T^2 * KL over normalised non-targets.

    The non-target term compares the teacher's and student's distributions
    over the non-target classes, each renormalised to sum to 1. (KL differs
    from the paper's cross-entropy form by the teacher's entropy, a constant:
    same gradient, and zero when the two agree.)
    """
    t_target = F.softmax(teacher_logits, dim=1).gather(1, y[:, None]).squeeze(1)
    s_log_target = F.log_softmax(student_logits, dim=1).gather(1, y[:, None]).squeeze(1)
    non = _kl_rows(
        non_target_log_softmax(teacher_logits, y, temperature), non_target_log_softmax(student_logits, y, temperature)
    )
    return weighted_mean(-t_target * s_log_target + gamma * temperature**2 * non, weight)
