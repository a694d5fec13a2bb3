"""Polytomic event webhooks: `POST /polytomic/events` (both modes, when `POLYTOMIC_WEBHOOK_SECRET`
is set).

A delivery is accepted only when `Polytomic-Signature` is the HMAC-SHA256 of the raw body keyed
with the secret, compared in constant time. Polytomic does not document the encoding, so hex and
base64 (standard or URL-safe, padded or not) are accepted, with or without a `sha256=` prefix;
several comma-separated signatures are tried each (secret rotation). Anything else is 401 and
nothing is done; the response never says why.

Accepted events are deduplicated on their `id` (a store marker, so also across replicas and
restarts) and answered at once; the Slack and Polytomic work runs after the answer. Events are
at-most-once and unordered, so they are hints: the long-run monitor's listing stays the source
of truth.

- `bulk_sync.running`: the long-run clock starts now (the monitor sets a timer for the run).
- `bulk_sync.failed`, `bulk_sync.completed_with_error`: an alert card in `BOT_ALERT_CHANNEL`
  (error text escaped, a Refresh button), and the run's long-run card, if any, is closed.
- `bulk_sync.completed`, `bulk_sync.canceled`: the run's long-run card, if any, is closed.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from starlette.background import BackgroundTask
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from bot import cards
from bot.monitor import LongRunMonitor
from bot.notifier import Notifier, SlackWriteError
from bot.polytomic.client import PolytomicClient
from bot.polytomic.errors import PolytomicError
from bot.polytomic.resolve import looks_like_uuid
from bot.store import Store

log = logging.getLogger("bot.webhooks")

PATH = "/polytomic/events"
SIGNATURE_HEADER = "Polytomic-Signature"
MAX_BODY = 64 * 1024  # Polytomic's bulk events are well under 2 KiB
MAX_SIGNATURES = 4
MAX_EVENT_AGE = timedelta(hours=24)  # older deliveries are replays: answered 200, ignored
EVENT_MARKER = "polytomic_event"  # (kind, event id): each event is handled once
FAILURE_MARKER = "event_alert"  # (kind, "<execution id>:<type>"): one failure card per run
ALERT_EVENTS = frozenset({"bulk_sync.failed", "bulk_sync.completed_with_error"})
END_EVENTS = {
    "bulk_sync.completed": "completed",
    "bulk_sync.canceled": "canceled",
    "bulk_sync.failed": "failed",
    "bulk_sync.completed_with_error": "errors",
}
_HEX = re.compile(r"[0-9a-fA-F]{64}")


# --------------------------------------------------------------------------------------------
# Signatures


def _decoded(token: str) -> bytes | None:
    """A signature token as the 32 raw bytes it encodes (hex or base64), or None."""
    token = token.strip()
    if token[:7].lower() == "sha256=":
        token = token[7:].strip()
    if not token or len(token) > 128:
        return None
    if _HEX.fullmatch(token):
        return bytes.fromhex(token)
    padded = token + "=" * (-len(token) % 4)
    for decode in (base64.b64decode, base64.urlsafe_b64decode):
        try:
            raw = decode(padded.encode("ascii"))
        except (binascii.Error, ValueError, UnicodeEncodeError):
            continue
        if len(raw) == hashlib.sha256().digest_size:
            return raw
    return None


def signature_ok(body: bytes, header: str | None, secret: bytes) -> bool:
    """True when one of the header's signatures is HMAC-SHA256(body, secret). Constant-time."""
    if not header or not secret:
        return False
    expected = hmac.new(secret, body, hashlib.sha256).digest()
    ok = False
    for token in header.split(",")[:MAX_SIGNATURES]:
        candidate = _decoded(token)
        # compare every candidate (no early exit) so timing does not tell which one matched
        ok |= candidate is not None and hmac.compare_digest(candidate, expected)
    return ok


# --------------------------------------------------------------------------------------------
# The receiver


def _text(value: Any, limit: int = 200) -> str | None:
    return value[:limit] if isinstance(value, str) and value else None


def _when(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)


