"""Calibrate: make the teacher's probabilities mean what they say.

Temperature scaling divides the logits by one T > 0 fitted on the calibration
split by minimising NLL over log T (so T stays positive). It never changes the
predicted class, only the confidence.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from stages import tracking
from stages.config import Params
from stages.contract import Outputs, StageError, stage_main
from stages.data import read_split
from stages.metrics import classification, softmax
from stages.nets import Table, load_model, logits_of

VALIDATED = Path("data/validated")
TEACHER = Path("models/teacher.pt")
OUT = Path("models/calibration.json")
METRICS = Path("metrics/calibrate.json")
PLOT = Path("plots/reliability.png")


def fit_temperature(logits: np.ndarray, y: np.ndarray, max_iter: int = 200) -> tuple[float, bool]:
    """(T, converged): the T minimising NLL of softmax(logits / T) on (logits, y)."""
    z = torch.as_tensor(logits, dtype=torch.float64)
    t = torch.as_tensor(y, dtype=torch.int64)
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.1, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(z / log_t.exp(), t)
        loss.backward()
        return loss

    opt.step(closure)
    grad = log_t.grad.abs().item() if log_t.grad is not None else 0.0
    temperature = float(log_t.exp().item())
    return temperature, bool(np.isfinite(temperature) and grad < 1e-3)


def calib_logits(params: Params, root: Path) -> tuple[np.ndarray, np.ndarray]:
    """Teacher logits and class indices on the calibration split."""
    model, encoder, _ = load_model(root / TEACHER)
    calib = read_split(root / VALIDATED, "calib")
    y = encoder.labels(calib[params.data.label], "calib split")
    missing = sorted(set(range(len(encoder.classes))) - set(y.tolist()))
    if missing:
        names = [encoder.classes[i] for i in missing]
        raise StageError(
            f"calib split lacks class(es) {names}; raise data.calib_size so every class is in it."
        )
    logits = logits_of(model, Table.of(*encoder.transform(calib), y)).numpy()
    return logits, y


def reliability_plot(path: Path, curves: dict[str, tuple[np.ndarray, np.ndarray]], bins: int) -> None:
    """Accuracy against confidence per equal-width bin, one line per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot([0, 1], [0, 1], "k:", label="perfect")
    edges = np.linspace(0, 1, bins + 1)
    for name, (probs, y) in curves.items():
        conf, hit = probs.max(1), probs.argmax(1) == y
        which = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, bins - 1)
        xs = [conf[which == b].mean() for b in range(bins) if (which == b).any()]
        ys = [hit[which == b].mean() for b in range(bins) if (which == b).any()]
        ax.plot(xs, ys, "o-", label=name)
    ax.set(xlabel="confidence", ylabel="accuracy", xlim=(0, 1), ylim=(0, 1), title="Reliability (calib split)")
    ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=100, format="png")
    plt.close(fig)


def run(params: Params, root: str | Path = ".") -> dict[str, Any]:
    root = Path(root)
    logits, y = calib_logits(params, root)
    bins = params.evaluate.ece_bins
    with tracking.stage_run("calibrate", params, ("calibrate",), root):
        temperature, converged = fit_temperature(logits, y, params.calibrate.max_iter)
        before, after = softmax(logits), softmax(logits, temperature)
        metrics = {
            "method": params.calibrate.method,
            "temperature": temperature,
            "converged": converged,
            "before": classification(before, y, bins),
            "after": classification(after, y, bins),
        }
        tracking.log_metrics(metrics)
        with Outputs(root) as out:
            out.write_json(OUT, {"method": "temperature", "temperature": temperature})
            out.write_json(METRICS, metrics)
            reliability_plot(out.path(PLOT), {"teacher": (before, y), "calibrated": (after, y)}, bins)
        import mlflow

        mlflow.log_artifact(str(root / PLOT))
    return metrics


if __name__ == "__main__":
    stage_main("calibrate", run)
