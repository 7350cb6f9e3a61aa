"""The stage contract: one-sentence errors, all-or-nothing outputs, a CLI entry.

Every stage writes its outputs through :class:`Outputs`, so a stage that fails
half-way leaves the previous good outputs exactly as they were, and raises
:class:`StageError` for bad input, which the CLI entry turns into one line on
stderr and exit code 2 (flows do not retry exit code 2: bad input stays bad).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tamis.config import load_params
from tamis.errors import BAD_INPUT_EXIT, StageError

__all__ = ["BAD_INPUT_EXIT", "Outputs", "StageError", "dumps", "input_file", "read_json", "stage_main"]


SCRATCH_PREFIX = ".tamis-out-"
JOURNAL = "journal.json"


class Outputs:
    """Stage outputs written to a scratch folder and moved into place together.

    ``path("models/teacher.pt")`` returns where to write now; on a clean exit of
    the ``with`` block every written path replaces its target (files and whole
    folders), and on an exception nothing in the workspace changes.

    All or nothing even when the process is killed while it moves them: a
    journal of the moves is written (and synced) first, and the moves are
    idempotent, so the next ``Outputs`` in the repository finishes the job
    (:func:`recover`). Replaced targets go into the scratch folder, which is
    removed last.
    """

    def __init__(self, root: str | Path = "."):
        self.root = Path(root).resolve()
        self._targets: dict[Path, Path] = {}
        self._scratch: Path | None = None

    def __enter__(self) -> Outputs:
        recover(self.root)
        # the pid in the name tells recover whether the stage that owns it still runs
        self._scratch = Path(tempfile.mkdtemp(prefix=f"{SCRATCH_PREFIX}{os.getpid()}-", dir=self.root))
        return self

    def path(self, rel: str | Path) -> Path:
        """Scratch path standing in for ``rel``; its parent folder exists."""
        assert self._scratch is not None, "use Outputs as a context manager"
        target = (self.root / rel).resolve()
        for old in target.parent.glob(f".{target.name}.old-*"):  # left by the earlier, unjournalled swap
            _remove(old)
        tmp = self._scratch / f"{len(self._targets)}-{target.name}"
        self._targets[target] = tmp
        return tmp

    def dir(self, rel: str | Path) -> Path:
        """Scratch folder standing in for folder ``rel`` (replaced as a whole)."""
        tmp = self.path(rel)
        tmp.mkdir(parents=True)
        return tmp

    def write_json(self, rel: str | Path, obj: Any) -> Path:
        tmp = self.path(rel)
        tmp.write_text(dumps(obj) + "\n")
        return tmp

    def __exit__(self, exc_type, exc, tb) -> None:
        assert self._scratch is not None
        try:
            if exc_type is None:
                missing = [str(t) for t, tmp in self._targets.items() if not tmp.exists()]
                if missing:
                    raise RuntimeError(f"stage declared outputs it never wrote: {missing}")
                moves = [
                    {"target": str(target), "scratch": str(tmp), "backup": str(self._scratch / f"old-{i}")}
                    for i, (target, tmp) in enumerate(self._targets.items())
                ]
                _write_synced(self._scratch / JOURNAL, json.dumps(moves))  # the commit point
                _complete(moves)
        finally:
            shutil.rmtree(self._scratch, ignore_errors=True)


def recover(root: str | Path) -> list[Path]:
    """Finish what a killed stage left: complete its journalled moves, remove its scratch folder.

    Scratch folders of a stage that still runs are left alone. Returns the
    targets whose moves were completed.
    """
    from tamis.processes import alive

    completed: list[Path] = []
    for scratch in sorted(Path(root).glob(f"{SCRATCH_PREFIX}*")):
        pid = scratch.name[len(SCRATCH_PREFIX) :].split("-", 1)[0]
        if pid.isdigit() and alive(int(pid)):
            continue
        journal = scratch / JOURNAL
        if journal.exists():
            moves = json.loads(journal.read_text())
            _complete(moves)
            completed += [Path(m["target"]) for m in moves]
            print(f"tamis: finished moving the outputs of a stage stopped half-way: {len(moves)} output(s)"
                  f" ({', '.join(Path(m['target']).name for m in moves)}).", file=sys.stderr)
        shutil.rmtree(scratch, ignore_errors=True)
    return completed


def _complete(moves: list[dict[str, str]]) -> None:
    """Move each scratch output onto its target, the old target aside first; a move already done is skipped."""
    for move in moves:
        target, scratch, backup = (Path(move[k]) for k in ("target", "scratch", "backup"))
        if not os.path.lexists(scratch):
            continue  # moved before the kill
        target.parent.mkdir(parents=True, exist_ok=True)
        if os.path.lexists(target):
            if os.path.lexists(backup):
                _remove(target)
            else:
                os.replace(target, backup)
        os.replace(scratch, target)


def _write_synced(path: Path, text: str) -> None:
    """Write ``path`` so that it is either absent or complete on disk, whatever happens next."""
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def _clean(obj: Any) -> Any:
    """JSON-safe copy: numpy scalars to Python, NaN/inf to None."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item) and getattr(obj, "ndim", 1) == 0:
        obj = obj.item()
    if hasattr(obj, "tolist"):
        return _clean(obj.tolist())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def dumps(obj: Any) -> str:
    return json.dumps(_clean(obj), indent=2, sort_keys=False)


