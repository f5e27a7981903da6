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

The conversation registry plugs in through :meth:`conversation_name` (the name registered in
the job's channel) and :meth:`non_consenting_devices` (devices whose consent is false).
"""

from __future__ import annotations

from typing import Any, ClassVar

from data_exhaust.datasets.base import Dataset, RunContext, SubmitContext
from data_exhaust.datasets.uci_common import (
    MAX_RANGE_DAYS,
    config_bounds_ms,
    local_day_bounds_ms,
    non_empty,
    utc_day,
    validate_conversation_config,
)
from data_exhaust.jobs import OutputFile
from data_exhaust.lake import drop_adjacent_duplicates

# MAX_RANGE_DAYS and local_day_bounds_ms moved to uci_common; re-exported for callers.
__all__ = [
    "HEADER",
    "MAX_RANGE_DAYS",
    "ROWS_PER_BATCH",
    "UciResponseExhaust",
    "local_day_bounds_ms",
]

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

#: Rows per Arrow batch: small enough to checkpoint (and honour a stop) often, large enough
#: that per-batch overhead is negligible.
ROWS_PER_BATCH = 20_000

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
    strftime(make_timestamp(ets * 1000), '%Y-%m-%dT%H:%M:%S.%gZ') AS "Timestamp",
    event_hash AS "{digest}"
FROM {events} AS e
ORDER BY ets, mid, event_hash
"""
DIGEST = "__event_hash"  # carried for the streaming dedup, then dropped
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
        """The shared UCI config rules (:func:`validate_conversation_config`): conversationId
        required, dates defaulting to the registered dates, else yesterday."""
        return validate_conversation_config(self.id, config, submit)

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
        rows = ctx.duckdb().sql(sql, params=params).to_arrow_reader(ROWS_PER_BATCH)
        batches = non_empty(drop_adjacent_duplicates(rows, "Message ID", DIGEST))
        stem = f"{conversation_id}_response_{ctx.today:%Y%m%d}"
        return [ctx.write(stem, HEADER, batches)]

    def query(self, ctx: RunContext, conversation_id: str) -> tuple[str, dict[str, Any]]:
        """The SQL producing exactly the output columns, and its parameters."""
        from_ms, to_ms = config_bounds_ms(ctx.job.config, ctx.settings.tz)
        # Duplicates (a retried batch) are dropped while streaming, not by DuckDB: see
        # drop_adjacent_duplicates; it keeps the export's memory flat.
        events = ctx.lake.events_sql(utc_day(from_ms), utc_day(to_ms - 1), _WHERE, dedup=False)
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
        return _SELECT.format(response=response, events=events, digest=DIGEST), params
