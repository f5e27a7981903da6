"""The garbage collector in long-running processes that churn through many objects."""

from __future__ import annotations

import gc


def freeze_heap() -> None:
    """Move every object alive now (modules, routes, models, settings: they live as long as the
    process) out of the cyclic garbage collector's reach, once start-up is done.

    Otherwise every full collection, which the objects of a few telemetry batches trigger,
    walks them all again: ~30 % of the ingest's CPU time (bench/README.md, ingest). Objects
    created later are collected as usual. For server and worker processes only: a library
    caller (a test) would keep its garbage of the moment forever.
    """
    gc.collect()
    gc.freeze()
