"""``uci-response-exhaust``: every answer a chatbot conversation received (datasets.md §3).

One row per ASSESS event of the job's channel and the requested conversation whose event time
falls in the inclusive calendar dates ``startDate..endDate`` of ``EXHAUST_TIMEZONE``, ordered
by ``ets`` then ``mid`` (then the event hash, so events sharing both still come out in the same
order every run).

DuckDB does all the work: a single query over the lake yields exactly the output columns with
the types that make the cells look right (see :mod:`data_exhaust.output`):

* ``Question Duration`` is BIGINT — ``round()`` of a DOUBLE in DuckDB rounds half away from
  zero; a duration too large for BIGINT becomes NULL rather than failing the whole export;
* ``Question Score`` / ``Question Max Score`` stay DOUBLE, which the CSV writer prints as ``1``
  for 1.0 and ``0.5`` for 0.5 — what the event said, without an invented ``.0``;
* a value missing from the event is NULL (an empty cell), as is the name of an unregistered
  conversation and the response of a device that withdrew consent;
* ``Timestamp`` is ISO-8601 UTC with milliseconds, ``2022-06-21T14:45:56.892Z``.

The conversation registry (a later issue) plugs in through :meth:`conversation_name` and
:meth:`non_consenting_devices`; today they report "unregistered" and "everyone consents".
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, ClassVar
from zoneinfo import ZoneInfo

import pyarrow as pa

from data_exhaust.datasets.base import ConfigError, Dataset, NoDataFound, RunContext, SubmitContext
from data_exhaust.jobs import OutputFile

HEADER = (
    "Message ID",
    "Conversation ID",
    "Conversation Name",
    "Device ID",
    "Session ID",
    "Question Id",
    "Question Type",
    "Question Title",
    "Question Description",
    "Question Duration",
    "Question Score",
    "Question Max Score",
    "Question Options",
    "Question Response",
    "X Path",
    "Eof",
    "Timestamp",
)

#: Longest accepted ``startDate..endDate`` span, in days (both ends included).
MAX_RANGE_DAYS = 366
#: Rows per Arrow batch: small enough to checkpoint (and honour a stop) often, large enough
#: that per-batch overhead is negligible.
ROWS_PER_BATCH = 100_000

_KEYS = ("type", "conversationId", "startDate", "endDate")
_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
#: Conversation ids are UUIDs in UCI; anything path-like would break the file name and key.
_CONVERSATION_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

_SELECT = """
SELECT
    mid AS "Message ID",
    conversation_id AS "Conversation ID",
    $conversation_name::VARCHAR AS "Conversation Name",
    device_id AS "Device ID",
    session_id AS "Session ID",
    item_id AS "Question Id",
    item_type AS "Question Type",
    item_title AS "Question Title",
    item_desc AS "Question Description",
    TRY_CAST(round(duration) AS BIGINT) AS "Question Duration",
    score AS "Question Score",
    max_score AS "Question Max Score",
    options AS "Question Options",
    {response} AS "Question Response",
    xpath AS "X Path",
    eof AS "Eof",
    strftime(make_timestamp(ets * 1000), '%Y-%m-%dT%H:%M:%S.%gZ') AS "Timestamp"
