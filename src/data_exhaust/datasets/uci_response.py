"""``uci-response-exhaust``: every answer a chatbot conversation received (datasets.md §3).

One row per ASSESS event of the job's channel and the requested conversation whose event time
falls in the inclusive calendar dates ``startDate..endDate`` of ``EXHAUST_TIMEZONE``, ordered
by ``ets`` then ``mid`` (then the event's dedup key, so events sharing both still come out in
the same order every run).

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

import duckdb
import pyarrow as pa

from data_exhaust.datasets.base import Dataset, NoDataFound, RunContext, SubmitContext
from data_exhaust.datasets.dedup import drop_adjacent_duplicates
from data_exhaust.datasets.slices import (
    Slice,
    count_slices,
    read_at_most,
    read_slices,
    slice_events,
)
from data_exhaust.datasets.uci_common import (
    MAX_RANGE_DAYS,
    config_bounds_ms,
    local_day_bounds_ms,
    non_empty,
    validate_conversation_config,
)
from data_exhaust.jobs import OutputFile

# MAX_RANGE_DAYS and local_day_bounds_ms moved to uci_common; re-exported for callers.
__all__ = [
    "HEADER",
    "MAX_RANGE_DAYS",
    "ROWS_PER_BATCH",
    "ROWS_PER_SLICE",
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
ROWS_PER_BATCH = 5_000
#: Rows one sorted query may hold (~20 MB of DuckDB sort for these ~1 KB rows): the export is read
#: as time slices of at most this many rows, so the worker's memory does not grow with it.
ROWS_PER_SLICE = 10_000

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
    event_key AS "{digest}"{extra}
FROM {events} AS e
{order}
"""
DIGEST = "__event_key"  # carried for the streaming dedup, then dropped (lake.EVENT_KEY_SQL)
ETS = "__ets"  # carried to sort an export read whole (slices.read_at_most), then dropped
#: ``_SELECT``'s ``extra`` and ``order`` for a slice sorted by DuckDB, and for rows read whole
#: and sorted in Arrow, in the same order.
SORTED = {"extra": "", "order": "ORDER BY ets, mid, event_key"}
UNSORTED = {"extra": f', ets AS "{ETS}"', "order": ""}
ARROW_ORDER = [(ETS, "ascending"), ("Message ID", "ascending"), (DIGEST, "ascending")]
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
    #: See :data:`ROWS_PER_SLICE`.
    rows_per_slice: ClassVar[int] = ROWS_PER_SLICE

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
        """Stream the rows into one file: read whole and sorted in Arrow when they fit in a
        slice, else slice by slice (:mod:`~data_exhaust.datasets.slices`); :class:`NoDataFound`
        when there are none."""
        conversation_id = ctx.job.config["conversationId"]
        ctx.checkpoint(0)
        connection = ctx.duckdb()
        bounds = self.bounds(ctx, conversation_id)
        select, params = self.select(ctx, conversation_id)
        stem = f"{conversation_id}_response_{ctx.today:%Y%m%d}"
        whole = Slice(bounds["from_ms"], bounds["to_ms"], 0)
        sql = select.format(events=slice_events(ctx.lake, _WHERE, whole), **UNSORTED)
        table = read_at_most(
            connection, sql, {**bounds, **params}, self.rows_per_slice, ROWS_PER_BATCH
        )
        if table is None:  # more than a slice: counted, then read slice by slice
            return [self.run_sliced(ctx, connection, (select, params), bounds, stem)]
        if not table.num_rows:
            raise NoDataFound()
        ctx.checkpoint(0, table.num_rows)
        rows = table.sort_by(ARROW_ORDER).drop_columns([ETS]).to_reader(ROWS_PER_BATCH)
        return [self.write(ctx, stem, rows, table.num_rows)]

    def run_sliced(
        self, ctx: RunContext, connection: duckdb.DuckDBPyConnection,
        query: tuple[str, dict[str, Any]], bounds: dict[str, Any], stem: str,
    ) -> OutputFile:  # fmt: skip
        """Count the rows per hour, then query them a slice at a time, each sorted by DuckDB
        while the CSV of the one before is written (``query``: :meth:`select`'s)."""
        select, params = query
        slices = count_slices(connection, ctx.lake, _WHERE, bounds, self.rows_per_slice)
        if not slices:
            raise NoDataFound()
        total = sum(part.rows for part in slices)
        ctx.checkpoint(0, total)

        def reader(part: Slice) -> pa.RecordBatchReader:
            sql = select.format(events=slice_events(ctx.lake, _WHERE, part), **SORTED)
            times = {"from_ms": part.from_ms, "to_ms": part.to_ms}
            return connection.sql(sql, params={**bounds, **params, **times}).to_arrow_reader(
                ROWS_PER_BATCH
            )

        with read_slices(slices, reader) as sliced:  # queried ahead while CSV is written
            return self.write(ctx, stem, sliced, total)

    @staticmethod
    def write(ctx: RunContext, stem: str, rows: pa.RecordBatchReader, total: int) -> OutputFile:
        """The file of ``rows`` (sorted) without retried duplicates."""
        kept = drop_adjacent_duplicates(rows, "Message ID", DIGEST)
        written = ctx.write(stem, HEADER, non_empty(kept), total)
        ctx.checkpoint(written.rows, written.rows)  # the total included dropped duplicates
        return written

    def bounds(self, ctx: RunContext, conversation_id: str) -> dict[str, Any]:
        """The parameters of :data:`_WHERE`: the job's channel, conversation and time range."""
        from_ms, to_ms = config_bounds_ms(ctx.job.config, ctx.settings.tz)
        return {
            "channel": ctx.job.channel,
            "conversation_id": conversation_id,
            "from_ms": from_ms,
            "to_ms": to_ms,
        }

    def select(self, ctx: RunContext, conversation_id: str) -> tuple[str, dict[str, Any]]:
        """The SQL producing exactly the output columns from ``{events}``, and the parameters
        it adds to :meth:`bounds` (the conversation's name, the non-consenting devices).

        Duplicates (a retried batch) are dropped while streaming, not by DuckDB (see
        :func:`drop_adjacent_duplicates`): that keeps the export's memory flat."""
        params: dict[str, Any] = {"conversation_name": self.conversation_name(ctx, conversation_id)}
        blocked = self.non_consenting_devices(ctx, conversation_id)
        if blocked:
            params["blocked_devices"] = blocked
        response = _RESPONSE_UNLESS_BLOCKED if blocked else _RESPONSE
        keep = {"events": "{events}", "extra": "{extra}", "order": "{order}"}
        return _SELECT.format(response=response, digest=DIGEST, **keep), params
