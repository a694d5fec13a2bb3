"""bot.store on SQLite (always) and PostgreSQL (when BOT_TEST_DATABASE_URL is set).

Each PostgreSQL test runs in its own freshly created schema (dropped afterwards), so several test
processes can share one database.
"""

from __future__ import annotations

import asyncio
import os
from datetime import UTC, datetime, timedelta, timezone

import asyncpg
import pytest
from sqlalchemy import func, select, text

from bot.store import (
    SCHEMA_VERSION,
    Store,
    Watch,
    _pg_dsn,
    open_test_store,
    schema_version,
    utcnow,
    watch_dedupe_key,
)

PG_URL = os.environ.get("BOT_TEST_DATABASE_URL")
needs_pg = pytest.mark.skipif(not PG_URL, reason="BOT_TEST_DATABASE_URL is not set")



@pytest.fixture
async def store(db_url):
    s = await Store.open(db_url)
    try:
        yield s
    finally:
        await s.close()


def make_watch(key: str = "T1:sync-1:*:-", **over) -> Watch:
    now = utcnow()
    values = dict(
        dedupe_key=key,
        team_id="T1",
        channel_id="C1",
        sync_id="sync-1",
        sync_name="Salesforce to Snowflake",
        requested_by="U1",
        deadline_at=now + timedelta(hours=1),
        request_id="req-1",
        next_poll_at=now,
    )
    values.update(over)
    return Watch(**values)


# -- watches -----------------------------------------------------------------------------------


async def test_round_trip_with_aware_datetimes(store):
    plus2 = timezone(timedelta(hours=2))
    created = datetime(2025, 3, 1, 14, 0, 0, 123456, tzinfo=plus2)
    w = make_watch(
        watch_dedupe_key("T1", "sync-1", "sch-1", "ex-1"),
        schema_id="sch-1",
        schema_label="accounts",
        execution_id="ex-1",
        root_ts="1700000000.000100",
        also_requested=["U2", "U1", "U2", "U3"],  # normalised: no dupes, not requested_by
        created_at=created,
        deadline_at=created + timedelta(hours=1),
        next_poll_at=created + timedelta(seconds=5),
        source_ts="1700000000.000001",
    )
    assert w.dedupe_key == "T1:sync-1:sch-1:ex-1"
    got, created_new = await store.create_watch(w)
    assert created_new
    assert got.id == w.id and got.also_requested == ["U2", "U3"]

    back = await store.get_watch(w.id)
    assert back == got
    assert back.created_at == created and back.created_at.tzinfo is not None
    assert back.created_at.utcoffset() == timedelta(0)
    assert back.created_at.hour == 12  # converted to UTC
    assert back.finished_at is None and back.lease_until is None
    assert back.api_trouble is False and back.final_posted is False
    assert back.cancel_state == "pending" and back.source_ts == "1700000000.000001"

    later = datetime(2025, 3, 1, 12, 30, tzinfo=UTC)
    await store.update_watch(
        w.id,
        last_state="running",
        cancel_state="sent",
        api_trouble=True,
        next_poll_at=later,
        root_ts="1700000000.000200",
    )
    back = await store.get_watch(w.id)
    assert (back.last_state, back.cancel_state, back.api_trouble) == ("running", "sent", True)
    assert back.next_poll_at == later and back.root_ts == "1700000000.000200"
    assert back.schema_label == "accounts"  # untouched columns stay

    assert await store.get_watch("nope") is None
    with pytest.raises(TypeError):
        await store.update_watch(w.id, no_such_column=1)
    with pytest.raises(TypeError):
        await store.update_watch(w.id, id="other")
    with pytest.raises(ValueError, match="naive"):
        await store.update_watch(w.id, next_poll_at=datetime(2025, 1, 1))
    with pytest.raises(ValueError, match="naive"):
        await store.create_watch(make_watch("other", deadline_at=datetime(2025, 1, 1)))


async def test_dedupe_under_concurrent_creates(db_url):
    a, b = await Store.open(db_url), await Store.open(db_url)  # two "processes"
    try:
        candidates = [make_watch("T1:sync-1:sch-1:-", request_id=f"r{i}") for i in range(20)]
        results = await asyncio.gather(
            *[(a if i % 2 else b).create_watch(w) for i, w in enumerate(candidates)]
        )
        assert sum(created for _, created in results) == 1
        winner = next(w for w, created in results if created)
        assert {w.id for w, _ in results} == {winner.id}
        assert (await a.find_unfinished("T1:sync-1:sch-1:-")).id == winner.id
        assert len(await a.unfinished_watches()) == 1
    finally:
        await a.close()
        await b.close()


