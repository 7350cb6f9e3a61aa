"""What the machinery costs: stage times, orchestration overhead, re-runs.

On the default data (digits) in fresh workspaces, the same pipeline three ways:
each stage as a bare ``python -m stages.<name>`` (the stages' own compute,
imports included), ``dvc repro``, and the Prefect flow (``tamis run``, which also
promotes). Orchestration overhead = flow wall time minus promote minus the bare
stages' time, as a share of the flow's wall time. Then a no-op re-run (the flow both with
its local server and against a running ``prefect server start``) and a re-run
after a calibration param change, through the flow and through DVC.

    python -m benchmarks.machinery [--quick] [--repeats N]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

import yaml

from benchmarks.common import machine, write_result
from flows import workspace


# one Prefect home for the whole benchmark, as a user's runs share ~/.prefect: a new one per command made every
# no-op run create and migrate Prefect's database first (no-op 17.9 s in the benchmark, ~9.5 s run by hand)
PREFECT_HOME = os.environ.get("PREFECT_HOME") or tempfile.mkdtemp(prefix="tamis-prefect-")


def env() -> dict[str, str]:
    e = dict(os.environ)
    e["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{e['PATH']}"
    e.update(PREFECT_SERVER_ANALYTICS_ENABLED="false", GX_ANALYTICS_ENABLED="false", DO_NOT_TRACK="1",
             PREFECT_HOME=PREFECT_HOME)
    return e


def timed(cmd: list[str], cwd: Path, **extra: str) -> tuple[float, subprocess.CompletedProcess]:
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env={**env(), **extra}, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed in {cwd}:\n{proc.stderr[-3000:]}")
    return seconds, proc


@contextlib.contextmanager
def running_server() -> Iterator[str]:
    """A ``prefect server start`` of its own (as a team runs one), its API URL while it runs."""
    import httpx

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/api"
    server = subprocess.Popen([str(Path(sys.executable).parent / "prefect"), "server", "start", "--host", "127.0.0.1",
                               "--port", str(port)], env={**env(), "PREFECT_UI_ENABLED": "0"},
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"prefect server start did not answer on {url}")
            time.sleep(0.2)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=30)


def bare_stages(repo: Path) -> dict[str, float]:
    stages = list(yaml.safe_load((repo / "dvc.yaml").read_text())["stages"])
    return {s: timed([sys.executable, "-m", f"stages.{s}"], repo)[0] for s in stages}


def one_round(base: Path, overrides: list[str]) -> dict[str, Any]:
    def fresh(name: str) -> Path:
        repo = workspace.create(base / name)
        if overrides:
            from tamis.config import apply_overrides, read_raw

            raw = apply_overrides(read_raw(repo / "params.yaml"), overrides)
            (repo / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
        return repo

    stages = bare_stages(fresh("bare"))
    dvc_repo = fresh("dvc")
    dvc_wall, _ = timed([sys.executable, "-m", "dvc", "repro"], dvc_repo)
    dvc_noop, _ = timed([sys.executable, "-m", "dvc", "repro"], dvc_repo)
    flow_repo = fresh("flow")
    tamis = [str(Path(sys.executable).parent / "tamis"), "run"]
    flow_wall, _ = timed(tamis, flow_repo)
    promote = _parent_metrics(flow_repo)["seconds.promote"]
    flow_noop, _ = timed(tamis, flow_repo)
    with running_server() as url:
        flow_noop_server, _ = timed(tamis, flow_repo, PREFECT_API_URL=url)
    flow_change, proc = timed(tamis + ["--set", "calibrate.bootstrap=100"], flow_repo)
    ran_flow = re.findall(r"(\w+): ran in", proc.stdout + proc.stderr)
    raw = yaml.safe_load((dvc_repo / "params.yaml").read_text())
    raw["calibrate"]["bootstrap"] = 100
    (dvc_repo / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    dvc_change, proc = timed([sys.executable, "-m", "dvc", "repro"], dvc_repo)
    ran_dvc = re.findall(r"Running stage '(\w+)'", proc.stdout)
    compute = sum(stages.values())
    return {
        "stage_seconds": stages,
        "stages_total": compute,
        "dvc_wall": dvc_wall,
        "flow_wall": flow_wall,
        "promote_seconds": promote,
        "dvc_overhead_share": (dvc_wall - compute) / dvc_wall,
        "flow_overhead_share": (flow_wall - promote - compute) / flow_wall,
        "noop_dvc": dvc_noop,
        "noop_flow": flow_noop,
        "noop_flow_server": flow_noop_server,
        "calib_change_flow": flow_change,
        "calib_change_flow_ran": ran_flow,
        "calib_change_dvc": dvc_change,
        "calib_change_dvc_ran": ran_dvc,
    }


def _parent_metrics(repo: Path) -> dict[str, float]:
    """Metrics of the workspace's latest pipeline (parent) run, as the flow logged them."""
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
    exp = client.get_experiment_by_name("tamis")
    (run,) = client.search_runs([exp.experiment_id], "tags.`tamis.pipeline` = 'retrain'", order_by=["start_time DESC"], max_results=1)
    return run.data.metrics


def median_of(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in rounds[0].items():
        if isinstance(value, (int, float)):
            out[key] = statistics.median(r[key] for r in rounds)
        elif isinstance(value, dict):
            out[key] = {k: statistics.median(r[key][k] for r in rounds) for k in value}
        else:
            out[key] = value
    return out


def table(result: dict[str, Any]) -> str:
    stages = result["stage_seconds"]
    lines = ["| stage | seconds (bare `python -m stages.<name>`) |", "|---|---|"]
    lines += [f"| {s} | {t:.1f} |" for s, t in stages.items()]
    lines += [
        f"| **all stages** | **{result['stages_total']:.1f}** |",
        "",
        "| run | wall seconds | note |",
        "|---|---|---|",
        f"| `dvc repro`, first run | {result['dvc_wall']:.1f} | overhead {result['dvc_overhead_share']:.0%} of wall |",
        f"| `tamis run` (Prefect flow), first run | {result['flow_wall']:.1f} | overhead {result['flow_overhead_share']:.0%}"
        f" of wall (target ≤ 10%); promote {result['promote_seconds']:.1f} s not counted |",
        f"| `dvc repro`, nothing changed | {result['noop_dvc']:.1f} | target ≤ 10 s |",
        f"| `tamis run`, nothing changed | {result['noop_flow']:.1f} | target ≤ 10 s; includes starting Prefect's local server |",
        f"| `tamis run`, nothing changed, against a running `prefect server start` | {result['noop_flow_server']:.1f} | target ≤ 5 s |",
        f"| `tamis run --set calibrate.bootstrap=100` | {result['calib_change_flow']:.1f} | ran: {', '.join(result['calib_change_flow_ran'])} |",
        f"| `dvc repro` after the same change | {result['calib_change_dvc']:.1f} | ran: {', '.join(result['calib_change_dvc_ran'])} |",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="one round with few epochs")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    overrides = ["audit.epochs=3", "train.epochs=5", "distill.epochs=5"] if args.quick else []
    repeats = 1 if args.quick else args.repeats
    with tempfile.TemporaryDirectory(prefix="tamis-machinery-") as tmp:
        rounds = [one_round(Path(tmp) / f"round{i}", overrides) for i in range(repeats)]
    result = {**median_of(rounds), "rounds": repeats, "quick": args.quick, "machine": machine()}
    write_result("machinery", result)
    print(table(result))
    return result


if __name__ == "__main__":
    main()
