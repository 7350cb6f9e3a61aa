"""Torch models for tables, one fitting loop, checkpoints.

The loop keeps the whole (encoded) table as tensors on the device and slices
batches from a seeded permutation: no DataLoader workers to fork on a 2-core
laptop, the same order on every run, and the same code on CPU and CUDA.
"""

from __future__ import annotations

import copy
import math
import random
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from stages.contract import StageError
from stages.data import Encoder


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    """``auto`` takes CUDA when torch sees it; ``cuda`` without it is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise StageError("device: 'cuda' was asked for but torch sees no CUDA device; use 'auto' or 'cpu'.")
    return torch.device(name)


class MLP(nn.Module):
    """Numeric features plus one-hot categoricals through Linear-LayerNorm-ReLU-Dropout blocks."""

    def __init__(self, n_num: int, cardinalities: list[int], n_classes: int, hidden: list[int], dropout: float):
        super().__init__()
        self.arch = dict(
            n_num=n_num, cardinalities=list(cardinalities), n_classes=n_classes, hidden=list(hidden), dropout=dropout
        )
        self.cardinalities = list(cardinalities)
        width = n_num + sum(cardinalities)
        blocks: list[nn.Module] = []
        for h in hidden:
            blocks += [nn.Linear(width, h), nn.LayerNorm(h), nn.ReLU(), nn.Dropout(dropout)]
            width = h
        self.body = nn.Sequential(*blocks)
        self.head = nn.Linear(width, n_classes)

    def features(self, num: torch.Tensor, cat: torch.Tensor) -> torch.Tensor:
        parts = [num] + [F.one_hot(cat[:, j], k).to(num.dtype) for j, k in enumerate(self.cardinalities)]
        return self.body(torch.cat(parts, dim=1) if len(parts) > 1 else num)

    def forward(self, num: torch.Tensor, cat: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(num, cat))


@dataclass
class Table:
    """An encoded table on a device: features, class indices, per-row weights, optional soft targets."""

    num: torch.Tensor
    cat: torch.Tensor
    y: torch.Tensor
    weight: torch.Tensor
    soft: torch.Tensor | None = None

    @classmethod
    def of(cls, num, cat, y, weight=None, soft=None, device="cpu") -> "Table":
        dev = torch.device(device)
        n = len(y)
        w = np.ones(n, dtype=np.float32) if weight is None else np.asarray(weight, dtype=np.float32)
        return cls(
            num=torch.as_tensor(num, dtype=torch.float32, device=dev),
            cat=torch.as_tensor(cat, dtype=torch.int64, device=dev),
            y=torch.as_tensor(np.array(y, dtype=np.int64), device=dev),
            weight=torch.as_tensor(w, device=dev),
            soft=None if soft is None else torch.as_tensor(soft, dtype=torch.float32, device=dev),
        )

    def __len__(self) -> int:
        return len(self.y)

    def rows(self, idx: torch.Tensor) -> "Table":
        return Table(
            self.num[idx], self.cat[idx], self.y[idx], self.weight[idx], None if self.soft is None else self.soft[idx]
        )


LossFn = Callable[[torch.Tensor, Table], torch.Tensor]


@dataclass
class FitResult:
    best_epoch: int
    history: list[dict[str, float]]


def fit(
    model: nn.Module,
    train: Table,
    loss_fn: LossFn,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    weight_decay: float,
    seed: int,
    val: Table | None = None,
    patience: int | None = None,
    progress: str | None = None,
    on_epoch: Callable[[int], None] | None = None,
) -> FitResult:
    """AdamW + cosine schedule; with ``val``, early stopping on validation NLL, best weights restored.

    ``on_epoch(epoch)`` runs after each epoch (training dynamics, e.g. EL2N).
    """
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    steps = epochs * max(1, math.ceil(len(train) / batch_size))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    history: list[dict[str, float]] = []
    best = (math.inf, 0, None)
    show = progress is not None and sys.stderr.isatty()
    for epoch in range(1, epochs + 1):
        model.train()
        order = torch.randperm(len(train), generator=gen).to(train.y.device)
        total, seen = 0.0, 0
        for start in range(0, len(train), batch_size):
            batch = train.rows(order[start : start + batch_size])
            loss = loss_fn(model(batch.num, batch.cat), batch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            opt.step()
            sched.step()
            total += loss.item() * len(batch)
            seen += len(batch)
        row = {"epoch": epoch, "train_loss": total / seen}
        if val is not None:
            logits = logits_of(model, val)
            row["val_nll"] = F.cross_entropy(logits, val.y).item()
            row["val_accuracy"] = (logits.argmax(1) == val.y).float().mean().item()
            if row["val_nll"] < best[0] - 1e-6:
                best = (row["val_nll"], epoch, copy.deepcopy(model.state_dict()))
        history.append(row)
        if on_epoch is not None:
            on_epoch(epoch)
        if show:
            extra = f" val_nll {row['val_nll']:.4f}" if val is not None else ""
            print(f"\r{progress}: epoch {epoch}/{epochs} loss {row['train_loss']:.4f}{extra}", end="", file=sys.stderr)
        if val is not None and patience is not None and epoch - best[1] >= patience:
            break
    if show:
        print(file=sys.stderr)
    if best[2] is not None:
        model.load_state_dict(best[2])
    return FitResult(best_epoch=best[1] or len(history), history=history)


@torch.no_grad()
def logits_of(model: nn.Module, table: Table, batch_size: int = 8192) -> torch.Tensor:
    model.eval()
    out = [model(table.num[i : i + batch_size], table.cat[i : i + batch_size]) for i in range(0, len(table), batch_size)]
    return torch.cat(out) if out else torch.zeros((0, 0))


def save_model(path: str | Path, model: MLP, encoder: Encoder, **extra: Any) -> None:
    torch.save({"arch": model.arch, "state_dict": model.state_dict(), "encoder": encoder.to_dict(), **extra}, path)


def load_model(path: str | Path, device: torch.device | str = "cpu") -> tuple[MLP, Encoder, dict[str, Any]]:
    path = Path(path)
    if not path.exists():
        raise StageError(f"{path} is missing: run the stage that writes it first (dvc repro).")
    ckpt = torch.load(path, map_location=device, weights_only=True)
    model = MLP(**ckpt["arch"]).to(device)
    model.load_state_dict(ckpt["state_dict"])
    model.eval()
    return model, Encoder.from_dict(ckpt["encoder"]), ckpt


def param_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