async def test_a_whole_execution_watch_covers_its_schemas(db_url):
    whole_key = watch_dedupe_key("T1", "sync-1", None, "ex-1")
    schema_key = watch_dedupe_key("T1", "sync-1", "accounts", "ex-1")
    a, b = await Store.open(db_url), await Store.open(db_url)
    try:
        # racing: one whole-execution request and many schema requests, through two replicas
        results = await asyncio.gather(
            a.create_watch(make_watch(whole_key)),
            *[
                (a if i % 2 else b).create_watch(make_watch(schema_key), covered_by=whole_key)
                for i in range(10)
            ],
        )
        created = [w for w, c in results if c]
        assert sorted(w.dedupe_key for w in created) in ([whole_key], sorted([whole_key, schema_key]))
        # once the whole execution is being cancelled, a schema request joins it
        later, made = await b.create_watch(make_watch(schema_key + "x"), covered_by=whole_key)
        assert not made and later.dedupe_key == whole_key
        # the covering watch finished: schema requests create their own again
        await a.finish_watch(later.id, "canceled")
        fresh, made = await b.create_watch(make_watch(schema_key + "y"), covered_by=whole_key)
        assert made and fresh.dedupe_key == schema_key + "y"
    finally:
        await a.close()
        await b.close()


async def test_finished_watch_does_not_block_a_new_one(store):
    first, created = await store.create_watch(make_watch())
    assert created
    assert await store.finish_watch(first.id, "canceled")
    assert await store.find_unfinished(first.dedupe_key) is None
    second, created = await store.create_watch(make_watch())
    assert created and second.id != first.id
    assert (await store.find_unfinished(first.dedupe_key)).id == second.id
    again, created = await store.create_watch(make_watch())
    assert not created and again.id == second.id
    assert [w.id for w in await store.unfinished_watches()] == [second.id]


async def test_add_requester_concurrently(store):
    w, _ = await store.create_watch(make_watch(requested_by="U1"))
    users = ["U2", "U3", "U4", "U5", "U1"] * 4
    results = await asyncio.gather(*[store.add_requester(w.id, u) for u in users])
    assert sum(results) == 4
    back = await store.get_watch(w.id)
    assert sorted(back.also_requested) == ["U2", "U3", "U4", "U5"]
    assert len(back.also_requested) == 4
    assert not await store.add_requester(w.id, "U1")
    assert not await store.add_requester(w.id, "U3")
    assert await store.add_requester(w.id, "U9")
    assert (await store.get_watch(w.id)).also_requested[-1] == "U9"
    assert not await store.add_requester("missing", "U2")


async def test_finish_watch_once(store):
    w, _ = await store.create_watch(make_watch())
    outcomes = [f"outcome-{i}" for i in range(10)]
    results = await asyncio.gather(*[store.finish_watch(w.id, o) for o in outcomes])
    assert sum(results) == 1
    back = await store.get_watch(w.id)
    assert back.outcome == outcomes[results.index(True)]
    assert back.finished_at is not None and back.finished_at.tzinfo is not None
    assert not back.final_posted
    assert not await store.finish_watch(w.id, "timeout")
    await store.mark_final_posted(w.id)
    assert (await store.get_watch(w.id)).final_posted
    assert await store.unfinished_watches() == []
    assert not await store.finish_watch("missing", "canceled")


# -- leases ------------------------------------------------------------------------------------


