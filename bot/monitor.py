"""Long-run alerts: one card per bulk sync execution that runs longer than `BOT_LONG_RUN_S`.

- One `GET /api/bulk/syncs/status?all=true` per interval finds every running execution of every
  sync (never one call per sync). An execution's start is the earliest `started_at` of its schema
  entries (list-status gives `execution_id` and `started_at` per schema).
- A run below the threshold gets a timer for the moment it crosses it, and so does a run announced
  by a `bulk_sync.running` event (`note_running`), so the alert does not wait for the next listing.
- The card is posted once per execution, also across restarts and replicas: the store marker
  `("alert", execution_id)` is claimed before posting, and then holds the card's channel, ts, state
  and what it shows (JSON). Every replica keeps open cards current (`chat.update` when the schema
  states change, or every `refresh_every_s` for the elapsed time) and closes them when the run ends,
  whoever ended it; the marker says what the card shows, so replicas skip writes already done.
- Once someone clicks Cancel on the card, the card is that cancellation's headline (the watcher
  owns it): the monitor never writes to it again.
- Events are hints; the listing stays the source of truth (a card closes only when Polytomic says
  the execution is terminal or no longer known).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from bot import cards
from bot.notifier import Notifier, SlackWriteError
from bot.polytomic.client import PolytomicClient
from bot.polytomic.errors import NotFound, PolytomicError
from bot.polytomic.models import Execution, SchemaExecution, SyncExecutionStatus, is_running, is_terminal
from bot.store import Store

log = logging.getLogger("bot.monitor")

ALERT_MARKER = "alert"  # (kind, execution_id) -> CardRecord as JSON
MIN_INTERVAL_S = 1.0
NAMES_TTL_S = 300.0
NAMES_RETRY_S = 60.0
WAKE_SLACK_S = 0.05
HINT_RECHECK_S = 2.0  # a run announced by an event but not listed yet is looked for again this often
# Slack errors after which the card cannot be written again (deleted, channel gone, bot removed).
CARD_GONE = frozenset(
    {"message_not_found", "cant_update_message", "channel_not_found", "is_archived", "not_in_channel"}
)


def monitor_interval(settings: Any) -> float:
    """Seconds between listings: a quarter of the threshold, at most the poll ceiling, at least
    a second (or the first poll delay, when that is shorter: tests)."""
    floor = min(MIN_INTERVAL_S, float(settings.bot_poll_interval_s))
    return max(floor, min(float(settings.bot_poll_max_interval_s), float(settings.bot_long_run_s) / 4))


# --------------------------------------------------------------------------------------------
# Pure parts


@dataclass
class Run:
    """A running execution as one listing shows it."""

    sync_id: str
    execution_id: str
    started_at: datetime | None
    entries: list[SchemaExecution]

    def signature(self) -> str:
        """What the card shows that is worth a `chat.update` when it changes."""
        return json.dumps(sorted((e.schema_id or "", e.status or "") for e in self.entries))


def running_executions(listing: Sequence[SyncExecutionStatus]) -> dict[str, Run]:
    """Execution id -> Run for every execution with at least one in-flight schema entry."""
    runs: dict[str, Run] = {}
    for item in listing:
        if not item.sync_id:
            continue
        by_exec: dict[str, list[SchemaExecution]] = {}
        for entry in item.schemas:
            if entry.execution_id:
                by_exec.setdefault(entry.execution_id, []).append(entry)
        for exec_id, entries in by_exec.items():
            if not any(is_running(e.status) for e in entries):
                continue
            starts = [_utc(e.started_at) for e in entries if e.started_at is not None]
            runs[exec_id] = Run(item.sync_id, exec_id, min(starts) if starts else None, entries)
    return runs


def _utc(dt: datetime) -> datetime:
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)


def _iso(dt: datetime | None) -> str | None:
    return _utc(dt).isoformat() if dt is not None else None


def _parse_dt(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return _utc(datetime.fromisoformat(value.replace("Z", "+00:00")))
    except ValueError:
        return None


@dataclass
class CardRecord:
    """The marker's value: where the card is and what it shows."""

    execution_id: str
    sync_id: str
    channel: str
    ts: str | None = None
    state: str = "posting"  # posting | open | closed | owned | failed | gone
    started_at: str | None = None
    sig: str = ""
    updated_at: str | None = None
    outcome: str | None = None
    by: str | None = None

    def dumps(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def loads(cls, execution_id: str, raw: str | None) -> CardRecord | None:
        if not raw:
            return None
        try:
            data = json.loads(raw)
        except ValueError:
            return None
        if not isinstance(data, dict):
            return None
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__ and k != "execution_id"}
        if not isinstance(known.get("sync_id"), str) or not isinstance(known.get("channel"), str):
            return None
        return cls(execution_id=execution_id, **known)


