"""Soak: hundreds of watched cancellations under random Polytomic and Slack faults, interleaved with
hostile input, against the real bot (HTTP mode, in this process) between the two fakes.

    python scripts/soak.py                      # >= 500 watches, a few minutes
    python scripts/soak.py --watches 100 --seed 7 --json soak.json

It ends by itself: new work stops at --max-seconds (default 420), what is in flight gets
--drain-seconds (default 90), and a watchdog ends the process at 570 s whatever happens. At the end it
prints: inputs tried per category (with the HTTP statuses the bot answered), faults injected per
kind, watches started and how they ended, watches ended with exactly one terminal reply, cancel
requests sent vs expected, and secrets leaked (logs at DEBUG, Slack messages, answers, audit).
The exit status is 1 when an invariant is broken (a second terminal reply, a watch that never ended,
a cancel nobody asked for, a cancel sent twice, a secret leaked, a 5xx answered to Slack).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import inspect
import json
import logging
import os
import random
import re
import socket
import sqlite3
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlencode

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bot.commands import quote  # noqa: E402
from bot.fakes.polytomic import FakePolytomic  # noqa: E402
from bot.fakes.slack import FakeSlack, SlackUser, sign  # noqa: E402
from bot.polytomic.client import path_segment  # noqa: E402
from bot.runtime import Runtime, http_server  # noqa: E402
from bot.settings import load_settings  # noqa: E402

BOT_TOKEN = "xoxb-5555-SOAKbot-1c2d3e"
APP_TOKEN = "xapp-1-A0001-SOAKapp-4f5a"
SIGNING_SECRET = "soak-signing-secret-77aa88bb99cc"
POLYTOMIC_KEY = "pk-SOAKpolytomic-0e0f1a2b"
SECRETS = {
    "bot token": BOT_TOKEN,
    "app token": APP_TOKEN,
    "signing secret": SIGNING_SECRET,
    "polytomic key": POLYTOMIC_KEY,
}
CHANNELS = ("C0001", "C0002", "C0003", "C0004")
ALLOWED = tuple(f"U{n:04d}" for n in range(1, 10))
TERMINAL_WORDS = "canceled|completed|failed|errors|interrupted|not found|ended|timed out|cancel failed"
TERMINAL = re.compile(rf"\*({TERMINAL_WORDS}|no longer listed)\*")
HONEYPOT = "zz-honeypot-9f3"
SCHEMA_IDS = [
    "accounts",
    "contacts",
    "Sales Data/Q1 2026.csv",
    "q?x=1#frag",
    "100%",
    "..",
    "with space",
    "ünïcødé",
    "leads",
    "orders",
]
NAMES = [
    "Salesforce <!channel>",
    "Zendesk `x`",
    "HubSpot & co",
    "Stripe\n*bold*",
    "Postgres <@U123>",
    "Snowflake &lt;",
    "BigQuery",
    "Redshift",
]
HOSTILE_BITS = [
    "<!channel>",
    "<@U123>",
    "&lt;",
    "&amp;",
    "`",
    "```",
    "\n",
    "\u202e",
    "\u200b",
    '"',
    "'",
    "\u201c",
    "\\",
    "--yes",
    "--all",
    "-y",
    "--",
    "—yes",
    "%2F",
    "..",
    "/",
    "?",
    "#",
    " ",
    "\u00a0",
    "\x00",
    "status",
    "cancel",
    "syncs",
    "help",
    "\U0001f600",
    "\uff43\uff41\uff4e\uff43\uff45\uff4c",  # full-width "cancel"
]


def log_to_stderr(*parts: Any) -> None:
    print(*parts, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------- bookkeeping


@dataclass
class Stats:
    inputs: collections.Counter = field(default_factory=collections.Counter)
    statuses: dict[str, collections.Counter] = field(
        default_factory=lambda: collections.defaultdict(collections.Counter)
    )
    faults: collections.Counter = field(default_factory=collections.Counter)
    intended: set[tuple[str, str | None]] = field(default_factory=set)  # (sync, schema) a person asked for
    errors: list[str] = field(default_factory=list)
    slow_acks: int = 0
    max_ack_s: float = 0.0
    max_ack_by: dict[str, float] = field(default_factory=dict)

    def answered(self, category: str, status: int, elapsed: float) -> None:
        self.inputs[category] += 1
        self.statuses[category][status] += 1
        self.max_ack_s = max(self.max_ack_s, elapsed)
        self.max_ack_by[category] = max(self.max_ack_by.get(category, 0.0), elapsed)
        if elapsed >= 3.0:
            self.slow_acks += 1


class RecordCollector(logging.Handler):
    """Every log record of the process, formatted as a handler would write it."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []
        self.count = 0
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1
        try:
            self.lines.append(self.format(record))
        except Exception as exc:  # a broken record must not stop the soak
            self.lines.append(f"unformattable record: {type(exc).__name__}")