async def test_claim_renew_release(store):
    t0 = utcnow()
    ws = []
    for i in range(3):  # one sync each (watches of one sync go to one replica: see the next test)
        w, _ = await store.create_watch(
            make_watch(f"k{i}", sync_id=f"sync-{i}", next_poll_at=t0 + timedelta(seconds=3 - i))
        )
        ws.append(w)
    done, _ = await store.create_watch(make_watch("done", sync_id="sync-8"))
    await store.finish_watch(done.id, "canceled")
    await store.mark_final_posted(done.id)
    unposted, _ = await store.create_watch(
        make_watch("unposted", sync_id="sync-9", next_poll_at=t0 + timedelta(seconds=10))
    )
    await store.finish_watch(unposted.id, "completed")  # terminal reply still owed: claimable

    got = await store.claim_due("A", lease_s=30, now=t0)
    assert [w.id for w in got] == [ws[2].id, ws[1].id, ws[0].id, unposted.id]  # soonest first
    assert all(w.lease_owner == "A" and w.lease_until == t0 + timedelta(seconds=30) for w in got)
    assert done.id not in {w.id for w in got}

    assert await store.claim_due("B", lease_s=30, now=t0 + timedelta(seconds=5)) == []
    # the holder may claim again (and gets its own back)
    assert len(await store.claim_due("A", lease_s=30, now=t0 + timedelta(seconds=5), limit=2)) == 2

    # A dies: after the lease runs out B takes everything over, and A can no longer renew
    later = t0 + timedelta(seconds=36)
    taken = await store.claim_due("B", lease_s=30, now=later)
    assert {w.id for w in taken} == {ws[0].id, ws[1].id, ws[2].id, unposted.id}
    assert await store.renew("A", [w.id for w in ws], lease_s=30, now=later) == []
    ids = [ws[0].id, ws[1].id, "missing"]
    assert await store.renew("B", ids, lease_s=60, now=later) == ids[:2]
    assert (await store.get_watch(ws[0].id)).lease_until == later + timedelta(seconds=60)

    # release some, then the rest
    await store.release("B", [ws[0].id])
    assert (await store.get_watch(ws[0].id)).lease_owner is None
    assert [w.id for w in await store.claim_due("A", lease_s=30, now=later)] == [ws[0].id]
    await store.release("B")
    assert all(w.lease_owner != "B" for w in await store.unfinished_watches())
    # release of somebody else's lease does nothing
    await store.release("B", [ws[0].id])
    assert (await store.get_watch(ws[0].id)).lease_owner == "A"
    assert len(await store.claim_due("C", lease_s=30, now=later, limit=10)) == 3


async def test_one_replica_per_sync(store):
    t0 = utcnow()
    a1, _ = await store.create_watch(
        make_watch("a1", sync_id="S", lease_owner="A", lease_until=t0 + timedelta(seconds=30))
    )
    free = [(await store.create_watch(make_watch(f"f{i}", sync_id="S")))[0] for i in range(2)]
    other, _ = await store.create_watch(make_watch("o", sync_id="T"))
    # B may not split sync S with A; it gets the other sync
    assert [w.id for w in await store.claim_due("B", lease_s=30, now=t0)] == [other.id]
    assert await store.sync_holders("S", now=t0) == {"A"}
    assert await store.sync_holders("T", now=t0) == {"B"}
    # A, which polls S, gets the rest of S (and its own again)
    assert {w.id for w in await store.claim_due("A", lease_s=30, now=t0)} == {a1.id, *(w.id for w in free)}
    # A dies: once its leases run out S is B's, whole
    later = t0 + timedelta(seconds=31)
    assert await store.sync_holders("S", now=later) == {"B"} - {"B"}
    assert {w.id for w in await store.claim_due("B", lease_s=30, now=later)} == {
        a1.id,
        other.id,
        *(w.id for w in free),
    }
    # a finished watch whose terminal reply is posted holds nothing
    await store.finish_watch(a1.id, "canceled")
    await store.mark_final_posted(a1.id)
    await store.release("B", keep=[free[0].id])
    assert await store.sync_holders("S", now=later) == {"B"}
    assert (await store.get_watch(free[1].id)).lease_owner is None
    assert (await store.get_watch(other.id)).lease_owner is None


async def test_claims_race_without_splitting_a_sync(db_url):
    """Two replicas claiming at the same moment never both take free watches of one sync."""
    a, b = await Store.open(db_url), await Store.open(db_url)
    try:
        for sync in range(5):
            for i in range(4):
                await a.create_watch(make_watch(f"s{sync}:{i}", sync_id=f"sync-{sync}"))
        held: dict[str, set[str]] = {"A": set(), "B": set()}

        async def claim(store: Store, owner: str) -> None:
            got = await store.claim_due(owner, lease_s=60, limit=3, exclude=sorted(held[owner]))
            held[owner].update(w.id for w in got)

        for _ in range(5):
            await asyncio.gather(claim(a, "A"), claim(b, "B"))
        assert held["A"] and held["B"]  # both got work
        by_sync: dict[str, set[str]] = {}
        for w in await a.unfinished_watches():
            by_sync.setdefault(w.sync_id, set()).add(w.lease_owner)
        assert all(len(owners) == 1 and None not in owners for owners in by_sync.values()), by_sync
    finally:
        await a.close()
        await b.close()


