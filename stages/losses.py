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
