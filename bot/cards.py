"""Slack messages (Block Kit) built from plain values. Pure functions, no I/O.

Every function returns ``{"text": <fallback>, "blocks": [...]}``. Rules kept everywhere:

* Every user- or API-supplied string goes through :func:`escape` (``&``, ``<``, ``>``), in mrkdwn
  and in plain_text alike, and in the ``text`` fallback, so nothing we echo can mention
  ``@channel`` or a user. The only ``<...>`` markup we emit is ``<@U...>`` for well-formed user
  ids, ``<#C...>`` for well-formed channel ids and a link to a Slack permalink. (Callers must not
  set ``link_names``/``parse=full`` when posting.)
* Names shown in code spans are put on one line and their backticks replaced by a look-alike
  (U+02CB), so a name cannot close the span.
* Block Kit limits (50 blocks, section 3000, header 150, button text 75, value 2000, ...) are
  respected by truncating with "…"; lengths are counted in UTF-16 code units, which is never less
  than the characters slack_sdk counts.
* Buttons follow the contract: ``polytomic.cancel_schema[:n]`` with value
  ``{"sync_id":..,"schema_id":..}``, ``polytomic.cancel_sync`` / ``polytomic.refresh`` with
  ``{"sync_id":..}``, ``polytomic.confirm_cancel`` with either. Values are compact JSON.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from bot import commands
from bot.errors import AccessDenied, AmbiguousName, UnknownName, UsageError
from bot.polytomic import errors as perr
from bot.polytomic.models import (
    BulkSync,
    Execution,
    SchemaExecution,
    SyncExecutionStatus,
    SyncStatus,
    is_running,
)

# -- limits ---------------------------------------------------------------------------------------
MAX_BLOCKS = 50
SECTION_TEXT_MAX = 3000
CONTEXT_TEXT_MAX = 2000
HEADER_TEXT_MAX = 150
BUTTON_TEXT_MAX = 75
BUTTON_VALUE_MAX = 2000
ACTION_ID_MAX = 255
ACTIONS_ELEMENTS_MAX = 25
CONTEXT_ELEMENTS_MAX = 10
CONFIRM_TITLE_MAX = 100
CONFIRM_TEXT_MAX = 300
CONFIRM_BUTTON_MAX = 30
FALLBACK_TEXT_MAX = 3000

MAX_SCHEMA_ENTRIES = 20  # schema entries shown with their own block (and button) on a status card
MAX_SYNC_ROWS = 40
MAX_CANDIDATES = 20
MAX_ALSO_ASKED = 10

NAME_MAX = 100  # a name inside a longer text
MESSAGE_MAX = 300  # an API status message on a card entry
DETAIL_MAX = 1500  # a detail in a thread reply

# -- action ids (exact, from the contract) --------------------------------------------------------
CANCEL_SCHEMA = "polytomic.cancel_schema"
CANCEL_SYNC = "polytomic.cancel_sync"
CONFIRM_CANCEL = "polytomic.confirm_cancel"
REFRESH = "polytomic.refresh"

__all__ = [
    "CANCEL_SCHEMA",
    "CANCEL_SYNC",
    "CONFIRM_CANCEL",
    "REFRESH",
    "ShortcutTarget",
    "WatchView",
    "access_denied",
    "also_asked_reply",
    "api_recovered_reply",
    "api_trouble_reply",
    "button_value",
    "cancel_preview",
    "cannot_post_here",
    "clip",
    "code",
    "escape",
    "event_alert",
    "final_reply",
    "help_message",
    "human_duration",
    "long_run_alert",
    "long_run_ended",
    "looks_like_sync_id",
    "not_in_channel",
    "nothing_running",
    "pointer_to_thread",
    "polytomic_error",
    "shortcut_choose",
    "shortcut_loading",
    "shortcut_notice",
    "shortcut_pick_sync",
    "shortcut_result",
    "state_reply",
    "status_card",
    "sync_list",
    "unexpected_error",
    "unknown_name",
    "usage_error",
    "user_mention",
    "watch_headline",
]


class WatchView(Protocol):
    """What the thread messages need to know about one watched cancellation."""

    sync_id: str
    sync_name: str
    schema_id: str | None  # None: the whole execution
    schema_label: str | None
    execution_id: str | None
    requested_by: str
    also_requested: list[str]
    last_state: str | None
    created_at: datetime
    deadline_at: datetime
    finished_at: datetime | None
    outcome: str | None


# -- text helpers ---------------------------------------------------------------------------------

_USER_ID = re.compile(r"[UW][A-Z0-9]{1,30}")
_CHANNEL_ID = re.compile(r"[CGD][A-Z0-9]{1,30}")
_PERMALINK = re.compile(r"https://[^\s<>|]{1,1500}")
# C0/C1 controls (newline handled separately), bidi overrides/isolates, line/paragraph separators
_CONTROLS = re.compile(r"[\x00-\x09\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_WS_RUN = re.compile(r"\s+")
_PARTIAL_TAIL = re.compile(r"(?:&(?:a|am|amp|l|lt|g|gt)?|<[^<>]*)$")
_BACKTICK_LOOKALIKE = "\u02cb"
ELLIPSIS = "…"


def escape(text: str | None) -> str:
    """Escape the three characters Slack treats as markup: ``&``, ``<``, ``>``."""
    if not text:
        return ""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _u16(text: str) -> int:
    """Length in UTF-16 code units (astral characters count twice)."""
    return len(text) + sum(1 for c in text if ord(c) > 0xFFFF)


def clip(text: str, limit: int) -> str:
    """Truncate already-escaped text to at most `limit` UTF-16 units, ending with "…".

    Never cuts an entity or a ``<...>`` markup in half, and closes a code span it cut open.
    """
    if _u16(text) <= limit:
        return text
    budget = max(limit - 2, 0)  # room for "…" and a closing backtick
    used = 0
    end = 0
    for end, c in enumerate(text):  # noqa: B007 - `end` is used after the loop
        used += 2 if ord(c) > 0xFFFF else 1
        if used > budget:
            break
    cut = _PARTIAL_TAIL.sub("", text[:end])
    tail = ELLIPSIS
    if cut.count("`") % 2:
        tail += "`"
    return cut + tail


def _one_line(text: str | None) -> str:
    if not text:
        return ""
    return _WS_RUN.sub(" ", _CONTROLS.sub(" ", text)).strip()


def _multi_line(text: str | None) -> str:
    if not text:
        return ""
    lines = (_WS_RUN.sub(" ", _CONTROLS.sub(" ", line)).strip() for line in text.splitlines())
    return "\n".join(line for line in lines if line)


def _esc(text: str | None, limit: int = NAME_MAX) -> str:
    """One line, escaped, clipped: for a user/API string inside mrkdwn or plain_text.

    Backticks are replaced by a look-alike so that they cannot open or close a code span."""
    return clip(escape(_one_line(text).replace("`", _BACKTICK_LOOKALIKE)), limit)


def _code(text: str | None, limit: int = NAME_MAX, *, empty: str = "(no name)") -> str:
    """A user/API string as an inline code span that it cannot break out of."""
    line = _one_line(text).replace("`", _BACKTICK_LOOKALIKE)
    if not line:
        return f"_{empty}_"
    return "`" + clip(escape(line), max(limit - 2, 3)).rstrip("`") + "`"


def code(text: str | None, limit: int = NAME_MAX) -> str:
    """Public: a user/API string as a safe inline code span (escaped, one line, no backticks)."""
    return _code(text, limit)


def _quoted_detail(text: str | None, limit: int = DETAIL_MAX) -> str:
    """A multi-line API message as a block quote (each line prefixed with ``>``)."""
    body = clip(escape(_multi_line(text).replace("`", _BACKTICK_LOOKALIKE)), limit)
    if not body:
        return ""
    return "\n".join("> " + line for line in body.split("\n"))


def _block_code(text: str) -> str:
    body = escape(text.replace("`", _BACKTICK_LOOKALIKE))
    return "```" + clip(body, SECTION_TEXT_MAX - 8) + "```"


def user_mention(user_id: str) -> str:
    """``<@U123>`` for a well-formed Slack user id; anything else comes back as escaped text."""
    if isinstance(user_id, str) and _USER_ID.fullmatch(user_id):
        return f"<@{user_id}>"
    return _esc(user_id if isinstance(user_id, str) else str(user_id), 40) or "someone"


def _channel_mention(channel_id: str) -> str:
    if isinstance(channel_id, str) and _CHANNEL_ID.fullmatch(channel_id):
        return f"<#{channel_id}>"
    return _code(channel_id, 40, empty="this channel")


def human_duration(seconds: float | None) -> str:
    """``45s``, ``1m 12s``, ``2h 5m``, ``3d 4h``."""
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        seconds = 0.0
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    m, s = divmod(s, 60)
    if m < 60:
        return f"{m}m {s}s"
    h, m = divmod(m, 60)
    if h < 24:
        return f"{h}h {m}m"
    d, h = divmod(h, 24)
    return f"{d}d {h}h"


def _utc(dt: datetime) -> datetime:
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)


def _when(dt: datetime | None) -> str:
    return _utc(dt).strftime("%Y-%m-%d %H:%M UTC") if dt else "unknown time"


def _hhmm(dt: datetime) -> str:
    return _utc(dt).strftime("%H:%M UTC")


def _since(start: datetime | None, end: datetime) -> str:
    if start is None:
        return "unknown"
    return human_duration((_utc(end) - _utc(start)).total_seconds())


def _count(n: int, word: str) -> str:
    return f"{n:,} {word}" + ("" if n == 1 else "s")


def _state(status: str | None) -> str:
    """An API status word, escaped, in bold."""
    return f"*{_esc(status or 'unknown', 40)}*"


# -- block helpers --------------------------------------------------------------------------------


def _mrkdwn(text: str, limit: int = SECTION_TEXT_MAX) -> dict[str, Any]:
    return {"type": "mrkdwn", "text": clip(text, limit) or " "}


def _plain(text: str, limit: int) -> dict[str, Any]:
    """`text` must already be escaped."""
    return {"type": "plain_text", "text": clip(text, limit) or " ", "emoji": True}


def _section(text: str, accessory: dict[str, Any] | None = None) -> dict[str, Any]:
    block: dict[str, Any] = {"type": "section", "text": _mrkdwn(text)}
    if accessory is not None:
        block["accessory"] = accessory
    return block


def _sections(lines: Iterable[str]) -> list[dict[str, Any]]:
    """Pack lines into as few sections as fit (each line clipped to one section)."""
    out: list[dict[str, Any]] = []
    current: list[str] = []
    size = 0
    for line in lines:
        line = clip(line, SECTION_TEXT_MAX)
        n = _u16(line) + 1
        if current and size + n > SECTION_TEXT_MAX:
            out.append(_section("\n".join(current)))
            current, size = [], 0
        current.append(line)
        size += n
    if current:
        out.append(_section("\n".join(current)))
    return out


def _header(raw: str | None) -> dict[str, Any]:
    return {"type": "header", "text": _plain(_esc(raw, HEADER_TEXT_MAX) or "(no name)", HEADER_TEXT_MAX)}


def _context(*texts: str) -> dict[str, Any]:
    elements = [_mrkdwn(t, CONTEXT_TEXT_MAX) for t in texts if t][:CONTEXT_ELEMENTS_MAX]
    return {"type": "context", "elements": elements or [_mrkdwn(" ")]}


def _confirm(title: str, text: str, confirm: str, deny: str) -> dict[str, Any]:
    """All arguments already escaped."""
    return {
        "title": _plain(title, CONFIRM_TITLE_MAX),
        "text": _plain(text, CONFIRM_TEXT_MAX),
        "confirm": _plain(confirm, CONFIRM_BUTTON_MAX),
        "deny": _plain(deny, CONFIRM_BUTTON_MAX),
        "style": "danger",
    }


def _button(
    label: str,
    action_id: str,
    value: str,
    *,
    danger: bool = False,
    confirm: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """`label` already escaped; `value` from :func:`button_value` (checked for size)."""
    button: dict[str, Any] = {
        "type": "button",
        "text": _plain(label, BUTTON_TEXT_MAX),
        "action_id": action_id[:ACTION_ID_MAX],
        "value": value,
    }
    if danger:
        button["style"] = "danger"
    if confirm is not None:
        button["confirm"] = confirm
    return button


def _actions(elements: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One actions block per 25 elements (none when there are no elements)."""
    return [
        {"type": "actions", "elements": elements[i : i + ACTIONS_ELEMENTS_MAX]}
        for i in range(0, len(elements), ACTIONS_ELEMENTS_MAX)
    ]


