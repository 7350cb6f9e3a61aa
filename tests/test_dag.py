"""dvc.yaml: every stage depends on the code it runs, so `dvc repro` re-runs it when that code changes."""

from __future__ import annotations

import ast
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def stage_imports(module: str, seen: set[str] | None = None) -> set[str]:
    """``stages/<module>.py`` and every ``stages`` module it imports, transitively."""
    seen = set() if seen is None else seen
    if module in seen:
        return seen
    seen.add(module)
    for node in ast.walk(ast.parse((ROOT / "stages" / f"{module}.py").read_text())):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module == "stages":
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("stages."):
            names = [node.module.split(".", 1)[1]]
        elif isinstance(node, ast.Import):
            names = [a.name.split(".", 1)[1] for a in node.names if a.name.startswith("stages.")]
        for name in names:
            if (ROOT / "stages" / f"{name}.py").exists():
                stage_imports(name, seen)
    return seen


def test_every_stage_depends_on_the_code_it_imports():
    dag = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    missing = {}
    for name, stage in dag.items():
        module = stage["cmd"].split("python -m stages.", 1)[1].split()[0]
        deps = {d if isinstance(d, str) else next(iter(d)) for d in stage.get("deps", [])}
        wanted = {f"stages/{m}.py" for m in stage_imports(module)}
        if wanted - deps:
            missing[name] = sorted(wanted - deps)
    assert not missing, f"dvc.yaml stages lack deps on the code they import: {missing}"


def test_stages_reading_the_trusted_calibration_split_depend_on_it():
    dag = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    for name in ("train", "calibrate", "distill", "compress"):
        assert "read_calib(" in (ROOT / "stages" / f"{name}.py").read_text(), name
        assert "data/corrected" in dag[name]["deps"], name
