"""Torch models for tables, one fitting loop, checkpoints.

The loop keeps the whole (encoded) table as tensors on the device and slices
batches from a seeded permutation: no DataLoader workers to fork on a 2-core
laptop, the same order on every run, and the same code on CPU and CUDA. On
CUDA the table crosses once through pinned memory and the forward pass runs in
bf16 autocast; the CPU path is plain float32.
"""

from __future__ import annotations

import contextlib
import copy
import math
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tamis.contract import StageError
from tamis.data import Encoder


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
    """Numeric features plus categoricals through Linear-LayerNorm-ReLU-Dropout blocks.

    Categoricals are one-hot, or learned embeddings of width
    ``min(embedding_dim, categories)`` when ``embedding_dim`` > 0. The buffer
    ``logit_adjustment`` (zero unless set) is added to the logits, so a prior
    correction travels inside the checkpoint to every stage that loads it.
    """

    def __init__(
        self,
        n_num: int,
        cardinalities: list[int],
        n_classes: int,
        hidden: list[int],
        dropout: float,
        embedding_dim: int = 0,
    ):
        super().__init__()
        self.arch = dict(
            n_num=n_num,
            cardinalities=list(cardinalities),
            n_classes=n_classes,
            hidden=list(hidden),
            dropout=dropout,
            embedding_dim=embedding_dim,
        )
        self.cardinalities = list(cardinalities)
        self.embeddings = nn.ModuleList(
            nn.Embedding(k, min(embedding_dim, k)) for k in (cardinalities if embedding_dim else [])
        )
        width = n_num + (sum(e.embedding_dim for e in self.embeddings) if embedding_dim else sum(cardinalities))
        blocks: list[nn.Module] = []
        for h in hidden:
            blocks += [nn.Linear(width, h), nn.LayerNorm(h), nn.ReLU(), nn.Dropout(dropout)]
            width = h
        self.body = nn.Sequential(*blocks)
        self.head = nn.Linear(width, n_classes)
        self.register_buffer("logit_adjustment", torch.zeros(n_classes))

    def inputs(self, num: torch.Tensor, cat: torch.Tensor) -> torch.Tensor:
        """The first layer's input row: numeric columns beside the encoded categoricals (mixup mixes these)."""
        if self.embeddings:
            parts = [num] + [emb(cat[:, j]) for j, emb in enumerate(self.embeddings)]
        else:
            parts = [num] + [F.one_hot(cat[:, j], k).to(num.dtype) for j, k in enumerate(self.cardinalities)]
        return torch.cat(parts, dim=1) if len(parts) > 1 else num

    def from_inputs(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x)) + self.logit_adjustment

    def features(self, num: torch.Tensor, cat: torch.Tensor) -> torch.Tensor:
        """The last hidden layer's activations (the audit's embedding of a row)."""
        return self.body(self.inputs(num, cat))

    def forward(self, num: torch.Tensor, cat: torch.Tensor) -> torch.Tensor:
        return self.from_inputs(self.inputs(num, cat))


@dataclass
class Table:
    """An encoded table on a device: features, class indices, per-row weights, optional soft targets.

    ``index`` is each row's position in the table it was built from, so a loss
    with per-row state (ELR) finds its rows in a shuffled batch.
    """

    num: torch.Tensor
    cat: torch.Tensor
    y: torch.Tensor
    weight: torch.Tensor
    soft: torch.Tensor | None = None
    index: torch.Tensor | None = None

    @classmethod
    def of(cls, num, cat, y, weight=None, soft=None, device="cpu") -> Table:
        dev = torch.device(device)
        n = len(y)
        w = np.ones(n, dtype=np.float32) if weight is None else np.asarray(weight, dtype=np.float32)
        return cls(
            num=_to_device(torch.as_tensor(num, dtype=torch.float32), dev),
            cat=_to_device(torch.as_tensor(cat, dtype=torch.int64), dev),
            y=_to_device(torch.as_tensor(np.array(y, dtype=np.int64)), dev),
            weight=_to_device(torch.as_tensor(w), dev),
            soft=None if soft is None else _to_device(torch.as_tensor(soft, dtype=torch.float32), dev),
            index=torch.arange(n, device=dev),
        )

    def __len__(self) -> int:
        return len(self.y)

    def rows(self, idx: torch.Tensor) -> Table:
        return Table(
            self.num[idx],
            self.cat[idx],
            self.y[idx],
            self.weight[idx],
            None if self.soft is None else self.soft[idx],
            None if self.index is None else self.index[idx],
        )


