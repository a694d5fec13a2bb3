"""Slack failing while the bot works: 429 on chat.postMessage and chat.update, 5xx,
not_in_channel / channel_not_found / is_archived / invalid_auth / token_revoked at the start and
during a watch, and Socket Mode connections that drop. The bot retries what can be retried, tells
the user what cannot, and loses no state change: the thread shows the states in order once the
fault clears.

tests/test_e2e_cancel.py covers two 429s on chat.update; tests/test_e2e_more.py covers
not_in_channel at the start and one Socket Mode session."""

from __future__ import annotations

import asyncio
import json
import re
import time

import httpx
import pytest
from conftest import Bot, World, bot_settings

from bot.fakes.slack import SlackUser

CHANNEL = "C0001"
TERMINAL_WORDS = "canceled|completed|failed|errors|interrupted|not found|ended|timed out|cancel failed"
TERMINAL = re.compile(rf"\*({TERMINAL_WORDS})\*")
STATE = re.compile(r"is now \*([^*]+)\*")


def _story(replies) -> list[str]:
    """The thread as a list of steps: asked, state:<s>, trouble, recovered, also, final:<s>."""
    out = []
    for r in replies:
        if "asked to cancel" in r.text and "also" not in r.text:
            out.append("asked")
        elif m := STATE.search(r.text):
            out.append("state:" + m.group(1))
        elif m := TERMINAL.search(r.text):
            out.append("final:" + m.group(1))
        elif "not answering" in r.text:
            out.append("trouble")
        elif "answering again" in r.text:
            out.append("recovered")
        elif "also asked" in r.text:
            out.append("also")
        else:
            out.append("?" + r.text[:40])
    return out


async def _final(world, root_ts: str, timeout: float = 25.0, channel: str = CHANNEL) -> list[str]:
    def done():
        story = _story(world.slack.thread(channel, root_ts))
        return story if story and story[-1].startswith("final:") else None

    await world.slack.wait_for(done, timeout=timeout)
    await asyncio.sleep(0.5)  # a second terminal reply would show up by now
    story = _story(world.slack.thread(channel, root_ts))
    assert sum(s.startswith("final:") for s in story) == 1, story
    return story


def _serve_status(world, sync_id: str):
    """Freeze GET .../status at what it answers now (later: `fault.body = status_json(...)`)."""
    body = world.polytomic.status_json(sync_id)
    return world.polytomic.add_fault("GET", f"/api/bulk/syncs/{sync_id}/status", status=200, body=body)


async def _whole_execution_watches(world, n: int = 1) -> list[tuple[str, object, object]]:
    """`n` whole-execution cancels (one sync each) whose status the test releases step by step:
    [(sync_id, root message, status fault)]. The watcher sees `running` until released."""
    world.polytomic.sync_cancel_delay_s = 2.0
    out = []
    for i in range(n):
        sync_id = world.polytomic.add_sync(f"Warehouse {i}", ["accounts", "contacts"])
        world.polytomic.start_run(sync_id, durations=600)
        frozen = _serve_status(world, sync_id)
        await world.user.slash(f"cancel {sync_id} --all --yes")
        root = await world.slack.wait_for(lambda i=i: world.slack.messages(CHANNEL)[i])
        out.append((sync_id, root, frozen))
    for _, root, _ in out:
        await world.slack.wait_for(
            lambda root=root: _story(world.slack.thread(CHANNEL, root.ts)) == ["asked"]
        )
    await asyncio.sleep(0.3)  # a couple of polls that see nothing new
    return out


async def _whole_execution_watch(world):
    return (await _whole_execution_watches(world, 1))[0]


def _release(world, watches) -> None:
    """Let every watch see its real status ("canceling" for ~3 s, then "canceled")."""
    for sync_id, _, frozen in watches:
        frozen.body = world.polytomic.status_json(sync_id)


def _failed_calls(world, method: str) -> list:
    return [c for c in world.slack.calls_to(method) if not c.ok]


# -- during a watch: the state change reply hits the fault -----------------------------------------

PERMANENT = ["not_in_channel", "channel_not_found", "is_archived", "invalid_auth", "token_revoked"]


