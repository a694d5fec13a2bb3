"""A stateful fake of the Polytomic REST API (bulk syncs), served over real sockets.

Used by the client tests, the Slack end-to-end tests, the benchmarks and the demo. It reproduces
the shapes of reference/polytomic-api.md §2-§4 (envelopes, ApiError bodies, the `schema` key of
execution schema entries, `nextExecutionTime` in list-status, pagination tokens, idempotency keys)
and lets a test drive runs, cancellations and faults.

Design notes and documented choices:

* The app is a plain ASGI callable (``FakePolytomic.app``). Routing is done on ``scope["raw_path"]``
  split on ``/`` with each segment percent-decoded, so a schema id such as ``Sales Data/Q1 2026.csv``
  sent as ``Sales%20Data%2FQ1%202026.csv`` is one segment. (Starlette's router matches the decoded
  path and would split it, so it is not used.)
* Run state is computed from the clock on every request; there is no background task. Internally
  times are float seconds since the epoch on the fake's clock.
* Unknown or malformed sync / execution ids in a path answer 404 ``not_found`` (the API does not
  document 400 vs 404 for a malformed UUID; 404 keeps "not visible to you" and "no such id" alike).
  ``add_sync`` accepts any string as an id.
* A schema cancel for a schema configured on the sync but not running now (scheduled, finished, not
  part of the current run, or nothing running) answers 200 and changes nothing (undocumented in the
  real API). A sync/execution cancel with nothing running answers 200 and changes nothing.
* When an execution ends it leaves ``current_execution`` (served as ``null``) and becomes
  ``last_execution``.
* Runs started with ``POST .../executions`` start at once (status ``running`` immediately, unless
  ``start_after`` is set through :meth:`FakePolytomic.start_run`) and use
  ``FakePolytomic.default_duration`` seconds per schema.
* The list of syncs is served in insertion order; ``updated_at`` decreases with insertion order so
  that it is also the documented ``updated_at`` descending order. More than ``page_size`` syncs:
  ``pagination.next_page_token`` (opaque) is served, and ``page_token`` accepted. The ``pagination``
  key is present only while there is a next page (the SDK's BulkSyncListEnvelope declares none).
  The executions list always carries ``pagination`` (``next_page_token`` is ``""`` on the last page).
* Idempotency keys are scoped to the key alone (not the path) and kept for the fake's lifetime.
  Auth failures (401), read-only refusals (403), unknown routes (404) and gateway faults happen
  before the key is looked at and are not recorded; everything the handlers answer is recorded,
  errors included, and replayed with the same status and body (plus ``Idempotent-Replayed: true``).
* ``GET /api/bulk/syncs/status`` with neither ``sync_id``, ``all`` nor ``active`` serves an empty
  list; an unknown ``sync_id`` answers 404.
* Extras beyond the agreed interface: ``start_time=`` (clock start; default: real UTC now, whole
  seconds, also for the manual clock) and the ``default_duration`` attribute.
* Each connection gets TCP_NODELAY (see :func:`_set_nodelay`): without it every request costs
  ~40 ms of delayed-ACK wait on loopback.
* In ``list-status`` a schema entry dropped with :meth:`drop_schema_from_status` vanishes (the
  fake does not fall back to an older execution for it); schemas that never ran have no entry.
* Webhooks (reference §5.4): ``GET/POST /api/webhooks`` and ``GET/PUT/DELETE /api/webhooks/{id}``
  keep one webhook per organization (a second ``POST`` answers 409; ``secret`` must be 6-32
  characters, ``endpoint`` an http(s) URL). :meth:`FakePolytomic.event` builds an event as the
  events API shapes it (§5.1-5.3) and :meth:`FakePolytomic.deliver` POSTs it to the registered
  endpoint (or any URL) with ``Polytomic-Signature``: HMAC of the raw body keyed with the secret.
  The docs do not say which hash or encoding, so both are settable (``signature_digest``,
  ``signature_encoding`` = ``hex`` | ``base64`` | ``base64url``, ``signature_prefix``); the
  defaults are SHA-256, hex, no prefix. Nothing is delivered on its own: tests call ``deliver``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import fnmatch
import hashlib
import hmac
import http
import itertools
import json
import re
import socket
import struct
import threading
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl, quote, unquote

import httpx

from bot.fakes.server import ThreadedServer

FAKE_ORG_ID = "9a0e4c12-6f3b-4d8e-a7b5-2c1f0e9d8b76"
FAKE_USER_ID = "11223344-5566-4778-899a-abbccddeeff0"
SOURCE_CONNECTION_ID = "c4d5e6f7-1a2b-4c3d-8e9f-0a1b2c3d4e5f"
DESTINATION_CONNECTION_ID = "d5e6f7a8-2b3c-4d4e-9f0a-1b2c3d4e5f60"
FAKE_BUILD = "fake-polytomic"
RECORDS_PER_SECOND = 50
CANCEL_MESSAGE = "Cancellation requested"

_IDEMPOTENCY_KEY_RE = re.compile(r"^[A-Za-z0-9_-]{8,255}$")
_ERROR_KEYS = {
    400: "invalid_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    409: "conflict",
    429: "rate_limited",
    500: "internal",
    502: "bad_gateway",
    503: "unavailable",
    504: "gateway_timeout",
}


# --------------------------------------------------------------------------------------------
# public helper types


@dataclass
class Req:
    """One request as the fake saw it."""

    method: str
    path: str  # percent-decoded
    raw_path: str  # as on the wire (no query string)
    query: list[tuple[str, str]]
    headers: dict[str, str]  # lower-case names
    body: bytes
    status: int | None = None  # None for reset / hang (no HTTP answer)

    def json(self) -> Any:
        return json.loads(self.body) if self.body else None


@dataclass
class Fault:
    """An injected fault; see :meth:`FakePolytomic.add_fault`."""

    method: str = "*"
    path: str = "*"
    status: int | None = None
    body: Any = None
    retry_after: float | None = None
    delay: float = 0.0
    hang: bool = False
    reset: bool = False
    malformed: bool = False
    times: int | None = None  # remaining uses; None = unlimited
    hits: int = 0

    @property
    def gateway(self) -> bool:
        """True when the fault answers before auth/idempotency (everything except a pure delay)."""
        return self.status is not None or self.hang or self.reset or self.malformed

    @property
    def active(self) -> bool:
        return self.times is None or self.times > 0

    def matches(self, method: str, path: str) -> bool:
        return (self.method == "*" or fnmatch.fnmatchcase(method, self.method.upper())) and (
            fnmatch.fnmatchcase(path, self.path)
        )


class _ApiErr(Exception):
    def __init__(self, status: int, message: str, key: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.key = key or _ERROR_KEYS.get(status, "error")


def api_error(status: int, message: str, key: str | None = None) -> dict[str, Any]:
    return {"status": status, "message": message, "key": key or _ERROR_KEYS.get(status, "error"),
            "metadata": {}}


# --------------------------------------------------------------------------------------------
# internal state


@dataclass
class _Schema:
    id: str
    output_name: str
    enabled: bool = True


@dataclass
class _Sync:
    id: str
    name: str
    active: bool
    schemas: dict[str, _Schema]  # insertion-ordered
    created_at: float
    updated_at: float
    executions: list[_Execution] = field(default_factory=list)  # oldest first


@dataclass
class _SchemaRun:
    id: str
    output_name: str
    duration: float
    fail: bool
    cancel_at: float | None = None
    cancel_requested_at: float | None = None
    dropped: bool = False


@dataclass
class _Execution:
    id: str
    created: float
    start: float
    schemas: list[_SchemaRun]
    type: str = "manual"
    fetch_mode: str = "none"
    is_partial: bool = False
    is_resync: bool = False
    is_test: bool = False
    output_disposition: str = "retain"
    sync_cancel_at: float | None = None
    sync_cancel_requested_at: float | None = None


@dataclass
class _SchemaView:
    run: _SchemaRun
    status: str
    terminal: bool
    term_time: float  # when it ends / ended
    started_at: float | None
    completed_at: float | None
    updated_at: float
    record_count: int
    status_message: str


@dataclass
class _ExecView:
    ex: _Execution
    status: str
    terminal: bool
    schemas: list[_SchemaView]
    started_at: float | None
    completed_at: float | None
    updated_at: float


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    d = datetime.fromtimestamp(ts, UTC)
    if d.microsecond:
        return d.strftime("%Y-%m-%dT%H:%M:%S.%f") + "Z"
    return d.strftime("%Y-%m-%dT%H:%M:%S") + "Z"


def _output_name(schema_id: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", schema_id.lower()).strip("_") or "schema"


def _schema_view(ex: _Execution, s: _SchemaRun, t: float) -> _SchemaView:
    end = ex.start + s.duration
    cancels = [c for c in (s.cancel_at, ex.sync_cancel_at) if c is not None]
    c = min(cancels) if cancels else None
    if c is not None and c < end:  # the cancel lands first; a tie goes to completion
        term_time, term_status = c, "canceled"
    else:
        term_time, term_status = end, ("failed" if s.fail else "completed")
    terminal = t >= term_time
    if terminal:
        status = term_status
    elif t < ex.start:
        status = "scheduled"
    else:
        status = "running"
    started = ex.start if (t >= ex.start and term_time >= ex.start) else None
    if started is None:
        records = 0
    else:
        records = int(max(0.0, min(t, term_time) - ex.start) * RECORDS_PER_SECOND)
    events = [ex.created]
    if started is not None:
        events.append(started)
    if s.cancel_requested_at is not None and s.cancel_requested_at <= t:
        events.append(s.cancel_requested_at)
    if terminal:
        events.append(term_time)
    if status == "canceled":
        message = "Canceled by user"
    elif status == "failed":
        message = "Simulated failure"
    elif status == "running":
        message = "Fetching rows"
    else:
        message = ""
    return _SchemaView(s, status, terminal, term_time, started, term_time if terminal else None,
                       max(events), records, message)


def _exec_view(ex: _Execution, t: float) -> _ExecView:
    views = [_schema_view(ex, s, t) for s in ex.schemas if not s.dropped]
    end_time = max((v.term_time for v in views), default=ex.start)
    if ex.sync_cancel_at is not None and not views:
        end_time = max(end_time, ex.sync_cancel_at)
    terminal = t >= end_time and all(v.terminal for v in views)
    if terminal:
        if ex.sync_cancel_at is not None and (not views or any(v.status == "canceled" for v in views)):
            status = "canceled"
        elif any(v.status == "failed" for v in views):
            status = "failed"
        else:
            status = "completed"
    elif ex.sync_cancel_requested_at is not None and ex.sync_cancel_requested_at <= t:
        status = "canceling"
    elif t < ex.start:
        status = "created"
    else:
        status = "running"
    started = ex.start if (t >= ex.start and end_time >= ex.start) else None
    events = [ex.created, *(v.updated_at for v in views)]
    if started is not None:
        events.append(started)
    if ex.sync_cancel_requested_at is not None and ex.sync_cancel_requested_at <= t:
        events.append(ex.sync_cancel_requested_at)
    if terminal:
        events.append(end_time)
    return _ExecView(ex, status, terminal, views, started, end_time if terminal else None, max(events))


def _schema_json(v: _SchemaView, ex: _Execution) -> dict[str, Any]:
    return {
        "schema": v.run.id,
        "output_name": v.run.output_name,
        "status": v.status,
        "status_message": v.status_message,
        "created_at": _iso(ex.created),
        "started_at": _iso(v.started_at),
        "completed_at": _iso(v.completed_at),
        "updated_at": _iso(v.updated_at),
        "record_count": v.record_count,
        "error_count": 1 if v.status == "failed" else 0,
        "warning_count": 0,
        "version": FAKE_BUILD,
    }


def _exec_json(ev: _ExecView) -> dict[str, Any]:
    ex = ev.ex
    if ev.status == "canceled":
        message = "Canceled by user"
    elif ev.status == "failed":
        message = "One or more schemas failed"
    else:
        message = ""
    return {
        "id": ex.id,
        "status": ev.status,
        "status_message": message,
        "type": ex.type,
        "created_at": _iso(ex.created),
        "started_at": _iso(ev.started_at),
        "completed_at": _iso(ev.completed_at),
        "updated_at": _iso(ev.updated_at),
        "record_count": sum(v.record_count for v in ev.schemas),
        "error_count": sum(1 for v in ev.schemas if v.status == "failed"),
        "warning_count": 0,
        "fetch_mode": ex.fetch_mode,
        "is_partial": ex.is_partial,
        "is_resync": ex.is_resync,
        "is_test": ex.is_test,
        "output_disposition": ex.output_disposition,
        "version": FAKE_BUILD,
        "schemas": [_schema_json(v, ex) for v in ev.schemas],
    }


def _encode_token(kind: str, scope: str, offset: int) -> str:
    raw = json.dumps({"k": kind, "s": scope, "o": offset}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_token(token: str, kind: str, scope: str) -> int:
    try:
        padded = token + "=" * (-len(token) % 4)
        data = json.loads(base64.urlsafe_b64decode(padded.encode()))
        if data["k"] != kind or data["s"] != scope or not isinstance(data["o"], int) or data["o"] < 0:
            raise ValueError
        return data["o"]
    except (ValueError, KeyError, TypeError, binascii.Error):
        raise _ApiErr(400, "invalid page_token") from None


def sign_event(
    body: bytes, secret: str, *, encoding: str = "hex", prefix: str = "", digest: str = "sha256"
) -> str:
    """The ``Polytomic-Signature`` of a delivery: HMAC(body, secret) as hex, base64 or base64url."""
    mac = hmac.new(secret.encode(), body, getattr(hashlib, digest)).digest()
    if encoding == "hex":
        text = mac.hex()
    elif encoding == "base64":
        text = base64.b64encode(mac).decode()
    elif encoding == "base64url":
        text = base64.urlsafe_b64encode(mac).decode().rstrip("=")
    else:
        raise ValueError(f"unknown signature encoding {encoding!r}")
    return prefix + text


EVENT_TYPES = (
    "sync.running",
    "sync.failed",
    "sync.canceled",
    "sync.completed",
    "sync.completed_with_errors",
    "bulk_sync.running",
    "bulk_sync.completed",
    "bulk_sync.canceled",
    "bulk_sync.failed",
    "bulk_sync.completed_with_error",
)


@dataclass
class Delivery:
    """One webhook delivery the fake made, and the receiver's answer."""

    url: str
    body: bytes
    headers: dict[str, str]
    status: int | None  # None: no HTTP answer
    event: Any = None