def input_file(source: str, key: str, root: str | Path = ".") -> Path:
    """The file a path param (``data.train``, relative to the repository ``root``) names, or one sentence why not."""
    path = Path(root) / source
    if path.is_dir():
        raise StageError(f"{key}: '{source}' is a directory; expected a table file (.csv, .tsv, .txt, compressed or not, or .parquet).")
    if not path.is_file():
        raise StageError(f"{key}: file '{source}' does not exist.")
    return path


def read_json(path: str | Path) -> Any:
    path = Path(path)
    if not path.exists():
        raise StageError(f"{path} is missing: run the stage that writes it first (dvc repro).")
    return json.loads(path.read_text())


def restore_outputs(stage: str, root: str | Path = ".") -> list[str]:
    """Put back, from DVC's cache, the outputs dvc.lock recorded for ``stage`` that are missing.

    DVC deletes a stage's outputs before running it (they are not ``persist``,
    so that its run-cache works); a failed stage calls this so the last good
    outputs stay. An output the cache no longer holds stays missing. Returns
    the paths put back.
    """
    from dvc.repo import Repo  # on the failure path only: DVC is a heavy import

    from tamis.dvcfiles import lock_hashes

    root = Path(root).resolve()
    missing = {p: md5 for p, md5 in lock_hashes(stage, root, "outs").items() if md5 and not (root / p).exists()}
    if not missing:
        return []
    with Repo(str(root)) as repo:
        odb = repo.cache.local

        def files(md5: str) -> list[tuple[str, str]] | None:
            """(path inside the output, cache object) pairs; None when the cache lacks one."""
            pairs = [("", odb.oid_to_path(md5))]
            if md5.endswith(".dir"):
                listing = Path(pairs[0][1])
                entries = json.loads(listing.read_text()) if listing.exists() else [{"relpath": "", "md5": md5}]
                pairs = [(e["relpath"], odb.oid_to_path(e["md5"])) for e in entries]
            return pairs if all(os.path.exists(src) for _, src in pairs) else None

        found = {path: pairs for path, md5 in missing.items() if (pairs := files(md5)) is not None}
        with Outputs(root) as out:
            for path, pairs in found.items():
                folder = out.dir(path) if missing[path].endswith(".dir") else None
                for rel, src in pairs:
                    dest = folder / rel if folder is not None else out.path(path)
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(src, dest)
    return sorted(found)


def warning_prefix(stage: str) -> str:
    """How a stage's warning line starts; ``tamis run`` finds them by it and repeats them in its summary."""
    return f"tamis {stage}: warning: "


NOTE_PREFIX = "tamis: note: "


def note(message: str) -> None:
    """How a table was read where it was not plain (a separator, an encoding): one line on stderr; ``tamis run``
    logs it with its stage."""
    print(NOTE_PREFIX + message, file=sys.stderr)


def warn(stage: str, message: str) -> None:
    """Something left out or a demo setting on real data: one line on stderr, the run goes on."""
    print(warning_prefix(stage) + message, file=sys.stderr)


def stage_main(name: str, run: Callable[..., dict]) -> None:
    """``python -m stages.<name>``: load params.yaml, run, one clear line on bad input.

    Under ``dvc repro`` a failed or stopped stage puts its last good outputs
    back (:func:`restore_outputs`), whatever the failure.
    """
    try:
        params = load_params("params.yaml")
        run(params)
    except StageError as err:
        _restore_under_dvc(name)
        print(f"tamis {name}: {err}", file=sys.stderr)
        sys.exit(BAD_INPUT_EXIT)
    except BaseException:
        _restore_under_dvc(name)
        raise


def _restore_under_dvc(name: str) -> None:
    if os.environ.get("DVC_STAGE") != name:
        return  # run by hand: DVC deleted nothing
    try:
        restored = restore_outputs(name, os.environ.get("DVC_ROOT", "."))
    except Exception as err:  # the stage's own error is the one to report
        print(f"tamis: {name} could not put the last good outputs back from DVC's cache ({err}); "
              f"`dvc checkout {name}` does it.", file=sys.stderr)
        return
    if restored:
        print(f"tamis: {name} kept its last good outputs (put back from DVC's cache: {', '.join(restored)}).",
              file=sys.stderr)