@dataclass
class _Hint:
    sync_id: str
    started_at: datetime
    sync_name: str | None = None
    expires_at: datetime = field(default_factory=lambda: datetime.now(UTC))


# --------------------------------------------------------------------------------------------
# Store access that Store does not offer yet (see the report to the lead)


async def card_has_watch(store: Store, channel: str, ts: str) -> bool:
    """True when a cancellation made this card its headline (the watch's root or clicked card)."""
    finder = getattr(store, "find_watch_by_root", None)
    if finder is not None:
        watch = await finder(channel, ts)
        return watch is not None and watch.outcome != "not_sent"
    # Fallback until Store.find_watch_by_root exists.
    from sqlalchemy import or_, select

    from bot.store import watches

    q = (
        select(watches.c.outcome)
        .where(watches.c.channel_id == channel, or_(watches.c.root_ts == ts, watches.c.source_ts == ts))
        .limit(5)
    )
    async with store._read() as conn:
        rows = (await conn.execute(q)).all()
    return any(r.outcome != "not_sent" for r in rows)


async def list_markers(store: Store, kind: str) -> list[tuple[str, str | None]]:
    """(key, value) of every marker of one kind."""
    lister = getattr(store, "list_markers", None)
    if lister is not None:
        return list(await lister(kind))
    # Fallback until Store.list_markers exists.
    from sqlalchemy import select

    from bot.store import markers

    q = select(markers.c.key, markers.c.value).where(markers.c.kind == kind)
    async with store._read() as conn:
        return [(r.key, r.value) for r in (await conn.execute(q)).all()]


# --------------------------------------------------------------------------------------------
# The monitor


