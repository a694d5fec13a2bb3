"""Structured logs: one JSON object per line (or readable console lines), a request context that
follows a Slack request from its ack to the thread's final reply, and redaction of secrets.

    logs.configure()                      # BOT_LOG_LEVEL (default INFO), BOT_LOG_FORMAT (json|console)
    logs.configure(secrets=logs.secrets_of(settings))

Each line carries `time`, `level`, `logger`, `message`, then the bound context (`request_id`,
`user_id`, `channel_id`, `team_id`, `sync_id`, `schema_id`, `execution_id`, `watch_id`,
`correlation_id`), then the record's `extra` fields, then `exception` when there is one.

Context is a contextvar, so it follows asyncio tasks created while it is bound:

    with logs.request_context(request_id=..., user_id=...):   # or logs.bind(...) inside a task
        ...
    logs.bind_watch(watch)        # the watcher: log lines of a watch carry its request_id

Redaction runs on every record created anywhere in the process (a LogRecord factory installed by
`configure`) and once more on each line written by our handler: Slack tokens (`xoxb-`, `xapp-`,
`xoxp-`, ...), `Authorization: Bearer|Basic ...` values, passwords in URLs, and every secret
registered with `add_secrets` (the signing secret, the Polytomic key, ...) are replaced by
`[redacted]` in the message, its arguments, the exception text and the extra fields.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import os
import re
import sys
import threading
import traceback
import uuid
from collections.abc import Iterable, Iterator, Mapping
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any, TextIO

REDACTED = "[redacted]"
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
FORMATS = ("json", "console")
CONTEXT_FIELDS = (
    "request_id",
    "user_id",
    "channel_id",
    "team_id",
    "sync_id",
    "schema_id",
    "execution_id",
    "watch_id",
    "correlation_id",
)
# Third-party loggers kept at WARNING or above whatever BOT_LOG_LEVEL says (their DEBUG output is
# request dumps; ours says what happened).
NOISY_LOGGERS = ("slack_bolt", "slack_sdk", "httpx", "httpcore", "aiohttp", "asyncio", "uvicorn", "aiosqlite",
                 "sqlalchemy", "asyncpg", "websockets")

_STANDARD_ATTRS = frozenset(
    vars(logging.LogRecord("x", logging.INFO, "x", 0, "x", None, None)).keys()
    | {"message", "asctime", "taskName", "_ctx"}
)


class LogConfigError(ValueError):
    """BOT_LOG_LEVEL or BOT_LOG_FORMAT is invalid. `str()` is one line naming the variable."""


# ---------------------------------------------------------------------------------------- context

_EMPTY: Mapping[str, Any] = MappingProxyType({})
_CONTEXT: contextvars.ContextVar[Mapping[str, Any]] = contextvars.ContextVar(
    "bot_log_context", default=_EMPTY
)


def context() -> Mapping[str, Any]:
    """The fields bound in the current context (read-only)."""
    return _CONTEXT.get()


def bind(**fields: Any) -> contextvars.Token:
    """Add fields to the current context (None removes a field). Returns a token for `unbind`.
    Inside a task of its own (a listener, a poll) there is no need to unbind: the task's context
    goes away with it."""
    merged = dict(_CONTEXT.get())
    for key, value in fields.items():
        if value is None or value == "":
            merged.pop(key, None)
        else:
            merged[key] = value
    return _CONTEXT.set(merged)


def unbind(token: contextvars.Token) -> None:
    _CONTEXT.reset(token)


@contextlib.contextmanager
def request_context(**fields: Any) -> Iterator[Mapping[str, Any]]:
    """Bind `fields` for the block (a new `request_id` unless one is given or already bound)."""
    if not fields.get("request_id") and not _CONTEXT.get().get("request_id"):
        fields["request_id"] = new_request_id()
    token = bind(**fields)
    try:
        yield _CONTEXT.get()
    finally:
        _CONTEXT.reset(token)


def new_request_id() -> str:
    return uuid.uuid4().hex[:12]


def request_id_or_new() -> str:
    """The request id bound in this context (set when the Slack request arrived), else a new one.
    Use as the default of anything that records a request id (`Origin.request_id`)."""
    bound = _CONTEXT.get().get("request_id")
    return str(bound) if bound else new_request_id()


def watch_fields(watch: Any) -> dict[str, Any]:
    """The log context of a watch (a `bot.store.Watch` or anything with the same attributes)."""
    return {
        "request_id": getattr(watch, "request_id", None),
        "watch_id": getattr(watch, "id", None),
        "sync_id": getattr(watch, "sync_id", None),
        "schema_id": getattr(watch, "schema_id", None),
        "execution_id": getattr(watch, "execution_id", None),
        "channel_id": getattr(watch, "channel_id", None),
        "team_id": getattr(watch, "team_id", None),
        "user_id": getattr(watch, "requested_by", None),
    }


def bind_watch(watch: Any) -> contextvars.Token:
    """Bind a watch's context (its `request_id` carries the click's id to the final reply)."""
    return bind(**watch_fields(watch))


# -------------------------------------------------------------------------------------- redaction

_TOKEN_PATTERNS = (
    # Slack tokens: bot, user, app-level, legacy, refresh, configuration tokens
    r"\bxox[a-z]-[A-Za-z0-9-]+",
    r"\bxoxe[.-][A-Za-z0-9.-]+",
    r"\bxapp-[A-Za-z0-9-]+",
)
_AUTH_HEADER = re.compile(
    r"(?i)(authorization['\"]?\s*[:=]\s*['\"]?(?:bearer|basic|token)\s+)[^\s'\",}\]]+"
)
_URL_PASSWORD = re.compile(r"(\b[a-z][a-z0-9+.-]*://[^:/@\s]+:)[^@\s/]+@")
_MIN_SECRET_LEN = 6


class Redactor:
    """Replaces anything that looks like a secret, and every registered secret, by `[redacted]`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._secrets: set[str] = set()
        self._pattern = re.compile("|".join(_TOKEN_PATTERNS))

    def add(self, *secrets: str | None) -> None:
        with self._lock:
            before = len(self._secrets)
            for secret in secrets:
                if isinstance(secret, str) and len(secret.strip()) >= _MIN_SECRET_LEN:
                    self._secrets.add(secret.strip())
            if len(self._secrets) != before:
                exact = sorted(self._secrets, key=len, reverse=True)
                self._pattern = re.compile("|".join([*(re.escape(s) for s in exact), *_TOKEN_PATTERNS]))

    def redact(self, text: str) -> str:
        if not text:
            return text
        text = self._pattern.sub(REDACTED, text)
        if "://" in text:
            text = _URL_PASSWORD.sub(r"\1" + REDACTED + "@", text)
        if "uthorization" in text or "UTHORIZATION" in text:
            text = _AUTH_HEADER.sub(r"\1" + REDACTED, text)
        return text