MAX_MIXUP_ROWS = 100_000  # past this the training rows themselves cover the labelling model's function
MIXUP_BETA = 0.4  # the mixing weight's Beta(a, a): most synthetic rows stay near one of their two parents


def with_mixup_rows(table: Table, per_row: float, seed: int, label: Callable[[Table], torch.Tensor]) -> Table:
    """``table`` plus ``per_row`` synthetic rows per row (at most ``MAX_MIXUP_ROWS``), each a mixup of two random rows:
    numeric columns interpolated, categoricals from the nearer parent, weights mixed. ``label`` gives rows their
    soft targets (a larger model's log-probabilities: the transfer set of Bucila et al.'s model compression) and
    the synthetic rows take its argmax as label; ``table``'s own soft targets must be set."""
    n = min(int(per_row * len(table)), MAX_MIXUP_ROWS)
    if n == 0:
        return table
    rng = np.random.default_rng(seed)
    dev = table.y.device
    i, j = (torch.as_tensor(rng.integers(0, len(table), n), device=dev) for _ in range(2))
    lam = torch.as_tensor(rng.beta(MIXUP_BETA, MIXUP_BETA, n), dtype=torch.float32, device=dev)
    mixed = Table(
        num=lam[:, None] * table.num[i] + (1 - lam[:, None]) * table.num[j],
        cat=torch.where((lam >= 0.5)[:, None], table.cat[i], table.cat[j]),
        y=table.y[i],
        weight=lam * table.weight[i] + (1 - lam) * table.weight[j],
    )
    mixed.soft = label(mixed)
    mixed.y = mixed.soft.argmax(1)
    both = Table(*(torch.cat([getattr(table, f), getattr(mixed, f)]) for f in ("num", "cat", "y", "weight", "soft")))
    both.index = torch.arange(len(both), device=dev)
    return both


def _to_device(t: torch.Tensor, dev: torch.device) -> torch.Tensor:
    """To CUDA through pinned memory (an asynchronous copy); elsewhere as is."""
    if dev.type == "cuda":
        return t.pin_memory().to(dev, non_blocking=True)
    return t.to(dev)


LossFn = Callable[[torch.Tensor, Table], torch.Tensor]
# Rows of one epoch (1-based epoch, seeded generator) -> row positions, CPU int64.
Sampler = Callable[[int, torch.Generator], torch.Tensor]


@dataclass
class FitResult:
    best_epoch: int
    history: list[dict[str, float]]
    epoch_seconds: list[float]


def warmup_cosine(step: int, total: int, warmup: float) -> float:
    """Learning-rate factor: linear warmup over the first ``warmup`` share of steps, then cosine to zero."""
    n_warm = int(warmup * total)
    if step < n_warm:
        return (step + 1) / n_warm
    return 0.5 * (1.0 + math.cos(math.pi * (step - n_warm) / max(1, total - n_warm)))


def tensor_macro_f1(pred: torch.Tensor, y: torch.Tensor, n_classes: int) -> float:
    """Macro-F1 over all classes (a class never predicted nor present counts 0, as scikit-learn's)."""
    tp = torch.bincount(y[pred == y], minlength=n_classes)
    both = torch.bincount(pred, minlength=n_classes) + torch.bincount(y, minlength=n_classes)
    return (2 * tp / both.clamp_min(1)).mean().item()


