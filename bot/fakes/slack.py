"""A stateful fake Slack on 127.0.0.1, for tests, benchmarks and the demo.

One `FakeSlack` serves, over real sockets:

* the Web API at `api_url` (`POST`/`GET /api/<method>`) as slack_sdk's `AsyncWebClient` calls it: JSON
  bodies with `Authorization: Bearer` for the write methods, query or form parameters for the others, and
  `token` as a parameter too;
* Socket Mode: `apps.connections.open` (app token) hands out a one-use `ws://` URL of this fake; the connected
  client gets `hello`, then whatever `send_envelope` sends, and its acks are returned to the caller;
* `response_url`s (`new_response_url`): every POST is recorded and applied the way Slack applies it.

It keeps channels, messages (with their edit history), thread replies and ephemeral messages, so that tests
read the result as a person in the channel would see it (`messages`, `thread`, `transcript`).

`sign` and `SlackUser` drive a bot in HTTP mode the way Slack does: signed slash commands and button clicks.

Modelled Slack behaviour worth knowing (Slack's documented behaviour unless noted):
* Errors are HTTP 200 `{"ok": false, "error": ...}`; `ratelimited` is HTTP 429 with a `Retry-After` header
  (whole seconds in Slack; a fractional value given to `fail()` is sent as given, to keep tests fast).
* Only the write methods (`chat.postMessage`, `chat.update`, `chat.postEphemeral`, ...) read a JSON body; the
  read methods see query and form parameters only, as on Slack.
* A missing token is `not_authed`, a wrong one `invalid_auth`, a revoked one `token_revoked`, the app token on
  a bot method (or the reverse) `not_allowed_token_type`.
* `chat.update` cannot touch an ephemeral message (`message_not_found`).
* A `response_url` from a click on a message replaces that message unless the body says
  `"replace_original": false` (this is why error answers to clicks must set it); `delete_original` deletes it.
  Otherwise the body becomes an ephemeral message for the user (or a channel message with
  `"response_type": "in_channel"`). A response_url works 5 times; the 6th POST gets HTTP 404 `used_url`.
* The body of a slash command's ack (HTTP response or Socket Mode ack payload) is shown like a response_url
  POST.
* Light Block Kit validation: at most 50 blocks, section text <= 3000, button text <= 75, value <= 2000,
  action_id/block_id <= 255, unique block_ids, unique action_ids within a block, text <= 40000.
* Modals: `views.open` takes a `trigger_id` this fake issued (every payload `SlackUser` builds carries one)
  within 3 seconds, once (`expired_trigger_id`, `exchanged_trigger_id`, `invalid_trigger_id`); `views.update`
  takes `view_id` (or `external_id`) and an optional `hash` (`hash_conflict` when stale). Views are checked
  lightly (title/submit/close <= 24, <= 100 blocks, private_metadata <= 3000, options <= 100 with text <= 75
  and value <= 150, `submit` required with input blocks). A view submission's answer is applied as Slack
  does: nothing or `clear` closes the modal, `update` replaces it, `push` stacks a new one, `errors` keeps it
  open with the errors shown.
* `conversations.open` with one user opens (or finds) the DM channel `D<user id>`.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import hashlib
import hmac
import json
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlencode

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

from bot.fakes.server import ThreadedServer

APP_ID = "A0001"
_FIRST_TS = 1_700_000_000_000_100  # microseconds: "1700000000.000100"
_TS_STEP = 100
_RESPONSE_URL_USES = 5

# Methods whose parameters Slack accepts as a JSON body; all others read query/form parameters only.
_JSON_METHODS = frozenset(
    {
        "chat.postMessage",
        "chat.update",
        "chat.postEphemeral",
        "chat.delete",
        "chat.scheduleMessage",
        "chat.meMessage",
        "chat.unfurl",
        "views.open",
        "views.update",
        "views.push",
        "views.publish",
    }
)
_APP_TOKEN_METHODS = frozenset({"apps.connections.open"})
TRIGGER_TTL_S = 3.0  # a trigger_id opens a modal within 3 seconds, once
_MODAL_TEXT_MAX = 24


# --------------------------------------------------------------------------------------------- records
@dataclass
class Call:
    """One Web API call as the fake received it."""

    method: str
    params: dict[str, Any]  # query, form and JSON body merged; the token is not in here (see `token`)
    headers: dict[str, str]
    time: float
    token: str | None = None
    http_method: str = "POST"
    status: int = 200
    response: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return bool(self.response.get("ok"))


@dataclass
class Message:
    channel: str
    ts: str
    text: str = ""
    blocks: list[dict[str, Any]] | None = None
    thread_ts: str | None = None
    user: str = "UBOT"
    reply_broadcast: bool = False
    edits: list[dict[str, Any]] = field(default_factory=list)  # previous versions: {"text", "blocks"}
    ephemeral_user: str | None = None
    deleted: bool = False
    bot_id: str | None = None

    @property
    def is_reply(self) -> bool:
        return self.thread_ts is not None and self.thread_ts != self.ts

    def buttons(self) -> list[dict[str, Any]]:
        """Every button element in the blocks (actions elements and section accessories), in order."""
        return [el for _block, el in _buttons_with_blocks(self.blocks or [])]

    def button_labels(self) -> list[str]:
        return [_plain(b.get("text")) for b in self.buttons()]

    def to_payload(self) -> dict[str, Any]:
        """The message as Slack puts it in interaction payloads (`message` of a block_actions payload)."""
        out: dict[str, Any] = {"type": "message", "ts": self.ts, "text": self.text, "user": self.user}
        if self.bot_id:
            out["bot_id"] = self.bot_id
            out["app_id"] = APP_ID
        if self.blocks is not None:
            out["blocks"] = copy.deepcopy(self.blocks)
        if self.thread_ts is not None:
            out["thread_ts"] = self.thread_ts
        if self.edits:
            out["edited"] = {"user": self.user, "ts": self.ts}
        return out

    def render(self) -> str:
        """One message as text: the text line, then its blocks indented (buttons as `[Label]`)."""
        head = f"[{self.ts}] {self.user}: {self.text}"
        if self.edits:
            head += f"  (edited {len(self.edits)}x)"
        if self.reply_broadcast:
            head += "  (also sent to the channel)"
        lines = [head]
        lines += ["    | " + line for line in render_blocks(self.blocks or [])]
        return "\n".join(lines)


@dataclass
class Envelope:
    """One Socket Mode envelope sent to the bot and what came back."""

    envelope_id: str
    type: str
    payload: dict[str, Any]
    sent_at: float
    acked_at: float | None = None
    ack: dict[str, Any] | None = None  # the ack's payload, if any

    @property
    def ack_seconds(self) -> float | None:
        return None if self.acked_at is None else self.acked_at - self.sent_at


@dataclass
class View:
    """A modal as the fake keeps it: the view as last set, its hash, and how it was opened."""

    id: str
    user: str | None
    view: dict[str, Any]
    hash: str
    opened_at: float
    trigger_age: float | None = None  # seconds between the trigger's issue and views.open
    closed: bool = False
    errors: dict[str, str] | None = None
    history: list[dict[str, Any]] = field(default_factory=list)  # previous versions
    external_id: str | None = None
    version: int = 0  # bumped by every change (views.update, a submission's answer)

    @property
    def callback_id(self) -> str | None:
        return self.view.get("callback_id")

    @property
    def private_metadata(self) -> str:
        return str(self.view.get("private_metadata") or "")

    @property
    def blocks(self) -> list[dict[str, Any]]:
        return list(self.view.get("blocks") or [])

    def inputs(self) -> list[dict[str, Any]]:
        return [b for b in self.blocks if isinstance(b, dict) and b.get("type") == "input"]

    def options(self, block_id: str) -> list[dict[str, Any]]:
        """The options of the select (or checkboxes) in the input block `block_id`."""
        for block in self.inputs():
            if block.get("block_id") == block_id:
                return list((block.get("element") or {}).get("options") or [])
        raise KeyError(f"no input block {block_id!r} in view {self.id}")

    def option_labels(self, block_id: str) -> list[str]:
        return [_plain(o.get("text")) for o in self.options(block_id)]

    def text(self) -> str:
        """The modal as plain lines (title, then blocks; input blocks as `<label>: <options>`)."""
        lines = [f"[{_plain(self.view.get('title'))}]"]
        for block in self.blocks:
            if block.get("type") == "input":
                element = block.get("element") or {}
                opts = " | ".join(_plain(o.get("text")) for o in element.get("options") or [])
                lines.append(f"{_plain(block.get('label'))}: <{element.get('type')}> {opts}".rstrip())
            else:
                lines += render_blocks([block])
        if self.view.get("submit"):
            lines.append(f"[{_plain(self.view['submit'])}]")
        if self.errors:
            lines.append(f"errors: {self.errors}")
        return "\n".join(lines)

    def to_payload(self, team_id: str, app_id: str, bot_id: str) -> dict[str, Any]:
        """The view object as Slack returns it from views.open/update and puts it in payloads."""
        return {
            "id": self.id,
            "team_id": team_id,
            "type": self.view.get("type", "modal"),
            "blocks": copy.deepcopy(self.blocks),
            "private_metadata": self.private_metadata,
            "callback_id": self.view.get("callback_id") or "",
            "state": {"values": {}},
            "hash": self.hash,
            "title": copy.deepcopy(self.view.get("title")),
            "clear_on_close": bool(self.view.get("clear_on_close", False)),
            "notify_on_close": bool(self.view.get("notify_on_close", False)),
            "close": copy.deepcopy(self.view.get("close")),
            "submit": copy.deepcopy(self.view.get("submit")),
            "previous_view_id": None,
            "root_view_id": self.id,
            "app_id": app_id,
            "external_id": self.external_id or "",
            "app_installed_team_id": team_id,
            "bot_id": bot_id,
        }


@dataclass
class _Channel:
    id: str
    name: str
    member: bool = True
    private: bool = False
    archived: bool = False
    exists: bool = True


@dataclass
class _User:
    id: str
    name: str
    real_name: str
    exists: bool = True
    deleted: bool = False
    is_bot: bool = False


@dataclass
class _ResponseUrl:
    url: str
    channel: str | None
    user: str | None
    message_ts: str | None  # set for a click on a message: the message the response may replace
    ephemeral: bool
    bodies: list[dict[str, Any]] = field(default_factory=list)
    last_ts: str | None = None  # the last message this url created (for replace_original on commands)


@dataclass
class _Failure:
    error: str
    times: int
    retry_after: float
    status: int | None


class _SocketConn:
    def __init__(self, websocket: WebSocket, number: int) -> None:
        self.websocket = websocket
        self.number = number
        self.ready = False
        self.open = True
        self.pending: dict[str, asyncio.Future[dict[str, Any] | None]] = {}
        self.closed = asyncio.Event()


# ------------------------------------------------------------------------------------------- rendering
def _plain(text_obj: Any) -> str:
    if isinstance(text_obj, dict):
        return str(text_obj.get("text", ""))
    return "" if text_obj is None else str(text_obj)


def _buttons_with_blocks(blocks: list[dict[str, Any]]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    found = []
    for block in blocks:
        if not isinstance(block, dict):
            continue
        if block.get("type") == "actions":
            found += [(block, el) for el in block.get("elements", []) if el.get("type") == "button"]
        accessory = block.get("accessory")
        if isinstance(accessory, dict) and accessory.get("type") == "button":
            found.append((block, accessory))
    return found


def _render_element(el: dict[str, Any]) -> str:
    kind = el.get("type")
    if kind == "button":
        return f"[{_plain(el.get('text'))}]"
    if kind == "image":
        return f"<image: {el.get('alt_text', '')}>"
    if kind in ("mrkdwn", "plain_text"):
        return str(el.get("text", ""))
    label = _plain(el.get("placeholder")) or _plain(el.get("text"))
    return f"<{kind}{': ' + label if label else ''}>"


def _rich_text(elements: list[Any]) -> str:
    out = []
    for el in elements:
        if not isinstance(el, dict):
            continue
        if "elements" in el:
            out.append(_rich_text(el["elements"]))
        elif el.get("type") == "text":
            out.append(str(el.get("text", "")))
        elif el.get("type") == "user":
            out.append(f"<@{el.get('user_id')}>")
        elif el.get("type") == "link":
            out.append(str(el.get("text") or el.get("url", "")))
        elif el.get("type") == "emoji":
            out.append(f":{el.get('name')}:")
    return "".join(out)


def render_blocks(blocks: list[dict[str, Any]]) -> list[str]:
    """Block Kit as plain lines: headers, section text and fields, context, buttons as `[Label]`."""
    lines: list[str] = []
    for block in blocks:
        if not isinstance(block, dict):
            continue
        kind = block.get("type")
        if kind == "header":
            lines.append(f"# {_plain(block.get('text'))}")
        elif kind == "section":
            if block.get("text"):
                lines += _plain(block["text"]).splitlines() or [""]
            for f in block.get("fields", []):
                lines += ["  " + line for line in _plain(f).splitlines()]
            if isinstance(block.get("accessory"), dict):
                lines.append(_render_element(block["accessory"]))
        elif kind == "context":
            lines.append(" · ".join(_render_element(el) for el in block.get("elements", [])))
        elif kind == "actions":
            lines.append(" ".join(_render_element(el) for el in block.get("elements", [])))
        elif kind == "divider":
            lines.append("---")
        elif kind == "rich_text":
            lines += _rich_text(block.get("elements", [])).splitlines()
        elif kind == "image":
            lines.append(_render_element(block))
        else:
            lines.append(f"<{kind}>")
    return lines


def _validate_blocks(blocks: Any) -> list[str]:
    """Problems Slack would reject with invalid_blocks (a useful subset of its checks)."""
    if not isinstance(blocks, list):
        return ["blocks must be an array"]
    problems = []
    if len(blocks) > 50:
        problems.append(f"too many blocks: {len(blocks)} > 50")
    block_ids: set[str] = set()
    for i, block in enumerate(blocks):
        if not isinstance(block, dict) or not isinstance(block.get("type"), str):
            problems.append(f"block {i} has no type")
            continue
        bid = block.get("block_id")
        if bid is not None:
            if len(str(bid)) > 255:
                problems.append(f"block {i}: block_id longer than 255")
            if bid in block_ids:
                problems.append(f"block {i}: duplicate block_id {bid!r}")
            block_ids.add(bid)
        if block["type"] == "section":
            if len(_plain(block.get("text"))) > 3000:
                problems.append(f"block {i}: section text longer than 3000")
            if len(block.get("fields", [])) > 10:
                problems.append(f"block {i}: more than 10 fields")
            problems += [
                f"block {i}: field longer than 2000" for f in block.get("fields", []) if len(_plain(f)) > 2000
            ]
        if block["type"] == "header" and len(_plain(block.get("text"))) > 150:
            problems.append(f"block {i}: header text longer than 150")
        if block["type"] == "actions" and len(block.get("elements", [])) > 25:
            problems.append(f"block {i}: more than 25 elements")
        action_ids: set[str] = set()
        elements = list(block.get("elements", [])) if block["type"] == "actions" else []
        if isinstance(block.get("accessory"), dict):
            elements.append(block["accessory"])
        for el in elements:
            aid = el.get("action_id")
            if aid is not None:
                if len(str(aid)) > 255:
                    problems.append(f"block {i}: action_id longer than 255")
                if aid in action_ids:
                    problems.append(f"block {i}: duplicate action_id {aid!r}")
                action_ids.add(aid)
            if el.get("type") == "button":
                if len(_plain(el.get("text"))) > 75:
                    problems.append(f"block {i}: button text longer than 75")
                if len(str(el.get("value", ""))) > 2000:
                    problems.append(f"block {i}: button value longer than 2000")
    return problems


def _validate_view(view: Any) -> list[str]:
    """Problems Slack would reject a modal view for (a useful subset of its checks)."""
    if not isinstance(view, dict):
        return ["view must be an object"]
    problems = []
    if view.get("type") != "modal":
        problems.append("view type must be modal")
    for key in ("title", "submit", "close"):
        obj = view.get(key)
        if obj is None:
            if key == "title":
                problems.append("a modal needs a title")
            continue
        if not isinstance(obj, dict) or obj.get("type") != "plain_text":
            problems.append(f"{key} must be plain_text")
        elif not 1 <= len(_plain(obj)) <= _MODAL_TEXT_MAX:
            problems.append(f"{key} must be 1-{_MODAL_TEXT_MAX} characters")
    blocks = view.get("blocks")
    if not isinstance(blocks, list) or not blocks:
        return [*problems, "a modal needs blocks"]
    if len(blocks) > 100:
        problems.append(f"too many blocks: {len(blocks)} > 100")
    problems += [p for p in _validate_blocks(blocks) if not p.startswith("too many blocks")]
    if len(str(view.get("private_metadata") or "")) > 3000:
        problems.append("private_metadata longer than 3000")
    if len(str(view.get("callback_id") or "")) > 255:
        problems.append("callback_id longer than 255")
    inputs = [b for b in blocks if isinstance(b, dict) and b.get("type") == "input"]
    if inputs and not view.get("submit"):
        problems.append("a modal with input blocks needs a submit button")
    for block in inputs:
        label = block.get("label")
        if not isinstance(label, dict) or label.get("type") != "plain_text" or not _plain(label):
            problems.append("input block without a plain_text label")
        elif len(_plain(label)) > 2000:
            problems.append("input label longer than 2000")
        element = block.get("element")
        if not isinstance(element, dict) or not element.get("type"):
            problems.append("input block without an element")
            continue
        options = element.get("options")
        if element.get("type") in ("static_select", "multi_static_select", "checkboxes", "radio_buttons"):
            if not isinstance(options, list) or not options:
                problems.append(f"{element['type']} without options")
                continue
            if len(options) > (10 if element["type"] in ("checkboxes", "radio_buttons") else 100):
                problems.append(f"too many options in {element['type']}")
            values = [str(o.get("value", "")) for o in options]
            if len(values) != len(set(values)):
                problems.append("duplicate option values")
            for o in options:
                if not 1 <= len(_plain(o.get("text"))) <= 75:
                    problems.append("option text must be 1-75 characters")
                if not 1 <= len(str(o.get("value", ""))) <= 150:
                    problems.append("option value must be 1-150 characters")
    return problems


# ------------------------------------------------------------------------------------------ the fake
class SlackError(Exception):
    def __init__(self, error: str, **extra: Any) -> None:
        super().__init__(error)
        self.error = error
        self.extra = extra


class FakeSlack:
    """A Slack workspace with one app installed, served on 127.0.0.1 (see the module docstring)."""

    def __init__(
        self,
        *,
        bot_token: str = "xoxb-test-bot-token",  # noqa: S107
        app_token: str = "xapp-1-test-app-token",  # noqa: S107
        team_id: str = "T0001",
        team: str = "Test Workspace",
        bot_user_id: str = "UBOT",
        bot_id: str = "BBOT",
        enterprise_id: str | None = None,
    ) -> None:
        self.bot_token = bot_token
        self.app_token = app_token
        self.team_id = team_id
        self.team = team
        self.team_domain = "-".join(team.lower().split()) or "workspace"
        self.bot_user_id = bot_user_id
        self.bot_id = bot_id
        self.enterprise_id = enterprise_id
        self.app_id = APP_ID

        self.calls: list[Call] = []
        self.envelopes: list[Envelope] = []
        self.socket_connections = 0  # Socket Mode connections accepted so far

        self._lock = threading.RLock()
        self._revoked: set[str] = set()
        self._ts = _FIRST_TS - _TS_STEP
        self._channels: dict[str, _Channel] = {}
        self._users: dict[str, _User] = {}
        self._usergroups: dict[str, list[str]] = {}
        # channel -> every message (roots and replies) in post order
        self._messages: dict[str, list[Message]] = {}
        self._ephemerals: list[Message] = []
        self._failures: dict[str, list[_Failure]] = {}
        self._response_urls: dict[str, _ResponseUrl] = {}
        self._tickets: set[str] = set()
        self._triggers: dict[str, float] = {}  # trigger_id -> when it was issued (monotonic)
        self._trigger_users: dict[str, str | None] = {}
        self._exchanged: set[str] = set()
        self._views: dict[str, View] = {}
        self._conns: list[_SocketConn] = []
        self._server: ThreadedServer | None = None
        self._app = Starlette(
            routes=[
                Route("/api/{method}", self._api, methods=["GET", "POST"]),
                Route("/response/{rid}", self._response_url_post, methods=["POST"]),
                WebSocketRoute("/link/", self._socket),
            ]
        )

    # ---------------------------------------------------------------- lifecycle
    def start(self) -> FakeSlack:
        self._server = ThreadedServer(self._app).start()
        return self

    def stop(self) -> None:
        if self._server is None:
            return
        loop = self._server.loop
        if loop is not None and loop.is_running() and self._conns:
            fut = asyncio.run_coroutine_threadsafe(self._close_all_sockets(), loop)
            with contextlib.suppress(Exception):
                fut.result(timeout=3)
        self._server.stop()
        self._server = None

    def __enter__(self) -> FakeSlack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("FakeSlack is not started")
        return self._server.url

    @property
    def api_url(self) -> str:
        return self.url + "/api/"

    # ---------------------------------------------------------------- set-up
    def set_channel(
        self,
        channel_id: str,
        *,
        member: bool = True,
        private: bool = False,
        archived: bool = False,
        exists: bool = True,
        name: str | None = None,
    ) -> None:
        with self._lock:
            self._channels[channel_id] = _Channel(
                channel_id, name or channel_id.lower(), member, private, archived, exists
            )

    def set_usergroup(self, group_id: str, users: list[str]) -> None:
        with self._lock:
            self._usergroups[group_id] = list(users)

    def set_user(
        self,
        user_id: str,
        *,
        name: str | None = None,
        real_name: str | None = None,
        exists: bool = True,
        deleted: bool = False,
        is_bot: bool = False,
    ) -> None:
        """Unseen user ids are ordinary members; use this to name them, delete them or make them unknown."""
        with self._lock:
            self._users[user_id] = _User(
                user_id,
                name or f"user-{user_id.lower()}",
                real_name or name or user_id,
                exists,
                deleted,
                is_bot,
            )

    def fail(
        self,
        method: str,
        error: str = "ratelimited",
        *,
        times: int = 1,
        retry_after: float = 1,
        status: int | None = None,
    ) -> None:
        """The next `times` calls of `method` fail: `ratelimited` is HTTP 429 + Retry-After, `status` (500,
        503, ...) answers with that HTTP status, any other error is HTTP 200 {"ok": false, "error": error}."""
        with self._lock:
            self._failures.setdefault(method, []).append(_Failure(error, times, retry_after, status))

    def revoke_token(self) -> None:
        """The current bot token stops working (`token_revoked`)."""
        with self._lock:
            self._revoked.add(self.bot_token)

    def add_message(
        self,
        channel: str,
        text: str = "",
        *,
        blocks: list[dict[str, Any]] | None = None,
        user: str = "UALERTS",
        thread_ts: str | None = None,
        bot_id: str | None = None,
    ) -> Message:
        """Put a message in the channel as someone else (a person, another app) would post it."""
        with self._lock:
            msg = Message(
                channel, self._next_ts(), text, copy.deepcopy(blocks), thread_ts, user, bot_id=bot_id
            )
            self._messages.setdefault(channel, []).append(msg)
            return copy.deepcopy(msg)

    def issue_trigger(self, user: str | None = None) -> str:
        """A new trigger_id, as Slack puts in every interaction payload (good for one views.open
        within 3 seconds; the modal it opens belongs to `user`)."""
        trigger = f"{int(time.time())}.{uuid.uuid4().int % 10**12}.{uuid.uuid4().hex}"
        with self._lock:
            self._triggers[trigger] = time.monotonic()
            self._trigger_users[trigger] = user
        return trigger

    # ---------------------------------------------------------------- modals
    def views(self, user: str | None = None, *, open_only: bool = False) -> list[View]:
        """Modals in the order they were opened (copies), optionally one user's, optionally open ones."""
        with self._lock:
            return [
                copy.deepcopy(v)
                for v in self._views.values()
                if (user is None or v.user == user) and not (open_only and v.closed)
            ]

    def view(self, view_id: str) -> View:
        with self._lock:
            if view_id not in self._views:
                raise KeyError(f"no view {view_id}")
            return copy.deepcopy(self._views[view_id])

    def apply_view_response(
        self, view_id: str, body: dict[str, Any] | None, *, submitted_version: int | None = None
    ) -> None:
        """Apply a view_submission's answer (the HTTP body or Socket Mode ack payload) as Slack does.

        Slack applies the answer the moment it arrives, before the app can call views.update; the
        test client may read it later. `submitted_version`: the view's version when submitted; a
        views.update made since then came after the answer, so an `update` answer only goes into
        the history."""
        with self._lock:
            v = self._views.get(view_id)
            if v is None:
                return
            v.version += 1
            overtaken = submitted_version is not None and v.version - 1 != submitted_version
            action = (body or {}).get("response_action")
            if not body or action in (None, "clear"):
                v.closed = True
                if action == "clear":
                    for other in self._views.values():
                        if other.user == v.user:
                            other.closed = True
                return
            if action == "errors":
                v.errors = dict(body.get("errors") or {})
                return
            new = body.get("view")
            problems = _validate_view(new)
            if problems:
                v.errors = {"_view": "; ".join(problems)}  # Slack shows "We had some trouble connecting"
                return
            if action == "update" and overtaken:
                v.history.insert(max(len(v.history) - 1, 0), copy.deepcopy(new))
            elif action == "update":
                v.history.append(v.view)
                v.view = copy.deepcopy(new)
                v.hash = uuid.uuid4().hex[:20]
                v.errors = None
            elif action == "push":
                pushed = View(
                    "V" + uuid.uuid4().hex[:10].upper(),
                    v.user,
                    copy.deepcopy(new),
                    uuid.uuid4().hex[:20],
                    time.time(),
                )
                self._views[pushed.id] = pushed

    # ---------------------------------------------------------------- reading the workspace
    def calls_to(self, method: str) -> list[Call]:
        with self._lock:
            return [c for c in self.calls if c.method == method]

    def messages(self, channel: str, *, include_broadcasts: bool = False) -> list[Message]:
        """Top-level messages in post order, as they look now (deleted ones left out)."""
        with self._lock:
            return [
                copy.deepcopy(m)
                for m in self._messages.get(channel, [])
                if not m.deleted and (not m.is_reply or (include_broadcasts and m.reply_broadcast))
            ]

    def thread(self, channel: str, ts: str) -> list[Message]:
        """The replies in the thread of `ts`, in order (the parent itself is not included)."""
        with self._lock:
            return [
                copy.deepcopy(m)
                for m in self._messages.get(channel, [])
                if m.thread_ts == ts and m.ts != ts and not m.deleted
            ]

    def message(self, channel: str, ts: str) -> Message:
        with self._lock:
            found = self._find(channel, ts)
            if found is None:
                found = next((e for e in self._ephemerals if e.channel == channel and e.ts == ts), None)
            if found is None:
                raise KeyError(f"no message {ts} in {channel}")
            return copy.deepcopy(found)

    def ephemerals(self, channel: str | None = None, user: str | None = None) -> list[Message]:
        with self._lock:
            return [
                copy.deepcopy(m)
                for m in self._ephemerals
                if not m.deleted
                and (channel is None or m.channel == channel)
                and (user is None or m.ephemeral_user == user)
            ]

    def new_response_url(
        self,
        *,
        channel: str | None = None,
        user: str | None = None,
        message_ts: str | None = None,
        ephemeral: bool = False,
    ) -> str:
        """A response_url on this fake. With `channel`/`user` its POSTs show up as Slack shows them; with
        `message_ts` it belongs to a click on that message (replace_original/delete_original act on it)."""
        rid = uuid.uuid4().hex
        url = f"{self.url}/response/{rid}"
        with self._lock:
            self._response_urls[rid] = _ResponseUrl(url, channel, user, message_ts, ephemeral)
        return url

    def responses(self, response_url: str) -> list[dict[str, Any]]:
        rid = response_url.rstrip("/").rsplit("/", 1)[-1]
        with self._lock:
            r = self._response_urls.get(rid)
            return copy.deepcopy(r.bodies) if r else []

    async def wait_for(self, predicate: Callable[[], Any], timeout: float = 10.0) -> Any:  # noqa: ASYNC109
        """Poll `predicate` until it returns something truthy and return that. An exception from the
        predicate counts as "not yet". On timeout, AssertionError with the state of the workspace."""
        deadline = time.monotonic() + timeout
        last_error: BaseException | None = None
        while True:
            try:
                result = predicate()
                if result:
                    return result
            except Exception as e:  # not there yet (IndexError, KeyError, ...)
                last_error = e
            if time.monotonic() >= deadline:
                detail = f"\nlast error from the predicate: {last_error!r}" if last_error else ""
                raise AssertionError(f"condition not met within {timeout}s{detail}\n{self.dump()}")
            await asyncio.sleep(0.02)

    def transcript(self, channel: str) -> str:
        """The channel as a person sees it: each top-level message (text, then its blocks), its thread
        replies indented below it, then any ephemeral messages shown in the channel."""
        with self._lock:
            msgs = [m for m in self._messages.get(channel, []) if not m.deleted]
            roots = [m for m in msgs if not m.is_reply]
            ch = self._channels.get(channel)
            lines = [f"#{ch.name if ch else channel.lower()} ({channel})"]
            for root in roots:
                lines.append(root.render())
                for reply in (m for m in msgs if m.thread_ts == root.ts and m.ts != root.ts):
                    lines += ["    > " + line for line in reply.render().splitlines()]
            orphans = [m for m in msgs if m.is_reply and m.thread_ts not in {r.ts for r in roots}]
            for m in orphans:
                lines.append(f"(reply to missing parent {m.thread_ts})")
                lines += ["    > " + line for line in m.render().splitlines()]
            for e in self._ephemerals:
                if e.channel == channel and not e.deleted:
                    lines.append(f"(only visible to {e.ephemeral_user}) " + e.render())
            return "\n".join(lines)

    def dump(self, last_calls: int = 20) -> str:
        with self._lock:
            calls = [
                f"  {c.method} {json.dumps(c.params, default=str)[:300]} -> {c.status} "
                f"{json.dumps(c.response, default=str)[:200]}"
                for c in self.calls[-last_calls:]
            ]
            channels = sorted(set(self._messages) | {e.channel for e in self._ephemerals})
        parts = [f"last {len(calls)} Web API calls:", *calls]
        parts += [self.transcript(ch) for ch in channels]
        return "\n".join(parts)

    # ---------------------------------------------------------------- Socket Mode (test side)
    def socket_connected(self) -> bool:
        with self._lock:
            return any(c.open and c.ready for c in self._conns)

    async def send_envelope(
        self,
        type: str,
        payload: dict[str, Any],
        *,
        timeout: float = 5.0,  # noqa: ASYNC109
        retry_attempt: int | None = None,
        retry_reason: str | None = None,
    ) -> dict[str, Any] | None:
        """Send an envelope ("slash_commands" | "interactive" | "events_api") to the connected client and
        return its ack's payload (None for a bare ack). Waits up to `timeout` for a connection and the ack;
        raises TimeoutError otherwise."""
        return await self._on_server_loop(
            self._send_envelope(type, payload, timeout, retry_attempt, retry_reason)
        )

    async def disconnect_socket(self, reason: str = "refresh_requested", *, notify: bool = True) -> None:
        """Send {"type": "disconnect"} (unless notify=False: a dropped connection), give the client a moment
        to leave, then close every open Socket Mode connection."""
        await self._on_server_loop(self._disconnect_all(reason, notify))

    async def _on_server_loop(self, coro: Any) -> Any:
        assert self._server is not None and self._server.loop is not None, "FakeSlack is not started"
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, self._server.loop))

    async def _send_envelope(
        self,
        type: str,
        payload: dict[str, Any],
        timeout: float,  # noqa: ASYNC109
        retry_attempt: int | None,
        retry_reason: str | None,
    ) -> dict[str, Any] | None:
        deadline = time.monotonic() + timeout
        conn = None
        while conn is None:
            conn = next((c for c in reversed(self._conns) if c.open and c.ready), None)
            if conn is None:
                if time.monotonic() >= deadline:
                    raise TimeoutError("no Socket Mode connection to send the envelope to")
                await asyncio.sleep(0.01)
        env = Envelope(uuid.uuid4().hex, type, copy.deepcopy(payload), time.time())
        message: dict[str, Any] = {
            "envelope_id": env.envelope_id,
            "type": type,
            "payload": payload,
            "accepts_response_payload": type != "events_api",
        }
        if type == "events_api":
            message["retry_attempt"] = retry_attempt or 0
            message["retry_reason"] = retry_reason or ""
        fut: asyncio.Future[dict[str, Any] | None] = asyncio.get_running_loop().create_future()
        conn.pending[env.envelope_id] = fut
        with self._lock:
            self.envelopes.append(env)
        try:
            await conn.websocket.send_text(json.dumps(message))
            remaining = max(0.0, deadline - time.monotonic())
            try:
                ack = await asyncio.wait_for(fut, remaining)
            except TimeoutError:
                raise TimeoutError(f"envelope {type} was not acked within {timeout}s") from None
        finally:
            conn.pending.pop(env.envelope_id, None)
        with self._lock:
            env.acked_at = time.time()
            env.ack = copy.deepcopy(ack)
            if type == "slash_commands" and ack:
                self._deliver_command_answer(ack, payload.get("channel_id"), payload.get("user_id"))
        return ack

    async def _disconnect_all(self, reason: str, notify: bool) -> None:
        conns = [c for c in self._conns if c.open]
        for conn in conns:
            if notify:
                with contextlib.suppress(Exception):
                    await conn.websocket.send_text(
                        json.dumps(
                            {
                                "type": "disconnect",
                                "reason": reason,
                                "debug_info": {"host": "applink-fake"},
                            }
                        )
                    )
        if notify:  # a client that follows the protocol closes and reconnects by itself
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.gather(*(c.closed.wait() for c in conns)), 1.0)
        for conn in conns:
            await self._close_conn(conn)

    async def _close_all_sockets(self) -> None:
        for conn in list(self._conns):
            await self._close_conn(conn)

    async def _close_conn(self, conn: _SocketConn) -> None:
        if conn.open:
            conn.open = False
            with contextlib.suppress(Exception):
                await conn.websocket.close(code=1000)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(conn.closed.wait(), 1.0)

    # ---------------------------------------------------------------- Socket Mode (server side)
    async def _socket(self, websocket: WebSocket) -> None:
        ticket = websocket.query_params.get("ticket", "")
        with self._lock:
            valid = ticket in self._tickets
            self._tickets.discard(ticket)
        if not valid:
            await websocket.close(code=1008)
            return
        await websocket.accept()
        with self._lock:
            self.socket_connections += 1
            conn = _SocketConn(websocket, self.socket_connections)
            self._conns.append(conn)
            open_count = sum(1 for c in self._conns if c.open)
        try:
            await websocket.send_text(
                json.dumps(
                    {
                        "type": "hello",
                        "num_connections": open_count,
                        "debug_info": {
                            "host": "applink-fake",
                            "build_number": 1,
                            "approximate_connection_time": 18060,
                        },
                        "connection_info": {"app_id": self.app_id},
                    }
                )
            )
            conn.ready = True
            while True:
                msg = await websocket.receive()
                if msg["type"] == "websocket.disconnect":
                    break
                raw = msg.get("text") or (msg.get("bytes") or b"").decode("utf-8", "replace")
                try:
                    data = json.loads(raw)
                except ValueError:
                    continue
                if isinstance(data, dict) and "envelope_id" in data:
                    fut = conn.pending.get(data["envelope_id"])
                    if fut is not None and not fut.done():
                        ack = data.get("payload")
                        fut.set_result(ack if isinstance(ack, dict) and ack else None)
        except Exception:  # noqa: S110 - the connection went away under us; cleaned up below
            pass
        finally:
            conn.open = False
            conn.closed.set()
            for fut in conn.pending.values():
                if not fut.done():
                    fut.set_exception(ConnectionError("Socket Mode connection closed before the ack"))
            with self._lock:
                if conn in self._conns:
                    self._conns.remove(conn)

    # ---------------------------------------------------------------- Web API
    async def _api(self, request: Request) -> Response:
        method = request.path_params["method"]
        query = dict(request.query_params)
        ctype = request.headers.get("content-type", "")
        body_params: dict[str, Any] = {}
        json_params: dict[str, Any] = {}
        if "application/json" in ctype:
            raw = await request.body()
            try:
                loaded = json.loads(raw) if raw else {}
            except ValueError:
                return JSONResponse({"ok": False, "error": "invalid_json"})
            json_params = loaded if isinstance(loaded, dict) else {}
        elif "x-www-form-urlencoded" in ctype:
            raw = await request.body()
            body_params = dict(parse_qsl(raw.decode("utf-8", "replace"), keep_blank_values=True))
        merged = {**query, **body_params, **json_params}
        effective = {**query, **body_params, **(json_params if method in _JSON_METHODS else {})}

        token = None
        auth = request.headers.get("authorization", "")
        if auth.lower().startswith("bearer "):
            token = auth[7:].strip()
        token = token or effective.get("token") or None
        merged.pop("token", None)
        effective.pop("token", None)

        status, body, headers = self._handle(method, effective, token)
        with self._lock:
            self.calls.append(
                Call(
                    method=method,
                    params=merged,
                    headers=dict(request.headers),
                    time=time.time(),
                    token=token,
                    http_method=request.method,
                    status=status,
                    response=copy.deepcopy(body),
                )
            )
        return JSONResponse(body, status_code=status, headers=headers)

    def _handle(self, method: str, params: dict[str, Any], token: str | None):
        handler = getattr(self, "_m_" + method.replace(".", "_"), None)
        if handler is None:
            return 200, {"ok": False, "error": "unknown_method", "req_method": method}, {}
        with self._lock:
            queue = self._failures.get(method)
            if queue:
                failure = queue[0]
                failure.times -= 1
                if failure.times <= 0:
                    queue.pop(0)
                return self._failure_response(failure)
            try:
                self._check_token(method, token)
                result = handler(params)
            except SlackError as e:
                return 200, {"ok": False, "error": e.error, **e.extra}, {}
        return 200, {"ok": True, **result}, {}

    @staticmethod
    def _failure_response(f: _Failure):
        if (f.status is None and f.error == "ratelimited") or f.status == 429:
            ra = f.retry_after
            header = str(int(ra)) if float(ra).is_integer() else str(ra)
            return 429, {"ok": False, "error": "ratelimited"}, {"Retry-After": header}
        if f.status is not None:
            error = "fatal_error" if f.error == "ratelimited" else f.error
            return f.status, {"ok": False, "error": error}, {}
        return 200, {"ok": False, "error": f.error}, {}

    def _check_token(self, method: str, token: str | None) -> None:
        if not token:
            raise SlackError("not_authed")
        if token in self._revoked:
            raise SlackError("token_revoked")
        wanted, other = (
            (self.app_token, self.bot_token)
            if method in _APP_TOKEN_METHODS
            else (self.bot_token, self.app_token)
        )
        if token == other:
            raise SlackError("not_allowed_token_type")
        if token != wanted:
            raise SlackError("invalid_auth")

    def _next_ts_locked(self) -> str:
        with self._lock:
            return self._next_ts()

    def _next_ts(self) -> str:
        self._ts += _TS_STEP
        return f"{self._ts // 1_000_000}.{self._ts % 1_000_000:06d}"

    def _channel(self, channel_id: str | None) -> _Channel:
        if not channel_id:
            raise SlackError("channel_not_found")
        ch = self._channels.get(channel_id)
        if ch is None:
            ch = _Channel(channel_id, channel_id.lower())
            self._channels[channel_id] = ch
        if not ch.exists:
            raise SlackError("channel_not_found")
        return ch

    def _writable_channel(self, channel_id: str | None) -> _Channel:
        ch = self._channel(channel_id)
        if ch.private and not ch.member:
            raise SlackError("not_in_channel")
        if ch.archived:
            raise SlackError("is_archived")
        return ch

    def _find(self, channel: str, ts: str | None) -> Message | None:
        return next((m for m in self._messages.get(channel, []) if m.ts == ts and not m.deleted), None)

    @staticmethod
    def _content(params: dict[str, Any], *, required: bool = True) -> tuple[str | None, list | None]:
        text = params.get("text")
        blocks = params.get("blocks")
        if isinstance(blocks, str):
            try:
                blocks = json.loads(blocks) if blocks.strip() else None
            except ValueError:
                raise SlackError("invalid_blocks_format") from None
        if blocks is not None:
            problems = _validate_blocks(blocks)
            if problems:
                raise SlackError("invalid_blocks", errors=problems)
        if required and not text and not blocks and not params.get("attachments"):
            raise SlackError("no_text")
        if text is not None and len(str(text)) > 40000:
            raise SlackError("msg_too_long")
        return (None if text is None else str(text)), blocks

    @staticmethod
    def _flag(value: Any) -> bool:
        return value is True or str(value).lower() in ("true", "1")

    # Web API methods (called under self._lock) -------------------------------------------------
    def _m_auth_test(self, params: dict[str, Any]) -> dict[str, Any]:
        out = {
            "url": f"https://{self.team_domain}.slack.com/",
            "team": self.team,
            "user": "polytomic",
            "team_id": self.team_id,
            "user_id": self.bot_user_id,
            "bot_id": self.bot_id,
            "is_enterprise_install": False,
        }
        if self.enterprise_id:
            out["enterprise_id"] = self.enterprise_id
        return out

    def _m_apps_connections_open(self, params: dict[str, Any]) -> dict[str, Any]:
        ticket = uuid.uuid4().hex
        self._tickets.add(ticket)
        ws_base = self.url.replace("http://", "ws://", 1)
        return {"url": f"{ws_base}/link/?ticket={ticket}&app_id={self.app_id}"}

    def _m_chat_postMessage(self, params: dict[str, Any]) -> dict[str, Any]:
        channel = params.get("channel")
        self._writable_channel(channel)
        text, blocks = self._content(params)
        thread_ts = params.get("thread_ts") or None
        msg = Message(
            channel=str(channel),
            ts=self._next_ts(),
            text=text or "",
            blocks=blocks,
            thread_ts=str(thread_ts) if thread_ts else None,
            user=self.bot_user_id,
            reply_broadcast=bool(thread_ts) and self._flag(params.get("reply_broadcast")),
            bot_id=self.bot_id,
        )
        self._messages.setdefault(msg.channel, []).append(msg)
        return {"channel": msg.channel, "ts": msg.ts, "message": msg.to_payload()}

    def _m_chat_update(self, params: dict[str, Any]) -> dict[str, Any]:
        channel = params.get("channel")
        self._writable_channel(channel)
        msg = self._find(str(channel), params.get("ts"))
        if msg is None:
            raise SlackError("message_not_found")
        if msg.user != self.bot_user_id:
            raise SlackError("cant_update_message")
        text, blocks = self._content(params, required=False)
        if text is None and blocks is None:
            raise SlackError("no_text")
        msg.edits.append({"text": msg.text, "blocks": copy.deepcopy(msg.blocks)})
        if text is not None:
            msg.text = text
        if blocks is not None:
            msg.blocks = blocks or None
        return {"channel": msg.channel, "ts": msg.ts, "text": msg.text, "message": msg.to_payload()}

    def _m_chat_postEphemeral(self, params: dict[str, Any]) -> dict[str, Any]:
        channel = params.get("channel")
        self._writable_channel(channel)
        user = params.get("user")
        if not user:
            raise SlackError("user_not_found")
        self._user(str(user))
        text, blocks = self._content(params)
        msg = Message(
            channel=str(channel),
            ts=self._next_ts(),
            text=text or "",
            blocks=blocks,
            thread_ts=params.get("thread_ts") or None,
            user=self.bot_user_id,
            ephemeral_user=str(user),
            bot_id=self.bot_id,
        )
        self._ephemerals.append(msg)
        return {"message_ts": msg.ts}

    def _m_chat_delete(self, params: dict[str, Any]) -> dict[str, Any]:
        channel = params.get("channel")
        self._writable_channel(channel)
        msg = self._find(str(channel), params.get("ts"))
        if msg is None:
            raise SlackError("message_not_found")
        if msg.user != self.bot_user_id:
            raise SlackError("cant_delete_message")
        msg.deleted = True
        return {"channel": msg.channel, "ts": msg.ts}

    def _m_chat_getPermalink(self, params: dict[str, Any]) -> dict[str, Any]:
        channel = str(params.get("channel") or "")
        ch = self._channel(channel)
        if ch.private and not ch.member:
            raise SlackError("channel_not_found")
        msg = self._find(channel, params.get("message_ts"))
        if msg is None:
            raise SlackError("message_not_found")
        link = f"https://{self.team_domain}.slack.com/archives/{channel}/p{msg.ts.replace('.', '')}"
        if msg.is_reply:
            link += f"?thread_ts={msg.thread_ts}&cid={channel}"
        return {"channel": channel, "permalink": link}

    def _view_param(self, params: dict[str, Any]) -> dict[str, Any]:
        view = params.get("view")
        if isinstance(view, str):
            try:
                view = json.loads(view)
            except ValueError:
                raise SlackError("invalid_arguments") from None
        problems = _validate_view(view)
        if problems:
            raise SlackError("invalid_arguments", response_metadata={"messages": problems})
        return view

    def _m_views_open(self, params: dict[str, Any]) -> dict[str, Any]:
        trigger = str(params.get("trigger_id") or "")
        issued = self._triggers.get(trigger)
        if issued is None:
            raise SlackError("invalid_trigger_id")
        if trigger in self._exchanged:
            raise SlackError("exchanged_trigger_id")
        age = time.monotonic() - issued
        if age > TRIGGER_TTL_S:
            raise SlackError("expired_trigger_id")
        view = self._view_param(params)
        self._exchanged.add(trigger)
        v = View(
            "V" + uuid.uuid4().hex[:10].upper(),
            None,
            view,
            uuid.uuid4().hex[:20],
            time.time(),
            trigger_age=age,
        )
        v.user = self._trigger_users.get(trigger)
        v.external_id = view.get("external_id")
        self._views[v.id] = v
        return {"view": v.to_payload(self.team_id, self.app_id, self.bot_id)}

    def _m_views_update(self, params: dict[str, Any]) -> dict[str, Any]:
        view_id = params.get("view_id")
        external = params.get("external_id")
        v = self._views.get(str(view_id)) if view_id else None
        if v is None and external:
            v = next((x for x in self._views.values() if x.external_id == external), None)
        if v is None or v.closed:
            raise SlackError("not_found")
        view = self._view_param(params)
        if params.get("hash") and params["hash"] != v.hash:
            raise SlackError("hash_conflict")
        v.history.append(v.view)
        v.view = view
        v.hash = uuid.uuid4().hex[:20]
        v.errors = None
        v.version += 1
        return {"view": v.to_payload(self.team_id, self.app_id, self.bot_id)}

    def _m_conversations_open(self, params: dict[str, Any]) -> dict[str, Any]:
        users = [u for u in str(params.get("users") or "").split(",") if u]
        if not users:
            raise SlackError("users_list_not_supplied")
        if len(users) > 1:
            raise SlackError("not_supported")  # group DMs are not modelled
        user = self._user(users[0])
        dm = "D" + user.id[1:] if len(user.id) > 1 else "D" + user.id
        already = dm in self._channels
        if not already:
            self._channels[dm] = _Channel(dm, f"dm-{user.id.lower()}", member=True, private=True)
        return {"channel": {"id": dm}, "already_open": already, "no_op": already}

    def _m_usergroups_users_list(self, params: dict[str, Any]) -> dict[str, Any]:
        group = params.get("usergroup")
        if not group or group not in self._usergroups:
            raise SlackError("no_such_subteam")
        return {"users": list(self._usergroups[group])}

    def _user(self, user_id: str) -> _User:
        u = self._users.get(user_id)
        if u is None:
            u = _User(user_id, f"user-{user_id.lower()}", f"User {user_id}")
        if not u.exists:
            raise SlackError("user_not_found")
        return u

    def _m_users_info(self, params: dict[str, Any]) -> dict[str, Any]:
        u = self._user(str(params.get("user") or ""))
        if u.id == self.bot_user_id:
            u = _User(u.id, "polytomic", "Polytomic", is_bot=True)
        return {
            "user": {
                "id": u.id,
                "team_id": self.team_id,
                "name": u.name,
                "real_name": u.real_name,
                "deleted": u.deleted,
                "is_bot": u.is_bot,
                "is_admin": False,
                "profile": {"real_name": u.real_name, "display_name": u.name},
            }
        }

    def _m_conversations_info(self, params: dict[str, Any]) -> dict[str, Any]:
        ch = self._channel(params.get("channel"))
        if ch.private and not ch.member:
            raise SlackError("channel_not_found")
        return {
            "channel": {
                "id": ch.id,
                "name": ch.name,
                "is_channel": not ch.private,
                "is_group": ch.private,
                "is_private": ch.private,
                "is_archived": ch.archived,
                "is_member": ch.member,
            }
        }

    # ---------------------------------------------------------------- response_url
    async def _response_url_post(self, request: Request) -> Response:
        rid = request.path_params["rid"]
        raw = await request.body()
        try:
            body = json.loads(raw) if raw else {}
        except ValueError:
            return PlainTextResponse("invalid_payload", status_code=400)
        with self._lock:
            r = self._response_urls.get(rid)
            if r is None:
                return PlainTextResponse("no_such_url", status_code=404)
            if len(r.bodies) >= _RESPONSE_URL_USES:
                return PlainTextResponse("used_url", status_code=404)
            r.bodies.append(body if isinstance(body, dict) else {"_raw": body})
            if isinstance(body, dict):
                self._apply_response(r, body)
        return JSONResponse({"ok": True})

    def _apply_response(self, r: _ResponseUrl, body: dict[str, Any]) -> None:
        if r.channel is None:
            return
        origin: Message | None = None
        if r.message_ts is not None:
            pool = self._ephemerals if r.ephemeral else self._messages.get(r.channel, [])
            origin = next((m for m in pool if m.ts == r.message_ts and m.channel == r.channel), None)
        if body.get("delete_original") is True:
            if origin is not None:
                origin.deleted = True
            return
        try:
            text, blocks = self._content(body, required=False)
        except SlackError:
            return
        replace = body.get("replace_original")
        if origin is not None and replace is not False:
            origin.edits.append({"text": origin.text, "blocks": copy.deepcopy(origin.blocks)})
            origin.text = text or ""
            origin.blocks = blocks
            return
        if replace is True and r.last_ts is not None:
            last = next((m for m in self._ephemerals if m.ts == r.last_ts), None) or self._find(
                r.channel, r.last_ts
            )
            if last is not None:
                last.edits.append({"text": last.text, "blocks": copy.deepcopy(last.blocks)})
                last.text = text or ""
                last.blocks = blocks
                return
        r.last_ts = self._deliver_command_answer(body, r.channel, r.user)

    def _deliver_command_answer(
        self, body: dict[str, Any], channel: str | None, user: str | None
    ) -> str | None:
        """Show an answer (ack body or response_url POST) as Slack does: ephemeral unless in_channel."""
        if not channel:
            return None
        try:
            text, blocks = self._content(body, required=False)
        except SlackError:
            return None
        msg = Message(
            channel=channel,
            ts=self._next_ts(),
            text=text or "",
            blocks=blocks,
            thread_ts=body.get("thread_ts"),
            user=self.bot_user_id,
            bot_id=self.bot_id,
        )
        if body.get("response_type") == "in_channel":
            self._messages.setdefault(channel, []).append(msg)
        else:
            msg.ephemeral_user = user
            self._ephemerals.append(msg)
        return msg.ts


