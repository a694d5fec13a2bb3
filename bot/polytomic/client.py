"""Async Polytomic REST client for the bulk-sync calls the bot makes.

One `httpx.AsyncClient` (one connection pool) per :class:`PolytomicClient`; reuse the instance for
every call. Responses are parsed into :mod:`bot.polytomic.models`; failures become the typed errors
of :mod:`bot.polytomic.errors`, whose texts name the method and the path *template* and never the
key, the Authorization header or any other header.

Retries: GETs retry timeouts, connection failures, 429 and 5xx with full-jitter exponential back-off
(honouring ``Retry-After``), bounded by ``max_attempts`` and ``retry_budget_s``. Cancel POSTs need an
``Idempotency-Key`` and retry the same failures, plus 409 (the key's first request is still in
flight), always with that same key.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import email.utils
import json
import logging
import random
import re
import time
import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar
from urllib.parse import quote

import httpx
from pydantic import BaseModel, SecretStr, ValidationError

from bot import metrics
from bot.polytomic.errors import (
    TRANSIENT,
    BadRequest,
    BadResponse,
    Conflict,
    Forbidden,
    NotFound,
    PolytomicError,
    PolytomicTimeout,
    RateLimited,
    ServerError,
    Unauthorized,
    Unreachable,
)
from bot.polytomic.models import (
    BulkSchema,
    BulkSync,
    Execution,
    Identity,
    SyncExecutionStatus,
    SyncStatus,
)
from bot.polytomic.resolve import looks_like_uuid

log = logging.getLogger("bot.polytomic")

M = TypeVar("M", bound=BaseModel)

_IDEMPOTENCY_KEY_RE = re.compile(r"^[A-Za-z0-9_-]{8,255}$")
_HEADER_SAFE_RE = re.compile(r"^[\x21-\x7e]+$")  # visible ASCII, no spaces/controls
_MAX_PAGES = 1000
_STATUS_CHUNK = 100  # sync ids per list-status request (keeps the URL well under 8 KB)
_SNIPPET = 80

_SYNCS = "/api/bulk/syncs"
T_ME = "/api/me"
T_SYNCS = _SYNCS
T_SYNC = _SYNCS + "/{id}"
T_STATUS = _SYNCS + "/{id}/status"
T_STATUSES = _SYNCS + "/status"
T_SCHEMAS = _SYNCS + "/{id}/schemas"
T_SCHEMA = _SYNCS + "/{id}/schemas/{schema_id}"
T_SCHEMA_CANCEL = _SYNCS + "/{id}/schemas/{schema_id}/cancel"
T_SYNC_CANCEL = _SYNCS + "/{id}/cancel"
T_EXECUTIONS = _SYNCS + "/{id}/executions"
T_EXECUTION = _SYNCS + "/{id}/executions/{exec_id}"
T_EXECUTION_CANCEL = _SYNCS + "/{id}/executions/{exec_id}/cancel"


def new_idempotency_key() -> str:
    """A fresh key for one user action (letters, digits and '-', 46 characters)."""
    return "polytomic-bot-" + uuid.uuid4().hex


def path_segment(value: str) -> str:
    """Percent-encode `value` as exactly one path segment.

    Everything outside the unreserved set is escaped (``/``, ``?``, ``#``, ``%``, spaces, ...), and a
    segment made only of dots is escaped too (``%2E%2E``) so that no URL normaliser can treat it as
    a ``.``/``..`` segment.
    """
    encoded = quote(value, safe="")
    if encoded and encoded.strip(".") == "":
        encoded = encoded.replace(".", "%2E")
    return encoded


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` value (delta-seconds or HTTP-date); None if unusable."""
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return max(0.0, seconds) if seconds == seconds and seconds != float("inf") else None
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    now = now or datetime.now(UTC)
    return max(0.0, (when - now).total_seconds())


def _check_idempotency_key(key: str) -> str:
    if not isinstance(key, str) or not _IDEMPOTENCY_KEY_RE.match(key):
        raise ValueError("idempotency_key must be 8 to 255 letters, digits, '-' or '_'")
    return key


class PolytomicClient:
    """Async client for the Polytomic bulk-sync API. Use ``async with`` or call :meth:`aclose`."""

    def __init__(
        self,
        base_url: str,
        api_key: SecretStr | str,
        *,
        org_id: str | None = None,
        api_version: str = "2025-09-18",
        timeout: float = 10.0,
        connect_timeout: float = 5.0,
        max_attempts: int = 4,
        retry_budget_s: float = 20.0,
        backoff_base_s: float = 0.25,
        backoff_cap_s: float = 5.0,
        max_connections: int = 50,
    ) -> None:
        key = api_key.get_secret_value() if isinstance(api_key, SecretStr) else str(api_key)
        key = key.strip()
        if not key:
            raise ValueError("Polytomic API key is empty")
        if not _HEADER_SAFE_RE.match(key):
            raise ValueError("Polytomic API key contains characters not allowed in an HTTP header")
        org = (org_id or "").strip() or None
        if org is not None and (":" in org or not _HEADER_SAFE_RE.match(org)):
            raise ValueError("Polytomic organization id contains characters not allowed here")
        if org is not None:
            token = base64.b64encode(f"{org}:{key}".encode()).decode("ascii")
            authorization = f"Basic {token}"
            self._secrets: tuple[str, ...] = (authorization, token, key)
        else:
            authorization = f"Bearer {key}"
            self._secrets = (authorization, key)
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")

        self._base = base_url.strip().rstrip("/")
        if not self._base.startswith(("http://", "https://")):
            raise ValueError("Polytomic base URL must start with http:// or https://")
        self.api_version = api_version
        self.org_id = org
        self._timeout = httpx.Timeout(timeout, connect=connect_timeout)
        self._timeout_s = timeout
        self._connect_timeout_s = connect_timeout
        self._max_attempts = max_attempts
        self._budget = retry_budget_s
        self._backoff_base = backoff_base_s
        self._backoff_cap = backoff_cap_s
        self._inflight = asyncio.Semaphore(max_connections)
        self._http = httpx.AsyncClient(
            headers={
                "Authorization": authorization,
                "X-Polytomic-Version": api_version,
                "Accept": "application/json",
                "User-Agent": "polytomic-bot",
            },
            timeout=self._timeout,
            limits=httpx.Limits(
                max_connections=max_connections,
                max_keepalive_connections=max_connections,
                keepalive_expiry=20.0,
            ),
            follow_redirects=False,
        )

    @classmethod
    def from_settings(cls, settings: Any) -> PolytomicClient:
        """Build from :class:`bot.settings.Settings` (base URL, key, org id, version)."""
        return cls(
            settings.polytomic_base_url,
            settings.polytomic_api_key,
            org_id=settings.polytomic_org_id,
            api_version=settings.polytomic_api_version,
        )

    def __repr__(self) -> str:
        auth = "basic" if self.org_id else "bearer"
        return f"PolytomicClient(base_url={self._base!r}, auth={auth}, api_version={self.api_version!r})"

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> PolytomicClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # Endpoints ------------------------------------------------------------------------------

    async def me(self) -> Identity:
        body = await self._call("GET", T_ME, "/api/me")
        return _one(Identity, body, "GET", T_ME)

    async def list_syncs(self, *, active: bool | None = None) -> list[BulkSync]:
        """Every bulk sync, following ``pagination.next_page_token`` until it is absent or empty."""
        params: dict[str, str] = {}
        if active is not None:
            params["active"] = _bool(active)
        syncs: list[BulkSync] = []
        seen_ids: set[str] = set()
        seen_tokens: set[str] = set()
        for _ in range(_MAX_PAGES):
            body = await self._call("GET", T_SYNCS, _SYNCS, params=params)
            for sync in _many(BulkSync, body, "GET", T_SYNCS):
                if sync.id is not None:
                    if sync.id in seen_ids:
                        continue
                    seen_ids.add(sync.id)
                syncs.append(sync)
            token = _next_token(body)
            if not token:
                break
            if token in seen_tokens:
                log.warning("GET %s: pagination token repeated; stopping after %d syncs", T_SYNCS, len(syncs))
                break
            seen_tokens.add(token)
            params = {**params, "page_token": token}
        else:
            log.warning("GET %s: stopped after %d pages", T_SYNCS, _MAX_PAGES)
        return syncs

    async def get_sync(self, sync_id: str) -> BulkSync:
        path = f"{_SYNCS}/{_uuid(sync_id, 'sync', 'GET', T_SYNC)}"
        return _one(BulkSync, await self._call("GET", T_SYNC, path), "GET", T_SYNC)

    async def get_sync_status(self, sync_id: str) -> SyncStatus:
        path = f"{_SYNCS}/{_uuid(sync_id, 'sync', 'GET', T_STATUS)}/status"
        return _one(SyncStatus, await self._call("GET", T_STATUS, path), "GET", T_STATUS)

    async def list_sync_statuses(
        self, sync_ids: Sequence[str] = (), *, active: bool | None = None, all: bool | None = None
    ) -> list[SyncExecutionStatus]:
        """``GET /api/bulk/syncs/status``: one entry per sync with its schemas' latest runs.

        Many ids are split into chunks requested concurrently over the shared pool. The API lets
        ``all``/``active`` override ``sync_id``, so when either is given the ids are not sent.
        When a request for several ids answers 404 (a sync was deleted), the ids are bisected and
        the unknown ones left out of the result (logged); NotFound is raised only when every
        requested id is unknown.
        """
        flags: list[tuple[str, str]] = []
        if all is not None:
            flags.append(("all", _bool(all)))
        if active is not None:
            flags.append(("active", _bool(active)))
        if flags or not sync_ids:
            body = await self._call("GET", T_STATUSES, T_STATUSES, params=flags)
            return _many(SyncExecutionStatus, body, "GET", T_STATUSES)
        if isinstance(sync_ids, str):
            sync_ids = (sync_ids,)
        ids = list(dict.fromkeys(_uuid(s, "sync", "GET", T_STATUSES) for s in sync_ids))
        chunks = [ids[i : i + _STATUS_CHUNK] for i in range(0, len(ids), _STATUS_CHUNK)]
        unknown: list[str] = []
        last_not_found: list[NotFound] = []

        async def fetch(chunk: list[str]) -> list[SyncExecutionStatus]:
            try:
                body = await self._call(
                    "GET", T_STATUSES, T_STATUSES, params=[("sync_id", s) for s in chunk]
                )
            except NotFound as exc:
                if len(chunk) == 1:
                    unknown.extend(chunk)
                    last_not_found[:] = [exc]
                    return []
                mid = len(chunk) // 2
                halves = await _gather([fetch(chunk[:mid]), fetch(chunk[mid:])])
                return [item for half in halves for item in half]
            return _many(SyncExecutionStatus, body, "GET", T_STATUSES)

        results = await _gather([fetch(chunk) for chunk in chunks])
        if unknown and len(unknown) == len(ids):
            raise last_not_found[0]
        if unknown:
            log.warning("GET %s: %d unknown sync id(s) left out: %s", T_STATUSES, len(unknown),
                        ", ".join(unknown[:5]))
        return [item for result in results for item in result]

    async def list_schemas(self, sync_id: str, *, enabled: bool | None = None) -> list[BulkSchema]:
        path = f"{_SYNCS}/{_uuid(sync_id, 'sync', 'GET', T_SCHEMAS)}/schemas"
        params = {"filters[enabled]": _bool(enabled)} if enabled is not None else None
        return _many(BulkSchema, await self._call("GET", T_SCHEMAS, path, params=params), "GET", T_SCHEMAS)

    async def get_schema(self, sync_id: str, schema_id: str) -> BulkSchema:
        sid = _uuid(sync_id, "sync", "GET", T_SCHEMA)
        path = f"{_SYNCS}/{sid}/schemas/{_schema(schema_id, 'GET', T_SCHEMA)}"
        return _one(BulkSchema, await self._call("GET", T_SCHEMA, path), "GET", T_SCHEMA)

    async def list_executions(self, sync_id: str, *, limit: int | None = None) -> list[Execution]:
        """Most recent executions first. Without `limit`: the first page as the API sends it;
        with `limit`: follows pages until `limit` executions are collected."""
        path = f"{_SYNCS}/{_uuid(sync_id, 'sync', 'GET', T_EXECUTIONS)}/executions"
        if limit is not None and limit < 1:
            raise ValueError("limit must be at least 1")
        params: dict[str, str] = {}
        if limit is not None:
            params["limit"] = str(min(limit, 100))
        out: list[Execution] = []
        seen_tokens: set[str] = set()
        for _ in range(_MAX_PAGES):
            body = await self._call("GET", T_EXECUTIONS, path, params=params)
            out.extend(_many(Execution, body, "GET", T_EXECUTIONS))
            token = _next_token(body)
            if limit is None or len(out) >= limit or not token or token in seen_tokens:
                break
            seen_tokens.add(token)
            params = {**params, "limit": str(min(limit - len(out), 100)), "page_token": token}
        return out[:limit] if limit is not None else out

    async def get_execution(self, sync_id: str, execution_id: str) -> Execution:
        sid = _uuid(sync_id, "sync", "GET", T_EXECUTION)
        eid = _uuid(execution_id, "execution", "GET", T_EXECUTION)
        body = await self._call("GET", T_EXECUTION, f"{_SYNCS}/{sid}/executions/{eid}")
        return _one(Execution, body, "GET", T_EXECUTION)

    async def cancel_schema(self, sync_id: str, schema_id: str, *, idempotency_key: str) -> str:
        """Request cancellation of one schema's running work; returns the API's message."""
        key = _check_idempotency_key(idempotency_key)
        sid = _uuid(sync_id, "sync", "POST", T_SCHEMA_CANCEL)
        path = f"{_SYNCS}/{sid}/schemas/{_schema(schema_id, 'POST', T_SCHEMA_CANCEL)}/cancel"
        body = await self._call("POST", T_SCHEMA_CANCEL, path, idempotency_key=key)
        return _message(body, T_SCHEMA_CANCEL)

    async def cancel_sync(self, sync_id: str, *, idempotency_key: str) -> str:
        """Request cancellation of the sync's running execution; returns the API's message."""
        key = _check_idempotency_key(idempotency_key)
        path = f"{_SYNCS}/{_uuid(sync_id, 'sync', 'POST', T_SYNC_CANCEL)}/cancel"
        body = await self._call("POST", T_SYNC_CANCEL, path, idempotency_key=key)
        return _message(body, T_SYNC_CANCEL)

    async def cancel_execution(self, sync_id: str, execution_id: str, *, idempotency_key: str) -> str:
        """Request cancellation of one execution; returns the API's message."""
        key = _check_idempotency_key(idempotency_key)
        sid = _uuid(sync_id, "sync", "POST", T_EXECUTION_CANCEL)
        eid = _uuid(execution_id, "execution", "POST", T_EXECUTION_CANCEL)
        path = f"{_SYNCS}/{sid}/executions/{eid}/cancel"
        body = await self._call("POST", T_EXECUTION_CANCEL, path, idempotency_key=key)
        return _message(body, T_EXECUTION_CANCEL)

    # Transport ------------------------------------------------------------------------------

    def _redact(self, text: str) -> str:
        for secret in self._secrets:
            if secret and secret in text:
                text = text.replace(secret, "[redacted]")
        return text

    def _backoff(self, attempt: int) -> float:
        ceiling = min(self._backoff_cap, self._backoff_base * (2 ** (attempt - 1)))
        return random.uniform(0.0, ceiling)

    async def _call(
        self,
        method: str,
        template: str,
        path: str,
        *,
        params: Mapping[str, str] | Sequence[tuple[str, str]] | None = None,
        idempotency_key: str | None = None,
    ) -> dict[str, Any]:
        """Send with retries; return the decoded JSON envelope (a dict with a `data` key)."""
        url = self._base + path
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key is not None else None
        retry_conflict = idempotency_key is not None
        started = time.monotonic()
        attempt = 0
        while True:
            attempt += 1
            remaining = self._budget - (time.monotonic() - started)
            timeout = self._timeout
            if remaining < self._timeout_s:
                # Keep the whole call near the budget; never shrink an attempt below one second.
                read = max(min(self._timeout_s, 1.0), remaining)
                timeout = httpx.Timeout(read, connect=min(self._connect_timeout_s, read))
            t0 = time.monotonic()
            error: PolytomicError | None = None
            retry_after: float | None = None
            response: httpx.Response | None = None
            try:
                # Bounded in flight: beyond the pool size httpcore queues requests and rescans the
                # queue on every state change (quadratic under a burst).
                async with self._inflight:
                    response = await self._http.request(
                        method, url, params=params, headers=headers, timeout=timeout
                    )
            except httpx.TimeoutException as exc:
                error = PolytomicTimeout(
                    f"{method} {template}: no answer in time ({type(exc).__name__})"
                )
            except httpx.TransportError as exc:
                detail = self._redact(str(exc))[:200]
                error = Unreachable(
                    f"{method} {template}: connection failed ({type(exc).__name__}"
                    + (f": {detail})" if detail else ")")
                )
            except httpx.DecodingError as exc:
                error = BadResponse(f"{method} {template}: undecodable response body ({type(exc).__name__})")
            except httpx.HTTPError as exc:
                error = Unreachable(f"{method} {template}: request failed ({type(exc).__name__})")
            elapsed = time.monotonic() - t0
            outcome = response.status_code if response is not None else type(error).__name__
            metrics.polytomic_call(method, template, outcome, elapsed)
            log.debug(
                "%s %s -> %s attempt=%d elapsed=%.3fs", method, template, outcome, attempt, elapsed
            )
            if response is not None:
                if 200 <= response.status_code < 300:
                    return self._envelope(response, method, template)
                error, retry_after = self._status_error(response, method, template)
            assert error is not None
            error.method = method  # type: ignore[attr-defined]
            error.path_template = template  # type: ignore[attr-defined]
            retryable = isinstance(error, TRANSIENT) or (retry_conflict and isinstance(error, Conflict))
            if not retryable or attempt >= self._max_attempts:
                raise error
            if retry_after is not None:
                delay = retry_after
            else:
                delay = self._backoff(attempt)
                if isinstance(error, Conflict):
                    delay = max(delay, self._backoff_base)
            left = self._budget - (time.monotonic() - started)
            if delay > left:
                log.debug(
                    "%s %s: giving up after attempt %d (wait %.2fs > %.2fs left of the retry budget)",
                    method, template, attempt, delay, max(left, 0.0),
                )
                raise error
            log.debug("%s %s: retrying in %.3fs (attempt %d failed: %s)",
                      method, template, delay, attempt, type(error).__name__)
            await asyncio.sleep(delay)

    def _envelope(self, response: httpx.Response, method: str, template: str) -> dict[str, Any]:
        try:
            body = json.loads(response.content)
        except (ValueError, UnicodeDecodeError):
            # Redact a window longer than the snippet so that no secret is cut in half.
            window = response.content[: _SNIPPET + max(map(len, self._secrets))]
            snippet = self._redact(window.decode("utf-8", "replace"))[:_SNIPPET]
            raise BadResponse(
                f"{method} {template}: response is not JSON (HTTP {response.status_code}): {snippet!r}",
                status=response.status_code,
            ) from None
        if not isinstance(body, dict) or "data" not in body:
            raise BadResponse(
                f"{method} {template}: response has no 'data' envelope (HTTP {response.status_code})",
                status=response.status_code,
            )
        return body

    def _status_error(
        self, response: httpx.Response, method: str, template: str
    ) -> tuple[PolytomicError, float | None]:
        status = response.status_code
        api_message: str | None = None
        key: str | None = None
        try:
            body = json.loads(response.content) if response.content else None
        except (ValueError, UnicodeDecodeError):
            body = None
        if isinstance(body, dict):
            for field in ("message", "error"):
                value = body.get(field)
                if isinstance(value, str) and value.strip():
                    api_message = value.strip()
                    break
            if isinstance(body.get("key"), str):
                key = body["key"]
        if api_message is None:
            api_message = f"HTTP {status}"
        api_message = self._redact(api_message)[:500]
        text = f"{api_message} ({method} {template}, HTTP {status})"
        retry_after = parse_retry_after(response.headers.get("retry-after"))
        error: PolytomicError
        if status in (400, 422):
            error = BadRequest(text, status=status, key=key)
        elif status == 401:
            error = Unauthorized(text, status=status, key=key)
        elif status == 403:
            error = Forbidden(text, status=status, key=key)
        elif status == 404:
            error = NotFound(text, status=status, key=key)
        elif status == 409:
            error = Conflict(text, status=status, key=key)
        elif status == 429:
            error = RateLimited(text, status=status, key=key, retry_after=retry_after)
        elif status >= 500:
            error = ServerError(text, status=status, key=key)
        elif 300 <= status < 400:
            error = BadResponse(f"{method} {template}: unexpected redirect (HTTP {status})", status=status)
        else:
            error = BadRequest(text, status=status, key=key)
        error.api_message = api_message  # type: ignore[attr-defined]
        if status not in (409, 429) and status < 500:
            retry_after = None
        return error, retry_after


# Helpers ------------------------------------------------------------------------------------


async def _gather(coros: Sequence[Any]) -> list[Any]:
    """asyncio.gather that cancels the siblings when one fails (no orphan requests)."""
    if len(coros) == 1:
        return [await coros[0]]
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        return await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


def _bool(value: bool) -> str:
    return "true" if value else "false"


def _uuid(value: str, kind: str, method: str, template: str) -> str:
    """Ids that are not UUIDs cannot exist: NotFound without spending a request."""
    if not isinstance(value, str) or not looks_like_uuid(value) or value != value.strip():
        shown = value[:60] if isinstance(value, str) else type(value).__name__
        raise NotFound(f"{kind} id {shown!r} is not a UUID ({method} {template}, not sent)")
    return value


def _schema(value: str, method: str, template: str) -> str:
    if not isinstance(value, str) or not value:
        raise NotFound(f"empty schema id ({method} {template}, not sent)")
    return path_segment(value)


def _next_token(body: Mapping[str, Any]) -> str | None:
    pagination = body.get("pagination")
    if isinstance(pagination, dict):
        token = pagination.get("next_page_token")
        if isinstance(token, str) and token:
            return token
    return None


def _one(model: type[M], body: Mapping[str, Any], method: str, template: str) -> M:
    data = body.get("data")
    if not isinstance(data, dict):
        raise BadResponse(f"{method} {template}: 'data' is not an object")
    return _validate(model, data, method, template)


def _many(model: type[M], body: Mapping[str, Any], method: str, template: str) -> list[M]:
    data = body.get("data")
    if data is None:  # Go encodes an empty slice as null
        return []
    if not isinstance(data, list):
        raise BadResponse(f"{method} {template}: 'data' is not a list")
    out = []
    for item in data:
        if not isinstance(item, dict):
            raise BadResponse(f"{method} {template}: 'data' holds a non-object item")
        out.append(_validate(model, item, method, template))
    return out


def _message(body: Mapping[str, Any], template: str) -> str:
    data = body.get("data")
    if not isinstance(data, dict):
        raise BadResponse(f"POST {template}: 'data' is not an object")
    message = data.get("message")
    return message if isinstance(message, str) else ""


def _validate(model: type[M], data: dict[str, Any], method: str, template: str) -> M:
    """Validate; a field of the wrong type is dropped (logged) instead of failing the whole call."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors(include_input=False, include_url=False)
    cleaned = copy.deepcopy(data)
    for _ in range(3):
        dropped = _drop(cleaned, [tuple(e.get("loc", ())) for e in errors])
        if not dropped:
            break
        log.debug("%s %s: ignored malformed fields %s", method, template, ", ".join(dropped))
        try:
            return model.model_validate(cleaned)
        except ValidationError as exc:
            errors = exc.errors(include_input=False, include_url=False)
    raise BadResponse(f"{method} {template}: response does not match {model.__name__}")


def _drop(data: Any, locs: list[tuple[Any, ...]]) -> list[str]:
    """Delete the values at `locs` (deepest list indexes first); return their dotted names."""
    removals: list[tuple[Any, Any, str]] = []
    for loc in locs:
        if not loc:
            continue
        parent = data
        try:
            for part in loc[:-1]:
                parent = parent[part]
        except (KeyError, IndexError, TypeError):
            continue
        last = loc[-1]
        if (isinstance(parent, dict) and last in parent) or (
            isinstance(parent, list) and isinstance(last, int) and 0 <= last < len(parent)
        ):
            removals.append((parent, last, ".".join(str(p) for p in loc)))
    seen: set[tuple[int, Any]] = set()
    names = []
    for parent, last, name in sorted(
        removals, key=lambda r: r[1] if isinstance(r[1], int) else -1, reverse=True
    ):
        marker = (id(parent), last)
        if marker in seen:
            continue
        seen.add(marker)
        del parent[last]
        names.append(name)
    return names