class TemperatureSampler:
    """Rows drawn with class probabilities proportional to n_c^(1/T), T cooled linearly over the epochs.

    T = 1 is the data's own class mix, large T nearly uniform. Starting hot and
    cooling down ("Cooldown", Li et al.) converges as fast as upsampling
    without overfitting the few rows of the rare classes. An epoch draws as
    many rows as the table has, with replacement.
    """

    def __init__(self, y: np.ndarray, n_classes: int, start: float, end: float, epochs: int):
        self.y = np.asarray(y)
        self.counts = np.bincount(self.y, minlength=n_classes).astype(np.float64)
        self.start, self.end, self.epochs = start, end, epochs

    def temperature(self, epoch: int) -> float:
        return self.start + (self.end - self.start) * (epoch - 1) / max(1, self.epochs - 1)

    def class_probs(self, epoch: int) -> np.ndarray:
        p = self.counts ** (1.0 / self.temperature(epoch))
        return p / p.sum()

    def __call__(self, epoch: int, gen: torch.Generator) -> torch.Tensor:
        per_row = (self.class_probs(epoch) / np.maximum(self.counts, 1.0))[self.y]
        return torch.multinomial(torch.as_tensor(per_row), len(self.y), replacement=True, generator=gen)


def fit_args(section: Any, n_rows: int) -> dict[str, Any]:
    """The ``fit`` arguments every model section of params shares (audit, train, distill), for ``n_rows`` rows."""
    return {"epochs": section.epochs_for(n_rows), **{k: getattr(section, k) for k in ("batch_size", "lr", "weight_decay")}}


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
    monitor: str = "nll",
    warmup: float = 0.1,
    grad_clip: float = 5.0,
    mixup: float = 0.0,
    sampler: Sampler | None = None,
    on_epoch: Callable[[int], None] | None = None,
) -> FitResult:
    """AdamW with warmup + cosine decay and gradient clipping (``grad_clip`` 0: none).

    With ``val``: early stopping on validation ``monitor`` (``nll``, or
    ``macro_f1`` with NLL breaking ties), best weights restored. ``mixup`` > 0
    mixes each batch with a shuffled copy of itself in the model's input space
    (``MLP.inputs``), weight ~ Beta(mixup, mixup). ``sampler`` picks each
    epoch's rows (default: a permutation); ``on_epoch(epoch)`` runs after each
    epoch (training dynamics such as EL2N; refreshing per-row loss targets).
    """
    gen = torch.Generator().manual_seed(seed)
    mix_rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    device = train.y.device
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    steps = epochs * max(1, math.ceil(len(train) / batch_size))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: warmup_cosine(step, steps, warmup))
    history: list[dict[str, float]] = []
    seconds: list[float] = []
    best: tuple[tuple[float, ...], int, Any] = ((-math.inf,), 0, None)
    show = progress is not None and sys.stderr.isatty()
    for epoch in range(1, epochs + 1):
        tic = time.perf_counter()
        model.train()
        order = (sampler(epoch, gen) if sampler else torch.randperm(len(train), generator=gen)).to(device)
        total, seen = torch.zeros((), device=device), 0
        for start in range(0, len(order), batch_size):
            batch = train.rows(order[start : start + batch_size])
            with autocast:
                if mixup > 0:
                    lam = float(mix_rng.beta(mixup, mixup))
                    partner = batch.rows(torch.randperm(len(batch), generator=gen).to(device))
                    x = model.inputs(batch.num, batch.cat)
                    logits = model.from_inputs(lam * x + (1.0 - lam) * model.inputs(partner.num, partner.cat))
                    loss = lam * loss_fn(logits, batch) + (1.0 - lam) * loss_fn(logits, partner)
                else:
                    loss = loss_fn(model(batch.num, batch.cat), batch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if grad_clip > 0:
                nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            opt.step()
            sched.step()
            total += loss.detach() * len(batch)
            seen += len(batch)
        row = {"epoch": epoch, "train_loss": total.item() / seen, "lr": sched.get_last_lr()[0]}
        seconds.append(time.perf_counter() - tic)
        if val is not None:
            logits = logits_of(model, val)
            row["val_nll"] = F.cross_entropy(logits, val.y).item()
            row["val_accuracy"] = (logits.argmax(1) == val.y).float().mean().item()
            row["val_macro_f1"] = tensor_macro_f1(logits.argmax(1), val.y, logits.shape[1])
            score = (row["val_macro_f1"], -row["val_nll"]) if monitor == "macro_f1" else (-row["val_nll"],)
            if score > best[0]:
                best = (score, epoch, copy.deepcopy(model.state_dict()))
        history.append(row)
        if on_epoch is not None:
            on_epoch(epoch)
        if show:
            extra = f" val_nll {row['val_nll']:.4f} val_macro_f1 {row['val_macro_f1']:.4f}" if val is not None else ""
            print(f"\r{progress}: epoch {epoch}/{epochs} loss {row['train_loss']:.4f}{extra}", end="", file=sys.stderr)
        if val is not None and patience is not None and epoch - best[1] >= patience:
            break
    if show:
        print(file=sys.stderr)
    if best[2] is not None:
        model.load_state_dict(best[2])
    return FitResult(best_epoch=best[1] or len(history), history=history, epoch_seconds=seconds)


@torch.no_grad()
def logits_of(model: nn.Module, table: Table, batch_size: int = 8192) -> torch.Tensor:
    model.eval()
    batch_size = min(batch_size, getattr(model, "max_batch", batch_size))  # a forest holds rows x trees positions
    out = [model(table.num[i : i + batch_size], table.cat[i : i + batch_size]) for i in range(0, len(table), batch_size)]
    return torch.cat(out) if out else torch.zeros((0, 0))


def save_model(path: str | Path, model: nn.Module, encoder: Encoder, **extra: Any) -> None:
    torch.save({"arch": model.arch, "state_dict": model.state_dict(), "encoder": encoder.to_dict(), **extra}, path)


def build(arch: dict[str, Any]) -> nn.Module:
    """An untrained model of the shape ``arch`` describes: an MLP, a tree forest, or a blend of them."""
    from tamis.trees import Blend, Forest

    kind = arch.get("kind", "mlp")
    if kind == "forest":
        return Forest.empty(arch)
    if kind == "blend":
        return Blend([build(a) for a in arch["members"]], arch["weights"])
    return MLP(**arch)


def describe(arch: dict[str, Any]) -> str:
    """One line naming a model: what the model card says the teacher is."""
    kind = arch.get("kind", "mlp")
    if kind == "forest":
        return f"HistGradientBoosting trees ({arch['iterations']} iterations, {arch['trees']} trees)"
    if kind == "blend":
        return " + ".join(f"{w:.2g} x {describe(a)}" for w, a in zip(arch["weights"], arch["members"]))
    return f"MLP {arch['hidden']}"


def load_model(path: str | Path, device: torch.device | str = "cpu") -> tuple[nn.Module, Encoder, dict[str, Any]]:
    path = Path(path)
    if not path.exists():
        raise StageError(f"{path} is missing: run the stage that writes it first (dvc repro).")
    ckpt = torch.load(path, map_location=device, weights_only=True)
    model = build(ckpt["arch"]).to(device)
    model.load_state_dict(ckpt["state_dict"])
    model.eval()
    return model, Encoder.from_dict(ckpt["encoder"]), ckpt


def param_count(model: nn.Module) -> int:
    """Fitted numbers: the weights, and a forest's node tensors (buffers: fitted by boosting, not by gradients)."""
    from tamis.trees import Forest

    nodes = sum(b.numel() for m in model.modules() if isinstance(m, Forest) for b in m.buffers())
    return sum(p.numel() for p in model.parameters()) + nodes


@contextlib.contextmanager
def torch_threads(n: int):
    """Torch's CPU threads set to ``n`` for a block (timings, and fits that must give the same bits everywhere)."""
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)