# ----------------------------------------------------------------------------------------- the world


class World:
    def __init__(self, args: argparse.Namespace, tmp: Path) -> None:
        self.args = args
        self.rng = random.Random(args.seed)
        self.poly = FakePolytomic(api_key=POLYTOMIC_KEY, cancel_delay_s=0.4, sync_cancel_delay_s=0.4).start()
        self.slack = FakeSlack(bot_token=BOT_TOKEN, app_token=APP_TOKEN).start()
        self.db = tmp / "soak.db"
        self.settings = load_settings(
            slack_bot_token=BOT_TOKEN,
            slack_signing_secret=SIGNING_SECRET,
            slack_api_url=self.slack.api_url,
            bot_mode="http",
            bot_host="127.0.0.1",
            bot_port=0,
            polytomic_api_key=POLYTOMIC_KEY,
            polytomic_base_url=self.poly.url,
            bot_database_url=f"sqlite:///{self.db}",
            bot_allowed_users=ALLOWED,
            bot_poll_interval_s=0.2,
            bot_poll_max_interval_s=0.6,
            bot_watch_timeout_s=args.watch_timeout,
        )
        wanted = {"owner": "soak", "lease_s": 6.0, "claim_every_s": 1.0}
        accepted = inspect.signature(Runtime.__init__).parameters
        self.runtime = Runtime(self.settings, **{k: v for k, v in wanted.items() if k in accepted})
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self._sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}/slack/events"
        self.server = http_server(self.runtime.http_app, "127.0.0.1", self._sock.getsockname()[1])
        self.http = httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=64))
        self.stats = Stats()
        self.syncs: dict[str, dict[str, Any]] = {}  # sync_id -> {"name", "schemas", "targeted": set}
        self.honeypot = ""
        self.response_urls: list[str] = []
        self.answers: list[str] = []
        self._server_task: asyncio.Task | None = None
        self.background: list[asyncio.Task] = []

    async def start(self) -> None:
        await self.runtime.start()
        self._server_task = asyncio.create_task(self.server.serve(sockets=[self._sock]))
        while not self.server.started:
            await asyncio.sleep(0.01)
        for i in range(self.args.syncs):
            self.new_sync(i)
        self.honeypot = self.poly.add_sync(HONEYPOT, ["bait", "trap"])
        self.poly.start_run(self.honeypot, durations=10_000_000)

    async def stop(self) -> None:
        self.server.should_exit = True
        if self._server_task is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server_task, 10)
        with contextlib.suppress(Exception):
            await self.runtime.stop()
        await self.http.aclose()
        self.poly.stop()
        self.slack.stop()

    # -- syncs and runs -------------------------------------------------------------------------

    def new_sync(self, i: int) -> str:
        name = f"Soak {i:02d} {self.rng.choice(NAMES)}"
        schemas = self.rng.sample(SCHEMA_IDS, k=self.rng.randint(3, 6))
        sync_id = self.poly.add_sync(name, schemas)
        self.syncs[sync_id] = {"name": name, "schemas": schemas, "targeted": set(), "exec": None, "index": i}
        return sync_id

    def ensure_run(self, sync_id: str) -> dict | None:
        """The sync's current execution (started when none runs), or None if it cannot run now."""
        info = self.syncs[sync_id]
        try:
            current = self.poly.status_json(sync_id)["data"].get("current_execution")
        except KeyError:
            return None
        if current is None:
            if self.rng.random() < 0.5 and info["targeted"]:
                return None  # let some syncs rest a moment
            durations = {}
            fail = []
            for s in info["schemas"]:
                roll = self.rng.random()
                # most run long (the cancel lands first); some end on their own around the cancel
                durations[s] = self.rng.uniform(0.2, 1.2) if roll < 0.12 else 3600.0
                if roll > 0.95:
                    fail.append(s)
            try:
                exec_id = self.poly.start_run(sync_id, durations=durations, fail=fail)
            except RuntimeError:
                return None
            info["exec"] = exec_id
            info["targeted"] = set()
            current = self.poly.status_json(sync_id)["data"].get("current_execution")
        elif current.get("id") != info["exec"]:
            info["exec"] = current.get("id")
            info["targeted"] = set()
        return current

    # -- talking to the bot ---------------------------------------------------------------------

    async def post(self, category: str, body: bytes, headers: dict[str, str]) -> int:
        started = time.monotonic()
        try:
            response = await self.http.post(self.url, content=body, headers=headers)
        except httpx.HTTPError as exc:
            self.stats.answered(category, -1, time.monotonic() - started)
            self.stats.errors.append(f"{category}: {type(exc).__name__}")
            return -1
        self.stats.answered(category, response.status_code, time.monotonic() - started)
        if response.content:
            self.answers.append(response.text[:4000])
        return response.status_code

    def user(self, user_id: str = "U0001", channel: str = "C0001", team: str = "T0001") -> SlackUser:
        return SlackUser(None, None, self.slack, user_id=user_id, channel_id=channel, team_id=team)

    async def slash(self, category: str, text: str, *, user: SlackUser, **kw: Any) -> int:
        body = user.slash_body(text, **kw)
        self.response_urls.append(body["response_url"])
        raw = urlencode(body).encode()
        return await self.post(
            category, raw, {"Content-Type": "application/x-www-form-urlencoded", **sign(SIGNING_SECRET, raw)}
        )

    async def click(self, category: str, action_id: str, value: str, *, user: SlackUser, **kw: Any) -> int:
        payload = user.block_actions_payload(action_id, value, **kw)
        self.response_urls.append(payload["response_url"])
        raw = urlencode({"payload": json.dumps(payload)}).encode()
        return await self.post(
            category, raw, {"Content-Type": "application/x-www-form-urlencoded", **sign(SIGNING_SECRET, raw)}
        )


# ------------------------------------------------------------------------------------ legit cancels


async def cancel_one(w: World) -> bool:
    """Ask for one cancel in one of the ways people do; False when no target was free."""
    rng = w.rng
    candidates = list(w.syncs)
    rng.shuffle(candidates)
    for sync_id in candidates:
        info = w.syncs[sync_id]
        current = w.ensure_run(sync_id)
        if current is None or current.get("status") not in ("running", "created"):
            continue
        running = [e["schema"] for e in current.get("schemas") or [] if e.get("status") == "running"]
        free = [s for s in running if s not in info["targeted"]]
        whole = "*" not in info["targeted"] and not info["targeted"] and rng.random() < 0.12
        if not free and not whole:
            continue
        schema = None if whole else rng.choice(free)
        info["targeted"].add(schema if schema is not None else "*")
        w.stats.intended.add((sync_id, schema))
        channel = rng.choice(CHANNELS)
        person = w.user(rng.choice(ALLOWED), channel)
        value = json.dumps(
            {"sync_id": sync_id} if schema is None else {"sync_id": sync_id, "schema_id": schema}
        )
        way = rng.random()
        if way < 0.35:
            target = f"{sync_id} --all" if schema is None else f"{sync_id} {quote(schema)}"
            await w.slash("cancel: typed --yes", f"cancel {target} --yes", user=person)
        elif way < 0.55:
            target = f"{sync_id} --all" if schema is None else f"{sync_id} {quote(schema)}"
            await w.slash("cancel: preview", f"cancel {target}", user=person)
            await w.click(
                "cancel: preview confirmed", "polytomic.confirm_cancel", value, user=person, ephemeral=True
            )
        elif way < 0.8:
            action = "polytomic.cancel_sync" if schema is None else "polytomic.cancel_schema:3"
            await w.click("cancel: status card button", action, value, user=person, ephemeral=True)
        else:
            action = "polytomic.cancel_sync" if schema is None else "polytomic.cancel_schema:alert"
            card = w.slack.add_message(
                channel,
                "Long run alert",
                user="UBOT",
                bot_id="BBOT",
                blocks=[
                    {
                        "type": "actions",
                        "elements": [
                            {
                                "type": "button",
                                "action_id": action,
                                "value": value,
                                "style": "danger",
                                "text": {"type": "plain_text", "text": "Cancel"},
                            }
                        ],
                    }
                ],
            )
            await w.click(
                "cancel: alert card button",
                action,
                value,
                user=person,
                message=card.to_payload(),
                message_ts=card.ts,
                channel_id=channel,
            )
        if rng.random() < 0.08:  # a second engineer clicks too: joins, sends nothing more
            other = w.user(rng.choice(ALLOWED), channel)
            action = "polytomic.cancel_sync" if schema is None else "polytomic.cancel_schema"
            await w.click("cancel: duplicate click", action, value, user=other, ephemeral=True)
        return True
    return False


