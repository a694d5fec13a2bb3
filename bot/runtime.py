"""Assembles the bot from its parts and runs it: one process, one event loop.

The HTTP listener (uvicorn + Starlette) serves health, readiness and metrics in both modes, and
`POST /slack/events` in HTTP mode; Socket Mode connects out with the app-level token.

Leases: a replica holds its watches for `lease_s` seconds (renewed every `lease_s / 6`, at most
twice a second), so a replica that dies without releasing them hands them over within about
`lease_s` + one claim interval. The default is 30 s. `BOT_LEASE_S` overrides it: an internal knob
for tests and drills, deliberately not part of the contract's settings.

Shutdown (SIGTERM/SIGINT, `serve`): readiness turns 503 and no new watches are claimed; the HTTP
listener stops accepting and lets requests in flight (Slack acks) finish; cancel requests being
handled and polls in flight get a grace period; leases are released so that another replica (or
the restarted process) resumes the watches at once; then the process exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hashlib
import hmac
import json
import logging
import os
import signal
import socket
import time
import uuid
from urllib.parse import parse_qs

import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from slack_bolt.adapter.starlette.async_handler import AsyncSlackRequestHandler
from slack_bolt.async_app import AsyncApp
from slack_sdk.web.async_client import AsyncWebClient
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from bot import metrics, shortcut, webhooks
from bot.access import Access
from bot.monitor import LongRunMonitor
from bot.notifier import Notifier
from bot.polytomic.client import PolytomicClient
from bot.service import CancelService
from bot.settings import Settings
from bot.slack_app import SlackHandlers
from bot.store import Store
from bot.watcher import Watcher

log = logging.getLogger("bot.runtime")

MAX_SLACK_BODY = 256 * 1024  # Slack's own payloads are far smaller; refuse anything larger unread
DEFAULT_LEASE_S = 30.0
LEASE_ENV = "BOT_LEASE_S"  # internal/testing knob (see the module docstring)
STOP_GRACE_S = 2.5


def lease_from_env(default: float = DEFAULT_LEASE_S) -> float:
    raw = os.environ.get(LEASE_ENV, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        log.warning("%s=%r is not a number; using %.0f s", LEASE_ENV, raw, default)
        return default
    if not 0.5 <= value <= 3600:
        log.warning("%s=%r is out of range (0.5..3600); using %.0f s", LEASE_ENV, raw, default)
        return default
    return value


class _TokenUnusedFilter(logging.Filter):
    """Bolt reads SLACK_BOT_TOKEN from the environment even when given a client, then warns that the
    token "will be unused": true, expected here, and confusing in an operator's log."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "will be unused" not in record.getMessage()


logging.getLogger("slack_bolt.AsyncApp").addFilter(_TokenUnusedFilter())


