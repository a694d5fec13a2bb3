"""The cancellation, free of Slack wiring: authorize, resolve names, re-read the run, dedupe,
record, send the cancel once, and hand the watch to the watcher.

Order matters and is chosen so that nothing is sent twice or forgotten:
1. the watch row is created first, leased to this replica; a unique index on unfinished watches
   makes a second click, a second engineer or another replica find the existing one instead of
   cancelling again (they are added to it and told in the thread: "also asked");
2. the headline is posted (or the clicked card becomes it), so the thread exists before anything
   happens in Polytomic; if the bot cannot post there, nothing is cancelled;
3. the cancel is sent with the watch's own Idempotency-Key (a restart or another replica resuming
   the watch re-sends with that same key, so Polytomic sees one action);
4. the watcher polls until the run ends.

What a hard kill (SIGKILL, OOM, power loss) can do to the thread, step by step:
* between posting the headline and recording its ts: the resumed watch posts a second headline
  (a typed command; a clicked card is edited in place, which repeats harmlessly);
* between recording the cancel as sent and posting "asked to cancel": that reply is lost;
* "also asked" replies are claimed with a marker before posting: a kill in between loses one;
* the terminal reply is posted first and recorded right after (`conclude`): a kill in between
  repeats it on resume rather than losing it. An on-call engineer can live with the end said twice;
  a thread that never says how the run ended breaks the promise the bot made to the channel.
Each window is the time between one Slack answer and the next database write (or the reverse),
with no other await in between.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from bot import cards, logs, metrics
from bot.access import Access
from bot.errors import AccessDenied, NothingRunning, UnknownName
from bot.notifier import Notifier, SlackWriteError
from bot.polytomic.client import PolytomicClient, new_idempotency_key
from bot.polytomic.errors import TRANSIENT, Conflict, NotFound, PolytomicError
from bot.polytomic.models import BulkSync, SyncStatus, is_running, is_terminal
from bot.polytomic.resolve import looks_like_uuid, resolve_schema, resolve_sync
from bot.store import Store, Watch

log = logging.getLogger("bot.service")


@dataclass
class Origin:
    """Who asked, from where."""

    team_id: str
    user_id: str
    channel_id: str
    enterprise_id: str | None = None
    request_id: str = field(default_factory=logs.request_id_or_new)  # the Slack request's, when bound
    source_ts: str | None = None  # the clicked (non-ephemeral) card, which becomes the headline


@dataclass
class Target:
    sync: BulkSync
    status: SyncStatus
    schema_id: str | None
    schema_label: str | None
    execution_id: str
    state: str | None


@dataclass
class CancelResult:
    watch: Watch
    created: bool  # False: somebody already asked; this request joined that watch
    newly_joined: bool = False


class CannotPost(Exception):
    """The bot cannot post in the channel; nothing was cancelled."""

    def __init__(self, error: str, channel_id: str) -> None:
        super().__init__(error)
        self.error = error
        self.channel_id = channel_id


def dedupe_key(team_id: str, sync_id: str, schema_id: str | None, execution_id: str | None) -> str:
    return f"{team_id}:{sync_id}:{schema_id if schema_id is not None else '*'}:{execution_id or '-'}"


class CancelService:
    def __init__(
        self,
        *,
        client: PolytomicClient,
        store: Store,
        notifier: Notifier,
        access: Access,
        watch_timeout_s: float,
        owner: str,
        lease_s: float,
        on_watch: Callable[[Watch], None] | None = None,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self.client = client
        self.store = store
        self.notifier = notifier
        self.access = access
        self.watch_timeout_s = watch_timeout_s
        self.owner = owner
        self.lease_s = lease_s
        self.on_watch = on_watch
        self._clock = clock or (lambda: datetime.now(UTC))
        # Watches whose `start` runs in this process right now: the watcher renews their leases
        # and leaves them alone until they are handed over with `on_watch`.
        self.starting: set[str] = set()
        self._final_unrecorded: set[str] = set()  # terminal reply posted, DB write still owed
        self._healing: set[asyncio.Task] = set()  # headline updates retried after the end
        self._inflight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    # -- shutdown --------------------------------------------------------------------------

    @property
    def inflight(self) -> int:
        """Cancel requests being handled right now."""
        return self._inflight

    async def wait_idle(self, timeout_s: float) -> bool:
        """Wait (at most `timeout_s`) until no cancel request is being handled; True if none is."""
        if self._inflight:
            try:
                await asyncio.wait_for(self._idle.wait(), timeout_s)
            except TimeoutError:
                pass
        return self._inflight == 0

    # -- reading ---------------------------------------------------------------------------

    async def find_sync(self, ref: str) -> BulkSync:
        ref = ref.strip()
        if looks_like_uuid(ref):
            try:
                return await self.client.get_sync(ref)
            except NotFound:
                raise UnknownName("sync", ref, []) from None
        return resolve_sync(ref, await self.client.list_syncs())

    async def locate(self, sync_ref: str, schema_ref: str | None, *, exact_ids: bool = False) -> Target:
        """Resolve names and read the run's current state. `exact_ids`: the refs are ids from a
        button value, not names typed by a person."""
        if exact_ids:
            if not looks_like_uuid(sync_ref):
                raise UnknownName("sync", sync_ref, [])
            try:
                sync = await self.client.get_sync(sync_ref)
            except NotFound:
                raise UnknownName("sync", sync_ref, []) from None
        else:
            sync = await self.find_sync(sync_ref)
        status = await self.client.get_sync_status(sync.id or sync_ref)
        current = status.current_execution
        schema_id = schema_label = None
        if schema_ref is not None:
            if exact_ids:
                schema_id = schema_ref
            else:
                schemas = await self.client.list_schemas(sync.id or sync_ref)
                schema_id = resolve_schema(schema_ref, schemas, current.schemas if current else ())
        what = _what(sync, schema_id)
        if current is None or not current.id or is_terminal(current.status):
            last = status.last_execution
            raise NothingRunning(what, last.status if last else None)
        state = current.status
        if schema_id is not None:
            entry = current.schema_entry(schema_id)
            if entry is None or not is_running(entry.status):
                raise NothingRunning(what, entry.status if entry else None)
            state = entry.status
            schema_label = entry.output_name or schema_id
        if current.status == "canceling" and schema_id is None:
            state = "canceling"
        return Target(sync, status, schema_id, schema_label, current.id, state)

    # -- the cancellation -----------------------------------------------------------------

    async def request_cancel(
        self, origin: Origin, sync_ref: str, schema_ref: str | None, *, exact_ids: bool = False
    ) -> CancelResult:
        self._inflight += 1
        self._idle.clear()
        try:
            return await self._request_cancel(origin, sync_ref, schema_ref, exact_ids=exact_ids)
        finally:
            self._inflight -= 1
            if not self._inflight:
                self._idle.set()

    async def _request_cancel(
        self, origin: Origin, sync_ref: str, schema_ref: str | None, *, exact_ids: bool
    ) -> CancelResult:
        try:
            await self.access.check_cancel(
                user_id=origin.user_id,
                channel_id=origin.channel_id,
                team_id=origin.team_id,
                enterprise_id=origin.enterprise_id,
            )
        except AccessDenied:
            metrics.CANCELS.labels("denied").inc()
            raise
        target = await self.locate(sync_ref, schema_ref, exact_ids=exact_ids)
        sync_id = target.sync.id or sync_ref

        # A whole-execution cancel already under way covers every schema of that execution
        # (checked in the same transaction as the insert, so a race between the two is one action).
        keys = [dedupe_key(origin.team_id, sync_id, None, target.execution_id)]
        if target.schema_id is not None:
            keys.append(dedupe_key(origin.team_id, sync_id, target.schema_id, target.execution_id))

        now = self._clock()
        watch = Watch(
            id=uuid.uuid4().hex,
            dedupe_key=keys[-1],
            team_id=origin.team_id,
            channel_id=origin.channel_id,
            root_ts=None,
            sync_id=sync_id,
            sync_name=target.sync.name or sync_id,
            schema_id=target.schema_id,
            schema_label=target.schema_label,
            execution_id=target.execution_id,
            requested_by=origin.user_id,
            also_requested=[],
            idempotency_key=new_idempotency_key(),
            cancel_state="pending",
            last_state=target.state,
            api_trouble=False,
            created_at=now,
            deadline_at=now + timedelta(seconds=self.watch_timeout_s),
            finished_at=None,
            outcome=None,
            final_posted=False,
            lease_owner=self.owner,
            lease_until=now + timedelta(seconds=self.lease_s),
            next_poll_at=now,
            request_id=origin.request_id,
            source_ts=origin.source_ts,
        )
        # Ours from the moment the row exists: the watcher must not resume it while this request
        # is still posting the headline and sending the cancel.
        new_id = watch.id
        self.starting.add(new_id)
        try:
            watch, created = await self.store.create_watch(
                watch, covered_by=keys[0] if target.schema_id is not None else None
            )
            if not created:
                return await self._join(watch, origin)
            await self.store.audit(
                action="cancel_requested",
                outcome="accepted",
                team_id=origin.team_id,
                user_id=origin.user_id,
                channel_id=origin.channel_id,
                sync_id=sync_id,
                schema_id=target.schema_id,
                execution_id=target.execution_id,
                request_id=origin.request_id,
                watch_id=watch.id,
            )
            await self.start(watch)
        finally:
            self.starting.discard(new_id)
        return CancelResult(watch, True)

    async def _join(self, watch: Watch, origin: Origin) -> CancelResult:
        newly = await self.store.add_requester(watch.id, origin.user_id)
        metrics.CANCELS.labels("duplicate").inc()
        await self.store.audit(
            action="cancel_requested",
            outcome="duplicate",
            team_id=origin.team_id,
            user_id=origin.user_id,
            channel_id=origin.channel_id,
            sync_id=watch.sync_id,
            schema_id=watch.schema_id,
            execution_id=watch.execution_id,
            request_id=origin.request_id,
            watch_id=watch.id,
        )
        if newly:
            fresh = await self.store.get_watch(watch.id) or watch
            # No thread yet (the headline is being posted, maybe by another replica): whoever
            # posts it tells the early joiners (see `start`).
            if fresh.root_ts:
                await self._tell_also_asked(fresh, origin.user_id)
            watch = fresh
        return CancelResult(watch, False, newly_joined=newly)

    async def _tell_also_asked(self, watch: Watch, user_id: str) -> None:
        """Post "@who also asked" once per user and watch, whoever gets here first (a joiner, the
        replica posting the headline). Claimed before posting: a kill in between loses the reply."""
        if not await self.store.claim_marker("also_asked", f"{watch.id}:{user_id}"):
            return
        try:
            await self.notifier.also_asked(watch, user_id)
        except SlackWriteError as exc:
            log.warning("could not add 'also asked' to watch %s: %s", watch.id, exc.error)

    async def start(self, watch: Watch) -> None:
        """Headline first, then the cancel, then the watcher. Also used to resume a watch whose
        cancel was never confirmed sent (a restart in between)."""
        with logs.request_context(**logs.watch_fields(watch)):
            await self._start(watch)

    async def _start(self, watch: Watch) -> None:
        self.starting.add(watch.id)  # (already there when a request creates the watch)
        try:
            if not watch.root_ts:
                try:
                    watch.root_ts = await self.notifier.open_headline(watch)
                except SlackWriteError as exc:
                    if exc.permanent:
                        await self._abandon(watch, exc.error)
                        raise CannotPost(exc.error, watch.channel_id) from None
                    raise
                await self.store.update_watch(watch.id, root_ts=watch.root_ts, urgent=True)
                fresh = await self.store.get_watch(watch.id)
                if fresh is not None:
                    watch.also_requested = fresh.also_requested
                    for user_id in fresh.also_requested:
                        await self._tell_also_asked(watch, user_id)
            if watch.cancel_state == "pending":
                await self.send_cancel(watch)
        finally:
            self.starting.discard(watch.id)
        if self.on_watch is not None and watch.finished_at is None:
            self.on_watch(watch)

    async def _audit_watch(
        self, watch: Watch, action: str, outcome: str, *, detail: str | None = None
    ) -> None:
        """One audit record about a watch: who asked for what, where, and how it went."""
        await self.store.audit(
            action=action,
            outcome=outcome,
            team_id=watch.team_id,
            user_id=watch.requested_by,
            channel_id=watch.channel_id,
            sync_id=watch.sync_id,
            schema_id=watch.schema_id,
            execution_id=watch.execution_id,
            detail=detail,
            request_id=watch.request_id,
            watch_id=watch.id,
        )

    async def send_cancel(self, watch: Watch) -> None:
        try:
            if watch.schema_id is not None:
                await self.client.cancel_schema(
                    watch.sync_id, watch.schema_id, idempotency_key=watch.idempotency_key
                )
            else:
                await self.client.cancel_execution(
                    watch.sync_id, watch.execution_id or "", idempotency_key=watch.idempotency_key
                )
        except (Conflict, *TRANSIENT) as exc:
            # Not refused: Polytomic may not have seen it, or is still handling it (409 for the
            # key). The same key is sent again by the watcher's next poll (until the deadline).
            log.warning("cancel for watch %s not confirmed (%s); will send it again with the same key",
                        watch.id, type(exc).__name__)
            await self._audit_watch(
                watch, "cancel_sent", f"retry:{type(exc).__name__}", detail=exc.message[:500]
            )
            if not watch.api_trouble:
                watch.api_trouble = True  # recorded, then posted (a kill in between loses the notice)
                await self.store.update_watch(watch.id, api_trouble=True)
                try:
                    await self.notifier.api_trouble(watch, describe_problem(exc))
                except SlackWriteError as slack_exc:
                    log.warning("could not post API trouble for watch %s: %s", watch.id, slack_exc.error)
            return
        except PolytomicError as exc:
            metrics.CANCELS.labels("failed").inc()
            watch.cancel_state = "failed"
            await self.store.update_watch(watch.id, cancel_state="failed")
            await self._audit_watch(
                watch, "cancel_sent", f"error:{type(exc).__name__}", detail=exc.message[:500]
            )
            await self.conclude(watch, "cancel_failed", detail=exc.message)
            raise
        watch.cancel_state = "sent"
        await self.store.update_watch(watch.id, cancel_state="sent")
        metrics.CANCELS.labels("sent").inc()
        try:
            await self.notifier.cancel_requested(watch)
        except SlackWriteError as exc:
            log.warning("could not post 'cancellation requested' for watch %s: %s", watch.id, exc.error)
        await self._audit_watch(watch, "cancel_sent", "sent")

    async def conclude(self, watch: Watch, outcome: str, *, detail: str | None = None) -> None:
        """Record the end once and post the terminal reply once (CONTRACT: exactly once).

        Post, then record: the only await between Slack's answer and `final_posted` is that one
        database write, so a hard kill repeats the terminal reply in a tiny window and never loses
        it. The headline is refreshed after the record (it heals from state anyway).
        """
        with logs.request_context(**logs.watch_fields(watch)):
            await self._conclude(watch, outcome, detail)

    async def _conclude(self, watch: Watch, outcome: str, detail: str | None) -> None:
        if watch.finished_at is None:
            await self.store.finish_watch(watch.id, outcome)
            fresh = await self.store.get_watch(watch.id)
            if fresh is not None:
                watch.finished_at, watch.outcome = fresh.finished_at, fresh.outcome
                watch.final_posted = fresh.final_posted
        if watch.final_posted and watch.id not in self._final_unrecorded:
            return
        if not watch.final_posted:
            took = ((watch.finished_at or self._clock()) - watch.created_at).total_seconds()
            message = cards.final_reply(watch, watch.outcome or outcome, took_s=max(took, 0.0), detail=detail)
            try:
                await self.notifier.reply(watch, message)
            except SlackWriteError as exc:
                if not exc.permanent:
                    raise
                # The thread cannot be written (archived, bot removed, token revoked): audit the end,
                # tell the requester directly if Slack lets us, record it, and let the caller give up.
                ended = watch.outcome or outcome
                await self._audit_end(watch, ended, f"terminal reply not posted: {exc.error}")
                await self._tell_requester_directly(watch, message, exc.error)
                await self.store.mark_final_posted(watch.id)
                watch.final_posted = True
                raise
            watch.final_posted = True
            self._final_unrecorded.add(watch.id)
        await self.store.mark_final_posted(watch.id)  # a failure here is retried by the next poll
        self._final_unrecorded.discard(watch.id)
        ended = watch.outcome or outcome
        took = ((watch.finished_at or self._clock()) - watch.created_at).total_seconds()
        metrics.watch_ended(ended, took)
        log.info("watch %s ended %s after %.1f s (final reply posted)", watch.id, ended, took)
        try:
            await self.notifier.refresh_headline(watch)
        except SlackWriteError as exc:
            log.warning("headline update failed for watch %s: %s", watch.id, exc.error)
            if not exc.permanent:  # nothing else will heal it: the watch is over
                task = asyncio.create_task(self._heal_headline(watch))
                self._healing.add(task)
                task.add_done_callback(self._healing.discard)
        await self._audit_end(watch, watch.outcome or outcome, detail)

    async def _heal_headline(self, watch: Watch) -> None:
        for delay in (2, 5, 15, 30, 60, 120):
            await asyncio.sleep(delay)
            try:
                await self.notifier.refresh_headline(watch)
                return
            except SlackWriteError as exc:
                if exc.permanent:
                    return
        log.warning("gave up updating the headline of watch %s", watch.id)

    async def _tell_requester_directly(self, watch: Watch, message: dict, error: str) -> None:
        """Best effort: a direct message (the app's DM) to the requester with the end."""
        note = f"I could not post in the thread of this cancellation ({error}). " + message["text"]
        block = {"type": "section", "text": {"type": "mrkdwn", "text": note[:2900]}}
        try:
            await self.notifier.post(watch.requested_by, {"text": note, "blocks": [block]})
        except SlackWriteError as exc:
            log.warning("could not tell %s how watch %s ended: %s", watch.requested_by, watch.id, exc.error)

    async def _audit_end(self, watch: Watch, outcome: str, detail: str | None) -> None:
        await self._audit_watch(watch, "watch_ended", outcome, detail=(detail or "")[:500] or None)

    async def _abandon(self, watch: Watch, error: str) -> None:
        """Nothing was sent and no thread exists: close the watch quietly (the user is told)."""
        await self.store.finish_watch(watch.id, "not_sent")
        await self.store.mark_final_posted(watch.id)
        await self._audit_watch(watch, "cancel_requested", f"not_sent:{error}")


def describe_problem(error: PolytomicError) -> str:
    """What is wrong with Polytomic, in words for the thread."""
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
        "Conflict": "it is still handling the cancel request",
    }
    return words.get(kind, f"{kind}")


def _what(sync: BulkSync, schema_id: str | None) -> str:
    name = sync.name or sync.id or "?"
    return f"{schema_id} in {name}" if schema_id is not None else name
