"""`polytomic-bot demo`: the whole product on this machine, with no Slack workspace and no Polytomic
account. It starts the fake Slack and the fake Polytomic on 127.0.0.1, the real bot (HTTP mode,
SQLite in a temporary directory) between them, plays an on-call story and prints the channel as a
person sees it, ending with one summary line:

    demo: 1 cancel sent, thread ended canceled in 2.9 s, 0 errors

The story: the bulk sync "Salesforce to Snowflake" started 1 h 15 min ago; three schemas finished,
`opportunities` is stuck. (When the long-run alert monitor is installed, its alert card appears in
the channel first.) @ana runs `/polytomic status`, clicks Cancel next to `opportunities` and
confirms; the bot sends the cancel once and tells the story in a thread until the run ends.

Everything runs in this process (the fakes in background threads) and is stopped before exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import logging
import re
import shutil
import socket
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TextIO

from bot import logs

CHANNEL = "C0DATAOPS"
CHANNEL_NAME = "data-oncall"
ENGINEER = "U0ANA"
ENGINEER_NAME = "ana"
SIGNING_SECRET = "demo-signing-secret-not-a-real-one"  # the fake Slack's, not a real one
POLYTOMIC_KEY = "demo-polytomic-key-not-a-real-one"
SYNC_NAME = "Salesforce to Snowflake"
STUCK = "opportunities"
RUN_AGE = timedelta(minutes=75)
# Per-schema durations (seconds) of the run: all but one are done 75 minutes in.
DURATIONS = {"contacts": 26 * 60, "accounts": 43 * 60, "invoices": 65 * 60, STUCK: 6 * 3600}
ALERT_WAIT_S = 15.0
STEP_TIMEOUT_S = 30.0


@dataclass
class Outcome:
    cancels: int = 0
    final: str | None = None
    seconds: float | None = None
    errors: int = 0
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        if self.final is None:
            return f"demo: {self.cancels} cancel sent, the thread did not end, {self.errors} errors"
        sent = f"{self.cancels} cancel{'s' if self.cancels != 1 else ''} sent"
        return f"demo: {sent}, thread ended {self.final} in {self.seconds:.1f} s, {self.errors} errors"


class _ErrorCounter(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1


class _BotServer:
    """The real bot (`Runtime`, HTTP mode) served by uvicorn on an ephemeral loopback port."""

    def __init__(self, settings) -> None:
        from bot.runtime import Runtime, http_server

        self.runtime = Runtime(settings, owner="demo")
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self._sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}"
        self._server = http_server(self.runtime.http_app, "127.0.0.1", self._sock.getsockname()[1])
        self._task: asyncio.Task | None = None

    async def start(self) -> None:
        await self.runtime.start()
        self._task = asyncio.create_task(self._server.serve(sockets=[self._sock]))
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline or self._task.done():
                raise RuntimeError("the bot's HTTP listener did not start")
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        self._server.should_exit = True
        if self._task is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._task, timeout=5)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.runtime.stop(), timeout=8)
        with contextlib.suppress(OSError):
            self._sock.close()


def _settings(slack, polytomic, db_path: Path):
    from bot.settings import load_settings

    # Every setting is given so that nothing from the environment or a .env file leaks in.
    return load_settings(
        _env_file=None,
        slack_bot_token=slack.bot_token,
        slack_app_token=None,
        slack_signing_secret=SIGNING_SECRET,
        slack_api_url=slack.api_url,
        bot_mode="http",
        bot_host="127.0.0.1",
        bot_port=0,
        polytomic_api_key=POLYTOMIC_KEY,
        polytomic_org_id=None,
        polytomic_base_url=polytomic.url,
        polytomic_api_version=polytomic.version,
        polytomic_webhook_secret=None,
        bot_database_url=f"sqlite:///{db_path}",
        bot_allowed_users=(ENGINEER,),
        bot_allowed_usergroups=(),
        bot_allowed_channels=(),
        bot_alert_channel=CHANNEL,
        bot_long_run_s=3600,
        bot_poll_interval_s=0.5,
        bot_poll_max_interval_s=1.0,
        bot_watch_timeout_s=120,
    )


def _pretty(text: str, names: dict[str, str]) -> str:
    """Fake Slack's rendering, made readable: names instead of user ids, no raw timestamps."""
    text = re.sub(r"\[\d{10}\.\d{6}\] ", "", text)
    for user_id, name in names.items():
        text = text.replace(f"<@{user_id}>", f"@{name}").replace(f"{user_id}: ", f"{name}: ")
        text = text.replace(f"only visible to {user_id})", f"only visible to @{name})")
    return text