REDACTOR = Redactor()


def add_secrets(*secrets: str | None) -> None:
    """Register exact secret values to remove from every log record (idempotent)."""
    REDACTOR.add(*secrets)


def redact(text: str) -> str:
    return REDACTOR.redact(text)


def secrets_of(settings: Any) -> list[str]:
    """Every secret in a `Settings`: its SecretStr values, plus the Basic token derived from the
    Polytomic key when POLYTOMIC_ORG_ID is set."""
    import base64

    from pydantic import SecretStr

    out: list[str] = []
    for name in type(settings).model_fields:
        value = getattr(settings, name, None)
        if isinstance(value, SecretStr):
            out.append(value.get_secret_value())
    key = getattr(settings, "polytomic_api_key", None)
    org = getattr(settings, "polytomic_org_id", None)
    if key is not None and org:
        raw = f"{org}:{key.get_secret_value().strip()}".encode()
        out.append(base64.b64encode(raw).decode("ascii"))
    return [s for s in out if s]


def _format_exception(record: logging.LogRecord) -> str | None:
    if record.exc_text:
        return record.exc_text
    if record.exc_info and record.exc_info[0] is not None:
        return "".join(traceback.format_exception(*record.exc_info)).rstrip("\n")
    return None


def redact_record(record: logging.LogRecord) -> None:
    """Redact a record in place: the formatted message (args folded in when anything changed),
    the exception text, the stack and string extra fields."""
    try:
        message = record.getMessage()
    except Exception:
        message = None  # a broken format string: logging reports it; leave the record alone
    if message is not None:
        cleaned = REDACTOR.redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
    exc = _format_exception(record)
    if exc is not None:
        record.exc_text = REDACTOR.redact(exc)
    if record.stack_info:
        record.stack_info = REDACTOR.redact(record.stack_info)
    for key, value in list(record.__dict__.items()):
        if key not in _STANDARD_ATTRS and isinstance(value, str):
            cleaned = REDACTOR.redact(value)
            if cleaned != value:
                record.__dict__[key] = cleaned


class RedactingFilter(logging.Filter):
    """A handler filter that redacts every record passing through (never drops one)."""

    def filter(self, record: logging.LogRecord) -> bool:
        redact_record(record)
        return True