async def test_retryable_failures_of_state_replies_lose_nothing(world):
    """429 (Retry-After), 500 and 503 on the replies of three watches: retried, nothing lost."""
    watches = await _whole_execution_watches(world, 3)
    world.slack.fail("chat.postMessage", "ratelimited", times=2, retry_after=0)
    world.slack.fail("chat.postMessage", "fatal_error", times=2, status=500)
    world.slack.fail("chat.postMessage", "service_unavailable", times=2, status=503)
    _release(world, watches)
    await world.slack.wait_for(lambda: len(_failed_calls(world, "chat.postMessage")) == 6, timeout=15)
    world.polytomic.clear_faults()
    for _, root, _ in watches:
        story = await _final(world, root.ts)
        assert story == ["asked", "state:canceling", "final:canceled"], story
    assert len(world.polytomic.cancel_requests()) == 3


async def test_state_replies_refused_once_are_posted_when_slack_accepts_again(world):
    """not_in_channel, channel_not_found, is_archived, invalid_auth, token_revoked: each refuses one
    watch's "canceling" reply once (the bot re-invited, the channel unarchived, the token restored).
    Once Slack accepts again, each thread shows its states in order."""
    watches = await _whole_execution_watches(world, len(PERMANENT))
    for error in PERMANENT:
        world.slack.fail("chat.postMessage", error, times=1)
    _release(world, watches)
    await world.slack.wait_for(lambda: len(_failed_calls(world, "chat.postMessage")) == len(PERMANENT))
    world.polytomic.clear_faults()  # still "canceling" for ~2 s, then "canceled"
    stories = [await _final(world, root.ts) for _, root, _ in watches]
    assert stories == [["asked", "state:canceling", "final:canceled"]] * len(PERMANENT), stories


async def test_a_429_storm_on_chat_update_mid_watch_heals_the_headline(world):
    sync_id, root, frozen = await _whole_execution_watch(world)
    # Slack's Retry-After is whole seconds (0 keeps the test fast); one call is tried 6 times
    # (5 retries), so 7 failures make the "canceling" headline update fail and the next succeed.
    world.slack.fail("chat.update", "ratelimited", times=7, retry_after=0)
    world.polytomic.sync_cancel_delay_s = 12.0
    frozen.body = world.polytomic.status_json(sync_id)
    world.polytomic.clear_faults()
    story = await _final(world, root.ts, timeout=30)
    assert story == ["asked", "state:canceling", "final:canceled"], story
    await world.slack.wait_for(lambda: "canceled" in world.slack.message(CHANNEL, root.ts).text, timeout=15)
    assert len(_failed_calls(world, "chat.update")) == 7


async def test_a_429_storm_on_the_final_headline_update_is_healed(world):
    sync_id, root, frozen = await _whole_execution_watch(world)
    frozen.body = world.polytomic.status_json(sync_id)  # "canceling"
    await world.slack.wait_for(lambda: "canceling" in world.slack.message(CHANNEL, root.ts).text, timeout=10)
    world.slack.fail("chat.update", "ratelimited", times=6, retry_after=0)
    world.polytomic.clear_faults()
    story = await _final(world, root.ts, timeout=30)
    assert story[-1] == "final:canceled"
    await world.slack.wait_for(lambda: len(_failed_calls(world, "chat.update")) == 6, timeout=15)
    await world.slack.wait_for(lambda: "canceled" in world.slack.message(CHANNEL, root.ts).text, timeout=5)


async def test_a_429_storm_on_the_headline_is_retried_in_the_background(world):
    """Slack refuses the headline longer than the client retries: the user is told it will be
    retried, and it is (nothing is cancelled before the thread exists)."""
    sync_id = world.polytomic.add_sync("Salesforce to Snowflake", ["accounts"])
    world.polytomic.start_run(sync_id, durations=600)
    world.slack.fail("chat.postMessage", "ratelimited", times=6, retry_after=0)  # 6 tries per call
    await world.user.slash("cancel salesforce accounts --yes")
    answer = await world.slack.wait_for(
        lambda: world.slack.responses(world.user.last_response_url), timeout=20
    )
    assert "ratelimited" in answer[-1]["text"] and "keep trying" in answer[-1]["text"], answer
    assert world.polytomic.cancel_requests() == []  # no thread yet, so no cancel yet
    root = await world.slack.wait_for(
        lambda: world.slack.messages(CHANNEL) and world.slack.messages(CHANNEL)[-1], timeout=20
    )
    story = await _final(world, root.ts)
    assert story[0] == "asked" and story[-1] == "final:canceled", story
    assert len(world.polytomic.cancel_requests()) == 1
    assert len(world.slack.messages(CHANNEL)) == 1


