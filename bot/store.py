"""Durable state: watches with leases, the audit trail and once-only markers.

One code path (SQLAlchemy 2 Core, async) for both engines:

* SQLite (default, one replica): aiosqlite, WAL journal, `busy_timeout`, foreign keys on. Every write
  runs inside `BEGIN IMMEDIATE` (so a transaction never has to upgrade a read lock and fail with
  SQLITE_BUSY), and writes from one process are queued on an asyncio lock instead of spinning in the
  busy handler. Times are stored as fixed-width ISO-8601 UTC strings, which sort and compare
  correctly as text.
* PostgreSQL (several replicas): asyncpg. The operator's URL is handed to asyncpg as a libpq-style
  DSN, so `sslmode=...`, `options=-csearch_path%3Dname` and other standard query parameters work.
  Leases are claimed with `SELECT ... FOR UPDATE SKIP LOCKED` inside one transaction.

Schema: created on `Store.open` and recorded in `schema_version` (one row per applied version).
A fresh database gets the current tables in one go and is stamped with `SCHEMA_VERSION`; an older
database runs the steps in `MIGRATIONS` (add one per schema change: `MIGRATIONS[n]` upgrades n-1 -> n
and receives a synchronous `Connection`). Start-up is serialised: `BEGIN IMMEDIATE` on SQLite, a
transaction-scoped advisory lock (per schema) on PostgreSQL, so replicas starting together are safe.

Test isolation helpers (`isolated_pg_url`, `open_test_store`) live at the bottom.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import sqlite3
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime, timedelta
from os import PathLike
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import aiosqlite
import asyncpg
from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Connection,
    DateTime,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    and_,
    event,
    func,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.dialects import postgresql as pg_dialect
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.types import TypeDecorator

from bot.settings import async_database_url

log = logging.getLogger(__name__)

SCHEMA_VERSION = 2
# version -> step upgrading a database from version-1 to version (runs inside the start-up lock).
# Filled in below, after the tables.
MIGRATIONS: dict[int, Callable[[Connection], None]] = {}

_PG_LOCK_CLASS = 0x706F6C79  # "poly": first key of the start-up advisory lock (second: the schema)
_PG_CLAIM_LOCK_CLASS = 0x636C6D73  # "clms": claims are serialised per schema (see Store.claim_due)
_PG_WATCH_LOCK_CLASS = 0x77617463  # "watc": creations of watches covering one execution (create_watch)
_SQLITE_BUSY_TIMEOUT_MS = 10_000
_POOL_SIZE = 5
_POOL_OVERFLOW = 5
_PG_CONNECT_TIMEOUT_S = 10.0


class StoreError(Exception):
    """The store cannot do what was asked (text never contains credentials)."""


def utcnow() -> datetime:
    return datetime.now(UTC)


def _new_id() -> str:
    return uuid.uuid4().hex


def watch_dedupe_key(team_id: str, sync_id: str, schema_id: str | None, execution_id: str | None) -> str:
    """`T0001:<sync_id>:<schema_id or *>:<execution_id or ->`: one watch per thing being cancelled."""
    return f"{team_id}:{sync_id}:{schema_id or '*'}:{execution_id or '-'}"


# --------------------------------------------------------------------------------------------
# The watch record


@dataclass(kw_only=True)
class Watch:
    dedupe_key: str
    team_id: str
    channel_id: str
    sync_id: str
    sync_name: str
    requested_by: str
    deadline_at: datetime
    request_id: str
    id: str = field(default_factory=_new_id)
    root_ts: str | None = None
    schema_id: str | None = None
    schema_label: str | None = None
    execution_id: str | None = None
    also_requested: list[str] = field(default_factory=list)
    idempotency_key: str = field(default_factory=lambda: str(uuid.uuid4()))
    cancel_state: str = "pending"  # "pending" | "sent" | "failed"
    last_state: str | None = None
    api_trouble: bool = False
    created_at: datetime = field(default_factory=utcnow)
    finished_at: datetime | None = None
    outcome: str | None = None
    final_posted: bool = False
    lease_owner: str | None = None
    lease_until: datetime | None = None
    next_poll_at: datetime = field(default_factory=utcnow)
    source_ts: str | None = None


_WATCH_FIELDS = tuple(f.name for f in fields(Watch))
_UPDATABLE = frozenset(_WATCH_FIELDS) - {"id"}


# --------------------------------------------------------------------------------------------
# Column types


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes on both engines. Naive datetimes are refused (they are always a bug here).

    PostgreSQL: `timestamptz`. SQLite: fixed-width text `YYYY-MM-DDTHH:MM:SS.ffffff+00:00`, so that
    `<`/`>`/ORDER BY on the column agree with time order.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def load_dialect_impl(self, dialect):  # type: ignore[no-untyped-def]
        if dialect.name == "sqlite":
            return dialect.type_descriptor(String(32))
        return dialect.type_descriptor(DateTime(timezone=True))

    def process_bind_param(self, value, dialect):  # type: ignore[no-untyped-def]
        if value is None:
            return None
        if not isinstance(value, datetime):
            raise TypeError(f"expected a datetime, got {type(value).__name__}")
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError("naive datetime given to the store; use an aware UTC datetime")
        value = value.astimezone(UTC)
        if dialect.name == "sqlite":
            return value.strftime("%Y-%m-%dT%H:%M:%S.%f+00:00")
        return value

    def process_result_value(self, value, dialect):  # type: ignore[no-untyped-def]
        if value is None:
            return None
        if isinstance(value, str):
            value = datetime.fromisoformat(value)
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


class UserList(TypeDecorator[list]):
    """A list of Slack user ids stored as JSON text."""

    impl = Text
    cache_ok = True

    def process_bind_param(self, value, dialect):  # type: ignore[no-untyped-def]
        return json.dumps(list(value or []))

    def process_result_value(self, value, dialect):  # type: ignore[no-untyped-def]
        return list(json.loads(value)) if value else []


# --------------------------------------------------------------------------------------------
# Tables (the current schema; MIGRATIONS bring older databases here)

metadata = MetaData()

schema_version = Table(
    "schema_version",
    metadata,
    Column("version", Integer, primary_key=True, autoincrement=False),
    Column("applied_at", UTCDateTime, nullable=False),
)

watches = Table(
    "watches",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("dedupe_key", Text, nullable=False),
    Column("team_id", Text, nullable=False),
    Column("channel_id", Text, nullable=False),
    Column("root_ts", Text),
    Column("sync_id", Text, nullable=False),
    Column("sync_name", Text, nullable=False),
    Column("schema_id", Text),
    Column("schema_label", Text),
    Column("execution_id", Text),
    Column("requested_by", Text, nullable=False),
    Column("also_requested", UserList, nullable=False),
    Column("idempotency_key", Text, nullable=False),
    Column("cancel_state", String(16), nullable=False),
    Column("last_state", Text),
    Column("api_trouble", Boolean, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("deadline_at", UTCDateTime, nullable=False),
    Column("finished_at", UTCDateTime),
    Column("outcome", Text),
    Column("final_posted", Boolean, nullable=False),
    Column("lease_owner", Text),
    Column("lease_until", UTCDateTime),
    Column("next_poll_at", UTCDateTime, nullable=False),
    Column("request_id", Text, nullable=False),
    Column("source_ts", Text),
)
# At most one unfinished watch per dedupe key; finished ones do not block a new one.
Index(
    "watches_unfinished_dedupe",
    watches.c.dedupe_key,
    unique=True,
    sqlite_where=watches.c.finished_at.is_(None),
    postgresql_where=watches.c.finished_at.is_(None),
)
Index("watches_next_poll", watches.c.next_poll_at)
Index("watches_lease_owner", watches.c.lease_owner)
# v2: claims look up the other holders of a sync (one replica polls a sync).
_watches_sync_index = Index("watches_sync_id", watches.c.sync_id)

audit_log = Table(
    "audit_log",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("at", UTCDateTime, nullable=False),
    Column("action", Text, nullable=False),
    Column("outcome", Text, nullable=False),
    Column("team_id", Text),
    Column("user_id", Text),
    Column("channel_id", Text),
    Column("sync_id", Text),
    Column("schema_id", Text),
    Column("execution_id", Text),
    Column("detail", Text),
    Column("request_id", Text),
    Column("watch_id", String(64)),
)
Index("audit_log_at", audit_log.c.at)

markers = Table(
    "markers",
    metadata,
    Column("kind", Text, primary_key=True),
    Column("key", Text, primary_key=True),
    Column("value", Text),
    Column("created_at", UTCDateTime, nullable=False),
)



def _v2_sync_index(conn: Connection) -> None:
    _watches_sync_index.create(conn, checkfirst=True)


MIGRATIONS[2] = _v2_sync_index

# --------------------------------------------------------------------------------------------
# URLs


def _pg_dsn(url: str) -> tuple[str, float]:
    """The operator's PostgreSQL URL as an asyncpg (libpq-style) DSN, plus the connect timeout."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    timeout = _PG_CONNECT_TIMEOUT_S
    kept = []
    for key, value in query:
        if key == "connect_timeout":  # libpq name; asyncpg takes it as an argument
            try:
                timeout = float(value) if float(value) > 0 else timeout
            except ValueError:
                pass
            continue
        kept.append((key, value))
    dsn = urlunsplit(("postgresql", parts.netloc, parts.path, urlencode(kept, quote_via=quote), ""))
    return dsn, timeout


