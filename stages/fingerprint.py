"""Fingerprint the input tables, so DVC re-runs ingest exactly when they change.

``data.train`` may be a file or ``sklearn:<name>``, and a DVC dependency must be
a path; this always-run stage writes what identifies the inputs (a file's path,
size and md5, or the scikit-learn release) to ``data/fingerprint.json`` and
rewrites it only when that changes. Unchanged inputs leave its hash alone, so
DVC skips ingest and everything after it. A file is re-hashed only when its
size or mtime moved (remembered in ``data/.fingerprint-stat.json``).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from tamis import paths
from tamis.config import Params
from tamis.contract import dumps, input_file, stage_main



def md5_of(path: Path) -> str:
    digest = hashlib.md5()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def identify(source: str, key: str, cache: dict[str, Any], root: str | Path = ".") -> dict[str, Any]:
    """What identifies one input's content; ``cache`` maps path -> last seen stat and md5."""
    if source.startswith("sklearn:"):  # the release's metadata, not an import of scikit-learn (~1 s of a no-op run)
        from importlib.metadata import version

        return {"source": source, "sklearn": version("scikit-learn")}
    path = input_file(source, key, root).resolve()
    stat = path.stat()
    seen = cache.get(str(path), {})
    if seen.get("size") == stat.st_size and seen.get("mtime_ns") == stat.st_mtime_ns:
        md5 = seen["md5"]
    else:
        md5 = md5_of(path)
    cache[str(path)] = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "md5": md5}
    return {"source": str(path), "size": stat.st_size, "md5": md5}


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def run(params: Params, root: str | Path = ".") -> dict[str, Any]:
    out, stat_cache = Path(root) / paths.FINGERPRINT, Path(root) / paths.FINGERPRINT_STAT_CACHE
    cache = json.loads(stat_cache.read_text()) if stat_cache.exists() else {}
    inputs = {"train": identify(params.data.train, "data.train", cache, root)}
    if params.data.test:
        inputs["test"] = identify(params.data.test, "data.test", cache, root)
    text = dumps(inputs) + "\n"
    if not out.exists() or out.read_text() != text:
        _write(out, text)
    _write(stat_cache, dumps(cache) + "\n")
    return inputs


if __name__ == "__main__":
    stage_main("fingerprint", run)