# ------------------------------------------------------------------------------------ hostile input


def hostile_text(rng: random.Random) -> str:
    parts = []
    for _ in range(rng.randint(0, 10)):
        if rng.random() < 0.6:
            parts.append(rng.choice(HOSTILE_BITS))
        else:
            parts.append(
                "".join(
                    chr(
                        rng.choice(
                            [rng.randint(32, 126), rng.randint(0xA0, 0x2FFF), rng.randint(0x1F300, 0x1FAFF)]
                        )
                    )
                    for _ in range(rng.randint(1, 6))
                )
            )
    return "".join(parts)


async def hostile_one(w: World) -> None:
    rng = w.rng
    kind = rng.random()
    person = w.user(rng.choice(ALLOWED), rng.choice(CHANNELS))
    hp = w.honeypot
    if kind < 0.25:
        await w.slash("hostile: command text", hostile_text(rng), user=person)
    elif kind < 0.35:
        await w.slash(
            "read-only: status/syncs/help",
            rng.choice(["help", "syncs", f"status {hp}", "syncs soak", f"status {hp} bait"]),
            user=person,
        )
    elif kind < 0.5:
        body = urlencode(person.slash_body(f"cancel {hp} --all --yes")).encode()
        ts = int(time.time())
        forged = rng.choice(
            [
                sign("wrong-secret", body),
                sign(SIGNING_SECRET, body, ts - rng.randint(301, 100_000)),
                sign(SIGNING_SECRET, body, ts + rng.randint(301, 100_000)),
                {"X-Slack-Request-Timestamp": str(ts)},
                {"X-Slack-Signature": sign(SIGNING_SECRET, body)["X-Slack-Signature"]},
                {
                    **sign(SIGNING_SECRET, b"other body"),
                },
                {
                    **sign(SIGNING_SECRET, body),
                    "X-Slack-Request-Timestamp": rng.choice(["soon", "", "1e9", "-1"]),
                },
            ]
        )
        await w.post(
            "hostile: forged signature",
            body + (b"&x=1" if rng.random() < 0.2 else b""),
            {"Content-Type": "application/x-www-form-urlencoded", **forged},
        )
    elif kind < 0.55:
        size = rng.choice([256 * 1024 + 1, 1024 * 1024, 3 * 1024 * 1024])
        body = urlencode(person.slash_body(f"cancel {hp} --all --yes")).encode()
        body += b"&pad=" + b"x" * (size - len(body))
        headers = sign(SIGNING_SECRET, body) if rng.random() < 0.5 else {}
        await w.post(
            "hostile: oversized body", body, {"Content-Type": "application/x-www-form-urlencoded", **headers}
        )
    elif kind < 0.65:
        # built on a click by someone who may not cancel: whatever part of it is still understood
        # is refused, so a cancel here would be a defect
        stranger = w.user("U0999", rng.choice(CHANNELS))
        payload = stranger.block_actions_payload(
            "polytomic.cancel_sync", json.dumps({"sync_id": hp}), ephemeral=True
        )
        mutation = rng.choice(
            ["user", "team", "actions", "actions0", "container", "message", "raw", "list", "utf8"]
        )
        if mutation == "raw":
            body = urlencode({"payload": json.dumps(payload)[: rng.randint(1, 200)]}).encode()
        elif mutation == "list":
            body = urlencode({"payload": "[1, 2]"}).encode()
        elif mutation == "utf8":
            body = b"command=%2Fpolytomic&text=\xff\xfe&user_id=U0001"
        else:
            payload = dict(payload)
            payload["user" if mutation == "user" else mutation] = rng.choice(["x", None, 7, [], {}])
            if mutation == "actions0":
                payload["actions"] = [rng.choice(["x", 7, None, {"action_id": 5}])]
            body = urlencode({"payload": json.dumps(payload)}).encode()
        await w.post(
            "hostile: malformed signed payload",
            body,
            {"Content-Type": "application/x-www-form-urlencoded", **sign(SIGNING_SECRET, body)},
        )
    elif kind < 0.8:
        action = rng.choice(
            [
                "polytomic.cancel_schema",
                "polytomic.cancel_sync",
                "polytomic.confirm_cancel",
                "polytomic.refresh",
                "polytomic.cancelx",
                "someone.else",
                "",
            ]
        )
        value = rng.choice(
            [
                "",
                "not json",
                "null",
                "[]",
                json.dumps({"sync_id": "not-a-uuid"}),
                json.dumps({"sync_id": hp, "schema_id": "x" * 2100}),
                json.dumps({"sync_id": hp, "schema_id": 7}),
                "[" * 1000 + "]" * 1000,
                json.dumps({"sync_id": f"{hp}/../../me"}),
                hostile_text(rng),
            ]
        )
        await w.click("hostile: bad button value", action, value, user=person, ephemeral=True)
    elif kind < 0.9:
        stranger = w.user(f"U{rng.randint(100, 999):04d}", rng.choice(CHANNELS))
        if rng.random() < 0.5:
            await w.slash("access: user not allowed", f"cancel {hp} bait --yes", user=stranger)
        else:
            await w.click(
                "access: user not allowed",
                "polytomic.cancel_sync",
                json.dumps({"sync_id": hp}),
                user=stranger,
                ephemeral=True,
            )
    else:
        foreign = w.user("U0001", "C0001", team="T0BAD")
        if rng.random() < 0.5:
            await w.slash("access: another workspace", f"cancel {hp} --all --yes", user=foreign)
        else:
            await w.click(
                "access: another workspace",
                "polytomic.cancel_schema",
                json.dumps({"sync_id": hp, "schema_id": "bait"}),
                user=foreign,
                ephemeral=True,
            )


