"""Runtime knobs: how many processes and threads a stage may use.

They are environment variables (``tamis run --jobs N --threads N`` sets them),
not DVC-tracked params: changing them re-runs no stage and changes no result,
only how fast it comes (compress's latency figures are measured with
``threads()`` threads). ``TAMIS_DASK_SCHEDULER`` moves the audit's fold fits
onto a Dask cluster, with the same results.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

from tamis.errors import StageError

JOBS_ENV = "TAMIS_JOBS"  # audit: folds fitted in parallel processes; -1 (default): one per CPU core (1 on CUDA)
THREADS_ENV = "TAMIS_THREADS"  # compress: CPU threads when timing the variants and the torch teacher (default 1)
DASK_ENV = "TAMIS_DASK_SCHEDULER"  # tcp://host:8786: the audit's fold fits run on that Dask cluster's workers


def _int(name: str, default: int) -> int:
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        return int(text)
    except ValueError:
        raise StageError(f"{name}={text!r} must be a whole number.") from None


def jobs() -> int:
    """Processes for parallel fits: ``TAMIS_JOBS``, -1 or unset for one per CPU core."""
    n = _int(JOBS_ENV, -1)
    if n == 0 or n < -1:
        raise StageError(f"{JOBS_ENV}={n} must be -1 (one per CPU core) or a positive number of processes.")
    return n if n > 0 else os.cpu_count() or 1


def threads() -> int:
    """CPU threads for timing: ``TAMIS_THREADS``, 1 when unset."""
    n = _int(THREADS_ENV, 1)
    if n < 1:
        raise StageError(f"{THREADS_ENV}={n} must be at least 1.")
    return n


@contextlib.contextmanager
def parallel(n_jobs: int) -> Iterator[int]:
    """Where a ``joblib.Parallel`` inside the block runs; yields the ``n_jobs`` to give it.

    On the Dask cluster ``TAMIS_DASK_SCHEDULER`` names (joblib's dask backend,
    every worker: -1), else on ``n_jobs`` local processes. The jobs are the
    same functions with the same seeds either way, so the results are too.
    """
    address = os.environ.get(DASK_ENV, "").strip()
    if not address:
        yield n_jobs
        return
    from distributed import Client
    from joblib import parallel_config

    try:
        client = Client(address, timeout=5)
    except (OSError, TimeoutError) as err:
        raise StageError(f"{DASK_ENV}={address}: no Dask scheduler answers there ({err}).") from None
    with client, parallel_config(backend="dask"):
        yield -1
