"""Structured logging: JSON lines when not on a terminal (or EXHAUST_LOG_JSON=1), readable
key=value lines on a terminal. Log calls pass fields, never message strings with data in them."""

from __future__ import annotations

import logging
import os
import sys

import structlog


def console_renderer() -> structlog.dev.ConsoleRenderer:
    """Readable lines, with plain tracebacks: rich ones print every frame's local variables,
    which would put secrets (settings, sealed values, phones) into the log."""
    return structlog.dev.ConsoleRenderer(exception_formatter=structlog.dev.plain_traceback)


_configured_level = "INFO"


def configured_level() -> str:
    """The level :func:`configure` last set (for processes this one starts to log alike)."""
    return _configured_level


def configure(level: str = "INFO", json: bool | None = None) -> None:
    global _configured_level
    _configured_level = level
    if json is None:
        env = os.environ.get("EXHAUST_LOG_JSON")
        json = env == "1" if env is not None else not sys.stderr.isatty()
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer() if json else console_renderer()
    )
    processors: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if json:  # the console renderer formats exceptions itself
        processors.append(structlog.processors.format_exc_info)
    structlog.configure(
        processors=[*processors, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level)),
        # one write per line (print() writes the line and its newline apart): the processes of
        # `exhaust serve --processes N` share one stderr, and their lines must not interleave
        logger_factory=structlog.WriteLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )
