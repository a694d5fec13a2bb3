"""Watches cancellations until the run reaches a terminal state.

- Each replica claims due watches from the store with a lease, renews it while it works, and
  releases it on shutdown; a dead replica's watches are taken over when its leases expire.
- Watches of the same sync share one `GET /api/bulk/syncs/{id}/status` per poll, and one replica
  polls a sync: claims skip syncs another replica holds, and when two replicas end up holding
  watches of one sync (two clicks through different replicas), the one with the larger owner id
  hands its watches of that sync over.
- Before each poll of a sync the replica renews those leases (a fence): a replica that lost a lease
  (paused longer than the lease, say) drops the watch instead of posting for it.
- The poll interval starts at `BOT_POLL_INTERVAL_S` and backs off (x1.5) up to
  `BOT_POLL_MAX_INTERVAL_S` while nothing changes; a change resets it.
- A state change is recorded and then posted (thread reply + headline update): a hard kill in
  between loses that reply, it never repeats one. The end is recorded (`finished_at`), then the
  terminal reply posted, then `final_posted` recorded (see `CancelService.conclude`).
- `stop()`: no new claims, polls in flight get a grace period, leases are released.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from bot import logs, metrics
from bot.notifier import SlackWriteError
from bot.polytomic.client import PolytomicClient
from bot.polytomic.errors import NotFound, PolytomicError
from bot.polytomic.models import Execution, SyncStatus, is_terminal
from bot.service import CancelService, describe_problem
from bot.store import Store, Watch

log = logging.getLogger("bot.watcher")


@dataclass
class Observation:
    state: str | None = None  # current state to show (None: unknown this time)
    outcome: str | None = None  # set when the watch should end
    detail: str | None = None


def observe(w: Watch, status: SyncStatus | None, execution: Execution | None = None) -> Observation:
    """Pure: what a status snapshot means for one watch. `execution` is the watch's execution
    fetched by id when it is neither the current nor the last one (None: not found)."""
    ex: Execution | None = None
    if status is not None:
        for candidate in (status.current_execution, status.last_execution):
            if candidate is not None and candidate.id == w.execution_id:
                ex = candidate
                break
    if ex is None:
        ex = execution
    if ex is None:
        return Observation(outcome="not_found", detail="the execution is no longer known to Polytomic")
    if w.schema_id is None:
        if is_terminal(ex.status):
            return Observation(state=ex.status, outcome=ex.status, detail=ex.status_message)
        return Observation(state=ex.status, detail=ex.status_message)
    entry = ex.schema_entry(w.schema_id)
    if entry is None:
        if is_terminal(ex.status):
            return Observation(outcome="execution_ended", detail=f"the execution ended {ex.status}")
        return Observation(outcome="vanished", detail="the schema is no longer listed in the running run")
    if is_terminal(entry.status):
        return Observation(state=entry.status, outcome=entry.status, detail=entry.status_message)
    if is_terminal(ex.status):
        return Observation(
            state=entry.status, outcome="execution_ended", detail=f"the execution ended {ex.status}"
        )
    return Observation(state=entry.status, detail=entry.status_message)


def needs_execution_lookup(w: Watch, status: SyncStatus) -> bool:
    return not any(
        e is not None and e.id == w.execution_id for e in (status.current_execution, status.last_execution)
    )


class Watcher:
    def __init__(
        self,
        *,
        store: Store,
        client: PolytomicClient,
        service: CancelService,
        owner: str,
        poll_interval_s: float,
        poll_max_interval_s: float,
        lease_s: float = 30.0,
        claim_every_s: float | None = None,
        max_concurrent_polls: int = 32,
        clock: Callable[[], datetime] | None = None,
        stop_grace_s: float = 2.5,
    ) -> None:
        self.store = store
        self.client = client
        self.service = service
        self.notifier = service.notifier
        self.owner = owner
        self.poll_interval_s = poll_interval_s
        self.poll_max_interval_s = poll_max_interval_s
        self.lease_s = lease_s
        self.claim_every_s = claim_every_s if claim_every_s is not None else max(0.5, lease_s / 6)
        self._sem = asyncio.Semaphore(max_concurrent_polls)
        self._clock = clock or (lambda: datetime.now(UTC))
        self.held: dict[str, Watch] = {}
        self._interval: dict[str, float] = {}  # per sync
        self._next_poll: dict[str, float] = {}  # per sync, monotonic
        self._polling: set[str] = set()
        self._hold_until: dict[str, float] = {}  # per sync, monotonic: Retry-After from Polytomic
        self._tasks: set[asyncio.Task] = set()
        self._wake = asyncio.Event()
        self._stopping = False
        self._draining = False
        self.stop_grace_s = stop_grace_s
        self._runner: asyncio.Task | None = None
        self.polls = 0  # status requests made (for benchmarks and tests)
        self.takeovers = 0  # watches claimed from the store (released, expired, or left by a failed start)

    # -- life cycle ------------------------------------------------------------------------

    def start(self) -> None:
        if self._runner is None:
            self._runner = asyncio.create_task(self._run(), name="watcher")

    def drain(self) -> None:
        """Stop claiming watches (shutdown has begun); polls of held watches go on."""
        self._draining = True

    async def stop(self, *, release: bool = True, grace_s: float | None = None) -> None:
        """Stop claiming and polling. Polls in flight get `grace_s` (default `stop_grace_s`) to finish
        (a reply being posted is then recorded), then are cancelled; leases are released, except
        those of watches a cancel request is still starting (they expire and are resumed)."""
        self._draining = True
        self._stopping = True
        self._wake.set()
        if self._runner is not None:
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._runner
        pending = set(self._tasks)
        if pending:
            grace = self.stop_grace_s if grace_s is None else grace_s
            _done, pending = await asyncio.wait(pending, timeout=max(grace, 0.0))
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
        if release:
            try:
                await self.store.release(self.owner, keep=sorted(self.service.starting))
            except Exception as exc:
                log.warning("could not release leases on shutdown (%s); they expire", type(exc).__name__)
        self.held.clear()

    def track(self, w: Watch) -> None:
        """A new watch created by this replica (it holds the lease already)."""
        if (w.finished_at is not None and w.final_posted) or self._stopping:
            return
        self.held[w.id] = w
        self._schedule(w.sync_id, 0.0 if w.cancel_state != "sent" else self.poll_interval_s, reset=True)
        self._wake.set()

    @property
    def active(self) -> int:
        return len(self.held)

    # -- the loop --------------------------------------------------------------------------

    def _schedule(self, sync_id: str, delay: float, *, reset: bool = False) -> None:
        if reset or sync_id not in self._interval:
            self._interval[sync_id] = self.poll_interval_s
        at = time.monotonic() + delay
        current = self._next_poll.get(sync_id)
        if current is None or at < current or reset:
            self._next_poll[sync_id] = at if current is None or not reset else min(at, current)

    async def _run(self) -> None:
        next_claim = 0.0
        while not self._stopping:
            now = time.monotonic()
            if now >= next_claim:
                next_claim = now + self.claim_every_s
                try:
                    await self._claim_and_renew()
                except Exception:
                    log.exception("claiming watches failed; will retry")
            for sync_id, at in list(self._next_poll.items()):
                if at <= now and sync_id not in self._polling:
                    self._polling.add(sync_id)
                    task = asyncio.create_task(self._poll_sync(sync_id))
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)
            upcoming = [at for s, at in self._next_poll.items() if s not in self._polling]
            wait = min([next_claim, *upcoming]) - time.monotonic()
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=max(0.01, min(wait, 1.0)))

    async def _claim_and_renew(self) -> None:
        """Renew what is held, then claim: again at once while claims come back full (bounded),
        so that a start, restart or takeover with thousands of open watches is quick."""
        for _ in range(20):
            before = len(self.held)
            await self._claim_and_renew_once()
            if len(self.held) - before < 100 or self._draining:
                break

    async def _claim_and_renew_once(self) -> None:
        starting = set(self.service.starting)  # a snapshot: the set changes during the awaits
        ids = list(dict.fromkeys([*self.held, *starting]))
        if ids:
            kept = set(await self.store.renew(self.owner, ids, lease_s=self.lease_s))
            for lost in set(self.held) - kept:
                log.warning("lost the lease of watch %s to another replica", lost)
                self._forget(lost)
            for lost in set(starting) - kept:
                log.warning("lost the lease of watch %s while starting it", lost)
        if self._draining:
            return
        for w in await self.store.claim_due(self.owner, lease_s=self.lease_s, exclude=ids):
            if w.id in self.held or w.id in self.service.starting:
                continue
            log.info("took over watch %s (sync %s)", w.id, w.sync_id)
            self.takeovers += 1
            metrics.LEASE_TAKEOVERS.inc()
            self.held[w.id] = w
            self._schedule(w.sync_id, 0.0)
            with contextlib.suppress(Exception):
                await self.store.audit(
                    action="watch_claimed",
                    outcome="claimed",
                    team_id=w.team_id,
                    user_id=None,
                    channel_id=w.channel_id,
                    sync_id=w.sync_id,
                    schema_id=w.schema_id,
                    execution_id=w.execution_id,
                    detail=f"owner {self.owner}"[:500],
                    request_id=w.request_id,
                    watch_id=w.id,
                )

    def _forget(self, watch_id: str) -> None:
        w = self.held.pop(watch_id, None)
        if w is not None and not any(x.sync_id == w.sync_id for x in self.held.values()):
            self._next_poll.pop(w.sync_id, None)
            self._interval.pop(w.sync_id, None)

    async def _poll_sync(self, sync_id: str) -> None:
        changed = False
        try:
            async with self._sem:
                watches = await self._fence(sync_id)
                if not watches:
                    return
                changed = await self._poll_once(sync_id, watches)
        except Exception:
            log.exception("poll of sync %s failed", sync_id)
        finally:
            self._polling.discard(sync_id)
            if any(w.sync_id == sync_id for w in self.held.values()):
                interval = (
                    self.poll_interval_s
                    if changed
                    else min(
                        self._interval.get(sync_id, self.poll_interval_s) * 1.5, self.poll_max_interval_s
                    )
                )
                self._interval[sync_id] = interval
                self._next_poll[sync_id] = max(
                    time.monotonic() + (self.poll_interval_s if changed else self._interval[sync_id]),
                    self._hold_until.pop(sync_id, 0.0),  # Polytomic's Retry-After
                )
            else:
                self._next_poll.pop(sync_id, None)
                self._interval.pop(sync_id, None)
            self._wake.set()

    async def _fence(self, sync_id: str) -> list[Watch]:
        """The held watches of `sync_id` this replica may act on now: leases renewed just before
        acting, and handed over when another replica (with a smaller owner id) holds the sync too."""
        starting = self.service.starting
        watches = [w for w in self.held.values() if w.sync_id == sync_id and w.id not in starting]
        if not watches or self._stopping:
            return []
        kept = set(await self.store.renew(self.owner, [w.id for w in watches], lease_s=self.lease_s))
        for w in watches:
            if w.id not in kept:
                log.warning("lost the lease of watch %s to another replica", w.id)
                self._forget(w.id)
        watches = [w for w in watches if w.id in kept]
        if not watches:
            return []
        others = await self.store.sync_holders(sync_id) - {self.owner}
        if others and min(others) < self.owner:
            log.info("sync %s is polled by another replica: handing %d watch(es) over", sync_id, len(watches))
            ids = [w.id for w in watches]
            for watch_id in ids:
                self._forget(watch_id)
            await self.store.release(self.owner, ids, keep=sorted(starting))
            return []
        return watches

    async def _poll_once(self, sync_id: str, watches: list[Watch]) -> bool:
        changed = False
        ready: list[Watch] = []
        for w in watches:
            with logs.request_context(**logs.watch_fields(w)):  # its lines carry the click's request id
                keep, moved = await self._prepare(w)
            changed = changed or moved
            if keep:
                ready.append(w)
        if not ready:
            return changed

        status: SyncStatus | None = None
        error: PolytomicError | None = None
        try:
            self.polls += 1
            status = await self.client.get_sync_status(sync_id)
        except NotFound:
            for w in ready:
                with logs.request_context(**logs.watch_fields(w)):
                    await self._finish(w, "not_found", "the sync no longer exists in Polytomic")
            return True
        except PolytomicError as exc:
            error = exc
            retry_after = getattr(exc, "retry_after", None)
            if retry_after:
                self._hold_until[sync_id] = time.monotonic() + min(float(retry_after), 3600.0)

        now = self._clock()
        for w in ready:
            with logs.request_context(**logs.watch_fields(w)):
                moved = await self._observe(w, sync_id, status, error, now)
            changed = changed or moved
        return changed

    async def _prepare(self, w: Watch) -> tuple[bool, bool]:
        """Watches not fully started (a restart between steps) or ended but not yet told.
        Returns (poll it now, something changed)."""
        if w.finished_at is not None:
            await self._finish(w, w.outcome or "execution_ended", None)
            return False, True
        if w.cancel_state == "sent" and w.root_ts:
            return True, False
        if w.cancel_state == "failed":
            await self._finish(w, "cancel_failed", None)
            return False, False
        if w.root_ts and self._clock() >= w.deadline_at:
            await self._finish(w, "timeout", "the cancel request was never confirmed")
            return False, True
        try:
            await self.service.start(w)
        except Exception as exc:
            log.warning("resuming watch %s failed: %s", w.id, type(exc).__name__)
            if w.finished_at is not None:
                self._forget(w.id)
            return False, False
        # not confirmed yet (Polytomic busy or unreachable): the next poll sends it again
        return w.cancel_state == "sent", False

    async def _observe(
        self,
        w: Watch,
        sync_id: str,
        status: SyncStatus | None,
        error: PolytomicError | None,
        now: datetime,
    ) -> bool:
        """Act on one status snapshot (or on the error instead of it) for one watch."""
        if error is not None:
            await self._trouble(w, error)
            if now >= w.deadline_at:
                await self._finish(w, "timeout", None)
            return False
        assert status is not None
        execution = None
        if needs_execution_lookup(w, status) and w.execution_id:
            try:
                execution = await self.client.get_execution(sync_id, w.execution_id)
            except NotFound:
                execution = None
            except PolytomicError as exc:
                await self._trouble(w, exc)
                return False
        if w.api_trouble:
            await self._set_trouble(w, False)
        changed = False
        obs = observe(w, status, execution)
        if obs.state and obs.state != w.last_state and obs.outcome is None:
            # Recorded first, then posted: a hard kill in between loses this reply and never
            # repeats it (CONTRACT: no reply repeats an unchanged state).
            previous = w.last_state
            w.last_state = obs.state
            await self.store.update_watch(w.id, last_state=obs.state)
            try:
                await self.notifier.state_changed(w, obs.state, obs.detail)
            except SlackWriteError as exc:
                # Permanent errors too (bot removed, channel archived, token revoked): a person
                # fixes them, and the state change must not be lost meanwhile. The retry costs
                # one call per poll, bounded by the poll back-off and the deadline.
                log.warning("state change of watch %s not posted (%s); will retry", w.id, exc.error)
                w.last_state = previous
                await self.store.update_watch(w.id, last_state=previous)
                return False
            changed = True
        if obs.outcome is not None:
            if obs.state:
                w.last_state = obs.state
            await self._finish(w, obs.outcome, obs.detail)
            changed = True
        elif now >= w.deadline_at:
            await self._finish(w, "timeout", None)
            changed = True
        return changed

    async def _trouble(self, w: Watch, error: PolytomicError) -> None:
        if not w.api_trouble:
            await self._set_trouble(w, True, describe_problem(error))

    async def _set_trouble(self, w: Watch, trouble: bool, problem: str = "") -> None:
        """Record, then post (like a state change): a hard kill in between loses the notice."""
        w.api_trouble = trouble
        await self.store.update_watch(w.id, api_trouble=trouble)
        try:
            if trouble:
                await self.notifier.api_trouble(w, problem)
            else:
                await self.notifier.api_recovered(w)
        except SlackWriteError as exc:
            log.warning("could not post API %s for watch %s: %s",
                        "trouble" if trouble else "recovery", w.id, exc.error)
            if not exc.permanent:
                w.api_trouble = not trouble
                await self.store.update_watch(w.id, api_trouble=not trouble)

    async def _finish(self, w: Watch, outcome: str, detail: str | None) -> None:
        try:
            await self.service.conclude(w, outcome, detail=detail)
        except SlackWriteError as exc:
            if not exc.permanent:
                log.warning("final reply of watch %s not posted (%s); will retry", w.id, exc.error)
                return  # stays held; the next poll tries again
            log.error("final reply of watch %s cannot be posted: %s", w.id, exc.error)
            await self.store.mark_final_posted(w.id)
        self._forget(w.id)
        with contextlib.suppress(Exception):
            await self.store.release(self.owner, [w.id])