# ------------------------------------------------------------------------------------ signed requests
def sign(signing_secret: str, body: bytes, timestamp: int | None = None) -> dict[str, str]:
    """The headers Slack puts on a request: X-Slack-Request-Timestamp and X-Slack-Signature."""
    ts = int(time.time()) if timestamp is None else int(timestamp)
    base = b"v0:" + str(ts).encode() + b":" + body
    digest = hmac.new(signing_secret.encode(), base, hashlib.sha256).hexdigest()
    return {"X-Slack-Request-Timestamp": str(ts), "X-Slack-Signature": f"v0={digest}"}


class SlackUser:
    """A person in the workspace who types /polytomic and clicks buttons. HTTP mode: signed requests to
    `bot_url + "/slack/events"`; Socket Mode: the `*_via_socket` methods send envelopes through the fake."""

    def __init__(
        self,
        bot_url: str | None,
        signing_secret: str | None,
        slack: FakeSlack,
        *,
        user_id: str = "U0001",
        team_id: str = "T0001",
        channel_id: str = "C0001",
    ) -> None:
        self.bot_url = bot_url.rstrip("/") if bot_url else None
        self.signing_secret = signing_secret
        self.slack = slack
        self.user_id = user_id
        self.team_id = team_id
        self.channel_id = channel_id
        self.last_response_url: str | None = None  # of the last slash command or click built by this user

    # ---------------------------------------------------------------- payloads
    def _trigger_id(self, user_id: str | None = None) -> str:
        return self.slack.issue_trigger(user_id or self.user_id)

    def _channel_name(self, channel_id: str) -> str:
        with self.slack._lock:
            ch = self.slack._channels.get(channel_id)
        return ch.name if ch else channel_id.lower()

    def slash_body(
        self,
        text: str,
        *,
        command: str = "/polytomic",
        user_id: str | None = None,
        channel_id: str | None = None,
        team_id: str | None = None,
        enterprise_id: str | None = None,
    ) -> dict[str, str]:
        user_id = user_id or self.user_id
        channel_id = channel_id or self.channel_id
        enterprise_id = enterprise_id or self.slack.enterprise_id
        body = {
            "token": "verification-token-unused",
            "team_id": team_id or self.team_id,
            "team_domain": self.slack.team_domain,
            "channel_id": channel_id,
            "channel_name": self._channel_name(channel_id),
            "user_id": user_id,
            "user_name": f"user-{user_id.lower()}",
            "command": command,
            "text": text,
            "api_app_id": self.slack.app_id,
            "is_enterprise_install": "false",
            "response_url": self.slack.new_response_url(channel=channel_id, user=user_id),
            "trigger_id": self._trigger_id(user_id),
        }
        self.last_response_url = body["response_url"]
        if enterprise_id:
            body["enterprise_id"] = enterprise_id
            body["enterprise_name"] = "Test Enterprise"
        return body

    def block_actions_payload(
        self,
        action_id: str,
        value: str,
        *,
        message: dict[str, Any] | None = None,
        channel_id: str | None = None,
        user_id: str | None = None,
        team_id: str | None = None,
        ephemeral: bool = False,
        response_url: str | None = None,
        block_id: str | None = None,
        message_ts: str | None = None,
        enterprise_id: str | None = None,
    ) -> dict[str, Any]:
        user_id = user_id or self.user_id
        channel_id = channel_id or self.channel_id
        team_id = team_id or self.team_id
        enterprise_id = enterprise_id or self.slack.enterprise_id
        message_ts = message_ts or (message or {}).get("ts") or self.slack._next_ts_locked()
        response_url = response_url or self.slack.new_response_url(
            channel=channel_id, user=user_id, message_ts=message_ts, ephemeral=ephemeral
        )
        self.last_response_url = response_url
        container: dict[str, Any] = {
            "type": "message",
            "message_ts": message_ts,
            "channel_id": channel_id,
            "is_ephemeral": ephemeral,
        }
        if message and message.get("thread_ts"):
            container["thread_ts"] = message["thread_ts"]
        payload: dict[str, Any] = {
            "type": "block_actions",
            "user": {
                "id": user_id,
                "username": f"user-{user_id.lower()}",
                "name": f"user-{user_id.lower()}",
                "team_id": team_id,
            },
            "api_app_id": self.slack.app_id,
            "token": "verification-token-unused",
            "container": container,
            "trigger_id": self._trigger_id(user_id),
            "team": {"id": team_id, "domain": self.slack.team_domain},
            "enterprise": {"id": enterprise_id, "name": "Test Enterprise"} if enterprise_id else None,
            "is_enterprise_install": False,
            "channel": {"id": channel_id, "name": self._channel_name(channel_id)},
            "state": {"values": {}},
            "response_url": response_url,
            "actions": [
                {
                    "action_id": action_id,
                    "block_id": block_id or hashlib.sha1(action_id.encode()).hexdigest()[:5],  # noqa: S324
                    "value": value,
                    "type": "button",
                    "action_ts": f"{time.time():.6f}",
                }
            ],
        }
        if message is not None and not ephemeral:
            payload["message"] = copy.deepcopy(message)
        return payload

    # ---------------------------------------------------------------- HTTP mode
    async def _post_signed(self, body: bytes) -> httpx.Response:
        if not self.bot_url or self.signing_secret is None:
            raise RuntimeError("this SlackUser has no bot_url/signing_secret (Socket Mode only)")
        headers = {"Content-Type": "application/x-www-form-urlencoded", **sign(self.signing_secret, body)}
        async with httpx.AsyncClient(timeout=15) as client:
            return await client.post(self.bot_url + "/slack/events", content=body, headers=headers)

    async def slash(self, text: str, **kw: Any) -> httpx.Response:
        """Type `/polytomic <text>`; a non-empty ack body is shown to the user as Slack shows it."""
        body = self.slash_body(text, **kw)
        resp = await self._post_signed(urlencode(body).encode())
        if resp.status_code == 200 and resp.content:
            if resp.headers.get("content-type", "").startswith("application/json"):
                answer = resp.json()
            else:
                answer = {"text": resp.text}
            with self.slack._lock:
                self.slack._deliver_command_answer(answer, body["channel_id"], body["user_id"])
        return resp

    async def click(self, action_id: str, value: str, **kw: Any) -> httpx.Response:
        payload = self.block_actions_payload(action_id, value, **kw)
        return await self._post_signed(urlencode({"payload": json.dumps(payload)}).encode())

    def _button_click_kw(
        self,
        message: Message,
        action_id_prefix: str,
        value: str | Callable[[str], bool] | None,
        kw: dict[str, Any],
    ) -> tuple[str, str, dict[str, Any]]:
        candidates = []
        for block, button in _buttons_with_blocks(message.blocks or []):
            aid = str(button.get("action_id", ""))
            val = str(button.get("value", ""))
            if not aid.startswith(action_id_prefix):
                continue
            if value is not None and not (value(val) if callable(value) else val == value):
                continue
            candidates.append((block, button, aid, val))
        if not candidates:
            available = [(b.get("action_id"), b.get("value")) for b in message.buttons()]
            raise AssertionError(
                f"no button {action_id_prefix!r} on message {message.ts}; buttons: {available}"
            )
        block, _button, aid, val = candidates[0]
        params = {
            "channel_id": message.channel,
            "ephemeral": message.ephemeral_user is not None,
            "message": message.to_payload(),
            "message_ts": message.ts,
            "block_id": block.get("block_id"),
            **kw,
        }
        if params["ephemeral"]:
            params.setdefault("user_id", message.ephemeral_user)
        return aid, val, params

    async def click_button(
        self,
        message: Message,
        action_id_prefix: str,
        *,
        value: str | Callable[[str], bool] | None = None,
        **kw: Any,
    ) -> httpx.Response:
        """Click the first button whose action_id starts with the prefix (and whose value matches `value`,
        a string or a predicate), on `message` exactly as given (a stale copy clicks the stale card)."""
        aid, val, params = self._button_click_kw(message, action_id_prefix, value, kw)
        return await self.click(aid, val, **params)

    # ---------------------------------------------------------------- shortcuts and modals
    def message_action_payload(
        self,
        message: Message | dict[str, Any],
        *,
        callback_id: str = "polytomic_cancel_from_message",
        channel_id: str | None = None,
        user_id: str | None = None,
        team_id: str | None = None,
        enterprise_id: str | None = None,
    ) -> dict[str, Any]:
        """A message shortcut used on `message` (a Message of this fake, or a message dict)."""
        user_id = user_id or self.user_id
        team_id = team_id or self.team_id
        enterprise_id = enterprise_id or self.slack.enterprise_id
        if isinstance(message, Message):
            channel_id = channel_id or message.channel
            msg = message.to_payload()
            if not message.bot_id:
                msg["client_msg_id"] = str(uuid.uuid4())  # Slack adds one to people's messages
            if message.is_reply:
                with self.slack._lock:
                    parent = self.slack._find(message.channel, message.thread_ts)
                if parent is not None:
                    msg["parent_user_id"] = parent.user
        else:
            msg = copy.deepcopy(message)
            channel_id = channel_id or self.channel_id
        response_url = self.slack.new_response_url(channel=channel_id, user=user_id)
        self.last_response_url = response_url
        return {
            "type": "message_action",
            "token": "verification-token-unused",
            "action_ts": f"{time.time():.6f}",
            "team": {"id": team_id, "domain": self.slack.team_domain},
            "user": {
                "id": user_id,
                "username": f"user-{user_id.lower()}",
                "name": f"user-{user_id.lower()}",
                "team_id": team_id,
            },
            "channel": {"id": channel_id, "name": self._channel_name(channel_id)},
            "is_enterprise_install": False,
            "enterprise": {"id": enterprise_id, "name": "Test Enterprise"} if enterprise_id else None,
            "callback_id": callback_id,
            "trigger_id": self._trigger_id(user_id),
            "response_url": response_url,
            "message_ts": msg.get("ts"),
            "message": msg,
        }

    async def shortcut(self, message: Message | dict[str, Any], **kw: Any) -> httpx.Response:
        """Use the message shortcut on `message` (HTTP mode)."""
        payload = self.message_action_payload(message, **kw)
        return await self._post_signed(urlencode({"payload": json.dumps(payload)}).encode())

    def view_submission_payload(
        self, view_id: str, values: dict[str, Any] | None = None, *, user_id: str | None = None
    ) -> dict[str, Any]:
        """Submitting the modal `view_id` with `values`: {block_id: option value (select), [values]
        (multi-select, checkboxes) or text (plain_text_input)}; input blocks not named are empty."""
        user_id = user_id or self.user_id
        view = self.slack.view(view_id)
        if view.closed:
            raise AssertionError(f"view {view_id} is closed")
        state: dict[str, Any] = {}
        values = dict(values or {})
        for block in view.inputs():
            block_id = block.get("block_id")
            element = block.get("element") or {}
            kind = element.get("type")
            action_id = element.get("action_id") or "input"
            wanted = values.pop(block_id, None)
            options = {str(o.get("value")): o for o in element.get("options") or []}

            def option(value: Any, block_id: Any = block_id, options: dict = options) -> dict[str, Any]:
                if str(value) not in options:
                    raise AssertionError(f"no option {value!r} in {block_id!r}: {list(options)}")
                return copy.deepcopy(options[str(value)])

            if kind in ("static_select", "radio_buttons"):
                entry = {"type": kind, "selected_option": option(wanted) if wanted is not None else None}
            elif kind in ("multi_static_select", "checkboxes"):
                picked = [wanted] if isinstance(wanted, str) else list(wanted or [])
                entry = {"type": kind, "selected_options": [option(v) for v in picked]}
            else:
                entry = {"type": kind, "value": wanted}
            state[block_id] = {action_id: entry}
        if values:
            raise AssertionError(f"no input blocks {sorted(values)} in view {view_id}")
        payload_view = view.to_payload(self.slack.team_id, self.slack.app_id, self.slack.bot_id)
        payload_view["state"] = {"values": state}
        return {
            "type": "view_submission",
            "team": {"id": self.team_id, "domain": self.slack.team_domain},
            "user": {
                "id": user_id,
                "username": f"user-{user_id.lower()}",
                "name": f"user-{user_id.lower()}",
                "team_id": self.team_id,
            },
            "api_app_id": self.slack.app_id,
            "token": "verification-token-unused",
            "trigger_id": self._trigger_id(user_id),
            "view": payload_view,
            "response_urls": [],
            "is_enterprise_install": False,
            "enterprise": None,
        }

    async def submit_view(
        self, view_id: str, values: dict[str, Any] | None = None, **kw: Any
    ) -> httpx.Response:
        """Press the modal's submit button (HTTP mode); the bot's answer is applied to the view."""
        version = self.slack.view(view_id).version
        payload = self.view_submission_payload(view_id, values, **kw)
        resp = await self._post_signed(urlencode({"payload": json.dumps(payload)}).encode())
        body = None
        if resp.status_code == 200 and resp.content:
            with contextlib.suppress(ValueError):
                body = resp.json()
        if resp.status_code == 200:
            self.slack.apply_view_response(
                view_id, body if isinstance(body, dict) else None, submitted_version=version
            )
        return resp

    # ---------------------------------------------------------------- Socket Mode
    async def slash_via_socket(
        self,
        text: str,
        *,
        timeout: float = 5.0,  # noqa: ASYNC109
        **kw: Any,
    ) -> dict[str, Any] | None:
        return await self.slack.send_envelope("slash_commands", self.slash_body(text, **kw), timeout=timeout)

    async def click_via_socket(
        self,
        action_id: str,
        value: str,
        *,
        timeout: float = 5.0,  # noqa: ASYNC109
        **kw: Any,
    ) -> dict[str, Any] | None:
        payload = self.block_actions_payload(action_id, value, **kw)
        return await self.slack.send_envelope("interactive", payload, timeout=timeout)

    async def click_button_via_socket(
        self,
        message: Message,
        action_id_prefix: str,
        *,
        value: str | Callable[[str], bool] | None = None,
        timeout: float = 5.0,  # noqa: ASYNC109
        **kw: Any,
    ) -> dict[str, Any] | None:
        aid, val, params = self._button_click_kw(message, action_id_prefix, value, kw)
        return await self.click_via_socket(aid, val, timeout=timeout, **params)

    async def shortcut_via_socket(
        self,
        message: Message | dict[str, Any],
        *,
        timeout: float = 5.0,  # noqa: ASYNC109
        **kw: Any,
    ) -> dict[str, Any] | None:
        return await self.slack.send_envelope(
            "interactive", self.message_action_payload(message, **kw), timeout=timeout
        )

    async def submit_view_via_socket(
        self,
        view_id: str,
        values: dict[str, Any] | None = None,
        *,
        timeout: float = 5.0,  # noqa: ASYNC109
        **kw: Any,
    ) -> dict[str, Any] | None:
        version = self.slack.view(view_id).version
        ack = await self.slack.send_envelope(
            "interactive", self.view_submission_payload(view_id, values, **kw), timeout=timeout
        )
        self.slack.apply_view_response(view_id, ack, submitted_version=version)
        return ack