# ------------------------------------------------------------------------------------------- faults


def inject_fault(w: World) -> None:
    rng = w.rng
    poly, slack = w.poly, w.slack
    busy = [s for s, info in w.syncs.items() if info["targeted"]]
    target = rng.choice(busy) if busy else rng.choice(list(w.syncs))
    status = f"/api/bulk/syncs/{target}/status"
    roll = rng.random()
    kind: str
    if roll < 0.14:
        code = rng.choice([500, 502, 503, 504])
        poly.add_fault("GET", status, status=code, times=rng.randint(1, 4))
        kind = f"polytomic {code} on status"
    elif roll < 0.24:
        poly.add_fault(
            "GET",
            "/api/bulk/syncs/*",
            status=429,
            retry_after=rng.choice([0, 0.2, 1]),
            times=rng.randint(1, 5),
        )
        kind = "polytomic 429 storm (Retry-After)"
    elif roll < 0.3:
        poly.add_fault("GET", status, reset=True, times=rng.randint(1, 2))
        kind = "polytomic connection reset"
    elif roll < 0.35:
        poly.add_fault("GET", status, malformed=True, times=1)
        kind = "polytomic malformed JSON"
    elif roll < 0.36:
        poly.add_fault("GET", status, hang=True, times=1)
        kind = "polytomic hang (10 s timeout)"
    elif roll < 0.40:
        poly.add_fault("POST", "*", status=rng.choice([500, 503]), times=1)
        kind = "polytomic 5xx on the cancel POST"
    elif roll < 0.42:
        poly.add_fault("POST", "*", reset=True, times=1)
        kind = "polytomic reset on the cancel POST"
    elif roll < 0.44:
        poly.add_fault(
            "POST", "*", status=403, body={"status": 403, "message": "this API key is read-only"}, times=1
        )
        kind = "polytomic 403 read-only on the cancel"
    elif roll < 0.46:
        poly.add_fault("GET", status, delay=rng.uniform(0.3, 1.5), times=2)
        kind = "polytomic slow answers"
    elif roll < 0.48:
        with contextlib.suppress(ValueError, KeyError):
            poly.drop_execution(target)
            kind = "polytomic execution disappeared"
            w.stats.faults[kind] += 1
        return
    elif roll < 0.51:
        with contextlib.suppress(ValueError, KeyError):
            current = poly.status_json(target)["data"].get("current_execution") or {}
            schemas = [e["schema"] for e in current.get("schemas") or []]
            if schemas:
                poly.drop_schema_from_status(target, rng.choice(schemas))
                w.stats.faults["polytomic schema vanished from status"] += 1
        return
    elif roll < 0.52:
        with contextlib.suppress(KeyError):
            poly.remove_sync(target)
            index = w.syncs.pop(target)["index"]
            w.new_sync(index + 100)
            w.stats.faults["polytomic sync deleted (404)"] += 1
        return
    elif roll < 0.53:
        outage = poly.add_fault("GET", status, status=503, times=None)
        w.stats.faults["polytomic outage past the watch deadline"] += 1

        async def lift() -> None:
            await asyncio.sleep(w.args.watch_timeout + 3)
            outage.times = 0  # lift only this outage

        w.background.append(asyncio.get_running_loop().create_task(lift()))
        return
    elif roll < 0.70:
        slack.fail(
            rng.choice(["chat.postMessage", "chat.update"]),
            "ratelimited",
            times=rng.randint(1, 3),
            retry_after=rng.choice([0, 1]),
        )
        kind = "slack 429 (Retry-After)"
    elif roll < 0.78:
        slack.fail(
            rng.choice(["chat.postMessage", "chat.update"]),
            "fatal_error",
            times=rng.randint(1, 2),
            status=rng.choice([500, 503]),
        )
        kind = "slack 5xx"
    elif roll < 0.80:
        error = rng.choice(["not_in_channel", "channel_not_found", "is_archived", "invalid_auth"])
        slack.fail("chat.postMessage", error, times=1)
        kind = f"slack {error} (once)"
    elif roll < 0.82:
        slack.fail("chat.update", rng.choice(["invalid_auth", "message_not_found"]), times=1)
        kind = "slack chat.update refused (once)"
    else:
        return
    w.stats.faults[kind] += 1