# -- at the start: what cannot be retried is told, nothing is cancelled -----------------------------


UNWRITABLE = [  # (channel, how the bot loses it, words the answer must contain)
    ("C0A01", lambda s: s.set_channel("C0A01", archived=True), ("is_archived",)),
    ("C0A02", lambda s: s.set_channel("C0A02", exists=False), ("channel_not_found",)),
    ("C0A03", lambda s: s.set_channel("C0A03", private=True, member=False), ("invite",)),
    ("C0A04", lambda s: s.fail("chat.postMessage", "invalid_auth"), ("invalid_auth",)),
]


async def test_channels_the_bot_cannot_write_are_told_and_nothing_is_cancelled(world):
    sync_id = world.polytomic.add_sync("Salesforce to Snowflake", ["accounts"])
    world.polytomic.start_run(sync_id, durations=600)
    for channel, setup, words in UNWRITABLE:
        setup(world.slack)
        user = world.as_user("U0001", channel_id=channel)
        await user.slash("cancel salesforce accounts --yes")
        answer = await world.slack.wait_for(lambda user=user: world.slack.responses(user.last_response_url))
        dump = json.dumps(answer)
        assert any(w in dump for w in words), (channel, dump)
    await asyncio.sleep(0.3)
    assert world.polytomic.cancel_requests() == []
    assert await world.bot.runtime.store.unfinished_watches() == []  # every watch was closed
    # and asking again, where the bot can write, works at once
    await world.user.slash("cancel salesforce accounts --yes")
    await world.slack.wait_for(lambda: world.polytomic.cancel_requests())


async def test_a_token_revoked_before_the_first_request_is_told_by_bolt(world):
    world.polytomic.start_run(
        world.polytomic.add_sync("Salesforce to Snowflake", ["accounts"]), durations=600
    )
    world.slack.revoke_token()
    response = await world.user.slash("cancel salesforce accounts --yes")
    assert response.status_code == 200
    told = await world.slack.wait_for(lambda: world.slack.ephemerals(CHANNEL, "U0001"))
    assert "reinstall" in told[-1].text
    await asyncio.sleep(0.3)
    assert world.polytomic.requests == []


async def test_a_token_revoked_while_running_is_named_as_such(world):
    world.polytomic.start_run(
        world.polytomic.add_sync("Salesforce to Snowflake", ["accounts"]), durations=600
    )
    await world.user.slash("help")  # Bolt has checked the token once and keeps that answer
    world.slack.revoke_token()
    await world.user.slash("cancel salesforce accounts --yes")
    answer = await world.slack.wait_for(lambda: world.slack.responses(world.user.last_response_url))
    text = answer[-1]["text"]
    assert world.polytomic.cancel_requests() == []
    assert "token" in text.lower() and "channel I am in" not in text, text


# -- during a watch: Slack refuses for good ---------------------------------------------------------


async def _archived_mid_watch(world):
    sync_id, root, _frozen = await _whole_execution_watch(world)
    world.slack.set_channel(CHANNEL, archived=True)
    world.polytomic.clear_faults()  # canceling, then canceled: none of it can be posted
    for _ in range(300):
        watch = await world.bot.runtime.store.get_watch((await _watch_ids(world))[0])
        if watch is not None and watch.final_posted:
            return sync_id, root, watch
        await asyncio.sleep(0.05)
    raise AssertionError("the watch did not end")


async def _watch_ids(world) -> list[str]:
    records = await world.bot.runtime.store.audit_records()
    return [r["watch_id"] for r in records if r["watch_id"]]


