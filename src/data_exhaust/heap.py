"""The heap of long-running processes that churn through many objects: the garbage
collector, and freed memory given back to the system."""

from __future__ import annotations

import atexit
import ctypes
import gc
from collections.abc import Callable
from functools import cache

#: Allocations (net of frees) between two collections of the youngest generation: Python's
#: default is 700 (bench/README.md, ingest).
GEN0_THRESHOLD = 50_000


def freeze_heap() -> None:
    """Move every object alive now (modules, routes, models, settings: they live as long as the
    process) out of the cyclic garbage collector's reach, once start-up is done.

    Otherwise every full collection, which the objects of a few telemetry batches trigger,
    walks them all again: ~30 % of the ingest's CPU time (bench/README.md, ingest). Objects
    created later are collected as usual. For server and worker processes only: a library
    caller (a test) would keep its garbage of the moment forever. At exit they are handed
    back (``gc.unfreeze``): frozen, DuckDB's bindings found them never freed and printed a
    screen of "nanobind: leaked … instances!" at the end of every ``exhaust ingest``.

    The youngest generation is also collected every :data:`GEN0_THRESHOLD` allocations
    instead of 700. A telemetry batch of 1,000 events parses into ~50,000 dicts and lists
    that stay alive together (acyclic: reference counting frees them); at 700, parsing it
    ran ~70 collections that walked the batch again and again: in a frozen service process
    ``orjson.loads`` took 8.2 µs per event, 5.6 at 50,000 (and an ingest server 46-48 µs of
    CPU per event, 42-44). Cyclic garbage waits that much longer to be found: a few MB at
    most.
    """
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(GEN0_THRESHOLD, older, oldest)
    atexit.register(gc.unfreeze)


@cache
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim`` (looked up in the running program, at the first job, not at
    import: the CLI imports this module), or None on another C library (musl, macOS)."""
    try:
        trim: Callable[[int], int] = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None
    return trim


@cache
def _mallopt() -> Callable[[int, int], int] | None:
    """glibc's ``mallopt``, or None on another C library."""
    try:
        mallopt: Callable[[int, int], int] = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return None
    return mallopt


M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3  # glibc's malloc.h


def keep_freed_memory() -> None:
    """Let glibc keep and reuse the memory a bulk ingest frees, rather than hand it back to
    the system and fault it in again, zeroed, for the next chunk.

    Each chunk of ``exhaust ingest FILE`` (8 MB, ~6,000 lines, and its parsed events and
    rows) is allocated and freed again: the buffers over glibc's mmap threshold were mapped
    and unmapped per chunk, and the heap's top trimmed and grown again, 3.9 page faults per
    event. With buffers up to 32 MB taken from the heap, and up to 256 MB freed at its top
    kept: 250,000 events 6.19-6.35 → 5.36-5.61 s, system CPU 3.61 → 1.55-2.08 s, peak RSS
    160 → 173 MB
    (bench/README.md, ingest). For bulk-ingest processes only: a server's RSS would keep its
    peaks (the HTTP ingest measured no difference).
    """
    mallopt = _mallopt()
    if mallopt is not None:
        mallopt(M_MMAP_THRESHOLD, 32 << 20)
        mallopt(M_TRIM_THRESHOLD, 256 << 20)
        mallopt(M_TOP_PAD, 64 << 20)


def release_free_memory() -> None:
    """Give the memory a finished job freed back to the operating system.

    glibc keeps freed memory in per-thread arenas for reuse; after an export's batches (tens
    of MB of Arrow buffers, freed by whichever worker thread ran it) the worker's RSS stayed
    at its peak and crept up from job to job (bench/README.md, memory). ``malloc_trim(0)``
    returns it; it takes well under a millisecond when there is little to return.
    """
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def use_system_allocator() -> None:
    """Make pyarrow allocate with the C library's ``malloc`` (its default is mimalloc) in a
    process that runs jobs (:meth:`Services.make_executor` calls it), so that
    :func:`release_free_memory` can return an export's Arrow buffers too. Measured on the
    100 k-row export: mimalloc's retained pages made the server's peak creep from ~300 to
    ~325 MB over three exports; with malloc and the trim it stayed at ~295 MB
    (bench/README.md, memory)."""
    import pyarrow as pa

    pa.set_memory_pool(pa.system_memory_pool())
