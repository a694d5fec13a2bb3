"""Prometheus metrics (served by `GET /metrics` from the default registry) and the small hooks that
feed them. No label carries user text: label values come from fixed sets, endpoint templates or
allow-listed names, and anything else is folded into `other`.

Wiring (a handful of lines elsewhere):
- `instrument_bolt(app)` once after building the Bolt `AsyncApp`: a global middleware that times
  each request from its arrival to `ack()` and binds the request's log context, plus a listener
  completion hook that counts requests by kind, name and outcome;
- `AsgiMetrics` as a Starlette middleware: HTTP timings per route, and the arrival time of
  `POST /slack/events` for the ack histogram;
- `slack_retry_handlers()` as the Slack client's `retry_handlers` (counts 429s and retries);
- `note_outcome(exc)` where a listener turns an error into an answer;
- `register_watcher(watcher)` (active watches), `LEASE_TAKEOVERS.inc()`, `CANCELS.labels(...)`;
- the Polytomic client and the notifier call `polytomic_call` / `slack_call` themselves.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import re
import time
import weakref
from dataclasses import dataclass
from typing import Any

from prometheus_client import Counter, Gauge, Histogram, Info

import bot
from bot import logs
from bot.slack_errors import KNOWN_SLACK_ERRORS

try:  # `_created` series double the output for nothing a dashboard uses
    from prometheus_client import disable_created_metrics

    disable_created_metrics()
except ImportError:  # pragma: no cover - older prometheus-client
    pass

log = logging.getLogger("bot.requests")

NS = "polytomic_bot"
KINDS = ("command", "action", "shortcut", "view", "event", "other")
CANCEL_OUTCOMES = ("sent", "failed", "duplicate", "denied")
ACK_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0)
CALL_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
WATCH_BUCKETS = (5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400)

ACK_SECONDS = Histogram(
    f"{NS}_slack_ack_seconds",
    "Time from a Slack request's arrival to its ack, by kind of request.",
    ["kind"],
    buckets=ACK_BUCKETS,
)
SLACK_REQUESTS = Counter(
    f"{NS}_slack_requests",
    "Slack requests handled (slash commands, button clicks, shortcuts, views, events) by outcome.",
    ["kind", "name", "outcome"],
)
CANCELS = Counter(
    f"{NS}_cancels",
    "Cancel requests by outcome: sent to Polytomic, failed, duplicate (joined a running watch), denied.",
    ["outcome"],
)
WATCH_SECONDS = Histogram(
    f"{NS}_watch_seconds",
    "How long watches lasted, from the request to the final reply, by outcome.",
    ["outcome"],
    buckets=WATCH_BUCKETS,
)
WATCHES_ACTIVE = Gauge(f"{NS}_watches_active", "Watches this process is polling now.")
LEASE_TAKEOVERS = Counter(
    f"{NS}_lease_takeovers",
    "Watches this process claimed from the store (released or expired leases, restarts).",
)
POLYTOMIC_CALLS = Counter(
    f"{NS}_polytomic_requests",
    "Polytomic API requests (each attempt) by method, endpoint template and HTTP status or error.",
    ["method", "endpoint", "status"],
)
POLYTOMIC_SECONDS = Histogram(
    f"{NS}_polytomic_request_seconds",
    "Polytomic API request duration (each attempt) by method and endpoint template.",
    ["method", "endpoint"],
    buckets=CALL_BUCKETS,
)
SLACK_CALLS = Counter(
    f"{NS}_slack_api_calls",
    "Slack Web API calls made by the notifier, by method and outcome (ok or Slack's error code).",
    ["method", "outcome"],
)
SLACK_SECONDS = Histogram(
    f"{NS}_slack_api_seconds",
    "Slack Web API call duration (retries included), by method.",
    ["method"],
    buckets=CALL_BUCKETS,
)
SLACK_RATE_LIMITED = Counter(
    f"{NS}_slack_rate_limited",
    "HTTP 429 answers from the Slack Web API, by method.",
    ["method"],
)
SLACK_RETRIES = Counter(
    f"{NS}_slack_retries",
    "Slack Web API retries by method and reason (ratelimited, server_error, connection_error).",
    ["method", "reason"],
)
HTTP_SECONDS = Histogram(
    f"{NS}_http_request_seconds",
    "Requests served by the bot's HTTP listener, by route and status.",
    ["route", "status"],
    buckets=ACK_BUCKETS,
)
BUILD = Info(f"{NS}_build", "Version of the running bot.")

for _kind in KINDS:
    ACK_SECONDS.labels(_kind)
for _outcome in CANCEL_OUTCOMES:
    CANCELS.labels(_outcome)
BUILD.info({"version": str(getattr(bot, "__version__", "unknown"))})

# ------------------------------------------------------------------------------- bounded labels

_SLACK_METHOD = re.compile(r"[a-z]+(\.[a-zA-Z]+){1,3}")
_NAME = re.compile(r"polytomic[._][a-z_]{1,40}")
_WORD = re.compile(r"[a-z][a-z0-9_]{0,39}")
_TEMPLATE = re.compile(r"/api(/[a-z_]{1,40}|/\{[a-z_]{1,20}\}){1,8}")
SUBCOMMANDS = frozenset({"help", "syncs", "status", "cancel"})
ROUTES = frozenset({"/slack/events", "/polytomic/events", "/healthz", "/readyz", "/metrics"})
_ERROR_OUTCOMES = (
    ("UsageError", "usage_error"),
    ("AccessDenied", "denied"),
    ("UnknownName", "unknown_name"),
    ("AmbiguousName", "unknown_name"),
    ("NothingRunning", "nothing_running"),
    ("BadButton", "bad_button"),
    ("CannotPost", "cannot_post"),
    ("SlackWriteError", "slack_error"),
    ("PolytomicError", "polytomic_error"),
    ("BotError", "refused"),
)


def slack_method(value: str | None) -> str:
    return value if isinstance(value, str) and _SLACK_METHOD.fullmatch(value) else "other"


def outcome_of(exc: BaseException) -> str:
    """A bounded outcome label for an error answered to a Slack user."""
    names = {cls.__name__ for cls in type(exc).__mro__}
    for name, label in _ERROR_OUTCOMES:
        if name in names:
            return label
    return "error"


def request_kind(body: Any) -> str:
    """command | action | shortcut | view | event | other, from any body (garbage gives other)."""
    try:
        return _request_kind(body if isinstance(body, dict) else {})
    except Exception:
        return "other"


def _request_kind(body: dict) -> str:
    if "command" in body:
        return "command"
    kind = body.get("type")
    if kind == "block_actions" or kind == "interactive_message":
        return "action"
    if kind in ("shortcut", "message_action"):
        return "shortcut"
    if kind in ("view_submission", "view_closed"):
        return "view"
    if kind == "event_callback" or "event" in body:
        return "event"
    return "other"


def request_name(kind: str, body: Any) -> str:
    """The subcommand, action, shortcut or view name, from fixed or allow-listed sets only (any
    malformed body gives `other`)."""
    try:
        return _request_name(kind, body if isinstance(body, dict) else {})
    except Exception:
        return "other"


def _request_name(kind: str, body: dict) -> str:
    if kind == "command":
        words = str(body.get("text") or "").split()
        first = words[0].lower() if words else "help"
        return first if first in SUBCOMMANDS else "other"
    if kind == "action":
        actions = body.get("actions") or [{}]
        action_id = str((actions[0] or {}).get("action_id") or "").split(":", 1)[0]
        return action_id if _NAME.fullmatch(action_id) else "other"
    if kind in ("shortcut", "view"):
        callback = body.get("callback_id") or (body.get("view") or {}).get("callback_id") or ""
        callback = str(callback).split(":", 1)[0]
        return callback if _NAME.fullmatch(callback) else "other"
    if kind == "event":
        event_type = str((body.get("event") or {}).get("type") or "")
        return event_type if _WORD.fullmatch(event_type) else "other"
    return "other"


# ------------------------------------------------------------------------------- Slack requests


@dataclass
class _Request:
    kind: str
    name: str
    arrived: float
    acked: bool = False
    outcome: str | None = None
    recorded: bool = False

    def record(self, outcome: str) -> None:
        if self.recorded:
            return
        self.recorded = True
        SLACK_REQUESTS.labels(self.kind, self.name, outcome).inc()


_CURRENT: contextvars.ContextVar[_Request | None] = contextvars.ContextVar("bot_slack_request", default=None)
_ARRIVED: contextvars.ContextVar[float | None] = contextvars.ContextVar("bot_http_arrival", default=None)
_CONTEXT_KEY = "polytomic_bot_request"


def note_outcome(exc: BaseException) -> None:
    """Record how the current Slack request ended when a listener answers it with an error.
    Call it where errors become answers; harmless outside a Slack request."""
    current = _CURRENT.get()
    if current is not None and current.outcome is None:
        current.outcome = outcome_of(exc)


def _timed_ack_class():
    from slack_bolt.context.ack.async_ack import AsyncAck

    class TimedAck(AsyncAck):
        """Bolt's ack, observing the time from the request's arrival to the first ack."""

        def __init__(self, request: _Request) -> None:
            super().__init__()
            self._request = request

        async def __call__(self, *args: Any, **kwargs: Any):  # type: ignore[override]
            response = await super().__call__(*args, **kwargs)
            req = self._request
            if not req.acked:
                req.acked = True
                took = time.perf_counter() - req.arrived
                with contextlib.suppress(Exception):
                    ACK_SECONDS.labels(req.kind).observe(took)
                log.info("%s %s acked in %.0f ms", req.kind, req.name, took * 1000)
            return response

    return TimedAck


_TimedAck: Any = None


async def bolt_middleware(req, resp, next):
    """Bolt global middleware: ack timing, request context for the logs, request outcome.

    Bolt runs the listener after every global middleware has returned, in a task created by the
    task that dispatches this one request (uvicorn's per-request task in HTTP mode, one task per
    envelope in Socket Mode). So the log context and the request record are bound here without
    being reset: the listener's task inherits them, and they end with the request's task."""
    try:
        _begin(req)
    except Exception:  # bookkeeping must never cost a request
        log.debug("request bookkeeping failed", exc_info=True)
    return await next()


def _begin(req: Any) -> None:
    global _TimedAck
    if _TimedAck is None:
        _TimedAck = _timed_ack_class()
    body = req.body if isinstance(req.body, dict) else {}
    kind = request_kind(body)
    request = _Request(kind, request_name(kind, body), _ARRIVED.get() or time.perf_counter())
    req.context[_CONTEXT_KEY] = request
    req.context["ack"] = _TimedAck(request)
    logs.bind(request_id=logs.new_request_id(), **_who(body))
    _CURRENT.set(request)


def _who(body: dict) -> dict[str, str | None]:
    """user_id, channel_id, team_id of a request, as short strings (None when absent or odd)."""

    def part(name: str) -> dict:
        value = body.get(name)
        return value if isinstance(value, dict) else {}

    def short(value: Any) -> str | None:
        return value[:40] if isinstance(value, str) and value else None

    return {
        "user_id": short(body.get("user_id")) or short(part("user").get("id")),
        "channel_id": short(body.get("channel_id"))
        or short(part("container").get("channel_id"))
        or short(part("channel").get("id")),
        "team_id": short(body.get("team_id")) or short(part("team").get("id")),
    }


def _completion_handler(previous: Any):
    from slack_bolt.listener.async_listener_completion_handler import AsyncListenerCompletionHandler

    class CountingCompletionHandler(AsyncListenerCompletionHandler):
        async def handle(self, request, response) -> None:
            tracked = request.context.get(_CONTEXT_KEY)
            if isinstance(tracked, _Request):
                failed = response is not None and getattr(response, "status", 200) >= 500
                with contextlib.suppress(Exception):
                    tracked.record(tracked.outcome or ("error" if failed else "ok"))
            if previous is not None:
                await previous.handle(request=request, response=response)

    return CountingCompletionHandler()


def instrument_bolt(app: Any) -> None:
    """Add the middleware and the completion hook to a Bolt `AsyncApp` (once, before serving)."""
    app.use(bolt_middleware)
    runner = app.listener_runner
    runner.listener_completion_handler = _completion_handler(runner.listener_completion_handler)


# ---------------------------------------------------------------------------------------- HTTP


class AsgiMetrics:
    """ASGI middleware: times every HTTP request by route (known routes only) and status, and
    marks the arrival of Slack requests for the ack histogram. Use as
    `Starlette(..., middleware=[Middleware(AsgiMetrics)])` or wrap any ASGI app."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope.get("type") != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        path = scope.get("path") or ""
        route = path if path in ROUTES else "other"
        status = {"code": 500}

        async def send_wrapper(message) -> None:
            if message.get("type") == "http.response.start":
                status["code"] = int(message.get("status") or 500)
            await send(message)

        token = _ARRIVED.set(started)
        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            _ARRIVED.reset(token)
            HTTP_SECONDS.labels(route, str(status["code"])).observe(time.perf_counter() - started)