def _indent(text: str, prefix: str = "    ") -> str:
    return "\n".join(prefix + line for line in text.splitlines())


def _wants_schema(schema_id: str):
    def match(value: str) -> bool:
        try:
            return json.loads(value).get("schema_id") == schema_id
        except (ValueError, AttributeError):
            return False

    return match


def _monitor_running(runtime) -> bool:
    """True when this build's Runtime runs the long-run alert monitor (bot/monitor.py, issue 6)."""
    if importlib.util.find_spec("bot.monitor") is None:
        return False
    from bot.monitor import LongRunMonitor

    return any(isinstance(value, LongRunMonitor) for value in vars(runtime).values())


async def _wait(predicate, limit_s: float, step: float = 0.05):
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            found = predicate()
            if found:
                return found
        await asyncio.sleep(step)
    return None


async def play(out: TextIO) -> Outcome:
    """Start everything, play the story, print it; stop everything. Returns what happened."""
    from bot.fakes.polytomic import FakePolytomic
    from bot.fakes.slack import FakeSlack, SlackUser

    outcome = Outcome()
    errors = _ErrorCounter()
    logging.getLogger().addHandler(errors)
    tmp = Path(tempfile.mkdtemp(prefix="polytomic-bot-demo-"))
    started_at = datetime.now(UTC).replace(microsecond=0)
    slack = FakeSlack(team="Acme Data")
    # The fake's clock starts 75 minutes ago, the run starts then, and the clock is brought to now
    # and kept in step with real time by `ticker` (a manual clock moved forward: the fake's own API).
    polytomic = FakePolytomic(
        api_key=POLYTOMIC_KEY,
        manual_clock=True,
        start_time=started_at - RUN_AGE,
        cancel_delay_s=2.0,
        sync_cancel_delay_s=2.0,
    )
    bot: _BotServer | None = None
    ticker: asyncio.Task | None = None

    async def keep_time() -> None:
        last = time.monotonic()
        while True:
            await asyncio.sleep(0.05)
            now = time.monotonic()
            polytomic.advance(now - last)
            last = now

    names = {ENGINEER: ENGINEER_NAME, slack.bot_user_id: "polytomic (bot)"}

    def say(text: str) -> None:
        print(f"[{datetime.now(UTC).strftime('%H:%M:%S')}] {text}", file=out, flush=True)

    try:
        slack.start()
        polytomic.start()
        slack.set_channel(CHANNEL, name=CHANNEL_NAME)
        slack.set_user(ENGINEER, name=ENGINEER_NAME, real_name="Ana (data on-call)")
        logs.add_secrets(SIGNING_SECRET, POLYTOMIC_KEY, slack.bot_token, slack.app_token)
        sync_id = polytomic.add_sync(SYNC_NAME, list(DURATIONS))
        polytomic.start_run(sync_id, durations=dict(DURATIONS))
        polytomic.advance(RUN_AGE.total_seconds() + (datetime.now(UTC) - started_at).total_seconds())
        ticker = asyncio.create_task(keep_time())
        bot = _BotServer(_settings(slack, polytomic, tmp / "demo.db"))
        await bot.start()
        print(
            "polytomic-bot demo: the whole product on this machine; "
            "no Slack workspace, no Polytomic account\n"
            f"  fake Slack      {slack.url}  (workspace \"Acme Data\", channel #{CHANNEL_NAME})\n"
            f"  fake Polytomic  {polytomic.url}\n"
            f"  the bot         {bot.url}  (HTTP mode, SQLite in {tmp})\n",
            file=out,
            flush=True,
        )
        say(
            f'Polytomic: bulk sync "{SYNC_NAME}" started 1 h 15 min ago; contacts, accounts and invoices '
            f"are done, `{STUCK}` is still running."
        )
        user = SlackUser(bot.url, SIGNING_SECRET, slack, user_id=ENGINEER, team_id=slack.team_id,
                         channel_id=CHANNEL)

        # HOOK(issue 6, long-run alerts): when bot/monitor.py exists, the bot posts a long-run alert
        # card in BOT_ALERT_CHANNEL (set above, threshold BOT_LONG_RUN_S=3600 < 75 min) and the
        # engineer clicks Cancel on that card, which becomes the thread's headline. Without the
        # monitor the story starts from /polytomic status. Nothing else needs to change here.
        alert = None
        if _monitor_running(bot.runtime):
            say(f"(waiting up to {ALERT_WAIT_S:g} s for the long-run alert in #{CHANNEL_NAME})")
            alert = await _wait(
                lambda: next(
                    (
                        m
                        for m in slack.messages(CHANNEL)
                        if any(str(b.get("action_id", "")).startswith("polytomic.cancel_schema")
                               for b in m.buttons())
                    ),
                    None,
                ),
                ALERT_WAIT_S,
            )
            if alert is not None:
                say(f"the bot posts a long-run alert in #{CHANNEL_NAME}:")
                print(_indent(_pretty(alert.render(), names)), file=out, flush=True)
            else:
                say("(no long-run alert arrived; continuing with /polytomic status)")
        else:
            say("(long-run alerts are not part of this build yet: the story starts from /polytomic status)")

        t0 = time.monotonic()
        response = await user.slash(f'status "{SYNC_NAME}"')
        took = (time.monotonic() - t0) * 1000
        if response.status_code != 200:
            raise RuntimeError(f"the bot answered HTTP {response.status_code} to the slash command")
        say(f'@{ENGINEER_NAME} types  /polytomic status "{SYNC_NAME}"   (acked in {took:.0f} ms)')
        card = await _wait(
            lambda: next(
                (m for m in reversed(slack.ephemerals(CHANNEL, ENGINEER)) if m.buttons()), None
            ),
            STEP_TIMEOUT_S,
        )
        if card is None:
            raise RuntimeError("the status card did not arrive")
        say("the bot answers (only @ana sees it):")
        print(_indent(_pretty(card.render(), names)), file=out, flush=True)

        target = alert if alert is not None else card
        where = "the alert" if alert is not None else "the card"
        t_click = time.monotonic()
        response = await user.click_button(target, "polytomic.cancel_schema", value=_wants_schema(STUCK))
        took = (time.monotonic() - t_click) * 1000
        if response.status_code != 200:
            raise RuntimeError(f"the bot answered HTTP {response.status_code} to the click")
        say(
            f"@{ENGINEER_NAME} clicks [Cancel] next to `{STUCK}` on {where} and confirms Slack's dialog"
            f"   (acked in {took:.0f} ms)"
        )

        def ended():
            for root in slack.messages(CHANNEL):
                replies = slack.thread(CHANNEL, root.ts)
                if replies and any(w in replies[-1].text for w in ("canceled", "completed", "failed",
                                                                   "ended", "timed out")):
                    return replies[-1]
            return None

        final = await _wait(ended, STEP_TIMEOUT_S)
        outcome.cancels = len(polytomic.cancel_requests())
        if final is None:
            say("the thread did not end in time")
        else:
            outcome.seconds = time.monotonic() - t_click
            text = final.text
            outcome.final = next(
                (w for w in ("canceled", "completed", "failed", "timed out", "ended") if w in text), "ended"
            )
            say(f"the run ends; the thread's last reply: {_pretty(text, names)}")
            await asyncio.sleep(0.3)  # let the headline's last chat.update land before printing
        print(f"\nWhat #{CHANNEL_NAME} shows now:\n" + "-" * 100, file=out)
        print(_pretty(slack.transcript(CHANNEL), names), file=out)
        print("-" * 100, file=out, flush=True)
        outcome.errors = errors.count + sum(1 for c in slack.calls if not c.ok)
    finally:
        if bot is not None:
            await bot.stop()
        if ticker is not None:
            ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ticker
        polytomic.stop()
        slack.stop()
        logging.getLogger().removeHandler(errors)
        shutil.rmtree(tmp, ignore_errors=True)
    return outcome


def main(*, verbose: bool = False, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    logs.configure("INFO" if verbose else "WARNING", "console", stream=sys.stderr)
    try:
        outcome = asyncio.run(play(out))
    except Exception as exc:
        print(f"demo: failed ({type(exc).__name__}: {logs.redact(str(exc))[:300]})", file=out, flush=True)
        return 1
    print(outcome.summary(), file=out, flush=True)
    return 0 if outcome.final is not None and outcome.errors == 0 else 1
