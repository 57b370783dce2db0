"""A Dask client from a scheduler spec: ``local[:N]`` (a cluster on this machine) or a running scheduler's address.

Training (:func:`~elit_utils.ensemble.train_ensemble`) and prediction
(:meth:`~elit_utils.ensemble.Ensemble.predict_many`) take a ``client``: members and chunks of frames
become Dask tasks. Dask is installed with ELIT Lab but imported only when a client is made, so
that ``import elit_utils`` stays fast and works where Dask was left out.
``docs/clusters.md`` shows how to run the same code on SLURM, PBS and Kubernetes.

Example
-------
>>> parse_scheduler("local:2")
('local', 2)
>>> parse_scheduler("tcp://10.0.0.5:8786")
('address', 'tcp://10.0.0.5:8786')
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import platform
import re
from collections.abc import Iterator

from .errors import BadValueError

#: The most workers ``local:N`` starts on one machine.
MAX_LOCAL_WORKERS = 256
_ADDRESS = re.compile(r"(tcp|tls|ucx|inproc)://[^\s:/]+(:\d{1,5})?")


def parse_scheduler(spec: str) -> tuple[str, int | str]:
    """``("local", workers)`` for ``local`` or ``local:N``, ``("address", spec)`` for ``tcp://host:port``;
    a :class:`~elit_utils.errors.BadValueError` naming the spec and the accepted forms otherwise.

    ``local`` alone starts one worker per core.

    >>> parse_scheduler("local")[1] == (os.cpu_count() or 1)
    True
    >>> parse_scheduler("local:0")
    Traceback (most recent call last):
    ...
    elit_utils.errors.BadValueError: --scheduler 'local:0': the number of workers must be a whole number from 1 to 256, e.g. local:2.
    """
    text = str(spec).strip()
    if text == "local" or text.startswith("local:"):
        count = text.partition(":")[2] if ":" in text else str(os.cpu_count() or 1)
        if not count.isdigit() or not 1 <= int(count) <= MAX_LOCAL_WORKERS:
            raise BadValueError(f"--scheduler {spec!r}: the number of workers must be a whole number from 1 to {MAX_LOCAL_WORKERS}, e.g. local:2.")
        return "local", int(count)
    if _ADDRESS.fullmatch(text):
        return "address", text
    raise BadValueError(
        f"--scheduler {spec!r} is neither local[:N] (a cluster of N workers on this machine) nor a scheduler's address "
        "such as tcp://host:8786 (printed by dask scheduler, or by the cluster's own tools: docs/clusters.md)."
    )


def threads_per_worker(n_workers: int, n_cores: int | None = None) -> int:
    """Torch threads for each of ``n_workers`` on ``n_cores`` (default: this machine's) so that they do not oversubscribe the cores.

    >>> threads_per_worker(2, 16), threads_per_worker(4, 2)
    (8, 1)
    """
    return max(1, (n_cores or os.cpu_count() or 1) // n_workers)


@contextlib.contextmanager
def client_for(scheduler: str) -> Iterator[object]:
    """A ``dask.distributed.Client`` for ``scheduler`` (see :func:`parse_scheduler`), closed on exit with
    the local cluster it started (a remote scheduler and its workers are left running).

    A ``local:N`` cluster has N worker processes of :func:`threads_per_worker` threads each and no dashboard
    port of its own choosing (a free one). Refuses a missing Dask with the command that installs it, and an
    address where no scheduler answers, naming the address.

    >>> with client_for("local:1") as client:  # doctest: +SKIP
    ...     len(client.scheduler_info()["workers"])
    1
    """
    kind, target = parse_scheduler(scheduler)
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise BadValueError(f'--scheduler {scheduler!r} needs Dask: pip install "elit-lab[distributed]" (or pip install "dask[distributed]").') from None
    if kind == "local":
        with (
            LocalCluster(n_workers=target, threads_per_worker=threads_per_worker(target), processes=True, dashboard_address=":0") as cluster,
            Client(cluster) as client,
        ):
            yield client
        return
    try:
        client = Client(target, timeout="20s")
    except (OSError, TimeoutError) as error:
        raise BadValueError(f"--scheduler {target}: no Dask scheduler answered ({error}); start one (dask scheduler) or check the address.") from None
    with client:
        yield client


#: glibc's ``mallopt`` parameters (``malloc.h``).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
#: glibc's default mmap threshold, which ``MALLOC_TRIM_THRESHOLD_`` in the environment freezes.
_DEFAULT_MMAP_THRESHOLD_BYTES = 128 * 2**10
#: The largest mmap threshold glibc reaches by itself on 64-bit systems: blocks up to this size are reused.
_REUSED_BLOCK_BYTES = 32 * 2**20


@contextlib.contextmanager
def freed_memory_reused() -> Iterator[None]:
    """Run the block with glibc's malloc reusing freed blocks, as in a plain process; give the memory back after it.

    Dask's nanny starts its workers with ``MALLOC_TRIM_THRESHOLD_=65536`` (the default of
    ``distributed.nanny.pre-spawn-environ``), so that they give memory back to the system. That setting
    also freezes glibc's mmap threshold at 128 KiB: every block over it (one activation of a 16-filter
    U-Net, batch 8 at 128 px, is 8 MiB) is mapped afresh, page-faulted in and unmapped when freed.
    Measured on a 2-core AMD EPYC (20 iterations of one member, in a process started with that variable):
    16x the page faults, and training 1.3x slower with one torch thread, 2x with two (docs/clusters.md). Inside this block glibc keeps blocks up to 32 MiB
    for reuse; on leaving it, the thresholds are set back and the freed memory is returned
    (``malloc_trim``). Without ``MALLOC_TRIM_THRESHOLD_`` in the environment, or without glibc, it does nothing.

    >>> with freed_memory_reused():
    ...     blocks = [bytearray(2**20) for _ in range(4)]
    """
    trim_bytes = os.environ.get("MALLOC_TRIM_THRESHOLD_", "")
    if not trim_bytes.isdigit() or platform.libc_ver()[0] != "glibc":
        yield
        return
    libc = ctypes.CDLL("libc.so.6")
    libc.mallopt(_M_MMAP_THRESHOLD, _REUSED_BLOCK_BYTES)
    libc.mallopt(_M_TRIM_THRESHOLD, 2 * _REUSED_BLOCK_BYTES)  # glibc's own ratio when it raises the threshold
    try:
        yield
    finally:
        libc.mallopt(_M_TRIM_THRESHOLD, int(trim_bytes))
        libc.mallopt(_M_MMAP_THRESHOLD, int(os.environ.get("MALLOC_MMAP_THRESHOLD_", _DEFAULT_MMAP_THRESHOLD_BYTES)))
        libc.malloc_trim(0)
