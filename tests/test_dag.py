"""The shape of the pipeline: dvc.yaml agrees with the code it runs.

- every stage depends on the code it imports (``stages/<name>.py`` and the
  ``tamis`` library modules, transitively), so `dvc repro` re-runs it when that
  code changes;
- no stage module imports another stage module, and the library has no
  import cycles;
- every path dvc.yaml names is one of ``tamis/paths.py``'s, and every stage's
  ``params`` cover the keys its code reads (``params.<section>.<key>``).
"""

from __future__ import annotations

import ast
from pathlib import Path

import yaml

from tamis import paths

ROOT = Path(__file__).resolve().parents[1]
DAG = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
STAGE_MODULES = sorted(p.stem for p in (ROOT / "stages").glob("*.py") if p.stem != "__init__")
# keys no stage result depends on: where runs are logged (changing it must re-run nothing)
UNTRACKED_KEYS = ("tracking",)


def imports_of(path: Path) -> set[str]:
    """Dotted names of the ``stages`` / ``tamis`` modules ``path`` imports (``tamis.nets``, ``stages.calibrate``)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module in ("stages", "tamis"):
            found |= {f"{node.module}.{a.name}" for a in node.names}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith(("stages.", "tamis.")):
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith(("stages.", "tamis."))}
    return {name for name in found if (ROOT / f"{name.replace('.', '/')}.py").exists()}


def closure(module: str) -> set[str]:
    """``module`` and every module it imports, transitively."""
    seen, todo = set(), [module]
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo.extend(imports_of(ROOT / f"{name.replace('.', '/')}.py"))
    return seen


def stage_module(stage: dict) -> str:
    return stage["cmd"].split("python -m stages.", 1)[1].split()[0]


def names(entries: list) -> set[str]:
    return {e if isinstance(e, str) else next(iter(e)) for e in entries}


def test_every_stage_depends_on_the_code_it_imports():
    missing = {}
    for name, stage in DAG.items():
        wanted = {f"{m.replace('.', '/')}.py" for m in closure(f"stages.{stage_module(stage)}")}
        if wanted - names(stage.get("deps", [])):
            missing[name] = sorted(wanted - names(stage.get("deps", [])))
    assert not missing, f"dvc.yaml stages lack deps on the code they import: {missing}"


def test_no_stage_module_imports_another():
    leaning = {m: sorted(i for i in imports_of(ROOT / "stages" / f"{m}.py") if i.startswith("stages.")) for m in STAGE_MODULES}
    assert not {m: i for m, i in leaning.items() if i}, f"stage modules importing stage modules: {leaning}"


def test_the_library_has_no_import_cycles():
    for path in (ROOT / "tamis").glob("*.py"):
        module = f"tamis.{path.stem}"
        for other in imports_of(path):
            assert module not in closure(other), f"import cycle: {module} -> {other} -> ... -> {module}"


def test_the_library_takes_sections_not_the_whole_params():
    """A library function given all of Params could read any key; the coverage check below would miss it."""
    for path in (ROOT / "tamis").glob("*.py"):
        if path.stem in ("config", "tracking"):  # tracking logs exactly the keys dvc.yaml declares
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for arg in node.args.args + node.args.kwonlyargs:
                    assert ast.unparse(arg.annotation or ast.Constant(None)) != "Params", f"{path.name}: {node.name}({arg.arg}: Params)"


def paths_module_paths() -> set[str]:
    found = {str(v) for v in vars(paths).values() if isinstance(v, Path)}
    return found | {str(paths.metrics(stage)) for stage in DAG}


def test_dvc_yaml_paths_are_the_paths_module():
    known = paths_module_paths()
    for name, stage in DAG.items():
        data_paths = {p for p in names(stage.get("deps", [])) if not p.endswith(".py")}
        outs = set()
        for kind in ("outs", "metrics", "plots"):
            outs |= names(stage.get(kind, []))
        unknown = (data_paths | outs) - known
        assert not unknown, f"dvc.yaml stage {name} names paths tamis/paths.py does not: {sorted(unknown)}"
        others = {str(paths.metrics(o)) for o in DAG if o != name}
        assert not outs & others, f"dvc.yaml stage {name} writes another stage's metrics file"


def params_read(module_path: Path) -> set[str]:
    """``section.key`` (or ``section``) for every ``params.section.key`` read, through ``x = params.section`` aliases too."""
    tree = ast.parse(module_path.read_text())
    aliases: dict[str, str] = {}
    alias_values = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            chain = _chain(node.value)
            if chain and chain[0] == "params" and len(chain) == 2:
                aliases[node.targets[0].id] = chain[1]
                alias_values.add(node.value)  # the alias itself reads nothing; its uses do
    keys = set()
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and node.id in aliases and not isinstance(parents.get(node), ast.Attribute):
            if not isinstance(node.ctx, ast.Store):
                keys.add("validate" if aliases[node.id] == "validate_" else aliases[node.id])  # a section handed on whole
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute) or isinstance(parents.get(node), ast.Attribute) or node in alias_values:
            continue  # only the longest chain
        chain = _chain(node)
        if not chain:
            continue
        if chain[0] in aliases:
            chain = ["params", aliases[chain[0]], *chain[1:]]
        if chain[0] == "params" and len(chain) >= 2:
            if chain[1] in ("model_dump",):
                continue
            section = "validate" if chain[1] == "validate_" else chain[1]
            keys.add(".".join([section, *chain[2:3]]))
    return keys


def _chain(node: ast.AST) -> list[str] | None:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        return [node.id, *reversed(parts)]
    return None


def covered(key: str, declared: list[str]) -> bool:
    return any(key == d or key.startswith(f"{d}.") for d in declared) or key.split(".")[0] in UNTRACKED_KEYS


def test_each_stage_declares_the_params_it_reads():
    gaps = {}
    for name, stage in DAG.items():
        declared = [p if isinstance(p, str) else k for p in stage.get("params", []) for k in ([p] if isinstance(p, str) else p)]
        read = params_read(ROOT / "stages" / f"{stage_module(stage)}.py")
        missing = sorted(k for k in read if not covered(k, declared))
        if missing:
            gaps[name] = missing
    assert not gaps, f"dvc.yaml params miss keys the stage code reads: {gaps}"


def test_the_coverage_check_sees_reads_through_aliases(tmp_path):
    src = tmp_path / "m.py"
    src.write_text(
        "def run(params):\n    t = params.train\n    d = params.distill\n    f(params.resample, d)\n"
        "    return t.epochs, params.data.label, params.seed\n"
    )
    assert params_read(src) == {"train.epochs", "data.label", "seed", "resample", "distill"}
    assert not covered("train.epochs", ["train.hidden"]) and covered("train.epochs", ["train"])


def test_stages_reading_the_calibration_split_depend_on_both_of_its_forms():
    """Early stopping reads the trusted calib rows (data/corrected), calibration fits all or trusted ones."""
    for name in ("train", "calibrate", "distill", "compress"):
        code = (ROOT / "stages" / f"{name}.py").read_text()
        assert "read_calib(" in code or "calibration_rows(" in code, name
        assert {str(paths.CORRECTED), str(paths.VALIDATED)} <= set(DAG[name]["deps"]), name