def _dialect_of(url: str) -> str:
    scheme = url.split(":", 1)[0].split("+", 1)[0].lower()
    if scheme == "sqlite":
        return "sqlite"
    if scheme in ("postgresql", "postgres"):
        return "postgresql"
    raise StoreError("BOT_DATABASE_URL: must be a sqlite:///path or postgresql://... URL")


def _with_search_path(url: str, schema: str) -> str:
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != "options"]
    query.append(("options", f"-csearch_path={schema}"))
    return urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(query, quote_via=quote), ""))


# --------------------------------------------------------------------------------------------
# The store


def _set_wal(cur) -> None:  # type: ignore[no-untyped-def]
    """Switch a SQLite file to WAL. On a new file that other connections are creating at the same
    moment (replicas starting together), the switch can report "database is locked" at once
    instead of waiting for busy_timeout, so retry briefly. Runs in aiosqlite's worker thread,
    not on the event loop."""
    for attempt in range(50):
        try:
            cur.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or attempt == 49:
                raise
            time.sleep(0.05)


class Store:
    """Use `await Store.open(url)`; all methods are safe to call concurrently."""

    def __init__(
        self, engine: AsyncEngine, dialect: str, *, memory: bool = False, sqlite_path: str | None = None
    ) -> None:
        self._engine = engine
        self._dialect = dialect
        self._closed = False
        self._sqlite_path = sqlite_path  # file databases only (readiness opens it afresh)
        sqlite = dialect == "sqlite"
        self._write_lock: _WriteLock | None = _WriteLock() if sqlite else None
        # An in-memory SQLite database has a single shared connection: serialise everything.
        self._read_lock: _WriteLock | None = self._write_lock if memory else None
        mod = sqlite_dialect if sqlite else pg_dialect
        self._insert = mod.insert

    # -- life cycle --------------------------------------------------------------------------

    @classmethod
    async def open(cls, url: str, *, echo: bool = False, migrate: bool = True) -> Store:
        """Connect and create/migrate the schema. `migrate=False` only builds the engine (for checks)."""
        dialect = _dialect_of(url)
        if dialect == "sqlite":
            store = cls._sqlite(url, echo=echo)
        else:
            store = cls._postgresql(url, echo=echo)
        if migrate:
            try:
                await store._migrate()
            except BaseException:
                await store.close()
                raise
        return store

    @classmethod
    def _sqlite(cls, url: str, *, echo: bool) -> Store:
        aurl = async_database_url(url)
        parsed = make_url(aurl)
        memory = parsed.database in (None, "", ":memory:") or parsed.query.get("mode") == "memory"
        kwargs: dict[str, Any] = {"echo": echo}
        if not memory:
            kwargs.update(pool_size=_POOL_SIZE, max_overflow=_POOL_OVERFLOW, pool_timeout=30)
        engine = create_async_engine(aurl, **kwargs)

        @event.listens_for(engine.sync_engine, "connect")
        def _on_connect(dbapi_conn, _record):  # type: ignore[no-untyped-def]
            dbapi_conn.isolation_level = None  # we emit BEGIN ourselves (see _on_begin)
            cur = dbapi_conn.cursor()
            cur.execute(f"PRAGMA busy_timeout = {_SQLITE_BUSY_TIMEOUT_MS}")
            cur.execute("PRAGMA foreign_keys = ON")
            if not memory:
                _set_wal(cur)
            cur.execute("PRAGMA synchronous = FULL")
            cur.close()

        @event.listens_for(engine.sync_engine, "begin")
        def _on_begin(conn):  # type: ignore[no-untyped-def]
            immediate = conn.get_execution_options().get("bot_write", False)
            conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

        return cls(engine, "sqlite", memory=memory, sqlite_path=None if memory else parsed.database)

    @classmethod
    def _postgresql(cls, url: str, *, echo: bool) -> Store:
        dsn, timeout = _pg_dsn(url)
        has_app_name = any(k == "application_name" for k, _ in parse_qsl(urlsplit(dsn).query))
        server_settings = None if has_app_name else {"application_name": "polytomic-bot"}

        async def creator() -> asyncpg.Connection:
            return await asyncpg.connect(dsn, timeout=timeout, server_settings=server_settings)

        engine = create_async_engine(
            "postgresql+asyncpg://",
            async_creator=creator,
            echo=echo,
            pool_size=_POOL_SIZE,
            max_overflow=_POOL_OVERFLOW,
            pool_timeout=30,
            pool_pre_ping=True,
            pool_recycle=1800,
        )
        return cls(engine, "postgresql")

    async def close(self) -> None:
        if not self._closed:
            self._closed = True
            await self._engine.dispose()

    async def __aenter__(self) -> Store:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def dialect(self) -> str:
        return self._dialect

    async def ping(self, *, within_s: float = 5.0) -> bool:
        """True when the database answers `SELECT 1` within `within_s` seconds; never raises."""
        if self._closed:
            return False
        try:
            async with asyncio.timeout(within_s), self._read() as conn:
                await conn.execute(text("SELECT 1"))
            return True
        except Exception as exc:
            log.debug("database ping failed: %s", type(exc).__name__)
            return False

    async def ready(self, *, within_s: float = 2.0) -> bool:
        """Readiness: the bot's own database answers within `within_s` seconds; never raises.

        Stricter than `ping`: the schema must be readable. On SQLite a fresh connection opens the
        file read-write without creating it, so a deleted, moved, unreadable or corrupted file is
        noticed (pooled connections would go on using the old file). On PostgreSQL a pooled
        connection is used (checked on checkout), so a server that went away is noticed too.
        """
        if self._closed:
            return False
        probe = select(func.max(schema_version.c.version))
        try:
            async with asyncio.timeout(within_s):
                if self._sqlite_path is not None:
                    uri = "file:" + quote(self._sqlite_path) + "?mode=rw"
                    async with aiosqlite.connect(uri, uri=True, timeout=within_s) as db:
                        async with db.execute("SELECT max(version) FROM schema_version") as cur:
                            row = await cur.fetchone()
                    return bool(row and row[0])
                async with self._read() as conn:
                    return bool((await conn.execute(probe)).scalar())
        except Exception as exc:
            log.debug("database readiness check failed: %s", type(exc).__name__)
            return False

    # -- transactions -------------------------------------------------------------------------

    @asynccontextmanager
    async def _write(self, *, urgent: bool = False) -> AsyncIterator[AsyncConnection]:
        """A write transaction (BEGIN IMMEDIATE on SQLite), committed on normal exit. `urgent`: on
        SQLite, go ahead of queued writes (records of what was just posted to Slack)."""
        if self._closed:
            raise StoreError("the store is closed")
        lock = self._write_lock
        if lock is not None:
            await lock.acquire(urgent=urgent)
        try:
            async with self._engine.connect() as conn:
                await conn.execution_options(bot_write=True)
                async with conn.begin():
                    yield conn
        finally:
            if lock is not None:
                lock.release()

    @asynccontextmanager
    async def _read(self) -> AsyncIterator[AsyncConnection]:
        if self._closed:
            raise StoreError("the store is closed")
        lock = self._read_lock
        if lock is not None:
            await lock.acquire()
        try:
            async with self._engine.connect() as conn:
                yield conn
        finally:
            if lock is not None:
                lock.release()

    # -- schema -------------------------------------------------------------------------------

    async def _migrate(self) -> None:
        async with self._write() as conn:
            if self._dialect == "postgresql":
                await conn.execute(
                    text("SELECT pg_advisory_xact_lock(:cls, hashtext(coalesce(current_schema(), '')))"),
                    {"cls": _PG_LOCK_CLASS},
                )
            await conn.run_sync(_upgrade)

    async def schema_version(self) -> int:
        async with self._read() as conn:
            return int((await conn.execute(select(func.max(schema_version.c.version)))).scalar() or 0)

    # -- watches ------------------------------------------------------------------------------

    async def create_watch(self, watch: Watch, *, covered_by: str | None = None) -> tuple[Watch, bool]:
        """Insert `watch` unless an unfinished watch with its dedupe key exists (then return that one),
        or an unfinished watch with the dedupe key `covered_by` does (a whole-execution cancel under
        way covers each of its schemas; then return that one). Atomic across replicas: on PostgreSQL
        creations for one `covered_by` key (or, without it, one dedupe key) take an advisory lock."""
        row = _watch_row(watch)
        stmt = (
            self._insert(watches)
            .values(**row)
            .on_conflict_do_nothing(
                index_elements=[watches.c.dedupe_key], index_where=watches.c.finished_at.is_(None)
            )
            .returning(*watches.c)
        )
        existing_q = select(watches).where(
            watches.c.dedupe_key == watch.dedupe_key, watches.c.finished_at.is_(None)
        )
        covering_q = select(watches).where(
            watches.c.dedupe_key == covered_by, watches.c.finished_at.is_(None)
        )
        for _ in range(10):
            async with self._write() as conn:
                if self._dialect == "postgresql":
                    await conn.execute(
                        text("SELECT pg_advisory_xact_lock(:cls, hashtext(:key))"),
                        {"cls": _PG_WATCH_LOCK_CLASS, "key": covered_by or watch.dedupe_key},
                    )
                if covered_by is not None:
                    covering = (await conn.execute(covering_q)).first()
                    if covering is not None:
                        return _watch(covering), False
                inserted = (await conn.execute(stmt)).first()
                if inserted is not None:
                    return _watch(inserted), True
                found = (await conn.execute(existing_q)).first()
                if found is not None:
                    return _watch(found), False
            # The conflicting watch finished between the two statements: try again.
        raise StoreError("could not create the watch: its dedupe key keeps changing hands")

    async def get_watch(self, watch_id: str) -> Watch | None:
        async with self._read() as conn:
            row = (await conn.execute(select(watches).where(watches.c.id == watch_id))).first()
        return _watch(row) if row is not None else None

    async def find_unfinished(self, dedupe_key: str) -> Watch | None:
        q = select(watches).where(watches.c.dedupe_key == dedupe_key, watches.c.finished_at.is_(None))
        async with self._read() as conn:
            row = (await conn.execute(q)).first()
        return _watch(row) if row is not None else None

    async def update_watch(self, watch_id: str, *, urgent: bool = False, **values: Any) -> None:
        """Set only the named columns. Unknown names (or `id`) raise `TypeError`. `urgent`: this
        records something just posted to Slack (ahead of other queued writes on SQLite)."""
        unknown = set(values) - _UPDATABLE
        if unknown:
            raise TypeError(f"update_watch: unknown or read-only fields {sorted(unknown)}")
        if not values:
            return
        _check_aware(values)
        async with self._write(urgent=urgent) as conn:
            await conn.execute(update(watches).where(watches.c.id == watch_id).values(**values))

    async def add_requester(self, watch_id: str, user_id: str) -> bool:
        """Append `user_id` to `also_requested`; True only when it was not there (nor requested_by)."""
        async with self._write() as conn:
            row = (
                await conn.execute(
                    select(watches.c.requested_by, watches.c.also_requested)
                    .where(watches.c.id == watch_id)
                    .with_for_update()
                )
            ).first()
            if row is None or user_id == row.requested_by or user_id in row.also_requested:
                return False
            await conn.execute(
                update(watches)
                .where(watches.c.id == watch_id)
                .values(also_requested=[*row.also_requested, user_id])
            )
            return True

    async def finish_watch(self, watch_id: str, outcome: str, *, now: datetime | None = None) -> bool:
        """Record the outcome once. False if the watch was already finished (or does not exist)."""
        stmt = (
            update(watches)
            .where(watches.c.id == watch_id, watches.c.finished_at.is_(None))
            .values(finished_at=now or utcnow(), outcome=outcome)
            .returning(watches.c.id)
        )
        async with self._write() as conn:
            return (await conn.execute(stmt)).first() is not None

    async def mark_final_posted(self, watch_id: str) -> None:
        """Record that the terminal reply is posted (urgent: it was, a moment ago)."""
        async with self._write(urgent=True) as conn:
            await conn.execute(update(watches).where(watches.c.id == watch_id).values(final_posted=True))

    async def unfinished_watches(self) -> list[Watch]:
        """Watches with no outcome yet (`finished_at IS NULL`), oldest first."""
        q = select(watches).where(watches.c.finished_at.is_(None)).order_by(watches.c.created_at)
        async with self._read() as conn:
            return [_watch(r) for r in (await conn.execute(q)).all()]

    # -- leases -------------------------------------------------------------------------------

    async def claim_due(
        self,
        owner: str,
        *,
        lease_s: float,
        limit: int = 100,
        now: datetime | None = None,
        exclude: Sequence[str] = (),
    ) -> list[Watch]:
        """Lease up to `limit` open watches (unfinished, or terminal reply not yet posted) that nobody
        else holds (free, expired lease, or already ours), soonest `next_poll_at` first. `exclude`:
        ids the caller holds already (renewed separately), so they do not use up `limit`.

        One replica per sync: a watch whose sync has another open watch under another owner's live
        lease is left to that owner, so the status poll of a sync stays shared. Claims are serialised
        (a transaction-scoped advisory lock on PostgreSQL, `BEGIN IMMEDIATE` on SQLite) so that two
        replicas never split the free watches of one sync between them; `SKIP LOCKED` still steps
        over rows another transaction is writing.
        """
        now = now or utcnow()
        until = now + timedelta(seconds=lease_s)
        other = watches.alias("other")
        held_by_another = (
            select(other.c.id)
            .where(
                other.c.sync_id == watches.c.sync_id,
                _open(other),
                other.c.lease_owner.is_not(None),
                other.c.lease_owner != owner,
                other.c.lease_until >= now,
            )
            .exists()
        )
        claimable = and_(
            _open(watches),
            or_(watches.c.lease_owner.is_(None), watches.c.lease_until < now, watches.c.lease_owner == owner),
            ~held_by_another,
        )
        if exclude:
            claimable = and_(claimable, watches.c.id.not_in(list(exclude)))
        pick = (
            select(watches.c.id)
            .where(claimable)
            .order_by(watches.c.next_poll_at, watches.c.id)
            .limit(limit)
            .with_for_update(skip_locked=True, of=watches)  # rendered on PostgreSQL only
        )
        async with self._write() as conn:
            if self._dialect == "postgresql":
                await conn.execute(
                    text("SELECT pg_advisory_xact_lock(:cls, hashtext(coalesce(current_schema(), '')))"),
                    {"cls": _PG_CLAIM_LOCK_CLASS},
                )
            ids = list((await conn.execute(pick)).scalars())
            if not ids:
                return []
            rows = (
                await conn.execute(
                    update(watches)
                    .where(watches.c.id.in_(ids))
                    .values(lease_owner=owner, lease_until=until)
                    .returning(*watches.c)
                )
            ).all()
        claimed = [_watch(r) for r in rows]
        claimed.sort(key=lambda w: (w.next_poll_at, w.id))
        return claimed

    async def sync_holders(self, sync_id: str, *, now: datetime | None = None) -> set[str]:
        """Owners holding a live lease on an open watch of `sync_id`."""
        now = now or utcnow()
        q = (
            select(watches.c.lease_owner)
            .where(
                watches.c.sync_id == sync_id,
                _open(watches),
                watches.c.lease_owner.is_not(None),
                watches.c.lease_until >= now,
            )
            .distinct()
        )
        async with self._read() as conn:
            return set((await conn.execute(q)).scalars())

    async def renew(
        self, owner: str, watch_ids: Sequence[str], *, lease_s: float, now: datetime | None = None
    ) -> list[str]:
        """Extend `owner`'s leases; returns the ids it still holds (in the order given)."""
        if not watch_ids:
            return []
        until = (now or utcnow()) + timedelta(seconds=lease_s)
        stmt = (
            update(watches)
            .where(watches.c.id.in_(list(watch_ids)), watches.c.lease_owner == owner)
            .values(lease_until=until)
            .returning(watches.c.id)
        )
        async with self._write() as conn:
            held = set((await conn.execute(stmt)).scalars())
        return [i for i in dict.fromkeys(watch_ids) if i in held]

    async def release(
        self, owner: str, watch_ids: Sequence[str] | None = None, *, keep: Sequence[str] = ()
    ) -> None:
        """Drop `owner`'s leases (all of them when `watch_ids` is None), except those in `keep`."""
        cond = watches.c.lease_owner == owner
        if watch_ids is not None:
            if not watch_ids:
                return
            cond = and_(cond, watches.c.id.in_(list(watch_ids)))
        if keep:
            cond = and_(cond, watches.c.id.not_in(list(keep)))
        async with self._write() as conn:
            await conn.execute(update(watches).where(cond).values(lease_owner=None, lease_until=None))

    # -- audit --------------------------------------------------------------------------------

    async def audit(
        self,
        *,
        action: str,
        outcome: str,
        team_id: str | None,
        user_id: str | None,
        channel_id: str | None,
        sync_id: str | None = None,
        schema_id: str | None = None,
        execution_id: str | None = None,
        detail: str | None = None,
        request_id: str | None = None,
        watch_id: str | None = None,
    ) -> None:
        async with self._write() as conn:
            await conn.execute(
                audit_log.insert().values(
                    at=utcnow(), action=action, outcome=outcome, team_id=team_id, user_id=user_id,
                    channel_id=channel_id, sync_id=sync_id, schema_id=schema_id,
                    execution_id=execution_id, detail=detail, request_id=request_id, watch_id=watch_id,
                )
            )

    async def audit_records(self, *, limit: int = 100) -> list[dict]:
        """Newest first; each a dict of the columns (`id`, `at` aware UTC, `action`, `outcome`, ...)."""
        q = select(audit_log).order_by(audit_log.c.id.desc()).limit(limit)
        async with self._read() as conn:
            return [dict(r._mapping) for r in (await conn.execute(q)).all()]

    # -- once-only markers --------------------------------------------------------------------

    async def claim_marker(self, kind: str, key: str, *, value: str | None = None) -> bool:
        """True for the first caller only (atomic across tasks, processes and replicas)."""
        stmt = (
            self._insert(markers)
            .values(kind=kind, key=key, value=value, created_at=utcnow())
            .on_conflict_do_nothing(index_elements=[markers.c.kind, markers.c.key])
            .returning(markers.c.key)
        )
        async with self._write() as conn:
            return (await conn.execute(stmt)).first() is not None

    async def get_marker(self, kind: str, key: str) -> str | None:
        q = select(markers.c.value).where(markers.c.kind == kind, markers.c.key == key)
        async with self._read() as conn:
            return (await conn.execute(q)).scalar()

    async def set_marker(self, kind: str, key: str, value: str) -> None:
        ins = self._insert(markers).values(kind=kind, key=key, value=value, created_at=utcnow())
        stmt = ins.on_conflict_do_update(
            index_elements=[markers.c.kind, markers.c.key], set_={"value": ins.excluded.value}
        )
        async with self._write() as conn:
            await conn.execute(stmt)