def _message(text: str, blocks: list[dict[str, Any]]) -> dict[str, Any]:
    if len(blocks) > MAX_BLOCKS:
        blocks = [*blocks[: MAX_BLOCKS - 1], _context("_…more not shown_")]
    return {"text": clip(text, FALLBACK_TEXT_MAX) or " ", "blocks": blocks}


def _simple(text: str, *, context: str | None = None) -> dict[str, Any]:
    """A one-section message whose fallback is the same text."""
    blocks = [_section(text)]
    if context:
        blocks.append(_context(context))
    return _message(text, blocks)


def button_value(sync_id: str, schema_id: str | None = None) -> str | None:
    """The contract's button value as compact JSON, or None when it would exceed 2000 chars."""
    data = {"sync_id": sync_id} if schema_id is None else {"sync_id": sync_id, "schema_id": schema_id}
    value = json.dumps(data, separators=(",", ":"), ensure_ascii=False)
    if _u16(value) > BUTTON_VALUE_MAX:
        value = json.dumps(data, separators=(",", ":"))  # \u escapes: never longer in UTF-16 terms
    return value if len(value) <= BUTTON_VALUE_MAX and _u16(value) <= BUTTON_VALUE_MAX else None


# -- help and usage -------------------------------------------------------------------------------


def help_message(usage: str) -> dict[str, Any]:
    intro = "*Polytomic bot*: look at bulk syncs and cancel their running work."
    notes = (
        'Names with spaces go in quotes, e.g. `status "Salesforce to Snowflake" accounts`. '
        "`cancel` without `--yes` shows a preview with a confirm button first."
    )
    text = f"Polytomic bot usage:\n{escape(usage)}"
    return _message(text, [_section(intro), _section(_block_code(usage)), _context(notes)])