async def test_a_channel_archived_mid_watch_ends_the_watch_and_stops_polling(world):
    sync_id, _root, watch = await _archived_mid_watch(world)
    assert watch.outcome == "canceled"
    status_path = f"/api/bulk/syncs/{sync_id}/status"
    before = len(world.polytomic.requests_to("GET", status_path))
    await asyncio.sleep(1.0)
    assert len(world.polytomic.requests_to("GET", status_path)) == before
    assert world.bot.runtime.watcher.held == {}


async def test_a_watch_whose_end_cannot_be_posted_is_still_audited(world):
    _, _, watch = await _archived_mid_watch(world)
    ended = []
    for _ in range(40):
        records = await world.bot.runtime.store.audit_records()
        ended = [r for r in records if r["action"] == "watch_ended" and r["watch_id"] == watch.id]
        if ended:
            break
        await asyncio.sleep(0.05)
    assert [r["outcome"] for r in ended] == ["canceled"]


async def test_the_requester_is_told_the_end_when_the_thread_cannot_be_written(world):
    await _archived_mid_watch(world)
    dms = [c for c in world.slack.calls_to("chat.postMessage") if c.params.get("channel") == "U0001" and c.ok]
    assert dms and "canceled" in json.dumps(dms[-1].params)


# -- Socket Mode -----------------------------------------------------------------------------------


@pytest.fixture
async def socket_world(fake_polytomic, fake_slack, tmp_path):
    settings = bot_settings(
        fake_polytomic, fake_slack, tmp_path, bot_mode="socket", slack_app_token="xapp-1-test-app-token"
    )
    bot = await Bot(settings).start()
    try:
        await fake_slack.wait_for(fake_slack.socket_connected)
        yield World(fake_polytomic, fake_slack, bot, tmp_path)
    finally:
        await bot.stop()


async def _ready(world) -> int:
    async with httpx.AsyncClient() as http:
        return (await http.get(world.bot.url + "/readyz")).status_code


@pytest.mark.parametrize("notify", [True, False], ids=["disconnect-message", "dropped"])
async def test_socket_mode_reconnects_and_handles_the_next_command(socket_world, notify):
    world = socket_world
    user = SlackUser(None, None, world.slack)
    sync_id = world.polytomic.add_sync("Salesforce to Snowflake", ["accounts", "contacts"])
    world.polytomic.start_run(sync_id, durations=600)
    world.polytomic.cancel_delay_s = 3.0
    await user.slash_via_socket("cancel salesforce accounts --yes")
    root = await world.slack.wait_for(
        lambda: world.slack.messages(CHANNEL) and world.slack.messages(CHANNEL)[-1]
    )
    connections = world.slack.socket_connections
    await world.slack.disconnect_socket(notify=notify)
    # the watch does not depend on the connection: it goes on and ends once
    story = await _final(world, root.ts)
    assert story[-1] == "final:canceled"
    await world.slack.wait_for(
        lambda: world.slack.socket_connected() and world.slack.socket_connections > connections, timeout=30
    )
    started = time.monotonic()
    ack = await user.slash_via_socket("help", timeout=10)
    assert time.monotonic() - started < 3.0
    assert "/polytomic" in json.dumps(ack)
    await user.slash_via_socket("cancel salesforce contacts --yes", timeout=10)
    await world.slack.wait_for(lambda: len(world.polytomic.cancel_requests()) == 2, timeout=10)
    await world.slack.wait_for(lambda: True)
    for _ in range(100):
        if await _ready(world) == 200:
            break
        await asyncio.sleep(0.1)
    assert await _ready(world) == 200


async def test_socket_mode_survives_repeated_disconnects(socket_world):
    world = socket_world
    user = SlackUser(None, None, world.slack)
    for _ in range(3):
        before = world.slack.socket_connections
        await world.slack.disconnect_socket(notify=True)
        await world.slack.wait_for(
            lambda before=before: world.slack.socket_connected() and world.slack.socket_connections > before,
            timeout=30,
        )
        ack = await user.slash_via_socket("help", timeout=10)
        assert "/polytomic" in json.dumps(ack)
