"""Brokers for Celery tests: the machine's RabbitMQ and Redis, one fresh queue per use."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit

from celery.contrib.testing.worker import start_worker
from kombu.connection import Connection

from data_exhaust.celery_executor import CeleryExecutor, CeleryOptions
from data_exhaust.services import Services
from tests.conftest import SERVICE_PATIENCE, need, patiently

AMQP_URL = os.environ.get("EXHAUST_TEST_AMQP", "amqp://guest:guest@127.0.0.1:5672//")
REDIS_URL = os.environ.get("EXHAUST_TEST_REDIS", "redis://127.0.0.1:6379/0")


def _accepts(url: str) -> bool:
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 0), 3):
            return True
    except OSError:
        return False


def reachable(url: str, patience: float = 0.0) -> bool:
    """Whether ``url``'s broker accepts a connection, trying for up to ``patience`` seconds."""
    return patiently(lambda: _accepts(url) or None, patience) is not None


def need_broker(url: str) -> str:
    """``url`` if its broker is running (skip locally, fail in CI otherwise)."""
    need("RabbitMQ" if url.startswith("amqp") else "Redis", reachable(url, SERVICE_PATIENCE))
    return url


def unique_queue() -> str:
    """A queue no other test (or concurrent test run) publishes to."""
    return f"exhaust-test-{uuid.uuid4().hex[:12]}"


def delete_queue(url: str, queue: str) -> None:
    with Connection(url, connect_timeout=5) as connection:  # type: ignore[no-untyped-call]
        channel = connection.default_channel
        channel.queue_delete(queue)


@contextmanager
def celery_executor(
    services: Services, url: str = AMQP_URL, concurrency: int = 2, **options: Any
) -> Iterator[CeleryExecutor]:
    """A started :class:`CeleryExecutor` on a fresh queue, with a worker (threads pool)."""
    need_broker(url)
    settings: dict[str, Any] = dict(
        queue=unique_queue(), redispatch_seconds=1.0, stop_grace_seconds=1.0
    )
    settings.update(options)
    executor = CeleryExecutor(services, CeleryOptions(**settings), broker_url=url)
    try:
        with start_worker(
            executor.app,
            pool="threads",
            concurrency=concurrency,
            perform_ping_check=False,
            loglevel="WARNING",
            shutdown_timeout=30,
        ) as worker:
            # The worker's event loop notices a shutdown when its poll returns: keep it short.
            worker.hub.call_repeatedly(0.2, _tick)
            executor.start()
            yield executor
    finally:
        executor.shutdown()
        delete_queue(url, executor.options.queue)


def _tick() -> None:
    return None