def usage_error(err: UsageError) -> dict[str, Any]:
    usage = err.usage or commands.USAGE
    problem = _esc(err.problem, 500) or "that command could not be read"
    text = f"⚠️ {problem}\nUsage:\n{escape(usage)}"
    return _message(text, [_section(f"⚠️ {problem}"), _section(_block_code(usage))])


# -- sync list ------------------------------------------------------------------------------------


def _row_running(row: tuple[BulkSync, SyncExecutionStatus | None]) -> bool:
    return row[1] is not None and is_running(row[1].status)


def sync_list(
    rows: Sequence[tuple[BulkSync, SyncExecutionStatus | None]], filter: str | None
) -> dict[str, Any]:
    """Bulk syncs, running first, then by name; at most ~40 rows and "…and N more"."""
    ordered = sorted(
        rows,
        key=lambda r: (
            not _row_running(r),
            (r[0].name or "").casefold(),
            r[0].id or "",
        ),
    )
    running = sum(1 for r in ordered if _row_running(r))
    where = f" matching {_code(filter, 60)}" if filter else ""
    if not ordered:
        text = f"No bulk syncs{where}."
        return _simple(text, context="List them all with `/polytomic syncs`." if filter else None)

    lines = []
    for sync, st in ordered[:MAX_SYNC_ROWS]:
        parts = [f"• {_code(sync.name, 80, empty='(unnamed)')}"]
        if st is None:
            parts.append("no status")
        else:
            n_running = sum(1 for s in st.schemas if is_running(s.status))
            state = _state(st.status)
            if st.schemas:
                state += f", {n_running:,} of {_count(len(st.schemas), 'schema')} running"
            parts.append(state)
        if sync.active is False:
            parts.append("paused")
        if sync.id:
            parts.append(_code(sync.id, 60))
        lines.append(" · ".join(parts))
    more = len(ordered) - MAX_SYNC_ROWS
    if more > 0:
        lines.append(f"…and {more:,} more; narrow the list with `/polytomic syncs &lt;text&gt;`.")

    summary = f"{_count(len(ordered), 'bulk sync')}{where}, {running:,} running"
    blocks = [_header("Bulk syncs"), _section(summary + "."), *_sections(lines)]
    blocks.append(_context("Status and cancel buttons: `/polytomic status &lt;sync&gt;`"))
    return _message(summary, blocks)


# -- status card ----------------------------------------------------------------------------------

_RUN_ORDER = {
    s: i for i, s in enumerate(("canceling", "running", "exporting", "processing", "scheduled", "created"))
}


def _schema_label(entry: SchemaExecution) -> str:
    return entry.output_name or entry.schema_id or "(unknown schema)"


def _entry_sort_key(entry: SchemaExecution) -> tuple[int, int, str]:
    status = (entry.status or "").lower()
    if is_running(entry.status):
        return (0, _RUN_ORDER.get(status, len(_RUN_ORDER)), _schema_label(entry).casefold())
    return (1, 0, _schema_label(entry).casefold())


def _entry_text(entry: SchemaExecution, now: datetime | None, note: str | None = None) -> str:
    parts = [_code(_schema_label(entry), 80), _state(entry.status)]
    if entry.record_count is not None:
        parts.append(_count(entry.record_count, "record"))
    if entry.error_count:
        parts.append(_count(entry.error_count, "error"))
    if entry.warning_count:
        parts.append(_count(entry.warning_count, "warning"))
    if is_running(entry.status) and entry.started_at and now is not None:
        parts.append(f"for {_since(entry.started_at, now)}")
    elif entry.completed_at:
        parts.append(f"ended {_when(entry.completed_at)}")
    text = " · ".join(parts)
    if entry.status_message:
        text += "\n" + _quoted_detail(entry.status_message, MESSAGE_MAX)
    if note:
        text += f"\n_{note}_"
    return text


def _schema_confirm(sync_name: str, label: str) -> dict[str, Any]:
    return _confirm(
        "Cancel this schema?",
        f"Polytomic will be asked to cancel the running work of “{_esc(label, 80)}” "
        f"in “{_esc(sync_name, 80)}”.",
        "Cancel schema",
        "Keep it running",
    )


def _sync_confirm(sync_name: str) -> dict[str, Any]:
    return _confirm(
        "Cancel the whole execution?",
        f"Polytomic will be asked to cancel the running execution of “{_esc(sync_name, 120)}”, "
        "all of its schemas.",
        "Cancel execution",
        "Keep it running",
    )


def _summarise(entries: Sequence[SchemaExecution], what: str) -> str:
    counts = Counter((e.status or "unknown").lower() for e in entries)
    by = ", ".join(f"{n:,} {_esc(s, 30)}" for s, n in counts.most_common(6))
    if len(counts) > 6:
        by += ", …"
    return f"+{len(entries):,} {what}: {by}"


def _status_command(sync: BulkSync) -> str:
    name = sync.name or ""
    use_name = name and len(name) <= 60 and _one_line(name) == name and "`" not in name
    target = commands.quote(name) if use_name else (sync.id or "<sync>")
    return _code(f"/polytomic status {target} <schema>", 140)


