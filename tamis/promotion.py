"""The blessing gate: may a newly registered version take ``champion``?

In the spirit of TFX's Evaluator + Pusher: the challenger must have passed its
own compress gate, clear the optional absolute floors, and, against the
champion, on test rows *neither* model trained or calibrated on, gain
macro-F1 (a tie does not move the alias), keep ECE within a tolerance and
lose no class's recall beyond a tolerance (or one of that class's rows, the
least a small split can resolve). Rows are matched across runs by a digest of
their feature values, so a re-split (another seed) cannot put the champion's
own training rows into the comparison.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from tamis.config import PromoteParams
from tamis.metrics import ECE_BINS, ece


@dataclass
class Scores:
    """A model's numbers on the comparison rows."""

    macro_f1: float
    ece: float
    recall: dict[str, float]
    support: dict[str, int]  # rows of each class
    rows: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Decision:
    move: bool
    reason: str
    details: dict[str, Any] = field(default_factory=dict)


def row_digests(frame: pd.DataFrame, features: list[str]) -> np.ndarray:
    """One 64-bit digest per row of its feature values (columns by name, so their order does not matter)."""
    cols = sorted(features)
    return pd.util.hash_pandas_object(frame[cols].reset_index(drop=True), index=False).to_numpy(np.uint64)


def score(pred: pd.DataFrame, labels: pd.Series) -> Scores:
    """Macro-F1, ECE and per-class recall of pyfunc output (``label`` + ``proba_<class>``) against ``labels``."""
    from sklearn.metrics import f1_score

    truth = labels.astype(str).to_numpy()
    guess = pred["label"].astype(str).to_numpy()
    proba_cols = [c for c in pred.columns if c.startswith("proba_")]
    classes = [c.removeprefix("proba_") for c in proba_cols]
    index = {c: i for i, c in enumerate(classes)}
    known = np.array([t in index for t in truth])
    y = np.array([index.get(t, -1) for t in truth])
    probs = pred[proba_cols].to_numpy(np.float64)
    present = sorted(set(truth))
    recall = {c: float((guess[truth == c] == c).mean()) for c in present}
    support = {c: int((truth == c).sum()) for c in present}
    calib_error = ece(probs[known], y[known], ECE_BINS) if known.any() else float("nan")
    f1 = float(f1_score(truth, guess, average="macro", labels=present))
    return Scores(f1, calib_error, recall, support, len(truth))


def decide(challenger: Scores | None, champion: Scores | None, gate_passed: bool, p: PromoteParams) -> Decision:
    """Whether the challenger takes ``champion``, with a reason a person can act on."""
    if not gate_passed:
        return Decision(False, "its compress gate failed (no variant kept the calibrated teacher's quality)")
    if challenger is None:
        return Decision(False, "it could not be scored")
    if p.min_macro_f1 is not None and challenger.macro_f1 < p.min_macro_f1:
        return Decision(False, f"macro-F1 {challenger.macro_f1:.4f} is below promote.min_macro_f1 {p.min_macro_f1:g}")
    if p.max_ece is not None and challenger.ece > p.max_ece:
        return Decision(False, f"ECE {challenger.ece:.4f} is above promote.max_ece {p.max_ece:g}")
    if champion is None:
        return Decision(True, "the first to pass the gate, no champion before")
    f1_gain = challenger.macro_f1 - champion.macro_f1
    details = {"macro_f1_gain": f1_gain, "ece_rise": challenger.ece - champion.ece}
    if f1_gain <= 0 or f1_gain < p.min_gain:
        return Decision(
            False,
            f"macro-F1 {challenger.macro_f1:.4f} vs champion {champion.macro_f1:.4f}: "
            f"{'a tie' if abs(f1_gain) < 1e-12 else f'gain {f1_gain:+.4f}'} (must be > 0 and >= promote.min_gain {p.min_gain:g})",
            details,
        )
    if details["ece_rise"] > p.max_ece_rise + 1e-12:
        return Decision(
            False,
            f"ECE {challenger.ece:.4f} vs champion {champion.ece:.4f} rises by more than promote.max_ece_rise {p.max_ece_rise:g}",
            details,
        )
    for cls, before in champion.recall.items():
        after = challenger.recall.get(cls, 0.0)
        allowed = max(p.max_class_recall_drop, 1.0 / max(1, champion.support.get(cls, 1)))
        if before - after > allowed + 1e-12:
            return Decision(
                False,
                f"recall of class {cls!r} drops from {before:.3f} to {after:.3f} (more than promote.max_class_recall_drop "
                f"{p.max_class_recall_drop:g})",
                details,
            )
    return Decision(
        True,
        f"macro-F1 {challenger.macro_f1:.4f} > champion {champion.macro_f1:.4f}, ECE {challenger.ece:.4f} "
        f"(champion {champion.ece:.4f}), no class's recall lost",
        details,
    )
