"""A pytest plugin proving that phone numbers never leak (issue: PII hygiene).

During the run it records every HTTP answer the tests receive (TestClient and httpx both send
through ``Client.send``) and every log line of this process into ``<basetemp>/pii-guard/``;
servers and CLIs started by acceptance tests write their logs under the basetemp too. At the
end it scans every text file under the basetemp for the test phones of ``tests.factories``
(with and without the country code) and fails the run, naming the file and line, on a hit.
Files a test deliberately writes with phones in them (CSV inputs, the private exhaust's
decrypted output) are excluded by name: ``*.csv``, ``*.zip`` and anything under ``inputs/``.
"""

from __future__ import annotations

import functools
import re
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO, cast

import httpx
import pytest
import structlog

from data_exhaust.logs import console_renderer
from tests.factories import PHONES

EXCLUDED_SUFFIXES = {".csv", ".zip", ".parquet", ".gz", ".db", ".jsonl", ".key"}
_lock = threading.Lock()


def phone_pattern() -> re.Pattern[str]:
    variants = {p for phone in PHONES for p in (phone, phone.lstrip("+"), phone[-10:])}
    return re.compile("|".join(re.escape(v) for v in sorted(variants, key=len, reverse=True)))


def _record(sink: Path, text: str) -> None:
    with _lock, sink.open("a", encoding="utf-8") as out:
        out.write(text + "\n")


def _wrap_send(cls: Any, sink: Path) -> None:
    original = cls.send

    @functools.wraps(original)
    def send(self: Any, request: Any, *args: Any, **kwargs: Any) -> Any:
        response = original(self, request, *args, **kwargs)
        if not kwargs.get("stream") and "download" not in str(request.url.path):
            response.read()
            _record(sink, f"{request.method} {request.url.path} -> {response.text}")
        return response

    cls.send = send


class _Tee:
    """Log lines go to the guard's file and to the (captured) stderr of the moment."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def write(self, text: str) -> int:
        _record(self.path, text.rstrip("\n"))
        return int(sys.stderr.write(text))

    def flush(self) -> None:
        sys.stderr.flush()


@pytest.fixture(scope="session", autouse=True)
def pii_recorder(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    folder = tmp_path_factory.getbasetemp() / "pii-guard"
    folder.mkdir(exist_ok=True)
    answers = folder / "answers.txt"
    structlog.configure(
        processors=[structlog.processors.add_log_level, console_renderer()],
        logger_factory=structlog.PrintLoggerFactory(cast(TextIO, _Tee(folder / "logs.txt"))),
    )
    clients: list[Any] = [httpx.Client]
    try:
        import httpx2

        clients.append(httpx2.Client)
    except ImportError:  # pragma: no cover - the dev group installs it
        pass
    originals = [(cls, cls.send) for cls in clients]
    for cls in clients:
        _wrap_send(cls, answers)
    yield folder
    for cls, send in originals:
        cls.send = send


def scan(root: Path) -> list[str]:
    pattern, hits = phone_pattern(), []
    for path in root.rglob("*"):
        excluded = path.suffix in EXCLUDED_SUFFIXES or "inputs" in path.relative_to(root).parts
        if excluded or not path.is_file():
            continue
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        for number, line in enumerate(text.splitlines(), 1):
            if pattern.search(line):
                hits.append(f"{path}:{number}: {line[:200]}")
    return hits


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    factory = getattr(session.config, "_tmp_path_factory", None)
    if factory is None:
        return
    hits = scan(factory.getbasetemp())
    if hits:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line(f"PII guard: {len(hits)} phone number(s) leaked:", red=True)
            for hit in hits[:20]:
                reporter.write_line("  " + hit, red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
