"""What the two UCI exhausts share: the ``datasetConfig`` rules and the event-time range.

Both ``uci-response-exhaust`` and ``uci-private-exhaust`` take
``{type, conversationId, startDate?, endDate?}`` (datasets.md §3, §4) and validate it the same
way, with the same messages, through :func:`validate_conversation_config`.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pyarrow as pa

from data_exhaust.datasets.base import ConfigError, NoDataFound, SubmitContext

#: Longest accepted ``startDate..endDate`` span, in days (both ends included).
MAX_RANGE_DAYS = 366

_KEYS = ("type", "conversationId", "startDate", "endDate")
_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
#: Conversation ids are UUIDs in UCI; anything path-like would break the file name and key.
_CONVERSATION_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def validate_conversation_config(
    dataset_id: str, config: object, submit: SubmitContext
) -> dict[str, Any]:
    """Check ``config`` (first failure wins) and fill in the default dates.

    A missing date defaults to the conversation's registered date, else to yesterday in
    ``EXHAUST_TIMEZONE``; a lone ``startDate`` after
    yesterday gives ``endDate = startDate``, a lone ``endDate`` before yesterday gives
    ``startDate = endDate``. The result is the normalised config the requestId is computed
    from, so equal submissions on the same day deduplicate.
    """
    if not isinstance(config, dict):
        raise ConfigError("datasetConfig must be an object")
    _check_keys(config)
    if config.get("type", dataset_id) != dataset_id:
        raise ConfigError(f"datasetConfig.type must be '{dataset_id}'")
    conversation_id = _conversation_id(config.get("conversationId"))
    start = _parse_date(config.get("startDate"), "startDate")
    end = _parse_date(config.get("endDate"), "endDate")
    start, end = registered_dates(submit, conversation_id, start, end)
    start, end = _default_dates(start, end, submit.today - timedelta(days=1))
    if end < start:
        raise ConfigError("endDate must not be before startDate")
    days = (end - start).days + 1
    if days > MAX_RANGE_DAYS:
        raise ConfigError(
            f"the date range must not exceed {MAX_RANGE_DAYS} days (got {days}: {start}..{end})"
        )
    return {
        "type": dataset_id,
        "conversationId": conversation_id,
        "startDate": start.isoformat(),
        "endDate": end.isoformat(),
    }


def config_bounds_ms(config: dict[str, Any], tz: ZoneInfo) -> tuple[int, int]:
    """The half-open epoch-ms bounds of a normalised config's ``startDate..endDate``."""
    start, end = date.fromisoformat(config["startDate"]), date.fromisoformat(config["endDate"])
    return local_day_bounds_ms(start, end, tz)


def local_day_bounds_ms(start: date, end: date, tz: ZoneInfo) -> tuple[int, int]:
    """Epoch-ms half-open bounds: local midnight of ``start`` to local midnight after ``end``.

    On a day whose midnight falls in a DST gap, zoneinfo's ``fold=0`` maps it to the first
    instant of that day, which is what a calendar day means.
    """
    first = datetime.combine(start, time(0), tzinfo=tz)
    after = datetime.combine(end + timedelta(days=1), time(0), tzinfo=tz)
    one_ms = timedelta(milliseconds=1)
    return (first - _EPOCH) // one_ms, (after - _EPOCH) // one_ms


def utc_day(epoch_ms: int) -> date:
    """The UTC calendar day (the lake's partition) of an epoch-ms instant."""
    return (_EPOCH + timedelta(milliseconds=epoch_ms)).date()


def non_empty(reader: pa.RecordBatchReader) -> pa.RecordBatchReader:
    """``reader`` again, or :class:`NoDataFound` if it yields no rows (decided on one batch).

    Datasets that do not count their rows first use it to find out; the response exhaust
    counts them (its slices) and keeps it only for rows that vanish between count and read.
    """
    batches: Iterator[pa.RecordBatch] = iter(reader)
    for batch in batches:
        if batch.num_rows:
            return pa.RecordBatchReader.from_batches(
                reader.schema, itertools.chain([batch], batches)
            )
    raise NoDataFound()


def registered_dates(
    submit: SubmitContext, conversation_id: str, start: date | None, end: date | None
) -> tuple[date | None, date | None]:
    """Missing dates taken from the conversation's registration in the caller's channel."""
    if (start is None or end is None) and submit.registry is not None:
        found = submit.registry.get_conversation(conversation_id, [submit.channel])
        if found is not None:
            start = start or found.start_date
            end = end or found.end_date
    return start, end


def _check_keys(config: dict[str, Any]) -> None:
    unknown = sorted(str(k) for k in config if k not in _KEYS)
    if unknown:
        raise ConfigError(
            f"unknown datasetConfig field(s): {', '.join(unknown)}; allowed: {', '.join(_KEYS)}"
        )


def _conversation_id(value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError("Request should have conversationId")
    value = value.strip()
    if not _CONVERSATION_ID.fullmatch(value):
        raise ConfigError(
            "conversationId must be at most 128 letters, digits, '_', '.' or '-',"
            " starting with a letter or digit"
        )
    return value


def _parse_date(value: object, name: str) -> date | None:
    if value is None:
        return None
    if not isinstance(value, str) or not _DATE.fullmatch(value):
        raise ConfigError(f"{name} must be YYYY-MM-DD")
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise ConfigError(f"{name} must be YYYY-MM-DD") from None


def _default_dates(start: date | None, end: date | None, yesterday: date) -> tuple[date, date]:
    """Fill a missing end of the range with yesterday, never crossing the given end."""
    if start is None:
        start = yesterday if end is None else min(end, yesterday)
    if end is None:
        end = max(start, yesterday)
    return start, end
