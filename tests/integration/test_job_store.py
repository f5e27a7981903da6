"""One contract for every job store: in memory, SQLite and Postgres."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from data_exhaust.db import make_engine
from data_exhaust.jobs import Job, OutputFile, Status
from data_exhaust.store import JobFilter, JobStore, SqlJobStore
from data_exhaust.testing import MemoryJobStore

T0 = datetime(2026, 11, 1, 10, 0, tzinfo=UTC)


@pytest.fixture(
    params=[
        "memory", "sqlite", "sqlite-without-returning",
        pytest.param("postgres", marks=pytest.mark.postgres),
    ]
)  # fmt: skip
def store(request: pytest.FixtureRequest) -> Iterator[JobStore]:
    """Every store; ``sqlite-without-returning`` is SQLite as before 3.35 (2021), which has no
    ``UPDATE … RETURNING``: SQLAlchemy then says so in the dialect, as set here."""
    if request.param == "memory":
        yield MemoryJobStore()
        return
    database = request.param.removesuffix("-without-returning")
    engine = make_engine(request.getfixturevalue(f"{database}_url"))
    if request.param.endswith("-without-returning"):
        engine.dialect.update_returning = False
    yield SqlJobStore(engine)
    engine.dispose()


def job(
    request_id: str,
    *,
    channel: str = "c1",
    tag: str = "t",
    minutes: int = 0,
    status: Status = Status.SUBMITTED,
    dataset: str = "d",
) -> Job:
    at = T0 + timedelta(minutes=minutes)
    return Job(
        tag=f"{tag}:{channel}",
        request_id=request_id,
        dataset=dataset,
        status=status,
        config={"conversationId": "x", "नाम": "मान"},
        channel=channel,
        requested_by="u",
        submitted_at=at,
        last_updated=at,
        run_after=at,
    )


def test_insert_get_round_trip_keeps_every_field(store: JobStore) -> None:
    original = job("A")
    original.files = [OutputFile("f.csv", "d/A/f.csv", 10, "ab" * 32, 3)]
    original.progress = {"rowsWritten": 3, "rowsTotal": None, "percent": None}
    assert store.insert(original)
    assert store.get("A") == original
    assert store.get("missing") is None


def test_insert_twice_is_refused(store: JobStore) -> None:
    assert store.insert(job("A"))
    assert not store.insert(job("A"))


def test_search_filters_pages_and_orders_newest_first(store: JobStore) -> None:
    for i in range(5):
        store.insert(job(f"J{i}", minutes=i, channel="c1" if i % 2 == 0 else "c2"))
    total, page = store.search(JobFilter(channels=["c1"]), limit=2)
    assert total == 3
    assert [j.request_id for j in page] == ["J4", "J2"]
    assert [j.request_id for j in store.search(JobFilter(channels=["c1"]), 2, 2)[1]] == ["J0"]
    assert [j.request_id for j in store.page(JobFilter(channels=["c1"]), 2)] == ["J4", "J2"]
    assert [j.request_id for j in store.page(JobFilter(channels=["c1"]), 2, 2)] == ["J0"]
    assert store.search(JobFilter(tags=["t:c2"]), 10)[0] == 2
    window = JobFilter(
        submitted_from=T0 + timedelta(minutes=1), submitted_before=T0 + timedelta(minutes=3)
    )
    assert {j.request_id for j in store.search(window, 10)[1]} == {"J1", "J2"}


def test_update_is_a_compare_and_set(store: JobStore) -> None:
    store.insert(job("A"))
    assert store.update("A", {"message": "x"}, if_status=[Status.PROCESSING]) is None
    updated = store.update("A", {"message": "x"}, if_status=[Status.SUBMITTED])
    assert updated is not None and updated.message == "x"
    assert store.update("A", {"message": "y"}, if_owner="someone") is None
    assert store.update("missing", {"message": "y"}) is None


def test_claim_takes_the_oldest_due_job_once(store: JobStore) -> None:
    store.insert(job("late", minutes=5))
    store.insert(job("early", minutes=1))
    now, lease = T0 + timedelta(minutes=2), T0 + timedelta(minutes=3)
    claimed = store.claim("w1", now, lease)
    assert claimed is not None and claimed.request_id == "early"
    assert claimed.status == Status.PROCESSING and claimed.lease_owner == "w1"
    assert store.claim("w2", now, lease) is None  # "late" is not due yet


def test_concurrent_claims_never_share_a_job(store: JobStore) -> None:
    for i in range(30):
        store.insert(job(f"J{i:02}", minutes=i % 3))
    claimed: list[str] = []
    lock = threading.Lock()

    def claimer(name: str) -> None:
        while got := store.claim(name, T0 + timedelta(hours=1), T0 + timedelta(hours=2)):
            with lock:
                claimed.append(got.request_id)

    threads = [threading.Thread(target=claimer, args=(f"w{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(claimed) == [f"J{i:02}" for i in range(30)]


def test_expired_leases_purgeable_and_release(store: JobStore) -> None:
    store.insert(job("run"))
    store.claim("w", T0, T0 + timedelta(seconds=30))
    assert store.expired_leases(T0 + timedelta(seconds=10)) == []
    assert [j.request_id for j in store.expired_leases(T0 + timedelta(minutes=1))] == ["run"]
    done = job("done", status=Status.SUCCESS)
    done.completed_at = T0
    store.insert(done)
    assert [j.request_id for j in store.purgeable(T0 + timedelta(days=1))] == ["done"]
    store.insert(job("wait", minutes=60, dataset="x"))
    assert store.release("other", T0) == 0
    assert store.release("x", T0) == 1
    assert store.get("wait").run_after == T0  # type: ignore[union-attr]


def test_claim_of_a_named_job_only_takes_it_when_waiting_and_due(store: JobStore) -> None:
    store.insert(job("first", minutes=0))
    store.insert(job("named", minutes=1))
    store.insert(job("later", minutes=9))
    now, lease = T0 + timedelta(minutes=2), T0 + timedelta(minutes=3)
    claimed = store.claim("w1", now, lease, "named")
    assert claimed is not None and claimed.request_id == "named" and claimed.lease_owner == "w1"
    assert store.claim("w2", now, lease, "named") is None  # a duplicate delivery: no-op
    assert store.claim("w2", now, lease, "later") is None  # not due yet
    assert store.claim("w2", now, lease, "missing") is None
    assert store.get("first").status == Status.SUBMITTED  # type: ignore[union-attr]


def test_reads_from_an_event_loop_equal_the_blocking_reads(store: JobStore) -> None:
    """``get_async`` and ``tag_page_async`` (the API's read and list, without a thread hop on
    SQLite and Postgres) give exactly the jobs ``get`` and ``page`` give, fresh at each call."""
    finished = job("done", minutes=3, status=Status.SUCCESS)
    finished.files = [OutputFile("f.csv", "d/done/f.csv", 10, "ab" * 32, 3)]
    finished.progress, finished.completed_at = {"rowsWritten": 3, "percent": 100.0}, T0
    for made in (job("A", minutes=1), job("B", minutes=2), finished, job("X", tag="other")):
        store.insert(made)

    async def reads() -> None:
        await store.open_loop_reads()
        try:
            for request_id in ("A", "done", "X"):
                assert await store.get_async(request_id) == store.get(request_id)
            assert await store.get_async("missing") is None
            page = await store.tag_page_async("t:c1", 2)
            assert page == store.page(JobFilter(tags=["t:c1"]), 2)
            assert [j.request_id for j in page] == ["done", "B"]
            store.update("B", {"message": "changed"})  # the next read sees the change
            assert (await store.get_async("B")).message == "changed"  # type: ignore[union-attr]
            assert (await store.tag_page_async("t:c1", 5))[1].message == "changed"
        finally:
            await store.close_loop_reads()
        assert await store.get_async("A") == store.get("A")  # closed: read in a thread

    asyncio.run(reads())


def test_the_loop_version_changes_with_every_write_and_only_then(store: JobStore) -> None:
    """``loop_version`` (what the polled routes check before reusing an answer): equal to an
    earlier value only if nothing was written in between. Postgres has none (None)."""
    store.insert(job("A"))

    async def versions() -> None:
        await store.open_loop_reads()
        try:
            before = store.loop_version()
            if isinstance(store, SqlJobStore) and store.engine.dialect.name == "postgresql":
                assert before is None
                return
            assert before is not None and store.loop_version() == before  # nothing written
            await store.get_async("A")
            await store.tag_page_async("t:c1", 5)
            assert store.loop_version() == before  # reads are not writes
            writes: list[Callable[[], object]] = [
                lambda: store.insert(job("B", minutes=1)),
                lambda: store.update("A", {"message": "changed"}),
                lambda: store.claim("w1", T0 + timedelta(hours=1), T0 + timedelta(hours=2)),
                lambda: store.update("B", {"run_after": T0 + timedelta(days=9)}),
                lambda: store.release(None, T0 + timedelta(hours=1)),
            ]
            seen = [before]
            for write in writes:
                assert write()
                seen.append(store.loop_version())
                assert seen[-1] != seen[-2]
            assert len(set(seen)) == len(seen)
        finally:
            await store.close_loop_reads()

    asyncio.run(versions())


def test_a_locked_sqlite_database_is_read_in_a_thread_while_the_loop_runs(
    sqlite_url: str,
) -> None:
    """When SQLite would make the loop's read wait (here another connection holds the whole
    database in exclusive locking mode), the read waits in a worker thread instead: other
    tasks of the loop go on meanwhile, and the read returns the job once the lock is gone."""
    engine = make_engine(sqlite_url)
    store = SqlJobStore(engine)
    store.insert(job("A"))
    expected = store.get("A")
    engine.dispose()  # no pooled connection keeps a shared lock on the database
    holder = sqlite3.connect(
        engine.url.database or "", isolation_level=None, check_same_thread=False
    )
    holder.execute("PRAGMA locking_mode = EXCLUSIVE")
    holder.execute("BEGIN EXCLUSIVE")
    ticks = threading.Event()

    def release_after_ticks() -> None:
        ticks.wait(30)
        holder.execute("COMMIT")
        holder.close()

    releaser = threading.Thread(target=release_after_ticks)

    async def read_while_locked() -> Job | None:
        await store.open_loop_reads()
        try:
            read = asyncio.create_task(store.get_async("A"))
            releaser.start()
            for _ in range(3):  # the loop is free: this task runs while the read waits
                await asyncio.sleep(0.01)
            assert not read.done()
            ticks.set()
            return await read
        finally:
            await store.close_loop_reads()

    try:
        assert asyncio.run(read_while_locked()) == expected
    finally:
        ticks.set()
        releaser.join()
        engine.dispose()


@pytest.mark.postgres
def test_a_read_after_postgres_dropped_the_loop_connections_still_answers(
    postgres_url: str,
) -> None:
    """A poll after the database closed the loop's connections (a restart, a failover, an
    idle timeout) answers with the job, read through the engine's pre-pinged pool, instead of
    failing with a 500; so do the polls after it, and a list."""
    engine = make_engine(postgres_url)
    store = SqlJobStore(engine, loop_connections=2)
    store.insert(job("A"))
    expected = store.get("A")

    async def reads() -> list[Job | None]:
        await store.open_loop_reads()
        try:
            found = [await store.get_async("A")]
            with psycopg.connect(postgres_url.replace("+psycopg", ""), autocommit=True) as admin:
                admin.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
            found += [await store.get_async("A") for _ in range(3)]
            found += await store.tag_page_async("t:c1", 1)
            return found
        finally:
            await store.close_loop_reads()

    try:
        assert asyncio.run(reads()) == [expected] * 5
    finally:
        engine.dispose()
