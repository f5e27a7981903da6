"""Items made by a thread of their own, a bounded number ahead of the thread that uses them.

Both long pipelines of the engine have two halves that can run at once on two cores, because
the expensive part of each releases the GIL: the teams import parses and checks the next CSV
block with pyarrow while the last batch is written to the database, and the response exhaust
runs the next slice's DuckDB query while pyarrow writes the last one's CSV. :func:`ahead` is
that hand-over: a bounded queue (memory stays flat), the producer's exception re-raised in the
consumer, and a close that stops the producer and waits for it, so nothing it uses (a file, a
DuckDB connection) is closed under it.
"""

from __future__ import annotations

import threading
from collections.abc import Generator, Iterator
from queue import Full, Queue
from typing import Any, TypeVar

T = TypeVar("T")


def ahead(items: Iterator[T], depth: int = 2, name: str = "prefetch") -> Generator[T, None, None]:
    """``items`` produced by a thread named ``name``, at most ``depth`` ahead of the caller.
    Closing the generator (``contextlib.closing``) stops the producer and joins it."""
    queue: Queue[tuple[bool, Any]] = Queue(depth)
    stop = threading.Event()
    producer = threading.Thread(target=_produce, args=(items, queue, stop), name=name, daemon=True)
    producer.start()
    try:
        while True:
            more, item = queue.get()
            if not more:
                if item is not None:
                    raise item
                return
            yield item
    finally:
        stop.set()
        producer.join()


def _produce(items: Iterator[Any], queue: Queue[tuple[bool, Any]], stop: threading.Event) -> None:
    def put(entry: tuple[bool, Any]) -> bool:
        while not stop.is_set():
            try:
                queue.put(entry, timeout=0.1)
                return True
            except Full:
                continue
        return False

    try:
        for item in items:
            if not put((True, item)):
                return
        put((False, None))
    except BaseException as exc:  # handed to the consumer, which raises it
        put((False, exc))