class _WriteLock:
    """The SQLite writer's lock: FIFO, except that `urgent` waiters go first. Records of what was
    just posted to Slack are urgent, so the window in which a hard kill repeats a reply does not
    grow with the queue of renewals and audit writes."""

    def __init__(self) -> None:
        self._locked = False
        self._urgent: deque[asyncio.Future[None]] = deque()
        self._normal: deque[asyncio.Future[None]] = deque()

    def locked(self) -> bool:
        return self._locked

    async def acquire(self, *, urgent: bool = False) -> None:
        if not self._locked and not self._urgent and not self._normal:
            self._locked = True
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        queue = self._urgent if urgent else self._normal
        queue.append(fut)
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.release()  # handed the lock just as we were cancelled: pass it on
            else:
                with contextlib.suppress(ValueError):
                    queue.remove(fut)
            raise

    def release(self) -> None:
        for queue in (self._urgent, self._normal):
            while queue:
                fut = queue.popleft()
                if not fut.done():
                    fut.set_result(None)  # handed over: stays locked
                    return
        self._locked = False


def _upgrade(conn: Connection) -> None:
    schema_version.create(conn, checkfirst=True)
    current = conn.execute(select(func.max(schema_version.c.version))).scalar()
    if current is None:
        metadata.create_all(conn, checkfirst=True)
        conn.execute(schema_version.insert().values(version=SCHEMA_VERSION, applied_at=utcnow()))
        log.info("database schema created (version %d)", SCHEMA_VERSION)
        return
    if current > SCHEMA_VERSION:
        log.warning(
            "database schema version %d is newer than this build's %d; continuing (rolling upgrade?)",
            current, SCHEMA_VERSION,
        )
        return
    for version in range(current + 1, SCHEMA_VERSION + 1):
        MIGRATIONS[version](conn)
        conn.execute(schema_version.insert().values(version=version, applied_at=utcnow()))
        log.info("database schema migrated to version %d", version)