def _bool_param(value: str | None, name: str) -> bool | None:
    if value is None or value == "":
        return None
    v = value.lower()
    if v in ("true", "1"):
        return True
    if v in ("false", "0"):
        return False
    raise _ApiErr(400, f"invalid boolean for {name}")


# --------------------------------------------------------------------------------------------
# routing

_SYNCS = ("api", "bulk", "syncs")


def _route(method: str, segs: list[str]) -> tuple[str, dict[str, str]] | None:
    """Map (method, decoded segments) to (handler name, params). None: unknown route."""
    if segs == ["api", "me"]:
        return ("me", {}) if method == "GET" else None
    if segs[:2] == ["api", "webhooks"] and all(segs[1:]):
        if len(segs) == 2:
            return {"GET": ("list_webhooks", {}), "POST": ("create_webhook", {})}.get(method)
        if len(segs) == 3:
            name = {"GET": "get_webhook", "PUT": "update_webhook", "DELETE": "delete_webhook"}.get(method)
            return (name, {"webhook_id": segs[2]}) if name else None
        return None
    if len(segs) < 3 or tuple(segs[:3]) != _SYNCS or any(s == "" for s in segs):
        return None
    rest = segs[3:]
    n = len(rest)
    if n == 0:
        return ("list_syncs", {}) if method == "GET" else None
    if n == 1 and rest[0] == "status":
        return ("list_status", {}) if method == "GET" else None
    p = {"sync_id": rest[0]}
    if n == 1:
        return ("get_sync", p) if method == "GET" else None
    tail = rest[1]
    if n == 2:
        if tail == "status" and method == "GET":
            return "sync_status", p
        if tail == "schemas" and method == "GET":
            return "list_schemas", p
        if tail == "cancel" and method == "POST":
            return "cancel_sync", p
        if tail == "executions":
            return ("list_executions", p) if method == "GET" else (
                ("start_execution", p) if method == "POST" else None)
        return None
    if tail == "schemas":
        p["schema_id"] = rest[2]
        if n == 3 and method == "GET":
            return "get_schema", p
        if n == 4 and rest[3] == "cancel" and method == "POST":
            return "cancel_schema", p
        return None
    if tail == "executions":
        p["execution_id"] = rest[2]
        if n == 3 and method == "GET":
            return "get_execution", p
        if n == 4 and rest[3] == "cancel" and method == "POST":
            return "cancel_execution", p
        return None
    return None