def status_card(
    sync: BulkSync, status: SyncStatus, *, schema_filter: str | None = None, now: datetime
) -> dict[str, Any]:
    """The status card: current execution and its schemas, cancel buttons for running work."""
    sync_id = sync.id
    name = sync.name or sync.id or "(unnamed sync)"
    blocks: list[dict[str, Any]] = [_header(name)]
    cur = status.current_execution
    running_exec = cur if cur is not None and is_running(cur.status) else None
    shown_exec: Execution | None
    if running_exec is not None:
        shown_exec = running_exec
        started = running_exec.started_at or running_exec.created_at
        lines = [
            f"Execution {_code(running_exec.id, 60, empty='(no id)')} is {_state(running_exec.status)}"
            + (f" · started {_when(started)} · running for {_since(started, now)}" if started else "")
        ]
        counts = []
        if running_exec.record_count is not None:
            counts.append(_count(running_exec.record_count, "record"))
        if running_exec.error_count:
            counts.append(_count(running_exec.error_count, "error"))
        if counts:
            lines.append(" · ".join(counts))
        if running_exec.status_message:
            lines.append(_quoted_detail(running_exec.status_message, MESSAGE_MAX))
        headline = f"{_esc(name)}: execution {_esc(running_exec.status, 40)}"
    else:
        last = cur if cur is not None and cur.status is not None else status.last_execution
        shown_exec = last
        lines = ["Nothing is running."]
        if last is not None:
            ended = last.completed_at or last.updated_at
            took = ""
            if last.started_at and last.completed_at:
                took = f" (took {_since(last.started_at, last.completed_at)})"
            lines.append(
                f"Last execution {_code(last.id, 60, empty='(no id)')}: {_state(last.status)}"
                + (f", ended {_when(ended)}" if ended else "")
                + took
            )
            if last.status_message:
                lines.append(_quoted_detail(last.status_message, MESSAGE_MAX))
        else:
            lines.append("No previous execution on record.")
        if status.next_execution_time:
            lines.append(f"Next run: {_when(status.next_execution_time)}")
        headline = f"{_esc(name)}: nothing running"
        if last is not None:
            headline += f"; last execution {_esc(last.status, 40)}"
    blocks.append(_section("\n".join(lines)))

    entries = sorted(shown_exec.schemas if shown_exec else [], key=_entry_sort_key)
    others: list[SchemaExecution] = []
    if schema_filter is not None:
        wanted = [e for e in entries if e.schema_id == schema_filter]
        if not wanted:
            folded = schema_filter.casefold()
            wanted = [e for e in entries if (e.output_name or "").casefold() == folded]
        others = [e for e in entries if e not in wanted]
        if not wanted:
            blocks.append(_section(f"Schema {_code(schema_filter, 80)} is not part of this execution."))
        entries = wanted
    shown, rest = entries[:MAX_SCHEMA_ENTRIES], entries[MAX_SCHEMA_ENTRIES:]

    n_buttons = 0
    for entry in shown:
        accessory = None
        note = None
        if running_exec is not None and is_running(entry.status):
            value = button_value(sync_id, entry.schema_id) if sync_id and entry.schema_id else None
            if value is not None:
                accessory = _button(
                    "Cancel",
                    f"{CANCEL_SCHEMA}:{n_buttons}",
                    value,
                    danger=True,
                    confirm=_schema_confirm(name, _schema_label(entry)),
                )
                n_buttons += 1
            elif sync_id and entry.schema_id:
                note = "no cancel button: this schema's id is too long for a Slack button"
            else:
                note = "no cancel button: Polytomic did not give this schema's id"
        blocks.append(_section(_entry_text(entry, now, note), accessory))

    summary = []
    if rest:
        summary.append(_summarise(rest, "more schemas"))
    if others:
        summary.append(_summarise(others, "other schemas"))
    if summary:
        blocks.append(_context("; ".join(summary) + f"; use {_status_command(sync)}"))

    elements = []
    if sync_id:
        value = button_value(sync_id)
        if value is not None:
            if running_exec is not None:
                elements.append(
                    _button("Cancel execution", CANCEL_SYNC, value, danger=True, confirm=_sync_confirm(name))
                )
            elements.append(_button("Refresh", REFRESH, value))
    blocks.extend(_actions(elements))
    blocks.append(_context(f"Updated {_utc(now).strftime('%H:%M:%S UTC')}"))

    n_running = sum(1 for e in (shown_exec.schemas if running_exec else []) if is_running(e.status))
    if running_exec is not None:
        headline += f"; {_count(n_running, 'schema')} in flight"
    return _message(headline, blocks)


# -- cancel preview -------------------------------------------------------------------------------


def cancel_preview(sync: BulkSync, status: SyncStatus, schema_id: str | None) -> dict[str, Any]:
    """What a cancel would stop, its current state and a confirm_cancel button (danger, confirm)."""
    sync_id = sync.id
    name = sync.name or sync.id or "(unnamed sync)"
    cur = status.current_execution
    exec_running = cur is not None and is_running(cur.status)
    lines: list[str] = []
    if schema_id is not None:
        entry = cur.schema_entry(schema_id) if cur is not None else None
        label = (entry.output_name if entry else None) or schema_id
        in_flight = is_running(entry.status) if entry is not None else exec_running
        what = f"schema {_code(label, 80)} of {_code(name, 80)}"
        lines.append(f"*Cancel {what}?*")
        if entry is not None:
            lines.append("Schema: " + _entry_text(entry, None))
        elif cur is not None:
            lines.append("This schema is not listed in the current execution.")
        value = button_value(sync_id, schema_id) if sync_id else None
        confirm = _schema_confirm(name, label)
        label_text = "Cancel schema"
    else:
        in_flight = exec_running
        what = f"the running execution of {_code(name, 80)}"
        lines.append(f"*Cancel {what}?*")
        if cur is not None:
            flying = sorted((e for e in cur.schemas if is_running(e.status)), key=_entry_sort_key)
            if flying:
                listed = ", ".join(_code(_schema_label(e), 60) for e in flying[:10])
                if len(flying) > 10:
                    listed += f" and {len(flying) - 10:,} more"
                lines.append(f"{_count(len(flying), 'schema')} in flight: {listed}")
        value = button_value(sync_id) if sync_id else None
        confirm = _sync_confirm(name)
        label_text = "Cancel execution"

    if cur is not None:
        started = cur.started_at or cur.created_at
        lines.append(
            f"Execution {_code(cur.id, 60, empty='(no id)')} is {_state(cur.status)}"
            + (f", started {_when(started)}" if started else "")
        )
    else:
        lines.append("There is no current execution.")

    blocks = [_section("\n".join(lines))]
    if not in_flight:
        text = f"Nothing to cancel: {what} is not running."
        blocks.append(_section(text))
        return _message(text, blocks)
    if value is None:
        text = f"{what} cannot be cancelled with a button: its id is too long or missing."
        blocks.append(_section(text))
        return _message(text, blocks)
    blocks.extend(_actions([_button(label_text, CONFIRM_CANCEL, value, danger=True, confirm=confirm)]))
    blocks.append(_context("Nothing is cancelled until you click and confirm."))
    return _message(f"Cancel {what}? Click to confirm.", blocks)