# ------------------------------------------------------------------------------------------ the run


async def watches_count(w: World) -> int:
    def q() -> int:
        with contextlib.closing(sqlite3.connect(f"file:{w.db}?mode=ro", uri=True, timeout=10)) as c:
            return c.execute("SELECT count(*) FROM watches").fetchone()[0]

    return await asyncio.to_thread(q)


async def run(args: argparse.Namespace) -> int:
    started = time.monotonic()
    collector = RecordCollector()
    root = logging.getLogger()
    root.addHandler(collector)
    root.setLevel(logging.DEBUG)
    for noisy in ("aiosqlite", "sqlalchemy", "httpcore", "hpack", "websockets", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.INFO)  # volume only; these never see our secrets
    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        w = World(args, Path(tmp))
        await w.start()
        log_to_stderr(f"soak: bot up on {w.url}; {args.syncs} syncs; seed {args.seed}")
        stop_at = started + args.max_seconds

        async def faults() -> None:
            while time.monotonic() < stop_at:
                inject_fault(w)
                await asyncio.sleep(w.rng.expovariate(1 / args.fault_every))

        fault_task = asyncio.create_task(faults())
        last_report = 0.0
        created = 0
        try:
            while time.monotonic() < stop_at:
                created = await watches_count(w)
                if created >= args.watches:
                    break
                held = len(w.runtime.watcher.held) if w.runtime.watcher else 0
                jobs = [hostile_one(w) for _ in range(w.rng.randint(1, 3))]
                if held < args.concurrency:
                    jobs += [cancel_one(w) for _ in range(w.rng.randint(1, 4))]
                await asyncio.gather(*jobs)
                await asyncio.sleep(0.05)
                if time.monotonic() - last_report > 15:
                    last_report = time.monotonic()
                    log_to_stderr(
                        f"soak: {time.monotonic() - started:5.0f}s  watches created {created}  "
                        f"held {held}  inputs {sum(w.stats.inputs.values())}"
                    )
        finally:
            fault_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await fault_task
        generation_s = time.monotonic() - started
        log_to_stderr(f"soak: input stopped after {generation_s:.0f}s; draining")
        w.poly.clear_faults()
        drain_until = time.monotonic() + args.drain_seconds
        while time.monotonic() < drain_until:
            if not await w.runtime.store.unfinished_watches() and not (
                w.runtime.watcher and w.runtime.watcher.held
            ):
                break
            await asyncio.sleep(0.5)
        await asyncio.sleep(1.0)
        report = await verify(w, collector, generation_s, time.monotonic() - started)
        for task in w.background:
            task.cancel()
        await w.stop()
    root.removeHandler(collector)
    print_report(report)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2, default=str))
    return 1 if report["violations"] else 0