def slack_body_problem(raw: bytes, content_type: str) -> str | None:
    """Why a signed request body is not something Slack sends (None when it is). Checked before
    Bolt parses it, so that odd bodies get a 400 instead of an exception deep in a matcher."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return "body is not UTF-8"
    if content_type.startswith("application/json"):
        try:
            data = json.loads(text) if text else {}
        except (ValueError, RecursionError):
            return "body is not JSON"
        return None if isinstance(data, dict) else "body is not a JSON object"
    form = parse_qs(text, keep_blank_values=True)
    if "payload" not in form:
        return None
    try:
        payload = json.loads(form["payload"][0])
    except (ValueError, RecursionError):
        return "payload is not JSON"
    if not isinstance(payload, dict):
        return "payload is not a JSON object"
    for key in ("user", "team", "container", "channel", "view", "message", "enterprise", "state"):
        if payload.get(key) is not None and not isinstance(payload[key], dict):
            return f"payload.{key} is not an object"
    actions = payload.get("actions")
    if actions is not None and (
        not isinstance(actions, list) or not actions or not all(isinstance(a, dict) for a in actions)
    ):
        return "payload.actions is not a list of objects"
    for action in actions or []:
        for key in ("action_id", "block_id", "value", "type"):
            if action.get(key) is not None and not isinstance(action[key], str):
                return f"payload.actions[].{key} is not a string"
    for key in ("callback_id", "trigger_id", "response_url", "action_id"):
        if payload.get(key) is not None and not isinstance(payload[key], str):
            return f"payload.{key} is not a string"
    if not isinstance(payload.get("type"), str):
        return "payload.type is missing"
    return None


class StartupError(Exception):
    """A start-up failure worth one line to the operator (bad token, unreachable database)."""


def slack_client(settings: Settings) -> AsyncWebClient:
    return AsyncWebClient(
        token=settings.slack_bot_token.get_secret_value(),
        base_url=settings.slack_api_base,
        timeout=10,
        retry_handlers=metrics.slack_retry_handlers(connection=3, rate_limited=5, server=3),
    )


class Runtime:
    def __init__(
        self,
        settings: Settings,
        *,
        owner: str | None = None,
        lease_s: float | None = None,
        claim_every_s: float | None = None,
        stop_grace_s: float = STOP_GRACE_S,
    ) -> None:
        self.settings = settings
        self.owner = owner or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.lease_s = lease_s if lease_s is not None else lease_from_env()
        self.claim_every_s = claim_every_s
        self.stop_grace_s = stop_grace_s
        self.service: CancelService | None = None
        self.store: Store | None = None
        self.client: PolytomicClient | None = None
        self.slack: AsyncWebClient | None = None
        self.watcher: Watcher | None = None
        self.socket_handler = None
        self.app: AsyncApp | None = None
        self.monitor: LongRunMonitor | None = None
        self.events: webhooks.EventReceiver | None = None
        self.shortcut: shortcut.MessageShortcut | None = None
        self.http_app = self._build_http()
        self._ready = False

    # -- parts -----------------------------------------------------------------------------

    async def start(self) -> None:
        s = self.settings
        try:
            self.store = await Store.open(s.bot_database_url)
        except Exception as exc:
            raise StartupError(f"BOT_DATABASE_URL: cannot open the database ({type(exc).__name__})") from None
        self.client = PolytomicClient.from_settings(s)
        self.slack = slack_client(s)
        access = Access(
            users=s.bot_allowed_users,
            usergroups=s.bot_allowed_usergroups,
            channels=s.bot_allowed_channels,
            fetch_members=self._usergroup_members,
        )
        try:
            auth = await self.slack.auth_test()
        except Exception as exc:
            code = (
                getattr(getattr(exc, "response", None), "get", lambda _k: None)("error") or type(exc).__name__
            )
            raise StartupError(f"SLACK_BOT_TOKEN: Slack auth.test failed ({code})") from None
        access.own_team_id = auth.get("team_id")
        access.own_enterprise_id = auth.get("enterprise_id") or None
        self.bot_user_id = auth.get("user_id")
        notifier = Notifier(self.slack)
        service = CancelService(
            client=self.client,
            store=self.store,
            notifier=notifier,
            access=access,
            watch_timeout_s=s.bot_watch_timeout_s,
            owner=self.owner,
            lease_s=self.lease_s,
        )
        self.watcher = Watcher(
            store=self.store,
            client=self.client,
            service=service,
            owner=self.owner,
            poll_interval_s=s.bot_poll_interval_s,
            poll_max_interval_s=s.bot_poll_max_interval_s,
            lease_s=self.lease_s,
            claim_every_s=self.claim_every_s,
            stop_grace_s=self.stop_grace_s,
        )
        service.on_watch = self.watcher.track
        metrics.register_watcher(self.watcher)
        self.service = service
        self.app = AsyncApp(
            client=self.slack,
            signing_secret=s.slack_signing_secret.get_secret_value() if s.slack_signing_secret else "unused",
            request_verification_enabled=s.mode == "http",
            ignoring_self_events_enabled=True,
        )
        SlackHandlers(
            app=self.app,
            client=self.client,
            service=service,
            access=access,
            notifier=notifier,
            slack=self.slack,
        ).register()
        # Alerts: long-run cards, Polytomic event webhooks, the message shortcut.
        self.monitor = LongRunMonitor.from_settings(
            s, client=self.client, store=self.store, notifier=notifier, owner=self.owner
        )
        self.events = webhooks.EventReceiver.from_settings(
            s, store=self.store, client=self.client, notifier=notifier, monitor=self.monitor
        )
        self.shortcut = shortcut.register(
            self.app,
            service=service,
            client=self.client,
            notifier=notifier,
            access=access,
            settings=s,
            bot_user_id=self.bot_user_id,
        )
        metrics.instrument_bolt(self.app)
        self._bolt_http = AsyncSlackRequestHandler(self.app)
        self.watcher.start()
        if self.monitor is not None:
            self.monitor.start()
        if s.mode == "socket":
            from slack_bolt.adapter.socket_mode.async_handler import AsyncSocketModeHandler

            self.socket_handler = AsyncSocketModeHandler(
                self.app, s.slack_app_token.get_secret_value(), web_client=self.slack
            )
            await self.socket_handler.connect_async()
        self._ready = True
        log.info("bot started in %s mode as %s (owner %s)", s.mode, self.bot_user_id, self.owner)

    async def _usergroup_members(self, group_id: str) -> list[str]:
        response = await self.slack.usergroups_users_list(usergroup=group_id)
        return list(response.get("users") or [])

    def begin_shutdown(self) -> None:
        """Stop taking work at once (safe to call from a signal handler, and more than once):
        readiness turns 503 and no new watches are claimed."""
        self._ready = False
        if self.watcher is not None:
            self.watcher.drain()

    async def stop(self) -> None:
        """Finish what is in flight (bounded by `stop_grace_s` per step), release leases, close."""
        self.begin_shutdown()
        if self.monitor is not None:
            with contextlib.suppress(Exception):
                await self.monitor.stop()
        if self.socket_handler is not None:
            with contextlib.suppress(Exception):
                await self.socket_handler.close_async()
        if self.service is not None and not await self.service.wait_idle(self.stop_grace_s):
            log.warning("%d cancel request(s) still in flight at shutdown; their watches resume elsewhere",
                        self.service.inflight)
        if self.watcher is not None:
            await self.watcher.stop(release=True, grace_s=self.stop_grace_s)
        if self.client is not None:
            with contextlib.suppress(Exception):
                await self.client.aclose()
        if self.store is not None:
            await self.store.close()
        if self.slack is not None and getattr(self.slack, "session", None) is not None:
            with contextlib.suppress(Exception):
                await self.slack.session.close()

    # -- HTTP ------------------------------------------------------------------------------

    def _signature_ok(self, request: Request, raw: bytes) -> bool:
        """Slack's v0 signature over the raw body, within 5 minutes, in constant time; checked
        here, before anything parses the body (Bolt checks it again)."""
        secret = self.settings.slack_signing_secret
        timestamp = request.headers.get("x-slack-request-timestamp", "")
        signature = request.headers.get("x-slack-signature", "")
        if secret is None or not timestamp.isdigit() or len(timestamp) > 12 or not signature:
            return False
        if abs(time.time() - int(timestamp)) > 60 * 5:
            return False
        base = b"v0:" + timestamp.encode() + b":" + raw
        expected = "v0=" + hmac.new(secret.get_secret_value().encode(), base, hashlib.sha256).hexdigest()
        return hmac.compare_digest(expected, signature)

    def _build_http(self) -> Starlette:
        async def slack_events(request: Request) -> Response:
            if self.settings.mode != "http" or self.app is None:
                return PlainTextResponse("not found", status_code=404)
            length = request.headers.get("content-length")
            if length is not None and (not length.isdigit() or int(length) > MAX_SLACK_BODY):
                return PlainTextResponse("payload too large", status_code=413)
            body = bytearray()
            async for chunk in request.stream():  # chunked bodies too: stop reading at the cap
                body += chunk
                if len(body) > MAX_SLACK_BODY:
                    return PlainTextResponse("payload too large", status_code=413)
            raw = bytes(body)
            if not self._signature_ok(request, raw):
                return PlainTextResponse("invalid request", status_code=401)
            problem = slack_body_problem(raw, request.headers.get("content-type", ""))
            if problem:
                log.info("refused a signed but malformed Slack request: %s", problem)
                return PlainTextResponse(f"malformed request: {problem}", status_code=400)
            request._body = raw  # Bolt's adapter reads the cached body
            try:
                return await self._bolt_http.handle(request)
            except Exception as exc:  # a shape Bolt cannot route: refuse it, never a 500
                ref = uuid.uuid4().hex[:8]
                log.warning("Slack request refused ref=%s: %s", ref, type(exc).__name__,
                            extra={"correlation_id": ref})
                return PlainTextResponse(f"malformed request (ref {ref})", status_code=400)

        async def healthz(_request: Request) -> Response:
            return JSONResponse({"ok": True})

        async def readyz(_request: Request) -> Response:
            checks = {"started": self._ready}
            checks["database"] = bool(self.store is not None and await self.store.ready())
            if self.settings.mode == "socket":
                client = getattr(self.socket_handler, "client", None)
                connected = False
                if client is not None:
                    with contextlib.suppress(Exception):
                        connected = bool(await client.is_connected())
                checks["slack_socket"] = connected
            ok = all(checks.values())
            return JSONResponse({"ok": ok, **checks}, status_code=200 if ok else 503)

        async def metrics_text(_request: Request) -> Response:
            return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

        return Starlette(
            middleware=[Middleware(metrics.AsgiMetrics)],
            routes=[
                Route("/slack/events", slack_events, methods=["POST"]),
                Route("/healthz", healthz, methods=["GET"]),
                Route("/readyz", readyz, methods=["GET"]),
                Route("/metrics", metrics_text, methods=["GET"]),
                webhooks.route(
                    lambda: self.events, enabled=self.settings.polytomic_webhook_secret is not None
                ),
            ]
        )


class HttpServer(uvicorn.Server):
    """uvicorn without its own signal capture: it re-raises SIGTERM after serving, which would
    kill the process before leases are released. The caller decides what a signal does."""

    @contextlib.contextmanager
    def capture_signals(self):
        yield


def http_server(app, host: str, port: int) -> HttpServer:
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level="warning",
        access_log=False,
        lifespan="off",
        timeout_graceful_shutdown=3,
    )
    return HttpServer(config)


async def serve(settings: Settings) -> None:
    """Run until SIGTERM/SIGINT: then stop taking work, let requests in flight finish (their acks),
    release leases and exit (a second signal skips the wait for open HTTP requests)."""
    runtime = Runtime(settings)
    server = http_server(runtime.http_app, settings.bot_host, settings.bot_port)
    loop = asyncio.get_running_loop()
    signals = 0

    def _exit() -> None:
        nonlocal signals
        signals += 1
        log.info("signal received: shutting down")
        runtime.begin_shutdown()
        server.should_exit = True
        if signals > 1:
            server.force_exit = True

    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, _exit)
    try:
        await runtime.start()
        # Long-lived start-up objects need no more scanning, and a higher gen-0 threshold keeps
        # full collections from pausing the loop under a burst (ack p99 157 -> 58 ms measured).
        gc.collect()
        gc.freeze()
        gc.set_threshold(50_000, 20, 100)
        await server.serve()
    finally:
        started = loop.time()
        try:
            # bounded: with uvicorn's 3 s for open requests, the process is gone within ~10 s
            await asyncio.wait_for(runtime.stop(), timeout=2 * STOP_GRACE_S + 1.5)
        except Exception as exc:
            log.warning("shutdown did not finish cleanly (%s)", type(exc).__name__)
        log.info("stopped in %.2fs", loop.time() - started)