# -- the watched cancellation (root message and thread replies) -----------------------------------


def _target(w: WatchView, *, capital: bool = False) -> str:
    """`accounts` of `Sync` / the running execution of `Sync`."""
    if w.schema_id is None:
        return ("The" if capital else "the") + f" execution of {_code(w.sync_name, 80)}"
    return f"{_code(w.schema_label or w.schema_id, 80)} of {_code(w.sync_name, 80)}"


def _subject(w: WatchView) -> str:
    """Short subject for thread replies: `accounts` / The execution."""
    if w.schema_id is None:
        return "The execution"
    return _code(w.schema_label or w.schema_id, 80)


_OUTCOMES: dict[str, tuple[str, str]] = {
    "canceled": ("✅", "was *canceled*"),
    "completed": ("ℹ️", "*completed* before the cancel took effect"),  # noqa: RUF001
    "failed": ("❌", "ended as *failed*"),
    "errors": ("⚠️", "finished with *errors*"),
    "interrupted": ("⚠️", "was *interrupted*"),
    "not_found": ("❓", "was *not found* (the sync or its execution was deleted)"),
    "vanished": ("❓", "is *no longer listed* in the running execution; its end state is unknown"),
}


def _requesters(w: WatchView) -> str:
    text = f"Requested by {user_mention(w.requested_by)}"
    also = [u for u in (w.also_requested or []) if u != w.requested_by]
    if also:
        shown = ", ".join(user_mention(u) for u in also[:MAX_ALSO_ASKED])
        if len(also) > MAX_ALSO_ASKED:
            shown += f" and {len(also) - MAX_ALSO_ASKED:,} more"
        text += f"; also asked: {shown}"
    return text


def _outcome_phrase(w: WatchView, outcome: str, took: str) -> str:
    """The sentence naming the end (with the terminal word) and how long it took."""
    if outcome in _OUTCOMES:
        icon, phrase = _OUTCOMES[outcome]
        return f"{icon} {_target(w, capital=True)} {phrase} (took {took})."
    if outcome == "execution_ended":
        seen = f" (last state seen: {_state(w.last_state)})" if w.last_state else ""
        if w.schema_id is None:
            return f"ℹ️ {_target(w, capital=True)} *ended*{seen} (took {took})."  # noqa: RUF001
        return (
            f"ℹ️ The sync's execution *ended* (took {took}); the end state of {_target(w)} "  # noqa: RUF001
            f"is unknown{seen}."
        )
    if outcome == "timeout":
        seen = _state(w.last_state) if w.last_state else "unknown"
        return (
            f"⌛ Stopped watching {_target(w)} after {took} (*timed out*); the last state seen was "
            f"{seen}. The cancel may still land: check with `/polytomic status`."
        )
    if outcome == "cancel_failed":
        return f"❌ The cancel request for {_target(w)} was refused (*cancel failed*)."
    return f"{_target(w, capital=True)} ended: {_state(outcome)} (took {took})."


def watch_headline(w: WatchView, *, now: datetime) -> dict[str, Any]:
    """The root message kept current: who asked, what, current state, elapsed; the outcome once done."""
    finished = w.outcome is not None
    lines: list[str] = []
    if finished:
        end = w.finished_at or now
        lines.append(_outcome_phrase(w, w.outcome or "", _since(w.created_at, end)))
        text = lines[0]
    else:
        lines.append(f"⏳ Cancelling {_target(w)}")
        lines.append(
            f"State: {_state(w.last_state or 'requested')} · {_since(w.created_at, now)} since the request"
        )
        text = f"Cancelling {_target(w)}: {_esc(w.last_state or 'requested', 40)}"
    lines.append(_requesters(w))
    context = []
    if w.execution_id:
        context.append(f"Execution {_code(w.execution_id, 60)}")
    if not finished:
        context.append(f"Watching until {_hhmm(w.deadline_at)}; updates in the thread")
    blocks = [_section("\n".join(lines))]
    if context:
        blocks.append(_context(" · ".join(context)))
    return _message(f"{text} ({_requesters(w)})", blocks)


def state_reply(w: WatchView, state: str, detail: str | None) -> dict[str, Any]:
    """One state change, e.g. "`accounts` is now *canceling*"."""
    text = f"{_subject(w)} is now {_state(state)}"
    body = text + ("\n" + _quoted_detail(detail) if detail else "")
    return _message(text, [_section(body)])


def cancel_requested_reply(w: WatchView, state: str | None) -> dict[str, Any]:
    """The first reply of the thread: who asked for what, and that Polytomic took the request."""
    was = f" (it was {_state(state)})" if state else ""
    text = (
        f"🛑 {user_mention(w.requested_by)} asked to cancel {_target(w)}{was}. "
        "Polytomic accepted the request; I will post each change here until it ends."
    )
    return _simple(text)


def final_reply(w: WatchView, outcome: str, *, took_s: float, detail: str | None) -> dict[str, Any]:
    """The last reply of the thread; its `text` names the terminal state."""
    head = _outcome_phrase(w, outcome, human_duration(took_s))
    body = head
    if detail:
        body += "\n" + _quoted_detail(detail)
    return _message(head, [_section(body)])


def api_trouble_reply(w: WatchView, problem: str) -> dict[str, Any]:
    text = (
        f"⚠️ Polytomic API is not answering ({_esc(problem, 300)}); "
        f"still watching until {_hhmm(w.deadline_at)}."
    )
    return _simple(text)


def api_recovered_reply(w: WatchView) -> dict[str, Any]:
    return _simple(f"✅ Polytomic API is answering again; still watching {_target(w)}.")


def also_asked_reply(w: WatchView, user_id: str) -> dict[str, Any]:
    return _simple(f"{user_mention(user_id)} also asked to cancel this; the cancel was sent once.")