_CANCEL_ROUTES = {"cancel_sync", "cancel_schema", "cancel_execution"}


def _transport(receive) -> asyncio.Transport | None:
    """uvicorn's transport behind `receive` (its bound method), or None under another server."""
    return getattr(getattr(receive, "__self__", None), "transport", None)


def _set_nodelay(receive) -> None:
    """Disable Nagle on the connection.

    Sockets accepted from a listener created as socket(AF_INET, SOCK_STREAM) have proto 0, so
    asyncio does not set TCP_NODELAY on them; uvicorn writes a response's head and body separately
    and the client's delayed ACK then costs ~40 ms per request.
    """
    transport = _transport(receive)
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class _App:
    """ASGI 3 entry point of a :class:`FakePolytomic`."""

    def __init__(self, fake: FakePolytomic) -> None:
        self.fake = fake

    async def __call__(self, scope, receive, send) -> None:
        await self.fake._asgi(scope, receive, send)


@dataclass
class _Auth:
    read_only: bool
    method: str  # "bearer" | "basic"


# --------------------------------------------------------------------------------------------
# the fake


class FakePolytomic:
    """Stateful fake Polytomic API. See the module docstring for documented choices."""

    def __init__(
        self,
        *,
        api_key: str = "test-polytomic-key",
        org_id: str | None = None,
        read_only_keys: Iterable[str] = (),
        speed: float = 1.0,
        manual_clock: bool = False,
        cancel_delay_s: float = 2.0,
        sync_cancel_delay_s: float = 2.0,
        page_size: int = 50,
        version: str = "2025-09-18",
        start_time: datetime | None = None,
    ) -> None:
        if page_size < 1:
            raise ValueError("page_size must be >= 1")
        self.api_key = api_key
        self.org_id = org_id
        self.read_only_keys = frozenset(read_only_keys)
        self.speed = float(speed)
        self.manual_clock = manual_clock
        self.cancel_delay_s = float(cancel_delay_s)
        self.sync_cancel_delay_s = float(sync_cancel_delay_s)
        self.page_size = page_size
        self.version = version
        self.default_duration = 60.0  # per-schema duration of runs started over HTTP
        if start_time is None:
            start_time = datetime.now(UTC).replace(microsecond=0)
        elif start_time.tzinfo is None:
            raise ValueError("start_time must be timezone-aware")
        self._t0 = start_time.timestamp()
        self._mono0 = time.monotonic()
        self._offset = 0.0  # manual clock

        self._lock = threading.Lock()
        self._syncs: dict[str, _Sync] = {}
        self._faults: list[Fault] = []
        self._idem: dict[str, tuple[int, bytes] | None] = {}
        self._cancels: list[tuple[str, str | None, str | None]] = []
        self._seq = itertools.count()
        self.requests: list[Req] = []
        self._webhooks: dict[str, dict[str, Any]] = {}
        self.deliveries: list[Delivery] = []
        self.signature_digest = "sha256"
        self.signature_encoding = "hex"
        self.signature_prefix = ""

        self._server: ThreadedServer | None = None
        self._stopping = threading.Event()
        self._version_header = version.encode()
        self._app = _App(self)

    # ---- lifecycle ------------------------------------------------------------------------

    @property
    def app(self) -> _App:
        """The ASGI application (an object with ``async __call__``, so servers detect ASGI 3)."""
        return self._app

    def start(self) -> FakePolytomic:
        """Serve on 127.0.0.1 (ephemeral port) in a background thread; returns self."""
        if self._server is not None:
            return self
        self._stopping.clear()
        self._server = ThreadedServer(self._app).start()
        return self

    def stop(self) -> None:
        """Stop serving. Hanging and delayed requests end first (their connections are dropped)."""
        self._stopping.set()  # ends hanging / delayed handlers within ~50 ms
        server, self._server = self._server, None
        if server is not None:
            server.stop()

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("FakePolytomic is not started")
        return self._server.url

    def __enter__(self) -> FakePolytomic:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- clock ----------------------------------------------------------------------------

    def _ts(self) -> float:
        if self.manual_clock:
            return self._t0 + self._offset
        return self._t0 + (time.monotonic() - self._mono0) * self.speed

    def now(self) -> datetime:
        """The fake's clock (UTC-aware): start instant + advance()s, or + real elapsed x speed."""
        return datetime.fromtimestamp(self._ts(), UTC)

    def advance(self, seconds: float) -> None:
        """Move the manual clock forward (ValueError with the real clock or a negative step)."""
        if not self.manual_clock:
            raise ValueError("advance() needs manual_clock=True")
        if seconds < 0:
            raise ValueError("the clock does not go back")
        with self._lock:
            self._offset += seconds

    # ---- state ----------------------------------------------------------------------------

    def add_sync(self, name: str, schemas: list[str | dict], *, sync_id: str | None = None,
                 active: bool = True) -> str:
        """Add a bulk sync; returns its id (a uuid4 unless given; any string is accepted).

        `schemas`: schema ids, or dicts ``{"id", "output_name", "enabled"}`` (output name defaults to
        the id lower-cased with runs of other characters turned into ``_``; enabled defaults to True).
        """
        parsed: dict[str, _Schema] = {}
        for item in schemas:
            if isinstance(item, str):
                sch = _Schema(item, _output_name(item))
            else:
                schema_key = item["id"]
                out_name = item.get("output_name") or _output_name(schema_key)
                sch = _Schema(schema_key, out_name, bool(item.get("enabled", True)))
            parsed[sch.id] = sch
        sid = sync_id or str(uuid.uuid4())
        with self._lock:
            if sid in self._syncs:
                raise ValueError(f"sync {sid} already exists")
            index = len(self._syncs)
            created = self._t0 - 86400 * 30
            self._syncs[sid] = _Sync(sid, name, active, parsed, created, self._t0 - 3600 - index)
        return sid

    def remove_sync(self, sync_id: str) -> None:
        """Forget the sync (KeyError if unknown); later requests about it get 404."""
        with self._lock:
            self._get_sync(sync_id)
            del self._syncs[sync_id]

    def start_run(self, sync_id: str, *, schemas: list[str] | None = None,
                  durations: float | dict[str, float] = 60.0, start_after: float = 0.0,
                  fail: Iterable[str] = ()) -> str:
        """Start an execution now; returns its id.

        `schemas`: ids configured on the sync (ValueError otherwise); default all enabled schemas.
        `durations`: seconds each schema runs (one number, or per id with 60 s for missing ids),
        counted from `start_after` seconds from now (schemas are `scheduled` and the execution
        `created` until then). Schemas in `fail` end `failed`. RuntimeError if a run is in flight.
        """
        fail_set = set(fail)
        with self._lock:
            sync = self._get_sync(sync_id)
            t = self._ts()
            ex = self._new_execution(sync, t, schemas, durations, start_after, fail_set)
        return ex.id

    def drop_schema_from_status(self, sync_id: str, schema_id: str) -> None:
        """Remove the schema's entry from the running execution (status, list-status, executions).

        ValueError if nothing is running, KeyError if the schema is not in the run.
        """
        with self._lock:
            sync = self._get_sync(sync_id)
            ex = self._current(sync, self._ts())
            if ex is None:
                raise ValueError(f"sync {sync_id} has no running execution")
            for s in ex.ex.schemas:
                if s.id == schema_id and not s.dropped:
                    s.dropped = True
                    return
            raise KeyError(f"schema {schema_id!r} is not in the running execution")

    def drop_execution(self, sync_id: str) -> None:
        """Make the running execution vanish entirely (ValueError if nothing is running)."""
        with self._lock:
            sync = self._get_sync(sync_id)
            cur = self._current(sync, self._ts())
            if cur is None:
                raise ValueError(f"sync {sync_id} has no running execution")
            sync.executions.remove(cur.ex)

    def status_json(self, sync_id: str) -> dict:
        """The body GET /api/bulk/syncs/{id}/status would serve now, envelope included."""
        with self._lock:
            return {"data": self._status_data(self._get_sync(sync_id), self._ts())}

    def schema_status(self, sync_id: str, schema_id: str) -> str | None:
        """Status of the schema in the sync's most recent execution (running or finished).

        None when the sync never ran, the schema is not part of that execution or was dropped.
        """
        with self._lock:
            sync = self._get_sync(sync_id)
            if not sync.executions:
                return None
            ev = _exec_view(sync.executions[-1], self._ts())
            for v in ev.schemas:
                if v.run.id == schema_id:
                    return v.status
            return None

    # ---- events and webhooks --------------------------------------------------------------

    def webhooks(self) -> list[dict[str, Any]]:
        """The registered webhooks (as GET /api/webhooks serves them)."""
        with self._lock:
            return [dict(w) for w in self._webhooks.values()]

    def event(
        self,
        type: str,
        sync_id: str,
        *,
        execution_id: str | None = None,
        error: str | None = None,
        event_id: str | None = None,
        created_at: datetime | None = None,
        name_key: str = "sync_name",
        name: str | None = None,
    ) -> dict[str, Any]:
        """An event as Polytomic sends it: ``{id, type, organization_id, created_at, event}``.

        ``execution_id`` defaults to the sync's latest execution; ``name_key`` is ``sync_name``
        (SDK) or ``name`` (the events guide's example); ``error`` goes into ``bulk_sync.failed``.
        """
        if type not in EVENT_TYPES:
            raise ValueError(f"unknown event type {type!r}")
        with self._lock:
            sync = self._get_sync(sync_id)
            if execution_id is None and sync.executions:
                execution_id = sync.executions[-1].id
            when = created_at or datetime.fromtimestamp(self._ts(), UTC)
        org = self.org_id or FAKE_ORG_ID
        payload: dict[str, Any] = {
            "sync_id": sync_id,
            name_key: sync.name if name is None else name,
            "execution_id": execution_id,
            "organization_id": org,
            "source_connection_id": SOURCE_CONNECTION_ID,
            "destination_connection_id": DESTINATION_CONNECTION_ID,
        }
        if type in ("bulk_sync.completed", "bulk_sync.completed_with_error", "bulk_sync.failed"):
            payload["schedule"] = {"id": "a1b2c3d4-0000-4000-8000-000000000001", "frequency": "daily"}
            payload["trigger_source"] = "schedule"
        if type == "bulk_sync.failed":
            payload["error"] = "Simulated failure" if error is None else error
        elif error is not None:
            payload["error"] = error
        return {
            "id": event_id or str(uuid.uuid4()),
            "type": type,
            "organization_id": org,
            "created_at": _iso(when.timestamp()),
            "event": payload,
        }

    async def deliver(
        self,
        event: dict[str, Any] | bytes,
        *,
        url: str | None = None,
        secret: str | None = None,
        signature: str | None = None,
        signed: bool = True,
        encoding: str | None = None,
        prefix: str | None = None,
        headers: dict[str, str] | None = None,
        retries: int = 0,
        retry_delay_s: float = 0.2,
        timeout: float = 10.0,  # noqa: ASYNC109
    ) -> httpx.Response:
        """POST an event to the registered webhook (or `url`/`secret`), signed as configured;
        `signature` sends that header value instead, `signed=False` none. Non-2xx answers are
        retried `retries` times (Polytomic retries up to 5 times with backoff). Returns the last
        response (raises httpx errors when the receiver cannot be reached)."""
        if url is None or (secret is None and signed and signature is None):
            hooks = [w for w in self.webhooks() if not w["disabled"]]
            if not hooks:
                raise RuntimeError("no webhook registered: POST /api/webhooks first, or pass url and secret")
            url = url or hooks[0]["endpoint"]
            secret = secret if secret is not None else hooks[0]["secret"]
        body = event if isinstance(event, bytes) else json.dumps(event, separators=(",", ":")).encode()
        sent = {"Content-Type": "application/json", "User-Agent": "polytomic-webhooks (fake)"}
        if signature is not None:
            sent["Polytomic-Signature"] = signature
        elif signed:
            sent["Polytomic-Signature"] = sign_event(
                body,
                secret or "",
                encoding=encoding or self.signature_encoding,
                prefix=self.signature_prefix if prefix is None else prefix,
                digest=self.signature_digest,
            )
        sent.update(headers or {})
        async with httpx.AsyncClient(timeout=timeout) as http_client:
            for attempt in range(retries + 1):
                response = await http_client.post(url, content=body, headers=sent)
                with self._lock:
                    parsed = None if isinstance(event, bytes) else event
                    self.deliveries.append(Delivery(url, body, dict(sent), response.status_code, parsed))
                if 200 <= response.status_code < 300 or attempt == retries:
                    return response
                await asyncio.sleep(retry_delay_s * 2**attempt)
        raise AssertionError("unreachable")

    # ---- faults and log -------------------------------------------------------------------

    def add_fault(self, method: str = "*", path: str = "*", *, status: int | None = None, body: Any = None,
                  retry_after: float | None = None, delay: float = 0.0, hang: bool = False,
                  reset: bool = False, malformed: bool = False, times: int | None = None) -> Fault:
        """Inject a fault for requests whose method and DECODED path match (fnmatch globs).

        The first active matching fault (in the order added) is used; `times` limits how many
        requests it hits (None: all). Kinds: `status` (ApiError body, or `body`: bytes/str sent
        raw, anything else as JSON; `Retry-After` from `retry_after`), `hang` (no answer until the
        client gives up or the fake stops), `reset` (connection dropped with a TCP RST, no HTTP
        answer), `malformed` (200 with truncated JSON). These answer before auth and idempotency
        and are not recorded under an Idempotency-Key. A pure `delay` slows a normal answer and
        applies after auth and after the Idempotency-Key is locked; combined with another kind it
        is waited before that kind's answer.
        """
        if status is None and not (hang or reset or malformed) and delay <= 0:
            raise ValueError("a fault needs status, hang, reset, malformed or delay")
        fault = Fault(method.upper(), path, status, body, retry_after, delay, hang, reset, malformed, times)
        with self._lock:
            self._faults.append(fault)
        return fault

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def requests_to(self, method: str, path_glob: str) -> list[Req]:
        """Logged requests with this method ("*" for any) whose decoded path matches the glob."""
        m = method.upper()
        return [r for r in list(self.requests)
                if (m == "*" or r.method == m) and fnmatch.fnmatchcase(r.path, path_glob)]

    def cancel_requests(self) -> list[tuple[str, str | None, str | None]]:
        """(sync_id, schema_id or None, Idempotency-Key) of cancel POSTs that reached a handler.

        Includes idempotent replays; excludes gateway faults, 401, 403 (read-only), invalid keys
        and 409 key conflicts.
        """
        with self._lock:
            return list(self._cancels)

    def reset_log(self) -> None:
        """Clear the request log and cancel log (idempotency keys and faults stay)."""
        with self._lock:
            self.requests.clear()
            self._cancels.clear()

    # ---- state helpers (call with the lock held) --------------------------------------------

    def _get_sync(self, sync_id: str) -> _Sync:
        try:
            return self._syncs[sync_id]
        except KeyError:
            raise KeyError(f"unknown sync {sync_id}") from None

    def _current(self, sync: _Sync, t: float) -> _ExecView | None:
        if not sync.executions:
            return None
        ev = _exec_view(sync.executions[-1], t)
        return None if ev.terminal else ev

    def _latest_views(self, sync: _Sync, t: float) -> tuple[_ExecView | None, _ExecView | None]:
        """(current, last) execution views."""
        current = last = None
        for ex in reversed(sync.executions):
            ev = _exec_view(ex, t)
            if not ev.terminal:
                if current is None and last is None:
                    current = ev
                continue
            last = ev
            break
        return current, last

    def _new_execution(self, sync: _Sync, t: float, schemas: list[str] | None,
                       durations: float | dict[str, float], start_after: float, fail: set[str],
                       **attrs: Any) -> _Execution:
        if self._current(sync, t) is not None:
            raise RuntimeError(f"an execution is already running for sync {sync.id}")
        if schemas:
            unknown = [s for s in schemas if s not in sync.schemas]
            if unknown:
                raise ValueError(f"unknown schema(s) for this sync: {unknown}")
            chosen = [sync.schemas[s] for s in dict.fromkeys(schemas)]
        else:
            chosen = [s for s in sync.schemas.values() if s.enabled]
        runs = []
        for s in chosen:
            d = durations.get(s.id, self.default_duration) if isinstance(durations, dict) else durations
            runs.append(_SchemaRun(s.id, s.output_name, float(d), s.id in fail))
        is_partial = bool(schemas) and len(chosen) < sum(1 for s in sync.schemas.values() if s.enabled)
        ex = _Execution(str(uuid.uuid4()), t, t + max(0.0, start_after), runs, is_partial=is_partial, **attrs)
        sync.executions.append(ex)
        return ex

    def _next_execution_time(self, sync: _Sync, t: float) -> str | None:
        if not sync.active:
            return None
        d = datetime.fromtimestamp(t, UTC)
        nxt = d.replace(hour=6, minute=0, second=0, microsecond=0)
        if nxt <= d:
            nxt += timedelta(days=1)
        return _iso(nxt.timestamp())

    def _status_data(self, sync: _Sync, t: float) -> dict[str, Any]:
        current, last = self._latest_views(sync, t)
        return {
            "current_execution": _exec_json(current) if current else None,
            "last_execution": _exec_json(last) if last else None,
            "next_execution_time": self._next_execution_time(sync, t),
            "ingestion_status": {
                "enabled": False, "is_running": False, "status": "ok", "status_message": "",
                "position": "", "position_time": None, "highwater_mark": "", "updated_at": None,
            },
        }

    def _sync_json(self, sync: _Sync) -> dict[str, Any]:
        actor = {"id": FAKE_USER_ID, "name": "Ops Bot", "type": "user"}
        created = _iso(sync.created_at)
        return {
            "id": sync.id,
            "name": sync.name,
            "active": sync.active,
            "mode": "replicate",
            "organization_id": self.org_id or FAKE_ORG_ID,
            "source_connection_id": SOURCE_CONNECTION_ID,
            "destination_connection_id": DESTINATION_CONNECTION_ID,
            "source_configuration": {},
            "destination_configuration": {"schema": "RAW"},
            "default_schedule": {
                "id": "a1b2c3d4-0000-4000-8000-000000000001", "frequency": "daily", "hour": "6",
                "minute": "0", "day_of_week": "", "day_of_month": "", "month": "",
                "created_at": created, "created_by": actor, "updated_at": created, "updated_by": actor,
            },
            "additional_schedules": [],
            "automatically_add_new_fields": "all",
            "automatically_add_new_objects": "none",
            "normalize_names": "enabled",
            "concurrency_limit": 4,
            "resync_concurrency_limit": 1,
            "data_cutoff_timestamp": None,
            "disable_record_timestamps": False,
            "policies": [],
            "created_at": created,
            "created_by": actor,
            "updated_at": _iso(sync.updated_at),
            "updated_by": actor,
        }

    @staticmethod
    def _schema_item(s: _Schema, full: bool) -> dict[str, Any]:
        item: dict[str, Any] = {
            "id": s.id, "enabled": s.enabled, "output_name": s.output_name, "user_output_name": "",
            "partition_key": "", "tracking_field": "", "data_cutoff_timestamp": None,
            "disable_data_cutoff": False, "history_enabled": False, "destination_history_output_name": "",
        }
        if full:
            item["fields"] = [
                {"id": "id", "enabled": True, "obfuscated": False, "output_name": "id",
                 "user_output_name": ""},
                {"id": "updated_at", "enabled": True, "obfuscated": False, "output_name": "updated_at",
                 "user_output_name": ""},
            ]
            item["filters"] = []
        return item

    def _sync_or_404(self, sync_id: str) -> _Sync:
        sync = self._syncs.get(sync_id)
        if sync is None:
            raise _ApiErr(404, "bulk sync not found")
        return sync

    def _request_sync_cancel(self, ev: _ExecView, t: float) -> None:
        ex = ev.ex
        if ex.sync_cancel_requested_at is None:
            ex.sync_cancel_requested_at = t
            ex.sync_cancel_at = t + self.sync_cancel_delay_s

    # ---- handlers (called with the lock held; return (status, payload)) ---------------------

    def _h_me(self, t, p, q, body, auth: _Auth):
        return 200, {"data": {
            "id": FAKE_USER_ID if auth.method == "bearer" else None,
            "email": "ops-bot@example.com",
            "organization_id": self.org_id or FAKE_ORG_ID,
            "organization_name": "Example Co",
            "is_user": auth.method == "bearer",
            "is_organization": auth.method == "basic",
            "is_partner": False,
            "is_system": False,
            "role": "readonly" if auth.read_only else "admin",
            "credential": {
                "method": "api_key" if auth.method == "bearer" else "organization_api_key",
                "mode": "read_only" if auth.read_only else "full",
            },
        }}

    def _page(self, items: list, q: dict, kind: str, scope: str, limit: int) -> tuple[list, str]:
        token = q.get("page_token")
        offset = _decode_token(token, kind, scope) if token else 0
        page = items[offset:offset + limit]
        nxt = offset + limit
        return page, (_encode_token(kind, scope, nxt) if nxt < len(items) else "")

    def _limit(self, q: dict, cap: int, default: int) -> int:
        raw = q.get("limit")
        if raw in (None, ""):
            return default
        try:
            n = int(raw)
        except ValueError:
            raise _ApiErr(400, "invalid limit") from None
        return default if n <= 0 else min(n, cap)

    def _h_list_syncs(self, t, p, q, body, auth):
        active = _bool_param(q.get("active"), "active")
        syncs = [s for s in self._syncs.values() if active is None or s.active == active]
        limit = self._limit(q, self.page_size, self.page_size)
        page, nxt = self._page(syncs, q, "syncs", "", limit)
        out: dict[str, Any] = {"data": [self._sync_json(s) for s in page]}
        if nxt:
            out["pagination"] = {"next_page_token": nxt}
        return 200, out

    def _h_list_status(self, t, p, q, body, auth, qlist=()):
        all_ = _bool_param(q.get("all"), "all")
        active = _bool_param(q.get("active"), "active")
        if all_ or active is not None:
            syncs = [s for s in self._syncs.values() if active is None or s.active == active]
        else:
            ids = [v for k, v in qlist if k == "sync_id"]
            syncs = [self._sync_or_404(i) for i in dict.fromkeys(ids)]
        data = []
        for sync in syncs:
            status = None
            entries: dict[str, dict[str, Any]] = {}
            seen: set[str] = set()
            wanted = {s.id for s in sync.schemas.values() if s.enabled}
            for i, ex in enumerate(reversed(sync.executions)):
                if wanted <= seen:
                    break
                ev = _exec_view(ex, t)
                if i == 0:
                    status = ev.status
                for s in ex.schemas:
                    if s.id in seen:
                        continue
                    seen.add(s.id)
                    if s.dropped:
                        continue
                    v = next(v for v in ev.schemas if v.run is s)
                    entries[s.id] = {
                        "schema": s.id, "execution_id": ex.id, "status": v.status,
                        "status_message": v.status_message, "started_at": _iso(v.started_at),
                        "completed_at": _iso(v.completed_at), "record_count": v.record_count,
                        "error_count": 1 if v.status == "failed" else 0, "warning_count": 0,
                    }
            schemas = [entries[s.id] for s in sync.schemas.values() if s.enabled and s.id in entries]
            data.append({"sync_id": sync.id, "status": status,
                         "nextExecutionTime": self._next_execution_time(sync, t), "schemas": schemas})
        return 200, {"data": data}

    def _webhook_json(self, hook: dict[str, Any]) -> dict[str, Any]:
        return dict(hook)

    def _webhook_body(self, body: bytes) -> dict[str, Any]:
        try:
            req = json.loads(body) if body.strip() else {}
        except ValueError:
            raise _ApiErr(400, "request body is not valid JSON") from None
        if not isinstance(req, dict):
            raise _ApiErr(400, "request body must be a JSON object")
        endpoint, secret = req.get("endpoint"), req.get("secret")
        if not isinstance(endpoint, str) or not re.match(r"^https?://[^\s]+$", endpoint):
            raise _ApiErr(400, "endpoint must be an http(s) URL")
        if not isinstance(secret, str) or not 6 <= len(secret) <= 32:
            raise _ApiErr(400, "secret must be 6 to 32 characters")
        return req

    def _h_list_webhooks(self, t, p, q, body, auth):
        return 200, {"data": [self._webhook_json(w) for w in self._webhooks.values()]}

    def _h_create_webhook(self, t, p, q, body, auth):
        req = self._webhook_body(body)
        if self._webhooks:
            raise _ApiErr(409, "this organization has a webhook already", "conflict")
        hook = {
            "id": str(uuid.uuid4()),
            "organization_id": req.get("organization_id") or self.org_id or FAKE_ORG_ID,
            "endpoint": req["endpoint"],
            "secret": req["secret"],
            "disabled": False,
            "disabled_at": None,
            "disabled_reason": "",
            "created_at": _iso(t),
        }
        self._webhooks[hook["id"]] = hook
        return 200, {"data": self._webhook_json(hook)}

    def _webhook_or_404(self, webhook_id: str) -> dict[str, Any]:
        hook = self._webhooks.get(webhook_id)
        if hook is None:
            raise _ApiErr(404, "webhook not found")
        return hook

    def _h_get_webhook(self, t, p, q, body, auth):
        return 200, {"data": self._webhook_json(self._webhook_or_404(p["webhook_id"]))}

    def _h_update_webhook(self, t, p, q, body, auth):
        hook = self._webhook_or_404(p["webhook_id"])
        req = self._webhook_body(body)
        hook.update(endpoint=req["endpoint"], secret=req["secret"])
        return 200, {"data": self._webhook_json(hook)}

    def _h_delete_webhook(self, t, p, q, body, auth):
        self._webhook_or_404(p["webhook_id"])
        del self._webhooks[p["webhook_id"]]
        return 200, {"data": {"message": "deleted"}}

    def _h_get_sync(self, t, p, q, body, auth):
        return 200, {"data": self._sync_json(self._sync_or_404(p["sync_id"]))}

    def _h_sync_status(self, t, p, q, body, auth):
        return 200, {"data": self._status_data(self._sync_or_404(p["sync_id"]), t)}

    def _h_list_schemas(self, t, p, q, body, auth):
        sync = self._sync_or_404(p["sync_id"])
        enabled = _bool_param(q.get("filters[enabled]"), "filters[enabled]")
        items = [self._schema_item(s, False) for s in sync.schemas.values()
                 if enabled is None or s.enabled == enabled]
        return 200, {"data": items}

    def _schema_or_404(self, sync: _Sync, schema_id: str) -> _Schema:
        s = sync.schemas.get(schema_id)
        if s is None:
            raise _ApiErr(404, "schema not found on bulk sync")
        return s

    def _h_get_schema(self, t, p, q, body, auth):
        sync = self._sync_or_404(p["sync_id"])
        return 200, {"data": self._schema_item(self._schema_or_404(sync, p["schema_id"]), True)}

    def _h_cancel_schema(self, t, p, q, body, auth):
        sync = self._sync_or_404(p["sync_id"])
        self._schema_or_404(sync, p["schema_id"])
        cur = self._current(sync, t)
        if cur is not None:
            for v in cur.schemas:
                if v.run.id == p["schema_id"] and v.status == "running" and v.run.cancel_at is None:
                    v.run.cancel_requested_at = t
                    v.run.cancel_at = t + self.cancel_delay_s
        return 200, {"data": {"message": CANCEL_MESSAGE}}

    def _h_cancel_sync(self, t, p, q, body, auth):
        sync = self._sync_or_404(p["sync_id"])
        cur = self._current(sync, t)
        if cur is not None:
            self._request_sync_cancel(cur, t)
        return 200, {"data": {"message": CANCEL_MESSAGE}}

    def _exec_or_404(self, sync: _Sync, exec_id: str) -> _Execution:
        for ex in sync.executions:
            if ex.id == exec_id:
                return ex
        raise _ApiErr(404, "execution not found")

    def _h_cancel_execution(self, t, p, q, body, auth):
        sync = self._sync_or_404(p["sync_id"])
        ex = self._exec_or_404(sync, p["execution_id"])
        ev = _exec_view(ex, t)
        if not ev.terminal:
            self._request_sync_cancel(ev, t)
        return 200, {"data": {"message": CANCEL_MESSAGE}}

    def _h_get_execution(self, t, p, q, body, auth):
        sync = self._sync_or_404(p["sync_id"])
        return 200, {"data": _exec_json(_exec_view(self._exec_or_404(sync, p["execution_id"]), t))}

    def _h_list_executions(self, t, p, q, body, auth):
        sync = self._sync_or_404(p["sync_id"])
        only_terminal = _bool_param(q.get("only_terminal"), "only_terminal")
        ascending = _bool_param(q.get("ascending"), "ascending")
        execs = list(sync.executions)
        if only_terminal:
            execs = [ex for ex in execs if _exec_view(ex, t).terminal]
        if not ascending:
            execs.reverse()
        limit = self._limit(q, 100, 50)
        page, nxt = self._page(execs, q, "executions", f"{sync.id}:{bool(only_terminal)}:{bool(ascending)}",
                               limit)
        return 200, {"data": [_exec_json(_exec_view(ex, t)) for ex in page],
                     "pagination": {"next_page_token": nxt}}

    def _h_start_execution(self, t, p, q, body: bytes, auth):
        sync = self._sync_or_404(p["sync_id"])
        try:
            req = json.loads(body) if body.strip() else {}
        except ValueError:
            raise _ApiErr(400, "request body is not valid JSON") from None
        if not isinstance(req, dict):
            raise _ApiErr(400, "request body must be a JSON object")
        if "resync" in req:
            raise _ApiErr(400, "the resync field is not supported; use resync_mode")
        test = req.get("test")
        resync_mode = req.get("resync_mode")
        fetch_mode = req.get("fetch_mode") or "none"
        schemas = req.get("schemas")
        if test is not None and not isinstance(test, bool):
            raise _ApiErr(400, "test must be a boolean")
        if test and resync_mode:
            raise _ApiErr(400, "test and resync_mode cannot both be set")
        if resync_mode not in (None, "refetch", "resync", "rebuild"):
            raise _ApiErr(400, "invalid resync_mode")
        if fetch_mode not in ("none", "incremental", "full"):
            raise _ApiErr(400, "invalid fetch_mode")
        if schemas is not None and (
            not isinstance(schemas, list) or not all(isinstance(s, str) for s in schemas)
        ):
            raise _ApiErr(400, "schemas must be a list of strings")
        if schemas and any(s not in sync.schemas for s in schemas):
            raise _ApiErr(400, "unknown schema for this bulk sync")
        if self._current(sync, t) is not None:
            raise _ApiErr(409, "an execution is already running for this sync", "sync_running")
        ex = self._new_execution(
            sync, t, schemas, self.default_duration, 0.0, set(),
            fetch_mode=fetch_mode, is_test=bool(test), is_resync=resync_mode is not None,
            output_disposition="rebuild" if resync_mode == "rebuild" else "retain",
        )
        return 200, {"data": _exec_json(_exec_view(ex, t))}

    # ---- ASGI -----------------------------------------------------------------------------

    async def _asgi(self, scope, receive, send) -> None:
        if scope["type"] == "lifespan":
            while True:
                msg = await receive()
                if msg["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif msg["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        _set_nodelay(receive)
        chunks = []
        while True:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                return
            chunks.append(msg.get("body", b""))
            if not msg.get("more_body"):
                break
        body = b"".join(chunks)
        raw = scope.get("raw_path")
        raw_path = raw.decode("latin-1") if raw else quote(scope["path"])
        raw_path = raw_path.split("?", 1)[0]
        method = scope["method"].upper()
        path = unquote(raw_path)
        qlist = parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", ())}
        req = Req(method, path, raw_path, qlist, headers, body)

        fault = None
        with self._lock:
            self.requests.append(req)
            for f in self._faults:
                if f.active and f.matches(method, path):
                    f.hits += 1
                    if f.times is not None:
                        f.times -= 1
                    fault = f
                    break

        if fault is not None and fault.gateway:
            await self._gateway_fault(fault, req, receive, send)
            return

        status, payload, extra = self._prepare(req, qlist)
        if status == -1:  # passed the checks: payload holds (route, params, idem key)
            status, out, extra = await self._dispatch(req, qlist, payload, fault)
        else:
            out = payload
        await self._respond(req, send, status, out, extra)

    def _prepare(self, req: Req, qlist) -> tuple[int, Any, list]:
        """Auth, routing, read-only refusal and idempotency checks. -1 = go on to the handler."""
        auth = self._authenticate(req.headers.get("authorization", ""))
        if auth is None:
            return 401, api_error(401, "invalid or missing credentials"), []
        segs = [unquote(s) for s in req.raw_path.split("/")[1:]]
        route = _route(req.method, segs)
        if route is None:
            return 404, api_error(404, "route not found"), []
        if req.method in ("POST", "PUT", "DELETE") and auth.read_only:
            return 403, api_error(403, "this API key is read-only"), []
        name, params = route
        key = req.headers.get("idempotency-key") if req.method == "POST" else None
        if key is not None and not _IDEMPOTENCY_KEY_RE.match(key):
            return 400, api_error(400, "invalid Idempotency-Key: use 8-255 letters, digits, - or _",
                                  "invalid_idempotency_key"), []
        if key is not None:
            with self._lock:
                if key in self._idem:
                    outcome = self._idem[key]
                    if outcome is None:
                        return 409, api_error(409, "a request with this idempotency key is still in progress",
                                              "idempotency_conflict"), []
                    if name in _CANCEL_ROUTES:
                        self._cancels.append((params["sync_id"], params.get("schema_id"), key))
                    return outcome[0], outcome[1], [(b"idempotent-replayed", b"true")]
                self._idem[key] = None  # lock the key
        return -1, (name, params, key, auth), []

    async def _dispatch(self, req: Req, qlist, prepared, fault: Fault | None) -> tuple[int, Any, list]:
        name, params, key, auth = prepared
        recorded = False
        try:
            if fault is not None and fault.delay > 0:
                await self._sleep(fault.delay)
            q = dict(qlist)
            with self._lock:
                if name in _CANCEL_ROUTES:
                    self._cancels.append((params["sync_id"], params.get("schema_id"), key))
                t = self._ts()
                try:
                    handler = getattr(self, "_h_" + name)
                    if name == "list_status":
                        status, out = handler(t, params, q, req.body, auth, qlist=qlist)
                    else:
                        status, out = handler(t, params, q, req.body, auth)
                except _ApiErr as e:
                    status, out = e.status, api_error(e.status, e.message, e.key)
                except Exception as e:  # a bug in the fake: answer like the API would
                    status, out = 500, api_error(500, f"internal server error ({type(e).__name__})")
                body = json.dumps(out, separators=(",", ":")).encode()
                if key is not None:
                    self._idem[key] = (status, body)
                    recorded = True
            return status, body, []
        finally:
            if key is not None and not recorded:
                with self._lock:
                    if self._idem.get(key, 0) is None:
                        del self._idem[key]  # never completed: free the key

    def _authenticate(self, header: str) -> _Auth | None:
        scheme, _, cred = header.strip().partition(" ")
        scheme = scheme.lower()
        cred = cred.strip()
        full, ro = self.api_key, self.read_only_keys
        if scheme == "bearer" and cred:
            if cred == full or cred in ro:
                return _Auth(cred in ro and cred != full, "bearer")
            return None
        if scheme == "basic" and self.org_id is not None and cred:
            try:
                decoded = base64.b64decode(cred, validate=True).decode()
            except (binascii.Error, UnicodeDecodeError):
                return None
            user, sep, key = decoded.partition(":")
            user, key = user.strip(), key.strip()
            if sep and user == self.org_id and (key == full or key in ro):
                return _Auth(key in ro and key != full, "basic")
        return None

    async def _respond(self, req: Req, send, status: int, out: Any, extra: list) -> None:
        body = out if isinstance(out, bytes) else json.dumps(out, separators=(",", ":")).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"x-polytomic-version", self._version_header),
            *extra,
        ]
        req.status = status
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def _sleep(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self._stopping.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return
            await asyncio.sleep(min(left, 0.05))

    async def _gateway_fault(self, fault: Fault, req: Req, receive, send) -> None:
        if fault.delay > 0:
            await self._sleep(fault.delay)
        if fault.hang:
            disconnected = asyncio.ensure_future(receive())
            try:
                while not self._stopping.is_set():
                    done, _ = await asyncio.wait({disconnected}, timeout=0.05)
                    if done:
                        return  # the client gave up
            finally:
                disconnected.cancel()
            await self._abort(receive, send)
            return
        if fault.reset:
            await self._abort(receive, send)
            return
        if fault.malformed:
            await self._respond(req, send, 200, b'{"data": {"id": "3f6c2a9e-8b1d-4c57', [])
            return
        status = fault.status or 500
        extra = []
        if fault.retry_after is not None:
            ra = fault.retry_after
            extra.append((b"retry-after", (str(int(ra)) if float(ra).is_integer() else str(ra)).encode()))
        if fault.body is None:
            try:
                phrase = http.HTTPStatus(status).phrase.lower()
            except ValueError:
                phrase = "error"
            out: Any = api_error(status, phrase)
        elif isinstance(fault.body, bytes):
            out = fault.body
        elif isinstance(fault.body, str):
            out = fault.body.encode()
        else:
            out = fault.body
        await self._respond(req, send, status, out, extra)

    async def _abort(self, receive, send) -> None:
        """Drop the connection without an HTTP answer (TCP RST where possible)."""
        transport = _transport(receive)
        if transport is None:  # not uvicorn: start an answer and never finish it
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-length", b"100")]})
            await send({"type": "http.response.body", "body": b"{", "more_body": True})
            return
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.abort()
        for _ in range(3):  # let connection_lost run so the server does not answer 500
            await asyncio.sleep(0)
