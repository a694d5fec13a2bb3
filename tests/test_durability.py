"""Watches that survive restarts, duplicate clicks and several replicas (issue 4).

The bot runs as a real process (`python -m bot serve`, see tests/bot_process.py) between the fakes
of this test process, so that it can be killed with SIGKILL or stopped with SIGTERM and started
again on the same database. SQLite always; PostgreSQL (and the two-replica tests) when
BOT_TEST_DATABASE_URL is set. `BOT_LEASE_S` (an internal knob read by bot.runtime) keeps leases short
so that a dead process's watches are taken over within seconds.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from urllib.parse import urlencode

import httpx
import pytest
from bot_process import SIGNING_SECRET, BotProcess
from conftest import Bot, World, bot_settings

from bot.fakes.slack import sign
from bot.store import Store, isolated_pg_url

CHANNEL = "C0001"
PG_URL = os.environ.get("BOT_TEST_DATABASE_URL")
needs_pg = pytest.mark.skipif(not PG_URL, reason="BOT_TEST_DATABASE_URL is not set")



@pytest.fixture
async def pg_db_url():
    if not PG_URL:
        pytest.skip("BOT_TEST_DATABASE_URL is not set")
    async with isolated_pg_url(PG_URL) as url:
        yield url


@pytest.fixture
async def processes(fake_polytomic, fake_slack, tmp_path):
    """Make bot processes; every one still running at the end is killed (and its log shown on failure)."""
    made: list[BotProcess] = []

    def make(database_url: str, **kw) -> BotProcess:
        kw.setdefault("name", f"bot{len(made) + 1}")
        bot = BotProcess(fake_polytomic, fake_slack, database_url, tmp_path, **kw)
        made.append(bot)
        return bot

    yield make
    for bot in made:
        await bot.close()


# -- reading the channel ------------------------------------------------------------------------


def texts(slack, root_ts: str) -> list[str]:
    return [m.text for m in slack.thread(CHANNEL, root_ts)]


def count(slack, root_ts: str, word: str) -> int:
    return sum(word in t for t in texts(slack, root_ts))


def asked(t: str) -> bool:
    return "asked to cancel" in t and "also asked" not in t


async def wait_root(slack, n: int = 1, timeout: float = 15):
    return await slack.wait_for(
        lambda: len(slack.messages(CHANNEL)) >= n and slack.messages(CHANNEL)[n - 1], timeout=timeout
    )


async def wait_thread(slack, root_ts: str, predicate, timeout: float = 20):
    return await slack.wait_for(lambda: predicate(texts(slack, root_ts)) or None, timeout=timeout)


def assert_story_told_once(slack, root_ts: str) -> list[str]:
    """One "asked to cancel", no state twice, and exactly one terminal reply, the last one."""
    thread = texts(slack, root_ts)
    story = "\n".join(thread)
    assert sum(asked(t) for t in thread) == 1, story
    assert sum("canceling" in t for t in thread) <= 1, story
    assert sum("canceled" in t for t in thread) == 1, story
    assert "canceled" in thread[-1], story
    return thread


def running_sync(polytomic, name: str = "Salesforce to Snowflake", schemas=("accounts", "contacts")) -> str:
    sync_id = polytomic.add_sync(name, list(schemas))
    polytomic.start_run(sync_id, durations=600)
    return sync_id


async def settle(slack, root_ts: str, quiet_s: float = 0.6) -> None:
    """Wait until the thread has not changed for `quiet_s` (a repeated reply would show by then)."""
    last, since = None, time.monotonic()
    while time.monotonic() - since < quiet_s:
        now = texts(slack, root_ts)
        if now != last:
            last, since = now, time.monotonic()
        await asyncio.sleep(0.1)


# -- restarts -----------------------------------------------------------------------------------


async def test_sigkill_during_a_watch_then_restart_ends_the_thread_once(
    db_url, processes, fake_polytomic, fake_slack
):
    fake_polytomic.sync_cancel_delay_s = 4.0
    sync_id = running_sync(fake_polytomic)
    bot = await processes(db_url, lease_s=1.5).start()
    response = await bot.user().slash(f"cancel {sync_id} --all --yes")
    assert response.status_code == 200
    root = await wait_root(fake_slack)
    await wait_thread(fake_slack, root.ts, lambda t: any(asked(x) for x in t))

    await bot.kill()  # mid-watch: the run is canceling, the thread is waiting for the end
    assert not any("canceled" in t for t in texts(fake_slack, root.ts))
    await bot.start()
    await wait_thread(fake_slack, root.ts, lambda t: any("canceled" in x for x in t))
    await settle(fake_slack, root.ts)

    assert_story_told_once(fake_slack, root.ts)
    assert len(fake_slack.messages(CHANNEL)) == 1  # one headline
    assert [(s, sc) for s, sc, _ in fake_polytomic.cancel_requests()] == [(sync_id, None)]
    await wait_headline(fake_slack, root.ts, "canceled")


async def wait_headline(slack, ts: str, word: str) -> None:
    await slack.wait_for(lambda: word in slack.message(CHANNEL, ts).text, timeout=10)


async def test_sigterm_finishes_the_request_in_flight_releases_leases_and_the_restart_resumes_at_once(
    tmp_path, processes, fake_polytomic, fake_slack
):
    db_url = f"sqlite:///{tmp_path / 'bot.db'}"
    fake_polytomic.sync_cancel_delay_s = 4.0
    sync_id = running_sync(fake_polytomic)
    # Polytomic is slow to answer the first status read, so the cancel is still being handled
    # (acked, not yet sent) when SIGTERM arrives.
    fake_polytomic.add_fault("GET", "/api/bulk/syncs/*/status", delay=1.0, times=1)
    bot = await processes(db_url, lease_s=30).start()  # a lease far longer than the test waits
    response = await bot.user().slash(f"cancel {sync_id} --all --yes")
    assert response.status_code == 200  # acked
    assert fake_polytomic.cancel_requests() == []

    took = await bot.terminate()
    assert took < 10, bot.logs()
    assert bot.proc.returncode == 0, bot.logs()
    # the request in flight was finished, not dropped: cancel sent, thread started
    assert [(s, sc) for s, sc, _ in fake_polytomic.cancel_requests()] == [(sync_id, None)]
    root = await wait_root(fake_slack, timeout=1)
    assert any(asked(t) for t in texts(fake_slack, root.ts))
    async with await Store.open(db_url) as store:
        (watch,) = await store.unfinished_watches()
        assert watch.lease_owner is None and watch.cancel_state == "sent"  # released, not left to expire

        await bot.start()
        ready = time.monotonic()
        owner = None
        while time.monotonic() - ready < 10:  # far less than the 30 s lease
            owner = (await store.get_watch(watch.id)).lease_owner
            if owner:
                break
            await asyncio.sleep(0.05)
        assert owner, "the restarted bot did not pick the watch up"
    await wait_thread(fake_slack, root.ts, lambda t: any("canceled" in x for x in t))
    await settle(fake_slack, root.ts)
    assert_story_told_once(fake_slack, root.ts)
    assert len(fake_polytomic.cancel_requests()) == 1


async def test_sigkill_while_the_cancel_hangs_resends_it_with_the_same_key(
    tmp_path, processes, fake_polytomic, fake_slack
):
    """The watch row and the headline exist, the cancel POST never got an answer: the restarted bot
    sends it again with the same Idempotency-Key (here the first never reached Polytomic's handler)."""
    fake_polytomic.sync_cancel_delay_s = 1.0
    sync_id = running_sync(fake_polytomic)
    fake_polytomic.add_fault("POST", "/api/bulk/syncs/*/cancel", hang=True)
    bot = await processes(f"sqlite:///{tmp_path / 'bot.db'}", lease_s=1.5).start()
    await bot.user().slash(f"cancel {sync_id} --all --yes")
    hung = await fake_slack.wait_for(lambda: fake_polytomic.requests_to("POST", "/api/bulk/syncs/*/cancel"))
    key = hung[0].headers["idempotency-key"]
    root = await wait_root(fake_slack)
    await bot.kill()
    fake_polytomic.clear_faults()
    assert fake_polytomic.cancel_requests() == []  # nothing reached the handler

    await bot.start()
    await wait_thread(fake_slack, root.ts, lambda t: any("canceled" in x for x in t))
    await settle(fake_slack, root.ts)
    assert fake_polytomic.cancel_requests() == [(sync_id, None, key)]
    assert_story_told_once(fake_slack, root.ts)
    assert len(fake_slack.messages(CHANNEL)) == 1


async def test_sigkill_while_polytomic_handles_the_cancel_replays_the_same_key(
    tmp_path, processes, fake_polytomic, fake_slack
):
    """The cancel reached Polytomic (its handler runs on after the bot died): the re-sent request
    carries the same key, so Polytomic answers with the recorded outcome and cancels once."""
    fake_polytomic.sync_cancel_delay_s = 1.0
    sync_id = running_sync(fake_polytomic)
    fake_polytomic.add_fault("POST", "/api/bulk/syncs/*/cancel", delay=2.5, times=1)
    bot = await processes(f"sqlite:///{tmp_path / 'bot.db'}", lease_s=1.5).start()
    await bot.user().slash(f"cancel {sync_id} --all --yes")
    await fake_slack.wait_for(lambda: fake_polytomic.requests_to("POST", "/api/bulk/syncs/*/cancel"))
    root = await wait_root(fake_slack)
    await bot.kill()

    await bot.start()
    await wait_thread(fake_slack, root.ts, lambda t: any("canceled" in x for x in t))
    await settle(fake_slack, root.ts)
    sent = fake_polytomic.requests_to("POST", "/api/bulk/syncs/*/cancel")
    keys = {r.headers["idempotency-key"] for r in sent}
    assert len(keys) == 1, keys
    # what reached the handler: the first request, then the replay of its outcome (maybe after a
    # 409 "still in progress", which the client retries with the same key)
    assert [k for *_, k in fake_polytomic.cancel_requests()] == [keys.pop()] * 2
    assert_story_told_once(fake_slack, root.ts)


# -- several replicas (PostgreSQL) ----------------------------------------------------------------


@pytest.fixture
async def http():
    async with httpx.AsyncClient(timeout=15) as client:
        yield client


async def timed_click(http: httpx.AsyncClient, user, value: str) -> float:
    """Click a cancel button as `user` and return the seconds until the bot's ack. Sent through one
    shared HTTP client: creating a client per click (as `SlackUser.click` does) costs ~60 ms of this
    process's CPU each, which would be counted in the ack time of twenty simultaneous clicks."""
    payload = user.block_actions_payload("polytomic.cancel_schema", value, ephemeral=True)
    body = urlencode({"payload": json.dumps(payload)}).encode()
    headers = {"Content-Type": "application/x-www-form-urlencoded", **sign(SIGNING_SECRET, body)}
    started = time.monotonic()
    response = await http.post(user.bot_url + "/slack/events", content=body, headers=headers)
    assert response.status_code == 200, response.text
    return time.monotonic() - started


async def test_twenty_identical_clicks_across_two_replicas_send_one_cancel(
    pg_db_url, processes, fake_polytomic, fake_slack, http
):
    a = processes(pg_db_url, allowed_users="*")
    b = processes(pg_db_url, allowed_users="*")
    await asyncio.gather(a.start(), b.start())
    sync_id = running_sync(fake_polytomic)
    value = json.dumps({"sync_id": sync_id, "schema_id": "accounts"})
    users = [(a if i % 2 else b).user(f"U{i:04d}") for i in range(1, 21)]
    acks = await asyncio.gather(*(timed_click(http, u, value) for u in users))
    assert max(acks) < 3.0, acks  # Slack's limit, for every click
    print(f"\nacks of 20 simultaneous clicks: max {max(acks):.2f}s")

    root = await wait_root(fake_slack)
    await wait_thread(fake_slack, root.ts, lambda t: any("canceled" in x for x in t))
    await settle(fake_slack, root.ts)
    assert len(fake_polytomic.cancel_requests()) == 1
    assert len(fake_slack.messages(CHANNEL)) == 1
    thread = texts(fake_slack, root.ts)
    also = [t for t in thread if "also asked" in t]
    assert len(also) == 19 and len(set(also)) == 19, "\n".join(thread)
    assert sum("canceled" in t for t in thread) == 1


def _owner_of(bot: BotProcess, owners: set[str]) -> str:
    (owner,) = [o for o in owners if f"-{bot.proc.pid}-" in o]
    return owner


async def test_two_replicas_share_fifty_watches_one_poller_per_sync_and_survive_a_kill(
    pg_db_url, processes, fake_polytomic, fake_slack, http
):
    # The fake's request log does not say which process sent a request: each replica reaches the
    # fake Polytomic under another host name, and the Host header tells them apart.
    lease_s = 3.0
    a = processes(pg_db_url, name="a", lease_s=lease_s, allowed_users="*")
    b = processes(
        pg_db_url,
        name="b",
        lease_s=lease_s,
        allowed_users="*",
        polytomic_url=fake_polytomic.url.replace("127.0.0.1", "localhost"),
    )
    await asyncio.gather(a.start(), b.start())
    fake_polytomic.cancel_delay_s = 8.0
    syncs = [running_sync(fake_polytomic, f"Sync {i}", [f"table_{j}" for j in range(5)]) for i in range(10)]
    acks: list[float] = []
    for j in range(5):  # five waves of ten clicks, one per sync
        clicks = []
        for i, sync_id in enumerate(syncs):
            # syncs 0 and 1 are cancelled through both replicas (their watches must end up with one)
            via = (a if (i + j) % 2 else b) if i < 2 else (a if i % 2 else b)
            value = json.dumps({"sync_id": sync_id, "schema_id": f"table_{j}"})
            clicks.append(timed_click(http, via.user("U0001"), value))
        acks += await asyncio.gather(*clicks)
    assert max(acks) < 3.0, acks
    print(f"\nacks of 50 clicks in waves of 10: max {max(acks):.2f}s")

    roots = await wait_root(fake_slack, 50, timeout=30)
    roots = fake_slack.messages(CHANNEL)
    await fake_slack.wait_for(
        lambda: all(any(asked(t) for t in texts(fake_slack, r.ts)) for r in roots), timeout=30
    )
    async with await Store.open(pg_db_url) as store:

        async def owners_by_sync() -> dict[str, set]:
            found: dict[str, set] = {}
            for w in await store.unfinished_watches():
                found.setdefault(w.sync_id, set()).add(w.lease_owner)
            return found

        # claims settle: the watches of syncs 0 and 1 (asked through both) end up with one replica
        deadline = time.monotonic() + 10
        while any(len(o) != 1 or None in o for o in (await owners_by_sync()).values()):
            assert time.monotonic() < deadline, await owners_by_sync()
            await asyncio.sleep(0.05)
        mark = len(fake_polytomic.requests)
        owners = {w.lease_owner for w in await store.unfinished_watches()} - {None}
        assert len(owners) == 2, owners  # both replicas have work
        owner_a, owner_b = _owner_of(a, owners), _owner_of(b, owners)
        await a.kill()
        killed = time.monotonic()
        handover = None
        while time.monotonic() - killed < lease_s + 10:
            open_ = await store.unfinished_watches()
            if all(w.lease_owner == owner_b for w in open_):
                handover = time.monotonic() - killed
                break
            await asyncio.sleep(0.05)
        assert handover is not None and handover < lease_s + 2.5, handover
        print(f"\nhandover of the killed replica's watches: {handover:.2f}s (lease {lease_s}s)")

        await fake_slack.wait_for(
            lambda: all(any("canceled" in t for t in texts(fake_slack, r.ts)) for r in roots), timeout=30
        )
        await asyncio.sleep(1.0)
        assert await store.unfinished_watches() == []
        # the audit trail says who took the killed replica's watches over
        claims = [r for r in await store.audit_records(limit=1000) if r["action"] == "watch_claimed"]
        assert any(owner_b in (r["detail"] or "") for r in claims)

    for r in roots:
        assert_story_told_once(fake_slack, r.ts)
    cancels = fake_polytomic.cancel_requests()
    assert len(cancels) == 50 and len({k for *_, k in cancels}) == 50
    assert len({(s, sc) for s, sc, _ in cancels}) == 50

    # one replica polls a sync at a time: per sync, the status reads after the claims settled come
    # from one replica, then (at most one switch) from the survivor
    hosts = {"127.0.0.1": "a", "localhost": "b"}
    for sync_id in syncs:
        seq = [
            hosts[r.headers["host"].split(":")[0]]
            for r in fake_polytomic.requests[mark:]
            if r.method == "GET" and r.path == f"/api/bulk/syncs/{sync_id}/status"
        ]
        runs = [k for i, k in enumerate(seq) if i == 0 or seq[i - 1] != k]
        assert runs in ([], ["a"], ["b"], ["a", "b"]), (sync_id, "".join(seq))  # []: ended before
    assert owner_a != owner_b


# -- readiness ------------------------------------------------------------------------------------


async def readyz(world) -> tuple[int, dict]:
    async with httpx.AsyncClient(timeout=10) as client:
        response = await client.get(world.bot.url + "/readyz")
    return response.status_code, response.json()


async def wait_readyz(world, status: int, timeout: float = 10) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        code, body = await readyz(world)
        if code == status or time.monotonic() > deadline:
            assert code == status, body
            return body
        await asyncio.sleep(0.1)


async def test_readyz_follows_the_sqlite_file(make_world):
    world = await make_world()
    assert (await readyz(world))[0] == 200
    db = world.tmp_path / "bot.db"
    db.rename(world.tmp_path / "elsewhere.db")
    code, body = await readyz(world)
    assert code == 503 and body["database"] is False and body["started"] is True
    (world.tmp_path / "elsewhere.db").rename(db)
    assert (await readyz(world))[0] == 200
    world.bot.runtime.begin_shutdown()  # what SIGTERM does first: the load balancer stops sending
    code, body = await readyz(world)
    assert code == 503 and body["started"] is False and body["database"] is True


class TcpProxy:
    """127.0.0.1:<port> -> target; `stop()` refuses new connections and cuts the open ones."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> TcpProxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        await self._server.wait_closed()

    async def _serve(self, reader, writer) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self._writers |= {writer, up_writer}

        async def pipe(src, dst) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (OSError, asyncio.CancelledError):
                pass
            finally:
                dst.transport.abort()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self._writers -= {writer, up_writer}


@needs_pg
async def test_readyz_follows_postgresql(make_world, pg_db_url):
    parts = httpx.URL(pg_db_url)
    proxy = await TcpProxy(parts.host, parts.port or 5432).start()
    try:
        via_proxy = pg_db_url.replace(f":{parts.port or 5432}/", f":{proxy.port}/")
        assert via_proxy != pg_db_url
        world = await make_world(bot_database_url=via_proxy)
        assert (await readyz(world))[0] == 200
        await proxy.stop()  # the database goes away (refused, open connections cut)
        body = await wait_readyz(world, 503)
        assert body["database"] is False
        await proxy.start()  # back on the same port
        await wait_readyz(world, 200)
    finally:
        await proxy.stop()


async def test_readyz_in_socket_mode_needs_the_connection(make_world, fake_slack):
    world = await make_world(bot_mode="socket", slack_app_token=fake_slack.app_token)
    await fake_slack.wait_for(fake_slack.socket_connected)
    assert (await readyz(world))[0] == 200
    fake_slack.fail("apps.connections.open", "internal_error", times=1)  # the reconnect fails once
    await fake_slack.disconnect_socket(notify=False)
    body = await wait_readyz(world, 503)
    assert body["slack_socket"] is False and body["database"] is True


# -- one replica, in process: the request and the watcher do not trip over each other --------------


async def in_process_world(fake_polytomic, fake_slack, tmp_path, **settings) -> tuple[World, Bot]:
    bot = await Bot(bot_settings(fake_polytomic, fake_slack, tmp_path, **settings), lease_s=1.5).start()
    return World(fake_polytomic, fake_slack, bot, tmp_path), bot


async def test_a_slow_cancel_is_sent_once_while_the_watcher_claims_around_it(
    fake_polytomic, fake_slack, tmp_path
):
    """The cancel request takes longer than several claim rounds (and than the lease): the watcher
    renews the lease of the watch being started and leaves it to the request."""
    sync_id = running_sync(fake_polytomic)
    fake_polytomic.add_fault("POST", "/api/bulk/syncs/*/cancel", delay=2.2)  # > the 1.5 s lease
    world, bot = await in_process_world(fake_polytomic, fake_slack, tmp_path)
    try:
        await world.user.slash(f"cancel {sync_id} accounts --yes")
        root = await wait_root(fake_slack)
        await wait_thread(fake_slack, root.ts, lambda t: any("canceled" in x for x in t))
        await settle(fake_slack, root.ts)
        assert len(fake_polytomic.requests_to("POST", "/api/bulk/syncs/*/cancel")) == 1
        assert_story_told_once(fake_slack, root.ts)
        assert bot.runtime.watcher.takeovers == 0
    finally:
        await bot.stop()


async def test_who_asks_before_the_thread_exists_is_named_in_it_once(fake_polytomic, fake_slack, tmp_path):
    """A second engineer asks while the first request is still posting the headline: the reply
    "@U0002 also asked" is posted by the first request once the thread exists."""
    sync_id = running_sync(fake_polytomic)
    fake_slack.fail("chat.postMessage", "ratelimited", times=1, retry_after=1)  # the headline waits
    world, bot = await in_process_world(fake_polytomic, fake_slack, tmp_path, bot_allowed_users=("*",))
    try:
        value = json.dumps({"sync_id": sync_id, "schema_id": "accounts"})
        await world.user.click("polytomic.cancel_schema", value, ephemeral=True)
        await asyncio.sleep(0.3)
        assert fake_slack.messages(CHANNEL) == []  # no thread yet
        await world.as_user("U0002").click("polytomic.cancel_schema", value, ephemeral=True)
        root = await wait_root(fake_slack)
        await wait_thread(fake_slack, root.ts, lambda t: any("canceled" in x for x in t))
        await settle(fake_slack, root.ts)
        thread = texts(fake_slack, root.ts)
        assert sum("also asked" in t and "U0002" in t for t in thread) == 1, thread
        assert len(fake_polytomic.cancel_requests()) == 1
    finally:
        await bot.stop()


async def test_a_cancel_polytomic_did_not_confirm_is_sent_again_with_its_key_not_called_failed(
    fake_polytomic, fake_slack, tmp_path
):
    """503s beyond the client's own retries: the outcome is unknown, so the watch keeps its key and
    sends it again on the next poll (the thread says Polytomic is struggling), instead of "failed"."""
    sync_id = running_sync(fake_polytomic)
    fake_polytomic.add_fault("POST", "/api/bulk/syncs/*/cancel", status=503, times=4)  # one call's attempts
    world, bot = await in_process_world(fake_polytomic, fake_slack, tmp_path)
    try:
        await world.user.slash(f"cancel {sync_id} accounts --yes")
        root = await wait_root(fake_slack)
        await wait_thread(fake_slack, root.ts, lambda t: any("canceled" in x for x in t))
        await settle(fake_slack, root.ts)
        thread = texts(fake_slack, root.ts)
        assert "not answering" in thread[0] and "cancel failed" not in "\n".join(thread), thread
        assert_story_told_once(fake_slack, root.ts)
        posts = fake_polytomic.requests_to("POST", "/api/bulk/syncs/*/cancel")
        assert len(posts) == 5 and len({r.headers["idempotency-key"] for r in posts}) == 1
        assert len(fake_polytomic.cancel_requests()) == 1
    finally:
        await bot.stop()
