"""Inference cost: the shipped ONNX model (named in its row) vs the torch teacher vs a tree model.

All three score the same test rows in this process on one thread each (the
fair setting for a serving replica): median latency at batch 1 and batch 256,
rows per second, size on disk. Encoding raw columns is left out for all three.
Where the teacher is a blend, a row times its MLP alone (the teacher of
``train.teacher: mlp``). A row times the teacher as compress exports it when no
student passes the gate (ONNX, its calibration in the graph, trees as one
TreeEnsemble node). A last row times one onnxruntime call on a graph that does nothing: the
per-call floor that bounds how much faster than the teacher any ONNX model can be.

    python -m benchmarks.inference [--repo PATH] [--quick]
"""

from __future__ import annotations

import argparse
import os
import pickle
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.common import machine, median_seconds, write_result
from flows import workspace


def ensure_pipeline(repo: Path | None, tmp: Path) -> Path:
    if repo is not None:
        return repo
    repo = workspace.create(tmp / "repo")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    subprocess.run([sys.executable, "-m", "dvc", "repro"], cwd=repo, check=True, capture_output=True, env=env)
    return repo


def measure(repo: Path, repeats: int) -> dict[str, Any]:
    from sklearn.ensemble import HistGradientBoostingClassifier
    from threadpoolctl import threadpool_limits

    from tamis.contract import read_json
    from tamis.data import read_split
    from tamis.nets import load_model
    from tamis.serving import Predictor

    torch.set_num_threads(1)
    serving = read_json(repo / "models/serving.json")
    shipped = Predictor.load(repo / "models", threads=1)
    teacher, encoder, _ = load_model(repo / "models/teacher.pt")
    train = read_split(repo / "data/validated", "train")
    test = read_split(repo / "data/validated", "test")
    label = serving["label"]
    num, cat = encoder.transform(test)
    x_train = np.hstack(encoder.transform(train)).astype(np.float32)
    x_test = np.hstack([num, cat]).astype(np.float32)
    with threadpool_limits(1):
        tree = HistGradientBoostingClassifier(random_state=0).fit(x_train, encoder.labels(train[label]))
    tree_path = repo / "models" / "bench-hgb.pkl"
    tree_path.write_bytes(pickle.dumps(tree))

    def rows(batch: int) -> slice:
        return slice(0, min(batch, len(test)))

    models = {
        f"shipped ({Path(serving['model']).name})": (
            lambda s: shipped.proba_encoded(num[s], cat[s]),
            (repo / "models" / serving["model"]).stat().st_size,
        ),
        "teacher (torch)": (
            lambda s: torch_predict(teacher, num[s], cat[s]),
            (repo / "models/teacher.pt").stat().st_size,
        ),
        "HistGradientBoosting": (lambda s: tree.predict_proba(x_test[s]), tree_path.stat().st_size),
        **mlp_member(teacher, repo, num, cat),
        **teacher_onnx(teacher, repo, num, cat),
        "onnxruntime floor (identity graph)": (floor_session(repo / "models", num.astype(np.float32)), 0),
    }
    out: dict[str, Any] = {}
    with threadpool_limits(1):
        for name, (fn, size) in models.items():
            b1 = median_seconds(lambda: fn(rows(1)), repeats=repeats * 20, warmup=5)
            b256 = median_seconds(lambda: fn(rows(256)), repeats=repeats * 4, warmup=2)
            n256 = rows(256).stop
            out[name] = {
                "batch1_ms": b1 * 1000,
                "batch256_ms": b256 * 1000,
                "rows_per_s_batch256": n256 / b256,
                "size_bytes": size,
            }
    base = out["teacher (torch)"]
    for row in out.values():
        row["speedup_batch1_vs_teacher"] = base["batch1_ms"] / row["batch1_ms"]
        row["smaller_than_teacher"] = base["size_bytes"] / row["size_bytes"] if row["size_bytes"] else float("nan")
    tree_path.unlink()
    return out


def mlp_member(teacher, repo: Path, num: np.ndarray, cat: np.ndarray) -> dict[str, Any]:
    """A blend teacher's MLP alone, as a row: the teacher a run with ``train.teacher: mlp`` would have."""
    mlp = next((m for m in getattr(teacher, "members", []) if m.arch.get("kind", "mlp") == "mlp"), None)
    if mlp is None:
        return {}
    path = repo / "models" / "bench-mlp.pt"
    torch.save(mlp.state_dict(), path)
    size = path.stat().st_size
    path.unlink()
    return {"the teacher's MLP alone (torch)": (lambda s: torch_predict(mlp, num[s], cat[s]), size)}


def teacher_onnx(teacher, repo: Path, num: np.ndarray, cat: np.ndarray) -> dict[str, Any]:
    """The calibrated teacher exported as compress's fallback exports it (what ships when no student passes)."""
    from tamis.compression import Exported, export_onnx
    from tamis.calibration import PARAMETRIC
    from tamis.contract import read_json
    from tamis.serving import Predictor

    cal = read_json(repo / "models/calibration.json")
    if cal["method"] not in PARAMETRIC:  # compress maps it to a parametric one; the identity costs the same
        classes = torch_predict(teacher, num[:1], cat[:1]).shape[1]
        cal = {"method": "temperature", "on": "logits", "scale": 1.0, "bias": [0.0] * classes}
    path = repo / "models" / "bench-teacher.onnx"
    export_onnx(Exported(teacher, cal, np.ones(num.shape[1])), num, cat, path)
    size = path.stat().st_size
    predictor = Predictor(path, read_json(repo / "models/serving.json"), threads=1)
    path.unlink()
    return {"teacher as ONNX (the fallback when no student passes)": (lambda s: predictor.proba_encoded(num[s], cat[s]), size)}


def floor_session(folder: Path, num: np.ndarray):
    """One onnxruntime call on a graph that does nothing: the per-call cost no shipped ONNX model can go under."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    spec = [helper.make_tensor_value_info("num", TensorProto.FLOAT, ["N", num.shape[1]])]
    out = [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", num.shape[1]])]
    graph = helper.make_graph([helper.make_node("Identity", ["num"], ["probs"])], "floor", spec, out)
    path = folder / "bench-floor.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), path)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = 1, 1
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    path.unlink()
    return lambda s: session.run(["probs"], {"num": num[s]})


@torch.no_grad()
def torch_predict(model, num: np.ndarray, cat: np.ndarray) -> np.ndarray:
    return model(torch.as_tensor(num), torch.as_tensor(cat)).softmax(1).numpy()


def table(result: dict[str, Any]) -> str:
    lines = [
        "| model | batch 1 (ms, median) | batch 256 (ms, median) | rows/s at 256 | size (bytes) | vs teacher: faster at 1 / smaller |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in result["models"].items():
        lines.append(
            f"| {name} | {r['batch1_ms']:.4f} | {r['batch256_ms']:.3f} | {r['rows_per_s_batch256']:,.0f} | "
            + (f"{r['size_bytes']:,} | {r['speedup_batch1_vs_teacher']:.1f}x / {r['smaller_than_teacher']:.1f}x |"
               if r["size_bytes"] else f"— | {r['speedup_batch1_vs_teacher']:.1f}x (the most any ONNX model can reach) / — |")
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repo", type=Path, help="a workspace where the pipeline already ran")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="tamis-inference-") as tmp:
        repo = ensure_pipeline(args.repo, Path(tmp))
        models = measure(repo, repeats=3 if args.quick else 25)
    result = {"models": models, "dataset": "sklearn:digits (default params)", "threads": 1, "machine": machine()}
    write_result("inference", result)
    print(table(result))
    return result


if __name__ == "__main__":
    main()