def pointer_to_thread(w: WatchView, permalink: str | None) -> dict[str, Any]:
    """Ephemeral: this is already being cancelled; where to follow it."""
    if permalink and _PERMALINK.fullmatch(permalink):
        where = f"see the thread: <{permalink.replace('&', '&amp;')}|open the thread>"
    else:
        where = "see the thread under the bot's message about it"
    text = f"Already being cancelled: {_target(w)}, asked by {user_mention(w.requested_by)}; {where}"
    return _simple(text)


# -- answers to errors ----------------------------------------------------------------------------


def nothing_running(what: str, last_status: str | None) -> dict[str, Any]:
    text = f"Nothing is running for {_esc(what, 200)}"
    text += f"; last status: {_state(last_status)}." if last_status else "."
    return _simple(text)


def access_denied(err: AccessDenied) -> dict[str, Any]:
    reason = _esc(err.reason, 500).rstrip(".") or "you may not cancel here"
    text = f"🚫 {reason}. An operator can allow it with the setting {_code(err.setting, 60)}."
    return _simple(text)


def unknown_name(err: UnknownName | AmbiguousName) -> dict[str, Any]:
    kind = _esc(err.kind, 20) or "name"
    query = _code(err.query, 80, empty="(empty)")
    candidates = [c for c in err.candidates if c is not None]
    listed = [_code(c, 80) for c in candidates[:MAX_CANDIDATES]]
    more = len(candidates) - len(listed)
    if isinstance(err, AmbiguousName):
        head = f"{query} matches several {kind}s; use more of the name, quote it, or use the ID."
        lines = [head, *(f"• {c}" for c in listed)]
        if more > 0:
            lines.append(f"…and {more:,} more")
        text = f"{query} matches several {kind}s: {', '.join(listed[:5])}" + ("…" if len(listed) > 5 else "")
        return _message(text, _sections(lines))
    head = f"No {kind} matches {query}."
    if listed:
        suggestion = "Did you mean " + ", ".join(listed) + ("…" if more > 0 else "") + "?"
        text = f"{head} {suggestion}"
    else:
        suggestion = "List the bulk syncs with `/polytomic syncs`."
        text = head
    return _message(text, [_section(f"{head}\n{suggestion}")])


def _polytomic_words(err: perr.PolytomicError) -> str:
    status = getattr(err, "status", None)
    if isinstance(err, perr.Unauthorized) or status == 401:
        return "the bot's Polytomic key was refused (check `POLYTOMIC_API_KEY` / `POLYTOMIC_ORG_ID`)"
    if isinstance(err, perr.Forbidden) or status == 403:
        return "the key may not do this (read-only?)"
    if isinstance(err, perr.NotFound) or status == 404:
        return "Polytomic did not find it (it may have been deleted)"
    if isinstance(err, perr.Conflict) or status == 409:
        return "Polytomic refused because of a conflict (it may have finished or be cancelling already)"
    if isinstance(err, perr.RateLimited) or status == 429:
        retry = getattr(err, "retry_after", None)
        after = f"; try again in {human_duration(retry)}" if retry else "; try again shortly"
        return "Polytomic is rate-limiting the bot" + after
    if isinstance(err, perr.ServerError) or (status is not None and 500 <= status <= 599):
        return "Polytomic is having trouble" + (f" (HTTP {status})" if status else "")
    if isinstance(err, perr.PolytomicTimeout):
        return "Polytomic did not answer in time"
    if isinstance(err, perr.Unreachable):
        return "the bot cannot reach Polytomic"
    if isinstance(err, perr.BadResponse):
        return "Polytomic answered with something the bot does not understand"
    if isinstance(err, perr.BadRequest) or status in (400, 422):
        return "Polytomic refused the request as invalid"
    return "the Polytomic request failed" + (f" (HTTP {status})" if status else "")


def polytomic_error(err: perr.PolytomicError) -> dict[str, Any]:
    words = _polytomic_words(err)
    text = f"⚠️ Polytomic request failed: {words}."
    body = text
    message = getattr(err, "message", None) or ""
    if message:
        body += "\nPolytomic said:\n" + _quoted_detail(message, 500)
    return _message(text, [_section(body)])


def unexpected_error(correlation_id: str) -> dict[str, Any]:
    ref = _esc(correlation_id, 64)
    return _simple(f"Something went wrong (ref {ref}). The operator can find it in the bot's log.")


def not_in_channel(channel_id: str, *, bot_user_id: str | None = None) -> dict[str, Any]:
    me = user_mention(bot_user_id) if bot_user_id else "@ followed by my name"
    text = (
        f"I am not a member of {_channel_mention(channel_id)}, so I cannot post there; "
        f"invite me with /invite {me}."
    )
    return _simple(text)


# -- alerts: long runs and Polytomic events (posted in BOT_ALERT_CHANNEL) -------------------------


def _execution_started(entries: Sequence[SchemaExecution]) -> datetime | None:
    starts = [_utc(e.started_at) for e in entries if e.started_at is not None]
    return min(starts) if starts else None


def long_run_alert(
    *,
    sync_id: str,
    sync_name: str | None,
    execution_id: str,
    started_at: datetime | None,
    entries: Sequence[SchemaExecution],
    threshold_s: float,
    now: datetime,
) -> dict[str, Any]:
    """The long-run alert: which execution, since when, each running schema with its Cancel button,
    then Cancel execution and Refresh. `entries` are the execution's schema entries (list-status)."""
    name = sync_name or sync_id or "(unnamed sync)"
    started = started_at or _execution_started(entries)
    blocks: list[dict[str, Any]] = [_header(f"Long run: {name}")]
    lines = [
        f"Execution {_code(execution_id, 60, empty='(no id)')} of {_code(name, 80)} has been running "
        f"for *{_since(started, now)}* (started {_when(started)}); the alert threshold is "
        f"{human_duration(threshold_s)}."
    ]
    blocks.append(_section("\n".join(lines)))
    ordered = sorted(entries, key=_entry_sort_key)
    flying = [e for e in ordered if is_running(e.status)]
    done = [e for e in ordered if not is_running(e.status)]
    shown, rest = flying[:MAX_SCHEMA_ENTRIES], flying[MAX_SCHEMA_ENTRIES:]
    for i, entry in enumerate(shown):
        value = button_value(sync_id, entry.schema_id) if sync_id and entry.schema_id else None
        accessory = None
        note = None
        if value is not None:
            accessory = _button(
                "Cancel",
                f"{CANCEL_SCHEMA}:{i}",
                value,
                danger=True,
                confirm=_schema_confirm(name, _schema_label(entry)),
            )
        else:
            note = "no cancel button: this schema's id is missing or too long for a Slack button"
        blocks.append(_section(_entry_text(entry, now, note), accessory))
    summary = []
    if rest:
        summary.append(_summarise(rest, "more running schemas"))
    if done:
        summary.append(_summarise(done, "schemas done"))
    if summary:
        blocks.append(_context("; ".join(summary)))
    elements = []
    value = button_value(sync_id) if sync_id else None
    if value is not None:
        elements.append(
            _button("Cancel execution", CANCEL_SYNC, value, danger=True, confirm=_sync_confirm(name))
        )
        elements.append(_button("Refresh", REFRESH, value))
    blocks.extend(_actions(elements))
    blocks.append(_context(f"Updated {_utc(now).strftime('%H:%M:%S UTC')} · kept current until the run ends"))
    text = (
        f"Long run: {_esc(name)} has been running for {_since(started, now)} "
        f"({_count(len(flying), 'schema')} in flight)"
    )
    return _message(text, blocks)


