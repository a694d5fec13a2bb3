"""Shared fixtures: the fake Polytomic, the fake Slack, and the real bot between them, each on
127.0.0.1 over real sockets. A test reads like the story it checks (see tests/test_e2e_*.py)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bot.fakes.polytomic import FakePolytomic
from bot.fakes.slack import FakeSlack, SlackUser
from bot.runtime import Runtime, http_server
from bot.settings import load_settings

SIGNING_SECRET = "test-signing-secret-0123456789abcdef"
SHARED = Path(__file__).resolve().parents[2] / "shared"


@pytest.fixture
def fake_polytomic():
    with FakePolytomic(cancel_delay_s=0.6, sync_cancel_delay_s=0.6) as fake:
        yield fake


@pytest.fixture
def fake_slack():
    with FakeSlack() as fake:
        yield fake


def bot_settings(fake_polytomic: FakePolytomic, fake_slack: FakeSlack, tmp_path: Path, **overrides):
    env = dict(
        slack_bot_token=fake_slack.bot_token if hasattr(fake_slack, "bot_token") else "xoxb-test-bot-token",
        slack_signing_secret=SIGNING_SECRET,
        slack_api_url=fake_slack.api_url,
        bot_mode="http",
        bot_host="127.0.0.1",
        bot_port=0,
        polytomic_api_key="test-polytomic-key",
        polytomic_base_url=fake_polytomic.url,
        bot_database_url=f"sqlite:///{tmp_path / 'bot.db'}",
        bot_allowed_users=("U0001",),
        bot_poll_interval_s=0.2,
        bot_poll_max_interval_s=0.5,
        bot_watch_timeout_s=30,
    )
    env.update(overrides)
    return load_settings(**env)


class Bot:
    """The real bot (HTTP mode) served by uvicorn on an ephemeral port in the test's loop."""

    def __init__(self, settings, *, owner: str | None = None, lease_s: float = 30.0) -> None:
        self.settings = settings
        self.runtime = Runtime(settings, owner=owner, lease_s=lease_s)
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self._sock.bind(("127.0.0.1", 0))
        self.port = self._sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._server = http_server(self.runtime.http_app, "127.0.0.1", self.port)
        self._task: asyncio.Task | None = None

    async def start(self) -> Bot:
        await self.runtime.start()
        self._task = asyncio.create_task(self._server.serve(sockets=[self._sock]))
        for _ in range(500):
            if self._server.started:
                break
            await asyncio.sleep(0.01)
        return self

    async def stop(self) -> None:
        self._server.should_exit = True
        if self._task is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._task, 10)
        await self.runtime.stop()
        with contextlib.suppress(OSError):
            self._sock.close()


class World:
    def __init__(self, polytomic: FakePolytomic, slack: FakeSlack, bot: Bot, tmp_path: Path) -> None:
        self.polytomic = polytomic
        self.slack = slack
        self.bot = bot
        self.tmp_path = tmp_path
        self.user = SlackUser(bot.url, SIGNING_SECRET, slack)

    def as_user(self, user_id: str, **kw) -> SlackUser:
        return SlackUser(self.bot.url, SIGNING_SECRET, self.slack, user_id=user_id, **kw)


@pytest.fixture
async def make_world(fake_polytomic, fake_slack, tmp_path) -> AsyncIterator:
    bots: list[Bot] = []

    async def make(**overrides) -> World:
        bot = await Bot(bot_settings(fake_polytomic, fake_slack, tmp_path, **overrides)).start()
        bots.append(bot)
        return World(fake_polytomic, fake_slack, bot, tmp_path)

    yield make
    for bot in bots:
        await bot.stop()


@pytest.fixture
async def world(make_world) -> World:
    return await make_world()


def pg_url() -> str | None:
    return os.environ.get("BOT_TEST_DATABASE_URL") or None


PG_URL = os.environ.get("BOT_TEST_DATABASE_URL")
needs_pg = pytest.mark.skipif(not PG_URL, reason="BOT_TEST_DATABASE_URL is not set")


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=needs_pg)])
async def db_url(request, tmp_path):
    """A URL of an empty database of each engine (several Stores may open it); PostgreSQL in an
    isolated schema, dropped afterwards."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'bot.db'}"
    else:
        from bot.store import isolated_pg_url

        async with isolated_pg_url(PG_URL) as url:
            yield url
