"""How many threads numpy's BLAS runs in an ingest process: one, set before numpy loads.

No numpy import here: the setting is read once, when numpy is first imported.
"""

from __future__ import annotations

import os


def one_blas_thread() -> None:
    """Single-threaded BLAS for this process and the workers it starts, unless the caller chose.

    Ingest's parallelism is its worker processes and its encoding thread. numpy's OpenBLAS threads
    spin-wait after each parallel matrix product, and ingest makes many small ones (scoring copies,
    filters): on 2 cores they burned as much CPU again as copy marking itself (``bench ingest``'s
    copies step, run with and without). OpenBLAS reads this once, when numpy is first imported, so
    commands call it before importing their machinery; spawned workers inherit it.
    """
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
