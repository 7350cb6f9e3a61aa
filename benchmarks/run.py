"""``make bench``: run every benchmark and write BENCHMARKS.md from the results.

Each benchmark module has ``main(argv) -> result`` (which also writes
``benchmarks/results/<name>.json``) and ``table(result) -> markdown``.
``--only`` re-runs some and re-renders the page from the stored results of the rest.

    python -m benchmarks.run [--quick] [--only quality machinery ...]
    python -m benchmarks.run --render      # only re-write BENCHMARKS.md from the stored results
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import json
import sys

from benchmarks.common import ROOT, machine

# (module, section title) in page order
SECTIONS = [
    ("quality", "Quality: tamis against the usual alternatives"),
    ("audit_quality", "Audit: label-issue detection against cleanlab's CleanLearning, and its cost"),
    ("train_quality", "Teacher: noise-robust training and balancing against the peers, and throughput"),
    ("calibration_noise", "Calibration when the calibration labels are noisy too"),
    ("temperature_prior", "Temperature scaling on small calibration splits"),
    ("compress_quality", "Shipped model: size, speed and calibration against the teacher"),
    ("machinery", "Machinery cost: stages, orchestration, re-runs"),
    ("scale", "Scale: time and memory per stage"),
    ("large_defaults", "Large-data defaults: what the audit's step cap costs"),
    ("validate_speed", "Validate on wide tables"),
    ("inference", "Inference: the shipped model against the teacher and a tree model"),
]
RESULTS = ROOT / "benchmarks" / "results"


def describe(doc: str) -> list[str]:
    """A module docstring as markdown paragraphs: wrapped lines joined, list items kept, usage lines left out."""
    out = []
    for para in doc.strip().split("\n\n"):
        lines = [ln.strip() for ln in para.strip().splitlines()]
        if not lines or lines[0].startswith("python -m"):
            continue
        items: list[str] = []
        for ln in lines:
            if ln.startswith("- ") or not items:
                items.append(ln)
            else:
                items[-1] += " " + ln
        out += [*items, ""]
    return out


def existing_sections(page: str) -> dict[str, str]:
    """The current BENCHMARKS.md split by its ``## `` headings, in page order. Results/ is not committed, so a
    section whose results are not stored on this machine, and every hand-written one, is kept as it was."""
    sections: dict[str, list[str]] = {}
    current = None
    for line in page.splitlines():
        if line.startswith("## "):
            current = line[3:].strip()
            sections[current] = []
        if current is not None:
            sections[current].append(line)
    return {title: "\n".join(lines).rstrip() + "\n" for title, lines in sections.items()}


def render(quick: bool) -> str:
    info = machine()
    page = ROOT / "BENCHMARKS.md"
    kept = existing_sections(page.read_text()) if page.exists() else {}
    parts = [
        "# Benchmarks",
        "",
        f"Produced by `make bench` (`python -m benchmarks.run{' --quick' if quick else ''}`; each section names the "
        f"command and commit that measured it), rendered on {dt.date.today().isoformat()}: {info['cpus']} CPU cores, no GPU (CUDA available: {info['cuda']}), "
        f"Python {info['python']}, torch {info['torch']}, {info['platform']}. Every comparison in a table was "
        "measured in the same run on the same machine; the machine is shared, so timings carry noise "
        "(medians are quoted).",
        "",
    ]
    targets = ROOT / "benchmarks" / "targets.md"  # hand-written: which targets are missed, and what limits them
    targets_text = targets.read_text().strip() if targets.exists() else ""
    targets_title = targets_text.splitlines()[0].removeprefix("## ").strip() if targets_text else None
    order = [t for t in kept if t != targets_title]  # hand-written sections keep their place; targets.md goes last
    for i, (_, title) in enumerate(SECTIONS):
        if title not in order:
            before = [t for _, t in SECTIONS[:i] if t in order]
            order.insert(order.index(before[-1]) + 1 if before else 0, title)
    modules = {title: name for name, title in SECTIONS}
    for title in order:
        name = modules.get(title)
        path = RESULTS / f"{name}.json"
        if name is None or not path.exists():
            if title in kept:
                parts += [kept[title]]
            continue
        module = importlib.import_module(f"benchmarks.{name}")
        result = json.loads(path.read_text())
        parts += [f"## {title}", "", *describe(module.__doc__ or "")]
        commit = result.get("machine", {}).get("commit")
        at = f" (measured at commit `{commit}`)" if commit else ""
        command = result.get("command") or f"python -m benchmarks.{name}{' --quick' if result.get('quick') else ''}"
        parts += [f"Command: `{command}`{at}", ""]
        parts += [module.table(result), ""]
    if targets_text:
        parts += [targets_text, ""]
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller, faster versions of every benchmark")
    parser.add_argument("--only", nargs="+", choices=[n for n, _ in SECTIONS], help="run only these")
    parser.add_argument("--render", action="store_true", help="run nothing; re-write BENCHMARKS.md from the stored results")
    args = parser.parse_args(argv)
    for name, title in SECTIONS:
        if args.render or (args.only and name not in args.only):
            continue
        print(f"== {title}", flush=True)
        importlib.import_module(f"benchmarks.{name}").main(["--quick"] if args.quick else [])
    (ROOT / "BENCHMARKS.md").write_text(render(args.quick))
    print(f"wrote {ROOT / 'BENCHMARKS.md'}")


if __name__ == "__main__":
    sys.exit(main())
