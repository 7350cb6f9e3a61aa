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