FROM {events} AS e
ORDER BY ets, mid, event_hash
"""
_WHERE = (
    "eid = 'ASSESS' AND channel = $channel AND conversation_id = $conversation_id"
    " AND ets >= $from_ms AND ets < $to_ms"
)
_RESPONSE = "response"
_RESPONSE_UNLESS_BLOCKED = (
    "CASE WHEN device_id IN (SELECT unnest($blocked_devices::VARCHAR[]))"
    " THEN NULL ELSE response END"
)


class UciResponseExhaust(Dataset):
    """The chatbot response exhaust: one CSV row per answered question."""

    id: ClassVar[str] = "uci-response-exhaust"
    title: ClassVar[str] = "UCI conversation responses"

    # -- validation ---------------------------------------------------------------------------

    def validate(self, config: dict[str, Any], submit: SubmitContext) -> dict[str, Any]:
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
        if config.get("type", self.id) != self.id:
            raise ConfigError(f"datasetConfig.type must be '{self.id}'")
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
            "type": self.id,
            "conversationId": conversation_id,
            "startDate": start.isoformat(),
            "endDate": end.isoformat(),
        }

    # -- registry hooks -----------------------------------------------------------------------

    def conversation_name(self, ctx: RunContext, conversation_id: str) -> str | None:
        """The name registered for the conversation in the job's channel, else None (an empty
        cell): another channel's registration never leaks into this channel's file."""
        found = ctx.registry.get_conversation(conversation_id, [ctx.job.channel])
        return found.name if found else None

    def non_consenting_devices(self, ctx: RunContext, conversation_id: str) -> list[str]:
        """Devices whose consent is false: their ``Question Response`` is left empty.
        Unregistered devices consent by default (datasets.md §3)."""
        return list(ctx.registry.non_consenting())

    # -- run ----------------------------------------------------------------------------------

    def run(self, ctx: RunContext) -> list[OutputFile]:
        """Stream the query's rows into one file; :class:`NoDataFound` when there are none."""
        config = ctx.job.config
        conversation_id = config["conversationId"]
        ctx.checkpoint(0)
        sql, params = self.query(ctx, conversation_id)
        batches = _non_empty(ctx.duckdb().sql(sql, params=params).to_arrow_reader(ROWS_PER_BATCH))
        stem = f"{conversation_id}_response_{ctx.today:%Y%m%d}"
        return [ctx.write(stem, HEADER, batches)]

    def query(self, ctx: RunContext, conversation_id: str) -> tuple[str, dict[str, Any]]:
        """The SQL producing exactly the output columns, and its parameters."""
        config = ctx.job.config
        start, end = date.fromisoformat(config["startDate"]), date.fromisoformat(config["endDate"])
        from_ms, to_ms = local_day_bounds_ms(start, end, ctx.settings.tz)
        events = ctx.lake.events_sql(_utc_day(from_ms), _utc_day(to_ms - 1), _WHERE)
        params: dict[str, Any] = {
            "channel": ctx.job.channel,
            "conversation_id": conversation_id,
            "from_ms": from_ms,
            "to_ms": to_ms,
            "conversation_name": self.conversation_name(ctx, conversation_id),
        }
        blocked = self.non_consenting_devices(ctx, conversation_id)
        if blocked:
            params["blocked_devices"] = blocked
        response = _RESPONSE_UNLESS_BLOCKED if blocked else _RESPONSE
        return _SELECT.format(response=response, events=events), params


def local_day_bounds_ms(start: date, end: date, tz: ZoneInfo) -> tuple[int, int]:
    """Epoch-ms half-open bounds: local midnight of ``start`` to local midnight after ``end``.

    On a day whose midnight falls in a DST gap, zoneinfo's ``fold=0`` maps it to the first
    instant of that day, which is what a calendar day means.
    """
    first = datetime.combine(start, time(0), tzinfo=tz)
    after = datetime.combine(end + timedelta(days=1), time(0), tzinfo=tz)
    one_ms = timedelta(milliseconds=1)
    return (first - _EPOCH) // one_ms, (after - _EPOCH) // one_ms


def _utc_day(epoch_ms: int) -> date:
    return (_EPOCH + timedelta(milliseconds=epoch_ms)).date()


def _non_empty(reader: pa.RecordBatchReader) -> pa.RecordBatchReader:
    """``reader`` again, or :class:`NoDataFound` if it yields no rows (decided on one batch).

    Peeking at the first non-empty batch avoids a separate COUNT query over the lake, which
    would cost as much as the export itself; the job's rowsTotal stays unknown.
    """
    batches: Iterator[pa.RecordBatch] = iter(reader)
    for batch in batches:
        if batch.num_rows:
            return pa.RecordBatchReader.from_batches(
                reader.schema, itertools.chain([batch], batches)
            )
    raise NoDataFound()


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


def _default_dates(start: date | None, end: date | None, yesterday: date) -> tuple[date, date]:
    """Fill a missing end of the range with yesterday, never crossing the given end."""
    if start is None:
        start = yesterday if end is None else min(end, yesterday)
    if end is None:
        end = max(start, yesterday)
    return start, end