# --------------------------------------------------------------------------------- client hooks


def polytomic_call(method: str, template: str, status: int | str, seconds: float) -> None:
    """One Polytomic request attempt: `template` is the endpoint template (never a real path),
    `status` the HTTP status or the error class name."""
    method = method if method in ("GET", "POST", "PUT", "PATCH", "DELETE") else "other"
    template = template if _TEMPLATE.fullmatch(template or "") else "other"
    label = str(status)
    if not (label.isdigit() or _WORD.fullmatch(label.lower())):
        label = "other"
    POLYTOMIC_CALLS.labels(method, template, label).inc()
    POLYTOMIC_SECONDS.labels(method, template).observe(seconds)


def slack_call(method: str, outcome: str, seconds: float) -> None:
    """One Slack Web API call by the notifier; `outcome` is "ok" or Slack's error code."""
    method = slack_method(method)
    if outcome != "ok" and outcome not in KNOWN_SLACK_ERRORS:
        outcome = "connection_error" if outcome[:1].isupper() else "other_error"
    SLACK_CALLS.labels(method, outcome).inc()
    SLACK_SECONDS.labels(method).observe(seconds)


def _method_of(url: str) -> str:
    return slack_method(url.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1])


def slack_retry_handlers(*, connection: int = 3, rate_limited: int = 5, server: int = 3) -> list[Any]:
    """slack_sdk's built-in async retry handlers, counting 429s and retries by method."""
    from slack_sdk.http_retry.builtin_async_handlers import (
        AsyncConnectionErrorRetryHandler,
        AsyncRateLimitErrorRetryHandler,
        AsyncServerErrorRetryHandler,
    )

    class Connection(AsyncConnectionErrorRetryHandler):
        async def can_retry_async(self, *, state, request, response=None, error=None) -> bool:
            retry = await super().can_retry_async(
                state=state, request=request, response=response, error=error
            )
            if retry:
                SLACK_RETRIES.labels(_method_of(request.url), "connection_error").inc()
            return retry

    class RateLimited(AsyncRateLimitErrorRetryHandler):
        async def can_retry_async(self, *, state, request, response=None, error=None) -> bool:
            if response is not None and response.status_code == 429:
                SLACK_RATE_LIMITED.labels(_method_of(request.url)).inc()
            retry = await super().can_retry_async(
                state=state, request=request, response=response, error=error
            )
            if retry:
                SLACK_RETRIES.labels(_method_of(request.url), "ratelimited").inc()
            return retry

    class Server(AsyncServerErrorRetryHandler):
        async def can_retry_async(self, *, state, request, response=None, error=None) -> bool:
            retry = await super().can_retry_async(
                state=state, request=request, response=response, error=error
            )
            if retry:
                SLACK_RETRIES.labels(_method_of(request.url), "server_error").inc()
            return retry

    return [
        Connection(max_retry_count=connection),
        RateLimited(max_retry_count=rate_limited),
        Server(max_retry_count=server),
    ]


# ------------------------------------------------------------------------------------- watches

_WATCHERS: weakref.WeakSet = weakref.WeakSet()


def register_watcher(watcher: Any) -> None:
    """Count `len(watcher.held)` in `polytomic_bot_watches_active` while the watcher exists."""
    _WATCHERS.add(watcher)


def _active_watches() -> float:
    total = 0
    for watcher in list(_WATCHERS):
        held = getattr(watcher, "held", None)
        if held is not None:
            total += len(held)
    return float(total)


WATCHES_ACTIVE.set_function(_active_watches)


_WATCH_OUTCOME = re.compile(r"[a-z_]{1,32}")


def watch_ended(outcome: str, seconds: float) -> None:
    label = outcome if _WATCH_OUTCOME.fullmatch(outcome or "") else "other"
    WATCH_SECONDS.labels(label).observe(max(seconds, 0.0))