# ------------------------------------------------------------------------------------- formatting


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    """Context fields, then extra fields (an explicit `extra=` wins over the bound context)."""
    ctx = getattr(record, "_ctx", None)
    if ctx is None:
        ctx = _CONTEXT.get()
    out = {k: ctx[k] for k in CONTEXT_FIELDS if ctx.get(k) not in (None, "")}
    out.update({k: v for k, v in ctx.items() if k not in out and v not in (None, "")})
    for key, value in record.__dict__.items():
        if key not in _STANDARD_ATTRS and not key.startswith("_") and value is not None:
            out[key] = value
    return out


def _timestamp(record: logging.LogRecord) -> str:
    dt = datetime.fromtimestamp(record.created, UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{int(record.msecs):03d}Z"


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, context, extra, exception."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": _timestamp(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in _fields(record).items():
            out.setdefault(key, value)
        exc = _format_exception(record)
        if exc:
            out["exception"] = exc
        if record.stack_info:
            out["stack"] = record.stack_info
        line = json.dumps(out, ensure_ascii=False, default=str)
        return REDACTOR.redact(line)


class ConsoleFormatter(logging.Formatter):
    """`12:00:00.123 INFO  bot.slack      message  request_id=... user_id=...` (+ exception)."""

    def format(self, record: logging.LogRecord) -> str:
        when = datetime.fromtimestamp(record.created, UTC).strftime("%H:%M:%S.") + f"{int(record.msecs):03d}"
        fields = " ".join(f"{k}={v}" for k, v in _fields(record).items())
        line = f"{when} {record.levelname:<5} {record.name:<14} {record.getMessage()}"
        if fields:
            line += "  " + fields
        exc = _format_exception(record)
        if exc:
            line += "\n" + exc
        if record.stack_info:
            line += "\n" + record.stack_info
        return REDACTOR.redact(line)


# ------------------------------------------------------------------------------------ configuring

_previous_factory: Any = None


def _record_factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
    record = _previous_factory(*args, **kwargs)
    record._ctx = _CONTEXT.get()
    redact_record(record)
    return record


def install_record_factory() -> None:
    """Redact and stamp the context on every LogRecord created in the process (idempotent)."""
    global _previous_factory
    if logging.getLogRecordFactory() is _record_factory:
        return
    _previous_factory = logging.getLogRecordFactory()
    logging.setLogRecordFactory(_record_factory)


def uninstall_record_factory() -> None:
    global _previous_factory
    if logging.getLogRecordFactory() is _record_factory and _previous_factory is not None:
        logging.setLogRecordFactory(_previous_factory)
        _previous_factory = None


def resolve(level: str | None = None, fmt: str | None = None) -> tuple[str, str]:
    """(level, format) from the arguments or BOT_LOG_LEVEL / BOT_LOG_FORMAT; LogConfigError if bad."""
    raw_level = (level if level is not None else os.environ.get("BOT_LOG_LEVEL") or "INFO").strip().upper()
    if raw_level == "WARN":
        raw_level = "WARNING"
    if raw_level not in LEVELS:
        raise LogConfigError(f"BOT_LOG_LEVEL: must be one of {', '.join(LEVELS)}")
    raw_fmt = (fmt if fmt is not None else os.environ.get("BOT_LOG_FORMAT") or "json").strip().lower()
    if raw_fmt not in FORMATS:
        raise LogConfigError("BOT_LOG_FORMAT: must be json or console")
    return raw_level, raw_fmt


def configure(
    level: str | None = None,
    fmt: str | None = None,
    *,
    stream: TextIO | None = None,
    secrets: Iterable[str | None] = (),
    quiet_libraries: bool = True,
) -> logging.Handler:
    """Log to `stream` (stderr) in `fmt` at `level` (both default to the environment), with the
    context and redaction installed at the root. Replaces a handler from an earlier call."""
    level, fmt = resolve(level, fmt)
    add_secrets(*secrets)
    install_record_factory()
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "_bot_logs", False)]:
        root.removeHandler(old)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler._bot_logs = True  # type: ignore[attr-defined]
    handler.setFormatter(JsonFormatter() if fmt == "json" else ConsoleFormatter())
    handler.addFilter(RedactingFilter())
    root.addHandler(handler)
    root.setLevel(level)
    if quiet_libraries:
        floor = max(logging.WARNING, logging.getLevelName(level))
        for name in NOISY_LOGGERS:
            logging.getLogger(name).setLevel(floor)
    return handler


def reset() -> None:
    """Undo `configure` (tests): remove our handlers and the record factory."""
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "_bot_logs", False)]:
        root.removeHandler(old)
    uninstall_record_factory()
