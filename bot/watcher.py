"""Watches cancellations until the run reaches a terminal state.

- Each replica claims due watches from the store with a lease, renews it while it works, and
  releases it on shutdown; a dead replica's watches are taken over when its leases expire.
- Watches of the same sync share one `GET /api/bulk/syncs/{id}/status` per poll.
- The poll interval starts at `BOT_POLL_INTERVAL_S` and backs off (x1.5) up to
  `BOT_POLL_MAX_INTERVAL_S` while nothing changes; a change resets it.
- Each state change is posted once (thread reply + headline update) and then persisted; the end is
  persisted first and then posted once (`final_posted`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from bot.notifier import SlackWriteError
from bot.polytomic.client import PolytomicClient
from bot.polytomic.errors import NotFound, PolytomicError
from bot.polytomic.models import Execution, SyncStatus, is_terminal
from bot.service import CancelService
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
        if w.schema_id is None:
            return Observation(outcome="not_found", detail="the execution is no longer known to Polytomic")
        return Observation(outcome="execution_ended", detail="the run is no longer listed by Polytomic")
    if w.schema_id is None:
        if is_terminal(ex.status):
            return Observation(state=ex.status, outcome=ex.status, detail=ex.status_message)
        return Observation(state=ex.status, detail=ex.status_message)
    entry = ex.schema_entry(w.schema_id)
    if entry is None:
        if is_terminal(ex.status):
            return Observation(outcome="execution_ended", detail=f"the execution ended {ex.status}")
        return Observation(outcome="execution_ended", detail="the schema is no longer listed in the run")
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
    ) -> None:
        self.store = store
        self.client = client
        self.service = service
        self.notifier = service.notifier
        self.owner = owner
        self.poll_interval_s = poll_interval_s
        self.poll_max_interval_s = poll_max_interval_s
        self.lease_s = lease_s
        self.claim_every_s = claim_every_s if claim_every_s is not None else max(1.0, lease_s / 6)
        self._sem = asyncio.Semaphore(max_concurrent_polls)
        self._clock = clock or (lambda: datetime.now(UTC))
        self.held: dict[str, Watch] = {}
        self._interval: dict[str, float] = {}  # per sync
        self._next_poll: dict[str, float] = {}  # per sync, monotonic
        self._polling: set[str] = set()
        self._tasks: set[asyncio.Task] = set()
        self._wake = asyncio.Event()
        self._stopping = False
        self._runner: asyncio.Task | None = None
        self.polls = 0  # status requests made (for benchmarks and tests)

    # -- life cycle ------------------------------------------------------------------------

    def start(self) -> None:
        if self._runner is None:
            self._runner = asyncio.create_task(self._run(), name="watcher")

    async def stop(self, *, release: bool = True) -> None:
        self._stopping = True
        self._wake.set()
        if self._runner is not None:
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._runner
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if release:
            with contextlib.suppress(Exception):
                await self.store.release(self.owner)
        self.held.clear()

    def track(self, w: Watch) -> None:
        """A new watch created by this replica (it holds the lease already)."""
        if w.finished_at is not None and w.final_posted:
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
        if self.held:
            kept = set(await self.store.renew(self.owner, list(self.held), lease_s=self.lease_s))
            for lost in set(self.held) - kept:
                log.warning("lost the lease of watch %s to another replica", lost)
                self._forget(lost)
        for w in await self.store.claim_due(self.owner, lease_s=self.lease_s):
            if w.id in self.held:
                continue
            log.info("took over watch %s (sync %s)", w.id, w.sync_id)
            self.held[w.id] = w
            self._schedule(w.sync_id, 0.0)

    def _forget(self, watch_id: str) -> None:
        w = self.held.pop(watch_id, None)
        if w is not None and not any(x.sync_id == w.sync_id for x in self.held.values()):
            self._next_poll.pop(w.sync_id, None)
            self._interval.pop(w.sync_id, None)

    async def _poll_sync(self, sync_id: str) -> None:
        changed = False
        try:
            async with self._sem:
                watches = [w for w in self.held.values() if w.sync_id == sync_id]
                if not watches:
                    self._next_poll.pop(sync_id, None)
                    self._interval.pop(sync_id, None)
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
                self._next_poll[sync_id] = time.monotonic() + (
                    self.poll_interval_s if changed else self._interval[sync_id]
                )
            else:
                self._next_poll.pop(sync_id, None)
                self._interval.pop(sync_id, None)
            self._wake.set()

    async def _poll_once(self, sync_id: str, watches: list[Watch]) -> bool:
        changed = False
        # Watches not fully started (restart between steps) or ended but not yet told.
        for w in list(watches):
            if w.finished_at is not None:
                await self._finish(w, w.outcome or "execution_ended", None)
                watches.remove(w)
                changed = True
            elif w.cancel_state != "sent" or not w.root_ts:
                if w.cancel_state == "failed":
                    await self._finish(w, "cancel_failed", None)
                    watches.remove(w)
                    continue
                try:
                    await self.service.start(w)
                except Exception as exc:
                    log.warning("resuming watch %s failed: %s", w.id, type(exc).__name__)
                    if w.finished_at is not None:
                        self._forget(w.id)
                    watches.remove(w)
        if not watches:
            return changed

        status: SyncStatus | None = None
        error: PolytomicError | None = None
        try:
            self.polls += 1
            status = await self.client.get_sync_status(sync_id)
        except NotFound:
            for w in watches:
                await self._finish(w, "not_found", "the sync no longer exists in Polytomic")
            return True
        except PolytomicError as exc:
            error = exc

        now = self._clock()
        for w in watches:
            if error is not None:
                await self._trouble(w, error)
                if now >= w.deadline_at:
                    await self._finish(w, "timeout", None)
                continue
            assert status is not None
            execution = None
            if needs_execution_lookup(w, status) and w.execution_id:
                try:
                    execution = await self.client.get_execution(sync_id, w.execution_id)
                except NotFound:
                    execution = None
                except PolytomicError as exc:
                    await self._trouble(w, exc)
                    continue
            if w.api_trouble:
                try:
                    await self.notifier.api_recovered(w)
                    w.api_trouble = False
                    await self.store.update_watch(w.id, api_trouble=False)
                except SlackWriteError as exc:
                    log.warning("could not post recovery for watch %s: %s", w.id, exc.error)
            obs = observe(w, status, execution)
            if obs.state and obs.state != w.last_state and obs.outcome is None:
                try:
                    await self.notifier.state_changed(w, obs.state, obs.detail)
                except SlackWriteError as exc:
                    log.warning("state change of watch %s not posted (%s); will retry", w.id, exc.error)
                    if not exc.permanent:
                        continue
                w.last_state = obs.state
                await self.store.update_watch(w.id, last_state=obs.state)
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
        if w.api_trouble:
            return
        try:
            await self.notifier.api_trouble(w, _problem(error))
        except SlackWriteError as exc:
            log.warning("could not post API trouble for watch %s: %s", w.id, exc.error)
            return
        w.api_trouble = True
        await self.store.update_watch(w.id, api_trouble=True)

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


def _problem(error: PolytomicError) -> str:
    status = getattr(error, "status", None)
    kind = type(error).__name__
    words = {
        "PolytomicTimeout": "it did not answer in time",
        "Unreachable": "it cannot be reached",
        "RateLimited": "it is rate-limiting the bot",
        "ServerError": f"it answers with errors (HTTP {status})",
        "BadResponse": "its answers are malformed",
        "Unauthorized": "it refuses the bot's key (HTTP 401)",
        "Forbidden": "it refuses the bot's key (HTTP 403)",
    }
    return words.get(kind, f"{kind}")