async def test_two_owners_never_share_a_watch(db_url):
    a, b = await Store.open(db_url), await Store.open(db_url)
    try:
        all_ids = set()
        for i in range(50):
            w, _ = await a.create_watch(make_watch(f"w{i}"))
            all_ids.add(w.id)

        async def claimer(store: Store, owner: str) -> list[str]:
            got: list[str] = []
            for _ in range(12):
                got += [w.id for w in await store.claim_due(owner, lease_s=60, limit=3)]
                await asyncio.sleep(0)
            return got

        got_a, got_b = await asyncio.gather(claimer(a, "A"), claimer(b, "B"))
        # repeated claims by the holder return its own watches again; never the other's
        assert not set(got_a) & set(got_b)
        assert set(got_a) | set(got_b) <= all_ids
        held = {w.id: w.lease_owner for w in await a.unfinished_watches()}
        assert {i for i, o in held.items() if o == "A"} == set(got_a)
        assert {i for i, o in held.items() if o == "B"} == set(got_b)
    finally:
        await a.close()
        await b.close()


# -- audit, markers ----------------------------------------------------------------------------


async def test_audit_records_newest_first(store):
    before = utcnow()
    await store.audit(
        action="cancel_schema",
        outcome="sent",
        team_id="T1",
        user_id="U1",
        channel_id="C1",
        sync_id="s1",
        schema_id="sch",
        execution_id="e1",
        detail="via button",
        request_id="r1",
        watch_id="w1",
    )
    await store.audit(action="cancel_sync", outcome="denied", team_id="T1", user_id="U2", channel_id=None)
    records = await store.audit_records()
    assert [r["action"] for r in records] == ["cancel_sync", "cancel_schema"]
    assert records[0]["outcome"] == "denied" and records[0]["channel_id"] is None
    older = records[1]
    assert (older["user_id"], older["sync_id"], older["schema_id"], older["execution_id"]) == (
        "U1",
        "s1",
        "sch",
        "e1",
    )
    assert (older["detail"], older["request_id"], older["watch_id"]) == ("via button", "r1", "w1")
    assert older["at"].tzinfo is not None and older["at"] >= before - timedelta(seconds=1)
    assert [r["action"] for r in await store.audit_records(limit=1)] == ["cancel_sync"]


async def test_markers_once_only(db_url):
    a, b = await Store.open(db_url), await Store.open(db_url)
    try:
        results = await asyncio.gather(
            *[(a if i % 2 else b).claim_marker("event", "evt-1", value=f"v{i}") for i in range(20)]
        )
        assert sum(results) == 1
        assert await a.get_marker("event", "evt-1") == f"v{results.index(True)}"
        assert await a.claim_marker("alert", "evt-1")  # another kind is independent
        assert await a.get_marker("alert", "evt-1") is None
        assert await a.get_marker("event", "unknown") is None
        await a.set_marker("alert", "evt-1", "1700.0001")
        await b.set_marker("alert", "evt-1", "1700.0002")
        assert await a.get_marker("alert", "evt-1") == "1700.0002"
        await b.set_marker("card", "ex-9", "x")  # set without a claim inserts
        assert await a.get_marker("card", "ex-9") == "x"
        assert not await a.claim_marker("card", "ex-9")
    finally:
        await a.close()
        await b.close()


# -- life cycle --------------------------------------------------------------------------------


async def test_ping(store, tmp_path):
    assert await store.ping()
    missing = await Store.open(f"sqlite:///{tmp_path / 'no' / 'such' / 'dir' / 'x.db'}", migrate=False)
    try:
        assert not await missing.ping()
    finally:
        await missing.close()
    # a port nobody listens on: refused at once (no PostgreSQL server needed)
    down = await Store.open("postgresql://nobody:secret@127.0.0.1:1/none", migrate=False)
    try:
        assert down.dialect == "postgresql"
        assert not await down.ping()
    finally:
        await down.close()
    await store.close()
    assert not await store.ping()


async def test_ready_notices_a_missing_database_file(tmp_path):
    path = tmp_path / "bot.db"
    store = await Store.open(f"sqlite:///{path}")
    try:
        assert await store.ready()
        path.rename(tmp_path / "moved.db")
        assert not await store.ready()  # pooled connections would still answer SELECT 1
        assert not path.exists()  # and the check did not create an empty file
        (tmp_path / "moved.db").rename(path)
        assert await store.ready()
    finally:
        await store.close()
    assert not await store.ready()