_RUN_ENDINGS: dict[str, tuple[str, str]] = {
    "completed": ("✅", "*completed*"),
    "canceled": ("🛑", "was *canceled*"),
    "failed": ("❌", "*failed*"),
    "errors": ("⚠️", "finished with *errors*"),
    "interrupted": ("⚠️", "was *interrupted*"),
}


def long_run_ended(
    *,
    sync_id: str,
    sync_name: str | None,
    execution_id: str,
    started_at: datetime | None,
    outcome: str | None,
    ended_at: datetime | None,
    entries: Sequence[SchemaExecution] = (),
    detail: str | None = None,
    now: datetime,
) -> dict[str, Any]:
    """The long-run alert once the run is over: how it ended, no buttons."""
    name = sync_name or sync_id or "(unnamed sync)"
    end = ended_at or now
    took = _since(started_at, end) if started_at else "an unknown time"
    if outcome in _RUN_ENDINGS:
        icon, phrase = _RUN_ENDINGS[outcome]
        head = f"{icon} The long run of {_code(name, 80)} {phrase} after {took}."
    elif outcome:
        head = f"🏁 The long run of {_code(name, 80)} ended: {_state(outcome)} after {took}."
    else:
        head = f"🏁 The long run of {_code(name, 80)} is over (Polytomic no longer lists it)."
    lines = [head, f"Execution {_code(execution_id, 60, empty='(no id)')} · started {_when(started_at)}"]
    if ended_at is not None:
        lines[-1] += f" · ended {_when(ended_at)}"
    if detail:
        lines.append(_quoted_detail(detail, MESSAGE_MAX))
    blocks = [_section("\n".join(lines))]
    if entries:
        blocks.append(_context(_summarise(list(entries), "schemas")))
    text = f"Long run of {_esc(name)} ended: {_esc(outcome or 'no longer listed', 40)}"
    return _message(text, blocks)


_EVENT_ALERTS: dict[str, tuple[str, str]] = {
    "bulk_sync.failed": ("❌", "failed"),
    "bulk_sync.completed_with_error": ("⚠️", "completed with errors"),
}


def event_alert(
    event_type: str,
    *,
    sync_id: str | None,
    sync_name: str | None,
    execution_id: str | None,
    error: str | None,
    at: datetime | None,
) -> dict[str, Any]:
    """A Polytomic event worth a person's attention (a failed run), with a Refresh button."""
    icon, words = _EVENT_ALERTS.get(event_type, ("ℹ️", _esc(event_type, 60)))  # noqa: RUF001
    name = sync_name or sync_id or "(unnamed sync)"
    lines = [f"{icon} Bulk sync {_code(name, 80)} *{words}*."]
    facts = []
    if execution_id:
        facts.append(f"Execution {_code(execution_id, 60)}")
    if at is not None:
        facts.append(_when(at))
    if facts:
        lines.append(" · ".join(facts))
    if error:
        lines.append("Polytomic said:\n" + _quoted_detail(error, DETAIL_MAX))
    blocks = [_section("\n".join(lines))]
    value = button_value(sync_id) if sync_id else None
    if value is not None:
        blocks.extend(_actions([_button("Refresh", REFRESH, value)]))
    blocks.append(_context("From a Polytomic event · Refresh shows the sync's current status"))
    return _message(f"Bulk sync {_esc(name)} {words}", blocks)


# -- the message shortcut's modal -------------------------------------------------------------------

MODAL_TITLE_MAX = 24
MODAL_BLOCKS_MAX = 100
OPTION_TEXT_MAX = 75
OPTION_VALUE_MAX = 150
OPTIONS_MAX = 100
PRIVATE_METADATA_MAX = 3000
WHOLE_EXECUTION = "x"  # option value prefix: the whole execution of sync n ("x:n")
ONE_SCHEMA = "s"  # option value prefix: schema m of sync n ("s:n:m")


def _option(label: str, value: str) -> dict[str, Any]:
    """`label` already escaped."""
    return {"text": _plain(label, OPTION_TEXT_MAX), "value": value[:OPTION_VALUE_MAX]}


def _modal(
    callback_id: str,
    title: str,
    blocks: list[dict[str, Any]],
    *,
    metadata: str = "",
    submit: str | None = None,
    close: str = "Close",
) -> dict[str, Any]:
    if len(blocks) > MODAL_BLOCKS_MAX:
        blocks = [*blocks[: MODAL_BLOCKS_MAX - 1], _context("_…more not shown_")]
    view: dict[str, Any] = {
        "type": "modal",
        "callback_id": callback_id,
        "title": _plain(title, MODAL_TITLE_MAX),
        "close": _plain(close, MODAL_TITLE_MAX),
        "blocks": blocks or [_section(" ")],
        "private_metadata": metadata[:PRIVATE_METADATA_MAX],
    }
    if submit:
        view["submit"] = _plain(submit, MODAL_TITLE_MAX)
    return view


def _found_line(found: Sequence[str]) -> str:
    shown = ", ".join(_code(f, 60) for f in found[:10])
    more = f" and {len(found) - 10:,} more" if len(found) > 10 else ""
    return f"Found in the message: {shown}{more}" if found else ""


def shortcut_loading(callback_id: str, found: Sequence[str], metadata: str) -> dict[str, Any]:
    """Opened at once (within the trigger's 3 seconds), before anything is asked of Polytomic."""
    if found:
        text = f"⏳ Looking up {_count(len(found), 'id')} in Polytomic…"
    else:
        text = "I found no bulk sync id or Polytomic link in this message. ⏳ Loading the list of syncs…"
    blocks = [_section(text)]
    line = _found_line(found)
    if line:
        blocks.append(_context(line))
    return _modal(callback_id, "Cancel a Polytomic run", blocks, metadata=metadata)