async def verify(w: World, collector: RecordCollector, generation_s: float, total_s: float) -> dict:
    def rows() -> list[dict]:
        with contextlib.closing(sqlite3.connect(f"file:{w.db}?mode=ro", uri=True, timeout=10)) as c:
            c.row_factory = sqlite3.Row
            return [dict(r) for r in c.execute("SELECT * FROM watches")]

    watches = await asyncio.to_thread(rows)
    outcomes = collections.Counter(r["outcome"] or "(not ended)" for r in watches)
    with_thread = [r for r in watches if r["root_ts"]]
    exactly_one = more = none_posted = not_ended = 0
    problems: list[str] = []
    for r in watches:
        if r["finished_at"] is None or not r["final_posted"]:
            not_ended += 1
            problems.append(f"watch {r['id']} not ended ({r['outcome']}, final_posted={r['final_posted']})")
            continue
        if not r["root_ts"]:
            continue  # abandoned before anything happened (Slack refused the headline); user told
        replies = w.slack.thread(r["channel_id"], r["root_ts"])
        terminal = [m for m in replies if TERMINAL.search(m.text)]
        if len(terminal) == 1:
            exactly_one += 1
        elif len(terminal) == 0:
            none_posted += 1
        else:
            more += 1
            problems.append(f"watch {r['id']} has {len(terminal)} terminal replies")

    # cancels: what reached Polytomic's handlers vs what the watches say was sent
    cancels = w.poly.cancel_requests()
    sent_keys = collections.Counter(key for _, _, key in cancels)
    expected_keys = {r["idempotency_key"] for r in watches if r["cancel_state"] == "sent"}
    failed_keys = {r["idempotency_key"] for r in watches if r["cancel_state"] == "failed"}
    unexpected = set(sent_keys) - expected_keys - failed_keys
    missing = expected_keys - set(sent_keys)
    honeypot_cancels = [c for c in cancels if c[0] == w.honeypot]
    unintended = [r for r in watches if (r["sync_id"], r["schema_id"]) not in w.stats.intended]
    posts = w.poly.requests_to("POST", "*")
    wrong_routes = []
    for p in posts:
        parts = p.raw_path.split("/")  # ['', 'api', 'bulk', 'syncs', id, 'schemas', segment, 'cancel']
        if parts[-1] != "cancel" or len(parts) not in (6, 8):
            wrong_routes.append(p.raw_path)
        elif len(parts) == 8 and parts[5] == "schemas":
            schema = unquote(parts[6])
            if schema not in SCHEMA_IDS or parts[6] != path_segment(schema):
                wrong_routes.append(p.raw_path)
    for _, schema, _ in cancels:
        if schema is not None and schema not in SCHEMA_IDS:
            wrong_routes.append(f"schema {schema!r}")

    # secrets: logs, Slack messages, the bot's answers, response_url posts, audit
    def leaked(text: str) -> list[str]:
        return [name for name, secret in SECRETS.items() if secret in text]

    leaks: collections.Counter = collections.Counter()
    for line in collector.lines:
        for name in leaked(line):
            leaks[f"log line ({name})"] += 1
    for call in w.slack.calls:
        for name in leaked(json.dumps(call.params, default=str)):
            leaks[f"slack message ({name})"] += 1
    for url in w.response_urls:
        for name in leaked(json.dumps(w.slack.responses(url))):
            leaks[f"response_url answer ({name})"] += 1
    for answer in w.answers:
        for name in leaked(answer):
            leaks[f"bot HTTP answer ({name})"] += 1
    for record in await w.runtime.store.audit_records(limit=100_000):
        for name in leaked(json.dumps(record, default=str)):
            leaks[f"audit record ({name})"] += 1

    five_hundreds = {
        c: n[500] + n[502] + n[503] for c, n in w.stats.statuses.items() if n[500] + n[502] + n[503]
    }
    violations = []
    if more:
        violations.append(f"{more} watches with more than one terminal reply")
    if not_ended:
        violations.append(f"{not_ended} watches never ended")
    if unexpected or honeypot_cancels or unintended:
        violations.append(
            f"cancels nobody asked for: {len(unexpected)} keys, {len(honeypot_cancels)} on the "
            f"honeypot, {len(unintended)} unintended watches"
        )
    if missing:
        violations.append(f"{len(missing)} watches say 'sent' but Polytomic never got the cancel")
    if wrong_routes:
        violations.append(f"{len(wrong_routes)} cancel requests on a wrong route: {wrong_routes[:3]}")
    if leaks:
        violations.append(f"secrets leaked: {dict(leaks)}")
    if five_hundreds:
        violations.append(f"5xx answered to Slack: {five_hundreds}")
    if w.stats.slow_acks:
        violations.append(f"{w.stats.slow_acks} acks took 3 s or more")
    return {
        "seed": w.args.seed,
        "seconds": {"input": round(generation_s, 1), "total": round(total_s, 1)},
        "inputs": {
            c: {
                "tried": n,
                "answers": dict(sorted(w.stats.statuses[c].items())),
                "slowest_ack_s": round(w.stats.max_ack_by.get(c, 0.0), 2),
            }
            for c, n in sorted(w.stats.inputs.items())
        },
        "max_ack_s": round(w.stats.max_ack_s, 3),
        "faults": dict(sorted(w.stats.faults.items())),
        "faults_total": sum(w.stats.faults.values()),
        "watches": {
            "started": len(watches),
            "with a thread": len(with_thread),
            "abandoned before the cancel (Slack refused the headline; user told)": len(watches)
            - len(with_thread),
            "ended with exactly one terminal reply": exactly_one,
            "ended, terminal reply refused by Slack (permanent error injected)": none_posted,
            "  requester told by direct message instead": sum(
                1
                for c in w.slack.calls_to("chat.postMessage")
                if c.ok and str(c.params.get("channel", "")).startswith(("U", "W"))
            ),
            "ended with more than one terminal reply": more,
            "not ended": not_ended,
            "outcomes": dict(sorted(outcomes.items())),
        },
        "cancels": {
            "expected: watches whose cancel was sent": len(expected_keys),
            "sent: distinct Idempotency-Keys Polytomic handled for them": len(set(sent_keys) & expected_keys),
            "watches whose cancel Polytomic refused (403/404; told in thread)": len(failed_keys),
            "  of which reached Polytomic's handler (e.g. 404, sync deleted)": len(
                set(sent_keys) & failed_keys
            ),
            "replays of a key (retries answered from the idempotency record)": sum(sent_keys.values())
            - len(sent_keys),
            "cancel POSTs on the wire (retries included)": len(posts),
            "unexpected (nobody asked; honeypot included)": len(unexpected) + len(honeypot_cancels),
            "missing (watch says sent, Polytomic never got it)": len(missing),
        },
        "secrets_leaked": sum(leaks.values()),
        "log_records_scanned": collector.count,
        "violations": violations,
        "problems": problems[:20],
        "client_errors": w.stats.errors[:10],
    }


