"""Validate on wide tables: validate's time against ingest's, per width.

A 784-column table (784 numeric columns, like a flattened 28x28 image) and a
50-column mixed table (45 numeric + 5 categorical), 5,000 rows each, go through
``ingest`` and ``validate`` in this process (their ``run(params, root)``, in a
temp workspace): once to pay the imports, then ``--repeats`` times, round robin.
Medians and the ratio validate / ingest are reported (the target: at most 2 at
any width). With ``--baseline REV`` the validate stage as it was at git
revision REV is timed too, in the same process and on the same raw data.

    python -m benchmarks.validate_speed [--quick] [--repeats 3] [--baseline REV]
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import ROOT, machine, make_table, write_result
from flows import workspace

TABLES = {"wide": (784, 0), "mixed": (45, 5)}  # name: (numeric, categorical) columns


def baseline_stage(rev: str, folder: Path):
    """``stages/validate.py`` as it was at ``rev``, loaded as a module beside today's."""
    source = subprocess.run(["git", "show", f"{rev}:stages/validate.py"], cwd=ROOT, capture_output=True, text=True, check=True)
    path = folder / "validate_baseline.py"
    path.write_text(source.stdout)
    spec = importlib.util.spec_from_file_location("validate_baseline", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def seconds(fn, *args) -> float:
    """Wall time of one call, its prints swallowed."""
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        fn(*args)
    return time.perf_counter() - start


def one_table(base: Path, name: str, rows: int, repeats: int, baseline=None, rev: str | None = None) -> dict[str, Any]:
    from stages import ingest, validate
    from tamis.config import parse_params

    n_numeric, n_categorical = TABLES[name]
    data = base / f"{name}.parquet"
    make_table(rows, n_numeric=n_numeric, n_categorical=n_categorical, seed=0).to_parquet(data, index=False)
    repo = workspace.create(base / f"repo_{name}")
    params = parse_params({"data": {"train": str(data), "inject_noise": None}})
    seconds(ingest.run, params, repo)
    seconds(validate.run, params, repo)  # imports (great-expectations, scipy) paid here, untimed
    times: dict[str, list[float]] = {"ingest": [], "validate": [], "baseline": []}
    for _ in range(repeats):
        times["ingest"].append(seconds(ingest.run, params, repo))
        times["validate"].append(seconds(validate.run, params, repo))
        if baseline is not None:
            times["baseline"].append(seconds(baseline.run, params, repo))
    med = {k: statistics.median(v) if v else None for k, v in times.items()}
    out = {"columns": n_numeric + n_categorical, "rows": rows, "times": times, **med, "ratio": med["validate"] / med["ingest"]}
    out["baseline_ratio"] = med["baseline"] / med["ingest"] if med["baseline"] else None
    print(f"{name}: {out['columns']} columns x {rows} rows: ingest {med['ingest']:.2f} s, validate {med['validate']:.2f} s"
          f" (x{out['ratio']:.2f})" + (f", validate at {rev} {med['baseline']:.2f} s (x{out['baseline_ratio']:.2f})" if baseline else ""),
          flush=True)
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="1,000 rows, one repeat")
    parser.add_argument("--rows", type=int, default=5000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--baseline", metavar="REV", help="also time stages/validate.py as it was at this git revision")
    parser.add_argument("--tables", nargs="+", choices=list(TABLES), default=list(TABLES))
    args = parser.parse_args(argv)
    rows, repeats = (1000, 1) if args.quick else (args.rows, args.repeats)
    for key, value in (("GX_ANALYTICS_ENABLED", "false"), ("DO_NOT_TRACK", "1")):
        os.environ.setdefault(key, value)
    os.environ.pop("MLFLOW_TRACKING_URI", None)  # each workspace's own SQLite store
    with tempfile.TemporaryDirectory(prefix="tamis-validate-speed-") as tmp:
        base = Path(tmp)
        baseline = baseline_stage(args.baseline, base) if args.baseline else None
        tables = {name: one_table(base, name, rows, repeats, baseline, args.baseline) for name in args.tables}
    result = {
        "command": " ".join(["python -m benchmarks.validate_speed", *(sys.argv[1:] if argv is None else argv)]),
        "machine": machine(),
        "baseline": args.baseline,
        "repeats": repeats,
        "tables": tables,
    }
    write_result("validate_speed", result)
    return result


def table(result: dict[str, Any]) -> str:
    rev = result.get("baseline")
    head = ["table", "columns x rows", "ingest (s)", "validate (s)", "validate / ingest"]
    if rev:
        head += [f"validate at `{rev}` (s)", f"validate / ingest at `{rev}`"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, t in result["tables"].items():
        cells = [name, f"{t['columns']} x {t['rows']}", f"{t['ingest']:.2f}", f"{t['validate']:.2f}", f"{t['ratio']:.2f}"]
        if rev:
            cells += [f"{t['baseline']:.2f}", f"{t['baseline_ratio']:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", f"Medians of {result['repeats']} repeat(s) after one untimed run of each (imports paid there)."]
    return "\n".join(lines)


if __name__ == "__main__":
    print(table(main()))
