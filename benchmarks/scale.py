"""Scale: time and peak memory per stage at 10k, 100k and 1M rows x 50 columns.

Generated long-tailed tables (45 numeric + 5 categorical columns, 8 classes,
10% class-dependent label noise) go through every stage as
``python -m stages.<name>``; each stage's wall time and peak resident memory
(from the OS, per process) are recorded, and the growth from one size to the
next is divided by the growth in rows, so 1.0 means linear. The params are the
defaults (``max_steps`` cuts the epochs of a large table); ``--few-epochs`` cuts
every model to 2 epochs instead, which measures how the work grows, not the
default run. The last rows: the whole pipeline (every stage, one after the
other), its peak, and that peak against the table's own size in memory.

    python -m benchmarks.scale [--quick] [--sizes 10000 100000 1000000] [--few-epochs]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from benchmarks.common import confusion_noise, machine, make_table, write_result
from flows import workspace

FEW_EPOCHS = ["audit.epochs=2", "train.epochs=2", "train.patience=1", "distill.epochs=2", "distill.patience=1"]


def run_measured(cmd: list[str], cwd: Path, timeout: float) -> tuple[float, float, int, str]:
    """(wall seconds, peak RSS MiB, exit code, stderr tail) of one child process.

    The peak comes from GNU time (/usr/bin/time) where it exists: on Linux a child keeps the
    peak RSS of the process it was forked from across exec, so this process's
    own ~400 MiB (pandas, torch) would be every stage's floor. Launched from
    the small ``time`` binary, the stage's peak is its own.
    """
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    marker = "tamis-peak-kib="
    wrapped = ["/usr/bin/time", "-f", f"{marker}%M", *cmd] if Path("/usr/bin/time").exists() else cmd
    with tempfile.TemporaryFile("w+") as err:
        start = time.perf_counter()
        proc = subprocess.Popen(wrapped, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=err)
        deadline = start + timeout
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() > deadline:
                proc.kill()
                pid, status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.05)
        seconds = time.perf_counter() - start
        err.seek(0)
        text = err.read()
    peaks = [ln.split(marker, 1)[1] for ln in text.splitlines() if ln.startswith(marker)]
    peak = int(peaks[-1]) / 1024 if peaks else usage.ru_maxrss / 1024
    tail = "\n".join(ln for ln in text.splitlines() if not ln.startswith(marker))[-2000:]
    return seconds, peak, os.waitstatus_to_exitcode(status), tail


def one_size(base: Path, rows: int, timeout: float, overrides: list[str]) -> dict[str, Any]:
    frame = make_table(rows, n_numeric=45, n_categorical=5, n_classes=8, seed=0)
    frame["label"], _ = confusion_noise(frame, 0.1, seed=0)
    table_mib = frame.memory_usage(deep=True).sum() / 2**20
    data = base / f"train_{rows}.parquet"
    frame.to_parquet(data, index=False)
    del frame
    repo = workspace.create(base / f"repo_{rows}")
    from tamis.config import apply_overrides, read_raw

    raw = apply_overrides(read_raw(repo / "params.yaml"), [f"data.train={data}", "data.inject_noise=null", *overrides])
    (repo / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    stages = list(yaml.safe_load((repo / "dvc.yaml").read_text())["stages"])
    out: dict[str, Any] = {}
    for stage in stages:
        seconds, peak, code, tail = run_measured([sys.executable, "-m", f"stages.{stage}"], repo, timeout)
        out[stage] = {"seconds": seconds, "peak_mib": peak, "ok": code == 0}
        print(f"  {rows:>9,} rows  {stage:<12} {seconds:8.1f} s {peak:8.0f} MiB  {'ok' if code == 0 else 'FAILED'}",
              flush=True)
        if code != 0:
            out[stage]["error"] = tail.strip().splitlines()[-1] if tail.strip() else f"exit {code}"
            break
    return {"stages": out, "table_mib": table_mib}


def growth(result: dict[str, Any], sizes: list[int]) -> dict[str, dict[str, float]]:
    """Per stage and size step: (time ratio) / (rows ratio); 1.0 is linear."""
    out: dict[str, dict[str, float]] = {}
    for small, big in zip(sizes, sizes[1:]):
        step = f"{small}->{big}"
        for stage, row in result[str(big)]["stages"].items():
            before = result[str(small)]["stages"].get(stage)
            if before and before["ok"] and row["ok"]:
                out.setdefault(stage, {})[step] = (row["seconds"] / before["seconds"]) / (big / small)
    return out


def table(result: dict[str, Any]) -> str:
    sizes = result["sizes"]
    head = "| stage | " + " | ".join(f"{s:,} rows: s / MiB" for s in sizes) + " | " + " | ".join(
        f"growth {a:,}→{b:,} (1 = linear)" for a, b in zip(sizes, sizes[1:])
    ) + " |"
    lines = [head, "|" + "---|" * (1 + len(sizes) + len(sizes) - 1)]
    for stage in result[str(sizes[0])]["stages"]:
        cells = []
        for s in sizes:
            row = result[str(s)]["stages"].get(stage)
            cells.append("—" if row is None else (f"{row['seconds']:.1f} / {row['peak_mib']:.0f}" if row["ok"] else "failed"))
        steps = result["growth"].get(stage, {})
        cells += [f"{steps[f'{a}->{b}']:.2f}" if f"{a}->{b}" in steps else "—" for a, b in zip(sizes, sizes[1:])]
        lines.append(f"| {stage} | " + " | ".join(cells) + " |")
    whole = {s: whole_pipeline(result[str(s)]) for s in sizes}
    cells = [f"**{w['seconds']:.1f} / {w['peak_mib']:.0f}**" if w["ok"] else "failed" for w in whole.values()]
    cells += [f"**{(whole[b]['seconds'] / whole[a]['seconds']) / (b / a):.2f}**" if whole[a]["ok"] and whole[b]["ok"] else "—"
              for a, b in zip(sizes, sizes[1:])]
    lines.append("| **whole pipeline** (s / peak MiB) | " + " | ".join(cells) + " |")
    cells = [f"{result[str(s)]['table_mib']:.0f} MiB; peak {whole[s]['peak_mib'] / result[str(s)]['table_mib']:.1f}x" for s in sizes]
    lines.append("| table in memory (pandas); peak / table | " + " | ".join(cells) + " | " + " | ".join("" for _ in sizes[1:]) + " |")
    return "\n".join(lines)


def whole_pipeline(size: dict[str, Any]) -> dict[str, Any]:
    """Every stage one after the other: summed seconds, the largest peak, whether all ran."""
    rows = size["stages"].values()
    return {"seconds": sum(r["seconds"] for r in rows), "peak_mib": max(r["peak_mib"] for r in rows),
            "ok": all(r["ok"] for r in rows)}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="10k and 30k rows")
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--timeout", type=float, default=3600, help="seconds allowed per stage")
    parser.add_argument("--few-epochs", action="store_true", help="every model cut to 2 epochs (how the work grows)")
    args = parser.parse_args(argv)
    sizes = [10_000, 30_000] if args.quick else args.sizes
    overrides = FEW_EPOCHS if args.few_epochs else []
    result: dict[str, Any] = {"sizes": sizes, "columns": 50, "epochs": 2 if args.few_epochs else "defaults",
                              "machine": machine(), "command": "python -m benchmarks.scale " + " ".join(argv or sys.argv[1:])}
    with tempfile.TemporaryDirectory(prefix="tamis-scale-") as tmp:
        for rows in sizes:
            result[str(rows)] = one_size(Path(tmp), rows, args.timeout, overrides)
    result["growth"] = growth(result, sizes)
    write_result("scale", result)
    print(table(result))
    return result


if __name__ == "__main__":
    main()