def print_report(r: dict) -> None:
    out = [
        f"\n=== soak (seed {r['seed']}): {r['seconds']['total']} s, input for {r['seconds']['input']} s ==="
    ]
    out.append("\ninputs tried per category (answers: HTTP status -> count):")
    for category, row in r["inputs"].items():
        answers = ", ".join(f"{k}: {v}" for k, v in row["answers"].items())
        out.append(f"  {category:<38} {row['tried']:>6}   ({answers}; slowest ack {row['slowest_ack_s']} s)")
    out.append(
        f"  {'total':<38} {sum(v['tried'] for v in r['inputs'].values()):>6}   max ack {r['max_ack_s']} s"
    )
    out.append(f"\nfaults injected ({r['faults_total']}):")
    out += [f"  {k:<46} {v:>5}" for k, v in r["faults"].items()]
    out.append("\nwatches:")
    for k, v in r["watches"].items():
        if k != "outcomes":
            out.append(f"  {k:<70} {v:>5}")
    out.append("  outcomes: " + ", ".join(f"{k} {v}" for k, v in r["watches"]["outcomes"].items()))
    out.append("\ncancel requests:")
    out += [f"  {k:<70} {v:>5}" for k, v in r["cancels"].items()]
    out.append(
        f"\nsecrets leaked: {r['secrets_leaked']} (scanned {r['log_records_scanned']} log records at DEBUG, "
        "every Slack call, answer, response_url post and audit record)"
    )
    out.append("\nviolations: " + ("none" if not r["violations"] else ""))
    out += [f"  - {v}" for v in r["violations"]]
    if r["problems"]:
        out.append("first problems:")
        out += [f"  {p}" for p in r["problems"]]
    print("\n".join(out), flush=True)


def watchdog(limit_s: float) -> None:
    """End the process whatever happens once `limit_s` has passed (the soak must end by itself)."""

    def bite() -> None:
        time.sleep(limit_s)
        log_to_stderr(f"soak: watchdog: still running after {limit_s:.0f}s; exiting")
        with contextlib.suppress(Exception):
            traceback.print_stack()
        os._exit(3)

    threading.Thread(target=bite, daemon=True, name="soak-watchdog").start()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--watches", type=int, default=520, help="stop starting watches after this many")
    parser.add_argument("--syncs", type=int, default=24)
    parser.add_argument("--concurrency", type=int, default=24, help="watches in flight at most")
    parser.add_argument("--fault-every", type=float, default=0.25, help="mean seconds between faults")
    parser.add_argument("--watch-timeout", type=float, default=12.0, help="BOT_WATCH_TIMEOUT_S")
    parser.add_argument("--max-seconds", type=float, default=420.0)
    parser.add_argument("--drain-seconds", type=float, default=90.0)
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args(argv)
    watchdog(570.0)
    return asyncio.run(run(args))


if __name__ == "__main__":
    raise SystemExit(main())