@needs_pg
async def test_ready_on_postgresql_and_down():
    async with open_test_store(PG_URL) as s:
        assert await s.ready()
    down = await Store.open("postgresql://nobody:secret@127.0.0.1:1/none", migrate=False)
    try:
        assert not await down.ready()
    finally:
        await down.close()


async def test_version_1_database_is_migrated(db_url):
    """A database created by the first release (no sync index) is brought to the current schema."""
    first = await Store.open(db_url)
    try:
        w, _ = await first.create_watch(make_watch())
        async with first._write() as conn:
            await conn.execute(text("DROP INDEX watches_sync_id"))
            await conn.execute(schema_version.update().values(version=1))  # a fresh db has one row
        assert await first.schema_version() == 1
    finally:
        await first.close()
    upgraded = await Store.open(db_url)
    try:
        assert await upgraded.schema_version() == SCHEMA_VERSION == 2
        assert (await upgraded.get_watch(w.id)).id == w.id

        def index_names(conn):
            from sqlalchemy import inspect

            return {i["name"] for i in inspect(conn).get_indexes("watches")}

        async with upgraded._read() as conn:
            assert "watches_sync_id" in await conn.run_sync(index_names)
    finally:
        await upgraded.close()


async def test_schema_creation_is_idempotent(db_url):
    # several replicas starting at once, then once more later
    stores = await asyncio.gather(*[Store.open(db_url) for _ in range(3)])
    try:
        w, _ = await stores[0].create_watch(make_watch())
        await stores[1].audit(action="x", outcome="ok", team_id=None, user_id=None, channel_id=None)
    finally:
        for s in stores:
            await s.close()
    again = await Store.open(db_url)
    try:
        assert (await again.get_watch(w.id)).id == w.id
        assert len(await again.audit_records()) == 1
        assert await again.schema_version() == SCHEMA_VERSION
        async with again._read() as conn:
            assert (await conn.execute(select(func.count()).select_from(schema_version))).scalar() == 1
    finally:
        await again.close()


async def test_open_test_store_sqlite_path(tmp_path):
    async with open_test_store(tmp_path / "t.db") as s:
        assert s.dialect == "sqlite"
        assert await s.ping()
        async with s._read() as conn:
            assert (await conn.exec_driver_sql("PRAGMA journal_mode")).scalar() == "wal"
            assert (await conn.exec_driver_sql("PRAGMA foreign_keys")).scalar() == 1
            assert (await conn.exec_driver_sql("PRAGMA busy_timeout")).scalar() > 0


async def test_in_memory_sqlite():
    async with open_test_store("sqlite://") as s:
        results = await asyncio.gather(*[s.create_watch(make_watch()) for _ in range(5)])
        assert sum(c for _, c in results) == 1
        assert await s.ping()


@needs_pg
async def test_isolated_pg_schema_is_dropped():
    async with open_test_store(PG_URL) as s:
        assert s.dialect == "postgresql"
        async with s._read() as conn:
            name = (await conn.execute(text("SELECT current_schema()"))).scalar()
        assert name.startswith("bot_test_")
        await s.create_watch(make_watch())
    conn = await asyncpg.connect(_pg_dsn(PG_URL)[0])
    try:
        assert await conn.fetchval("SELECT count(*) FROM pg_namespace WHERE nspname = $1", name) == 0
    finally:
        await conn.close()


async def test_sqlite_write_lock_lets_urgent_writes_go_first():
    from bot.store import _WriteLock

    lock, order = _WriteLock(), []
    await lock.acquire()

    async def writer(name: str, urgent: bool) -> None:
        await lock.acquire(urgent=urgent)
        order.append(name)
        lock.release()

    tasks = [asyncio.create_task(writer(n, u)) for n, u in [("a", False), ("b", False), ("final", True)]]
    doomed = asyncio.create_task(writer("cancelled", True))
    await asyncio.sleep(0)
    doomed.cancel()
    await asyncio.sleep(0)
    lock.release()
    await asyncio.gather(*tasks)
    assert order == ["final", "a", "b"] and not lock.locked()
    # a waiter cancelled right after being handed the lock passes it on
    await lock.acquire()
    late = asyncio.create_task(writer("late", False))
    after = asyncio.create_task(writer("after", False))
    await asyncio.sleep(0)
    lock.release()  # handed to `late` ...
    late.cancel()  # ... which is cancelled before it runs
    await asyncio.gather(late, return_exceptions=True)
    await after
    assert order[-1] == "after" and not lock.locked()