def _open(t: Any) -> Any:
    """A watch still owed work: unfinished, or its terminal reply not yet posted."""
    return or_(t.c.finished_at.is_(None), t.c.final_posted.is_(False))


def _check_aware(values: dict[str, Any]) -> None:
    for name, value in values.items():
        if isinstance(value, datetime) and (value.tzinfo is None or value.utcoffset() is None):
            raise ValueError(f"{name}: naive datetime given to the store; use an aware UTC datetime")


def _watch_row(watch: Watch) -> dict[str, Any]:
    row = {name: getattr(watch, name) for name in _WATCH_FIELDS}
    _check_aware(row)
    row["also_requested"] = [
        u for u in dict.fromkeys(watch.also_requested or []) if u and u != watch.requested_by
    ]
    return row


def _watch(row: Any) -> Watch:
    m = row._mapping
    values = {name: m[name] for name in _WATCH_FIELDS}
    values["api_trouble"] = bool(values["api_trouble"])
    values["final_posted"] = bool(values["final_posted"])
    return Watch(**values)


# --------------------------------------------------------------------------------------------
# Test isolation helpers (used by tests on both engines; harmless in production)


@asynccontextmanager
async def isolated_pg_url(base_url: str, *, prefix: str = "bot_test") -> AsyncIterator[str]:
    """Create a fresh, randomly named schema in the PostgreSQL database at `base_url`, yield a URL
    (same form as `base_url`) whose connections use it as `search_path`, and drop it (CASCADE)
    afterwards. The URL works for `Store.open`, for `BOT_DATABASE_URL` of a bot subprocess and psql.
    """
    if not prefix.replace("_", "").isalnum() or not prefix[0].isalpha():
        raise ValueError("prefix must be a plain identifier")
    name = f"{prefix}_{secrets.token_hex(6)}".lower()
    dsn, timeout = _pg_dsn(base_url)
    conn = await asyncpg.connect(dsn, timeout=timeout)
    try:
        await conn.execute(f'CREATE SCHEMA "{name}"')
    finally:
        await conn.close()
    try:
        yield _with_search_path(base_url, name)
    finally:
        conn = await asyncpg.connect(dsn, timeout=timeout)
        try:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
        finally:
            await conn.close()


@asynccontextmanager
async def open_test_store(url_or_path: str | PathLike[str], **open_kwargs: Any) -> AsyncIterator[Store]:
    """An opened Store for a test: a file path (or `sqlite:` URL) -> that SQLite file; a
    `postgresql://` URL -> a fresh isolated schema in it (dropped afterwards)."""
    target = str(url_or_path)
    if "://" not in target and not target.startswith("sqlite:"):
        target = f"sqlite:///{target}"
    if _dialect_of(target) == "sqlite":
        store = await Store.open(target, **open_kwargs)
        try:
            yield store
        finally:
            await store.close()
        return
    async with isolated_pg_url(target) as url:
        store = await Store.open(url, **open_kwargs)
        try:
            yield store
        finally:
            await store.close()