class EventReceiver:
    def __init__(
        self,
        *,
        secret: str,
        store: Store,
        client: PolytomicClient,
        notifier: Notifier,
        monitor: LongRunMonitor | None,
        alert_channel: str | None,
        max_body: int = MAX_BODY,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self._secret = secret.encode()
        self.store = store
        self.client = client
        self.notifier = notifier
        self.monitor = monitor
        self.alert_channel = alert_channel
        self.max_body = max_body
        self._clock = clock or (lambda: datetime.now(UTC))
        self.accepted = 0
        self.refused = 0
        self.duplicates = 0

    @classmethod
    def from_settings(
        cls,
        settings: Any,
        *,
        store: Store,
        client: PolytomicClient,
        notifier: Notifier,
        monitor: LongRunMonitor | None,
    ) -> EventReceiver | None:
        """None when `POLYTOMIC_WEBHOOK_SECRET` is not set."""
        if settings.polytomic_webhook_secret is None:
            return None
        return cls(
            secret=settings.polytomic_webhook_secret.get_secret_value(),
            store=store,
            client=client,
            notifier=notifier,
            monitor=monitor,
            alert_channel=settings.bot_alert_channel,
        )

    # -- HTTP ------------------------------------------------------------------------------

    async def _body(self, request: Request) -> bytes | None:
        """The raw body, or None when it is larger than allowed (read no further than that)."""
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_body):
            return None
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > self.max_body:
                return None
            chunks.append(chunk)
        return b"".join(chunks)

    async def handle(self, request: Request) -> Response:
        try:
            body = await self._body(request)
        except ClientDisconnect:
            return PlainTextResponse("incomplete body", status_code=400)
        if body is None:
            return PlainTextResponse("payload too large", status_code=413)
        if not signature_ok(body, request.headers.get(SIGNATURE_HEADER), self._secret):
            self.refused += 1
            log.warning("refused a Polytomic event delivery: missing or wrong signature")
            return PlainTextResponse("invalid signature", status_code=401)
        try:
            event = json.loads(body)
        except ValueError:
            return PlainTextResponse("body is not JSON", status_code=400)
        if not isinstance(event, dict):
            return PlainTextResponse("body is not a JSON object", status_code=400)
        event_id, event_type = _text(event.get("id")), _text(event.get("type"), 100)
        if event_id is None or event_type is None:
            return PlainTextResponse("event id or type missing", status_code=400)
        created = _when(event.get("created_at"))
        if created is not None and self._clock() - created > MAX_EVENT_AGE:
            log.info(
                "ignored stale Polytomic event %s (%s) from %s", event_id, event_type, created.isoformat()
            )
            return JSONResponse({"ok": True, "ignored": "stale"})
        try:
            first = await self.store.claim_marker(EVENT_MARKER, event_id, value=event_type)
        except Exception as exc:
            log.warning("could not record Polytomic event %s: %s", event_id, type(exc).__name__)
            return PlainTextResponse("try again", status_code=503)
        if not first:
            self.duplicates += 1
            log.info("duplicate Polytomic event %s (%s) ignored", event_id, event_type)
            return JSONResponse({"ok": True, "duplicate": True})
        self.accepted += 1
        log.info("Polytomic event %s (%s) accepted", event_id, event_type)
        return JSONResponse({"ok": True}, background=BackgroundTask(self.process, event))

    # -- the work, after the answer --------------------------------------------------------

    async def process(self, event: dict) -> None:
        try:
            await self._process(event)
        except Exception:
            log.exception("handling Polytomic event %s failed", _text(event.get("id")))

    async def _process(self, event: dict) -> None:
        kind = _text(event.get("type"), 100) or ""
        payload = event.get("event") if isinstance(event.get("event"), dict) else {}
        sync_id = _text(payload.get("sync_id"), 64)
        execution_id = _text(payload.get("execution_id"), 64)
        if not sync_id or not looks_like_uuid(sync_id):
            log.info("Polytomic event %s (%s) names no bulk sync; ignored", event.get("id"), kind)
            return
        name = _text(payload.get("sync_name")) or _text(payload.get("name"))
        created = _when(event.get("created_at"))
        if kind == "bulk_sync.running":
            if self.monitor is not None and execution_id:
                self.monitor.note_running(sync_id, execution_id, started_at=created, sync_name=name)
            return
        if kind in ALERT_EVENTS:
            await self._alert(kind, sync_id, name, execution_id, _text(payload.get("error"), 4000), created)
        if kind in END_EVENTS and self.monitor is not None and execution_id:
            await self.monitor.note_ended(sync_id, execution_id, END_EVENTS[kind])

    async def _alert(
        self,
        kind: str,
        sync_id: str,
        name: str | None,
        execution_id: str | None,
        error: str | None,
        at: datetime | None,
    ) -> None:
        if not self.alert_channel:
            log.info("Polytomic event %s for sync %s not posted: BOT_ALERT_CHANNEL is not set", kind, sync_id)
            return
        if execution_id and not await self.store.claim_marker(
            FAILURE_MARKER, f"{execution_id}:{kind}", value=sync_id
        ):
            return  # this run's failure was posted already (an event re-sent under a new id)
        if name is None:
            try:
                name = (await self.client.get_sync(sync_id)).name
            except PolytomicError:
                name = None
        message = cards.event_alert(
            kind, sync_id=sync_id, sync_name=name, execution_id=execution_id, error=error, at=at
        )
        try:
            await self.notifier.post(self.alert_channel, message)
        except SlackWriteError as exc:
            log.error(
                "could not post the %s alert in BOT_ALERT_CHANNEL %s: %s", kind, self.alert_channel, exc.error
            )


def route(get_receiver: Callable[[], EventReceiver | None], *, enabled: bool, path: str = PATH) -> Route:
    """The Starlette route. `get_receiver` is read per request (the receiver exists once the bot
    has started): 404 when webhooks are not enabled, 503 while starting (Polytomic retries)."""

    async def endpoint(request: Request) -> Response:
        if not enabled:
            return PlainTextResponse("not found", status_code=404)
        receiver = get_receiver()
        if receiver is None:
            return PlainTextResponse("starting", status_code=503)
        return await receiver.handle(request)

    return Route(path, endpoint, methods=["POST"])