def shortcut_notice(callback_id: str, text: str, *, title: str = "Cancel a Polytomic run") -> dict[str, Any]:
    """A modal that only says something (`text` is mrkdwn, already escaped)."""
    return _modal(callback_id, title, [_section(text)])


@dataclass
class ShortcutTarget:
    """A bulk sync named by the message, as the modal shows it."""

    sync: BulkSync
    status: SyncStatus | None  # None: could not be read


def shortcut_choose(
    callback_id: str,
    targets: Sequence[ShortcutTarget],
    *,
    found: Sequence[str] = (),
    unknown: Sequence[str] = (),
    metadata: str,
    schema_ids: Sequence[Sequence[str]],
    now: datetime,
) -> dict[str, Any]:
    """Pick what to cancel: one multi-select per sync with a running execution, whose options are
    "the whole execution" (`x:<n>`) and each running schema (`s:<n>:<m>`, m indexing `schema_ids[n]`)."""
    blocks: list[dict[str, Any]] = []
    inputs = 0
    for n, target in enumerate(targets):
        sync = target.sync
        name = sync.name or sync.id or "(unnamed sync)"
        cur = target.status.current_execution if target.status is not None else None
        if target.status is None:
            blocks.append(_section(f"{_code(name, 80)}: I could not read its status from Polytomic."))
            continue
        if cur is None or not is_running(cur.status):
            last = target.status.last_execution
            tail = f"; its last execution {_state(last.status)}" if last is not None else ""
            blocks.append(_section(f"Nothing is running for {_code(name, 80)}{tail}."))
            continue
        started = cur.started_at or cur.created_at
        blocks.append(
            _section(
                f"{_code(name, 80)}: execution {_code(cur.id, 60, empty='(no id)')} is {_state(cur.status)}"
                + (f" · started {_when(started)} · running for {_since(started, now)}" if started else "")
            )
        )
        options = [_option(f"The whole execution of {_esc(name, 40)}", f"{WHOLE_EXECUTION}:{n}")]
        ids = list(schema_ids[n]) if n < len(schema_ids) else []
        flying = sorted((e for e in cur.schemas if is_running(e.status)), key=_entry_sort_key)
        for entry in flying:
            if entry.schema_id not in ids or len(options) >= OPTIONS_MAX:
                continue
            m = ids.index(entry.schema_id)
            label = f"{_esc(_schema_label(entry), 50)} ({_esc(entry.status, 20)})"
            options.append(_option(label, f"{ONE_SCHEMA}:{n}:{m}"))
        missing = len(flying) - (len(options) - 1)
        blocks.append(
            {
                "type": "input",
                "block_id": f"sync:{n}",
                "optional": len(targets) > 1,
                "label": _plain(f"Cancel in {_esc(name, 60)}", 2000),
                "element": {
                    "type": "multi_static_select",
                    "action_id": "pick",
                    "placeholder": _plain("Pick schemas or the whole execution", 150),
                    "options": options,
                },
            }
        )
        inputs += 1
        if missing > 0:
            blocks.append(
                _context(f"{missing:,} running schemas are not listed here; use {_status_command(sync)}")
            )
    if unknown:
        blocks.append(
            _context(
                "Not a bulk sync or running execution I can see: "
                + ", ".join(_code(u, 60) for u in unknown[:10])
            )
        )
    line = _found_line(found)
    if line:
        blocks.append(_context(line))
    if inputs:
        blocks.append(
            _context(
                "Nothing is cancelled until you press *Cancel selected*; "
                "progress goes to the message's thread."
            )
        )
        return _modal(
            callback_id,
            "Cancel a Polytomic run",
            blocks,
            metadata=metadata,
            submit="Cancel selected",
            close="Keep running",
        )
    if not blocks:
        blocks.append(_section("There is nothing to cancel."))
    return _modal(callback_id, "Cancel a Polytomic run", blocks, metadata=metadata)


def shortcut_pick_sync(
    callback_id: str,
    rows: Sequence[tuple[BulkSync, SyncExecutionStatus | None]],
    *,
    found: Sequence[str] = (),
    metadata: str,
) -> dict[str, Any]:
    """No sync named by the message: pick one (running ones first)."""
    head = (
        "None of the ids in this message is a bulk sync or running execution I can see."
        if found
        else "I found no bulk sync id or Polytomic link in this message."
    )
    ordered = sorted(
        (r for r in rows if r[0].id and looks_like_sync_id(r[0].id)),
        key=lambda r: (not _row_running(r), (r[0].name or "").casefold(), r[0].id or ""),
    )
    blocks = [_section(head + " Pick the sync:")]
    if not ordered:
        blocks.append(_section("Polytomic lists no bulk syncs."))
        return _modal(callback_id, "Cancel a Polytomic run", blocks, metadata=metadata)
    options = []
    for sync, st in ordered[:OPTIONS_MAX]:
        mark = " (running)" if _row_running((sync, st)) else ""
        options.append(_option(f"{_esc(sync.name or sync.id, 60)}{mark}", sync.id or ""))
    blocks.append(
        {
            "type": "input",
            "block_id": "sync",
            "label": _plain("Bulk sync", 2000),
            "element": {
                "type": "static_select",
                "action_id": "pick",
                "placeholder": _plain("Choose a bulk sync", 150),
                "options": options,
            },
        }
    )
    if len(ordered) > OPTIONS_MAX:
        blocks.append(_context(f"Showing {OPTIONS_MAX} of {len(ordered):,} syncs, running ones first."))
    line = _found_line(found)
    if line:
        blocks.append(_context(line))
    return _modal(callback_id, "Cancel a Polytomic run", blocks, metadata=metadata, submit="Next")


def looks_like_sync_id(value: str) -> bool:
    return bool(_UUID.fullmatch(value or ""))


_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")


def shortcut_result(lines: Sequence[str]) -> dict[str, Any]:
    """The ephemeral answer after the modal's submission: one line per target (already mrkdwn)."""
    text = "\n".join(lines) or "Nothing was cancelled."
    return _message(text, _sections(lines or ["Nothing was cancelled."]))


def cannot_post_here(channel_id: str, error: str) -> dict[str, Any]:
    """First DM message when the bot cannot post in the message's channel."""
    text = (
        f"I cannot post in {_channel_mention(channel_id)} ({_esc(error, 60)}), so I will tell the "
        "cancellation's story here instead. Invite me there to get it in the message's thread next time."
    )
    return _simple(text)