class LongRunMonitor:
    def __init__(
        self,
        *,
        client: PolytomicClient,
        store: Store,
        notifier: Notifier,
        channel: str,
        long_run_s: float,
        interval_s: float,
        owner: str,
        refresh_every_s: float = 600.0,
        rescan_every_s: float = 600.0,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self.client = client
        self.store = store
        self.notifier = notifier
        self.channel = channel
        self.long_run_s = float(long_run_s)
        self.interval_s = float(interval_s)
        self.owner = owner
        self.refresh_every_s = refresh_every_s
        self.rescan_every_s = rescan_every_s
        self._clock = clock or (lambda: datetime.now(UTC))
        self.cards: dict[str, CardRecord] = {}  # open cards this replica keeps current
        self._settled: set[str] = set()  # executions whose card is closed, owned or failed
        self._due: dict[str, datetime] = {}  # execution id -> when it crosses the threshold
        self._hints: dict[str, _Hint] = {}
        self._names: dict[str, str] = {}
        self._names_at: datetime | None = None
        self._rescan_at: datetime | None = None
        self._next_listing: datetime | None = None
        self._failures = 0
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._stopping = False
        self._runner: asyncio.Task | None = None
        self.listings = 0  # list-status requests made (tests, benchmarks)
        self.posted = 0  # cards this replica posted

    @classmethod
    def from_settings(
        cls,
        settings: Any,
        *,
        client: PolytomicClient,
        store: Store,
        notifier: Notifier,
        owner: str,
        **kw: Any,
    ) -> LongRunMonitor | None:
        """None when `BOT_ALERT_CHANNEL` is not set (no long-run alerts)."""
        if not settings.bot_alert_channel:
            return None
        return cls(
            client=client,
            store=store,
            notifier=notifier,
            channel=settings.bot_alert_channel,
            long_run_s=settings.bot_long_run_s,
            interval_s=kw.pop("interval_s", None) or monitor_interval(settings),
            owner=owner,
            **kw,
        )

    # -- life cycle ------------------------------------------------------------------------

    def start(self) -> None:
        if self._runner is None:
            self._stopping = False
            self._runner = asyncio.create_task(self._run(), name="long-run-monitor")

    async def stop(self) -> None:
        self._stopping = True
        self._wake.set()
        if self._runner is not None:
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._runner
            self._runner = None

    # -- hints from Polytomic events -------------------------------------------------------

    def note_running(
        self,
        sync_id: str,
        execution_id: str,
        *,
        started_at: datetime | None = None,
        sync_name: str | None = None,
    ) -> None:
        """A `bulk_sync.running` event: start the long-run clock now instead of at the next listing."""
        if not sync_id or not execution_id or execution_id in self.cards or execution_id in self._settled:
            return
        now = self._clock()
        start = _utc(started_at) if started_at is not None else now
        due = start + timedelta(seconds=self.long_run_s)
        self._hints[execution_id] = _Hint(
            sync_id, start, sync_name, expires_at=max(due, now) + timedelta(seconds=3 * self.interval_s + 5)
        )
        if sync_name:
            self._names.setdefault(sync_id, sync_name)
        self._due[execution_id] = due
        self._wake.set()

    async def note_ended(self, sync_id: str, execution_id: str, outcome: str | None = None) -> bool:
        """A `bulk_sync.completed`/`canceled`/`failed`/`completed_with_error` event: close the
        execution's open card now (after Polytomic confirms the end). True when a card was closed."""
        self._hints.pop(execution_id, None)
        self._due.pop(execution_id, None)
        async with self._lock:
            card = self.cards.get(execution_id)
            if card is None and execution_id not in self._settled:
                stored = CardRecord.loads(
                    execution_id, await self.store.get_marker(ALERT_MARKER, execution_id)
                )
                if stored is not None and stored.state == "open" and stored.ts:
                    card = self.cards[execution_id] = stored
            if card is None:
                return False
            return await self._close(card, hint=outcome)

    # -- the loop --------------------------------------------------------------------------

    async def _run(self) -> None:
        while not self._stopping:
            started, hinted = self._clock(), set(self._hints)
            try:
                async with self._lock:
                    await self.tick()
            except Exception:
                log.exception("long-run monitor tick failed; will retry")
                self._next_listing = self._clock() + timedelta(seconds=self.interval_s)
            # Timers that were due when this tick began are spent (handled, or left to the next
            # listing when it failed); only runs announced during the tick keep an earlier one.
            self._due = {
                e: d for e, d in self._due.items() if d > started or (e in self._hints and e not in hinted)
            }
            await self._sleep()

    async def _sleep(self) -> None:
        while not self._stopping:
            now = self._clock()
            wake_at = self._next_listing or now
            if self._due:
                wake_at = min(wake_at, min(self._due.values()) + timedelta(seconds=WAKE_SLACK_S))
            wait = (wake_at - now).total_seconds()
            if wait <= 0:
                return
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=wait)

    async def tick(self) -> None:
        """One listing: raise cards for runs over the threshold, keep open cards current, close
        cards of runs that ended. The loop calls it holding the monitor's lock."""
        now = self._clock()
        hinted_before = set(self._hints)
        if self._rescan_at is None or now >= self._rescan_at:
            self._rescan_at = now + timedelta(seconds=self.rescan_every_s)
            try:
                await self._adopt_open_cards()
            except Exception as exc:
                log.warning("could not read open alert cards from the store: %s", type(exc).__name__)
        try:
            self.listings += 1
            listing = await self.client.list_sync_statuses(all=True)
        except PolytomicError as exc:
            self._failures += 1
            backoff = min(self.interval_s * 2 ** min(self._failures, 6), max(self.interval_s, 300.0))
            self._next_listing = now + timedelta(seconds=backoff)
            log.warning("long-run listing failed (%s); next try in %.0fs", type(exc).__name__, backoff)
            return
        self._failures = 0
        self._next_listing = now + timedelta(seconds=self.interval_s)
        runs = running_executions(listing)
        now = self._clock()
        due: dict[str, datetime] = {}
        for exec_id, run in runs.items():
            hint = self._hints.get(exec_id)
            start = run.started_at or (hint.started_at if hint else None)
            if start is None or exec_id in self._settled:
                continue
            run.started_at = start
            card = self.cards.get(exec_id)
            if card is not None:
                await self._keep_current(card, run, now)
            elif (now - start).total_seconds() >= self.long_run_s:
                await self._raise(run, now)
            else:
                due[exec_id] = start + timedelta(seconds=self.long_run_s)
        for exec_id, card in list(self.cards.items()):
            if exec_id not in runs:
                await self._close(card)
        # Hinted runs the listing does not show yet keep a timer until the hint expires.
        for exec_id, hint in list(self._hints.items()):
            if exec_id not in hinted_before:
                due[exec_id] = self._due.get(exec_id, now)  # arrived during this tick
            elif (
                exec_id in runs or exec_id in self.cards or exec_id in self._settled or now >= hint.expires_at
            ):
                self._hints.pop(exec_id, None)
            else:
                at = hint.started_at + timedelta(seconds=self.long_run_s)
                due[exec_id] = (
                    at if at > now else now + timedelta(seconds=min(self.interval_s, HINT_RECHECK_S))
                )
        self._due = due
        self._settled &= set(runs)  # ended runs never come back

    # -- cards -----------------------------------------------------------------------------

    async def _raise(self, run: Run, now: datetime) -> None:
        exec_id = run.execution_id
        record = CardRecord(
            execution_id=exec_id,
            sync_id=run.sync_id,
            channel=self.channel,
            started_at=_iso(run.started_at),
            by=self.owner,
        )
        if not await self.store.claim_marker(ALERT_MARKER, exec_id, value=record.dumps()):
            await self._adopt(exec_id, run, now)
            return
        name = await self._name(run.sync_id)
        message = self._render(run, name, now)
        try:
            record.ts = await self.notifier.post(self.channel, message)
        except SlackWriteError as exc:
            record.state = "failed"
            await self.store.set_marker(ALERT_MARKER, exec_id, record.dumps())
            self._settled.add(exec_id)
            log.error(
                "could not post the long-run alert for execution %s in BOT_ALERT_CHANNEL %s: %s",
                exec_id,
                self.channel,
                exc.error,
            )
            return
        record.state = "open"
        record.sig = run.signature()
        record.updated_at = _iso(now)
        await self.store.set_marker(ALERT_MARKER, exec_id, record.dumps())
        self.cards[exec_id] = record
        self.posted += 1
        log.info("long-run alert posted for execution %s of sync %s", exec_id, run.sync_id)

    async def _adopt(self, exec_id: str, run: Run, now: datetime) -> None:
        """The card exists already (another replica, or before a restart): keep it current."""
        stored = CardRecord.loads(exec_id, await self.store.get_marker(ALERT_MARKER, exec_id))
        if stored is None or stored.state == "posting":
            return  # another replica is posting it right now: look again next time
        if stored.state != "open" or not stored.ts:
            self._settled.add(exec_id)
            return
        self.cards[exec_id] = stored
        await self._keep_current(stored, run, now)

    async def _adopt_open_cards(self) -> None:
        """Open cards in the store (posted before a restart or by another replica) are adopted, so
        that a run which ended meanwhile still gets its card closed."""
        for key, raw in await list_markers(self.store, ALERT_MARKER):
            if key in self.cards or key in self._settled:
                continue
            record = CardRecord.loads(key, raw)
            if record is not None and record.state == "open" and record.ts:
                self.cards[key] = record

    async def _settle(self, card: CardRecord, state: str, outcome: str | None = None) -> None:
        card.state = state
        card.outcome = outcome
        card.updated_at = _iso(self._clock())
        self.cards.pop(card.execution_id, None)
        self._settled.add(card.execution_id)
        await self.store.set_marker(ALERT_MARKER, card.execution_id, card.dumps())

    async def _still_ours(self, card: CardRecord) -> bool:
        """False (and the card is let go) when a cancellation owns it or it was settled elsewhere."""
        if card.ts and await card_has_watch(self.store, card.channel, card.ts):
            log.info("alert card of execution %s is now a cancellation's headline", card.execution_id)
            await self._settle(card, "owned")
            return False
        stored = CardRecord.loads(
            card.execution_id, await self.store.get_marker(ALERT_MARKER, card.execution_id)
        )
        if stored is not None and stored.state != "open":
            self.cards.pop(card.execution_id, None)
            self._settled.add(card.execution_id)
            return False
        if stored is not None:
            card.sig, card.updated_at = stored.sig, stored.updated_at
        return True

    async def _keep_current(self, card: CardRecord, run: Run, now: datetime) -> None:
        sig = run.signature()
        if sig == card.sig and not self._stale(card, now):
            return
        if not await self._still_ours(card):
            return
        if sig == card.sig and not self._stale(card, now):
            return  # another replica updated it already
        name = await self._name(run.sync_id)
        try:
            await self.notifier.update(card.channel, card.ts or "", self._render(run, name, now))
        except SlackWriteError as exc:
            if exc.error in CARD_GONE:
                log.warning("alert card of execution %s cannot be updated (%s)", card.execution_id, exc.error)
                await self._settle(card, "gone")
            else:
                log.warning(
                    "alert card of execution %s not updated (%s); will retry", card.execution_id, exc.error
                )
            return
        card.sig = sig
        card.updated_at = _iso(now)
        await self.store.set_marker(ALERT_MARKER, card.execution_id, card.dumps())

    def _stale(self, card: CardRecord, now: datetime) -> bool:
        updated = _parse_dt(card.updated_at)
        return updated is None or (now - updated).total_seconds() >= self.refresh_every_s

    async def _close(self, card: CardRecord, *, hint: str | None = None) -> bool:
        """Say how the run ended, once Polytomic confirms it ended. `hint`: an event's word."""
        execution: Execution | None = None
        try:
            execution = await self.client.get_execution(card.sync_id, card.execution_id)
        except NotFound:
            execution = None
        except PolytomicError as exc:
            log.warning(
                "could not confirm the end of execution %s (%s)", card.execution_id, type(exc).__name__
            )
            return False
        if execution is not None and not is_terminal(execution.status):
            return False  # still running: the listing missed it, or the event came early
        if not await self._still_ours(card):
            return False
        outcome = execution.status if execution is not None else None
        started = _parse_dt(card.started_at) or (execution.started_at if execution else None)
        message = cards.long_run_ended(
            sync_id=card.sync_id,
            sync_name=await self._name(card.sync_id),
            execution_id=card.execution_id,
            started_at=started,
            outcome=outcome or hint,
            ended_at=execution.completed_at if execution is not None else None,
            entries=execution.schemas if execution is not None else (),
            detail=execution.status_message if execution is not None and outcome != "completed" else None,
            now=self._clock(),
        )
        try:
            await self.notifier.update(card.channel, card.ts or "", message)
        except SlackWriteError as exc:
            if exc.error not in CARD_GONE:
                log.warning(
                    "alert card of execution %s not closed (%s); will retry", card.execution_id, exc.error
                )
                return False
            log.warning("alert card of execution %s is gone (%s)", card.execution_id, exc.error)
            await self._settle(card, "gone", outcome)
            return False
        await self._settle(card, "closed", outcome)
        log.info(
            "long-run alert of execution %s closed: %s", card.execution_id, outcome or "no longer listed"
        )
        return True

    def _render(self, run: Run, name: str | None, now: datetime) -> dict:
        return cards.long_run_alert(
            sync_id=run.sync_id,
            sync_name=name,
            execution_id=run.execution_id,
            started_at=run.started_at,
            entries=run.entries,
            threshold_s=self.long_run_s,
            now=now,
        )

    async def _name(self, sync_id: str) -> str | None:
        """The sync's name from one cached `list_syncs` (refreshed when a sync is unknown)."""
        now = self._clock()
        age = None if self._names_at is None else (now - self._names_at).total_seconds()
        if sync_id in self._names and age is not None and age < NAMES_TTL_S:
            return self._names[sync_id]
        if age is None or age >= NAMES_RETRY_S:
            self._names_at = now
            try:
                self._names.update({s.id: s.name or s.id for s in await self.client.list_syncs() if s.id})
            except PolytomicError as exc:
                log.warning("could not list syncs for alert names: %s", type(exc).__name__)
        return self._names.get(sync_id)
