"""Long-run alerts end to end: the real bot (HTTP mode, alerts wired in) between the fake Slack and
the fake Polytomic. One card per execution that runs longer than BOT_LONG_RUN_S, also with two
bot processes and across a restart; kept current; closed when the run ends; its buttons cancel
and thread like every other card, and the monitor then lets the card go."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta

import pytest
from alert_world import ALERTS, AlertWorlds
from conftest import pg_url
from test_cards import validate

from bot import cards
from bot.monitor import CardRecord, Run, monitor_interval, running_executions
from bot.polytomic.models import SchemaExecution, SyncExecutionStatus
from bot.settings import load_settings
from bot.store import isolated_pg_url

NAME = "Salesforce to Snowflake"


@pytest.fixture
async def worlds(fake_polytomic, fake_slack, tmp_path):
    async with AlertWorlds(fake_polytomic, fake_slack, tmp_path) as w:
        yield w


def _cards(slack, channel=ALERTS):
    return slack.messages(channel)


def _one_card(slack):
    found = _cards(slack)
    return found[0] if len(found) == 1 else None


def _status_listings(polytomic):
    return polytomic.requests_to("GET", "/api/bulk/syncs/status")


# -- pure parts ------------------------------------------------------------------------------------


def test_running_executions_groups_entries_by_execution():
    t0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
    listing = [
        SyncExecutionStatus(
            sync_id="s1",
            status="running",
            schemas=[
                SchemaExecution(schema="a", execution_id="e2", status="running", started_at=t0),
                SchemaExecution(
                    schema="b", execution_id="e2", status="completed", started_at=t0 - timedelta(minutes=5)
                ),
                SchemaExecution(schema="c", execution_id="e1", status="completed", started_at=t0),
            ],
        ),
        SyncExecutionStatus(
            sync_id="s2",
            status="completed",
            schemas=[SchemaExecution(schema="x", execution_id="e3", status="completed")],
        ),
        SyncExecutionStatus(
            sync_id="s3",
            status="running",
            schemas=[SchemaExecution(schema="y", execution_id="e4", status="scheduled")],
        ),
    ]
    runs = running_executions(listing)
    assert set(runs) == {"e2", "e4"}
    assert runs["e2"].sync_id == "s1" and runs["e2"].started_at == t0 - timedelta(minutes=5)
    assert [e.schema_id for e in runs["e2"].entries] == ["a", "b"]
    assert runs["e4"].started_at is None  # not started: no clock yet
    assert runs["e2"].signature() != Run("s1", "e2", t0, runs["e2"].entries[:1]).signature()


def test_card_record_round_trip_and_garbage():
    record = CardRecord(execution_id="e1", sync_id="s1", channel="C1", ts="1.2", state="open", sig="[]")
    assert CardRecord.loads("e1", record.dumps()) == record
    assert CardRecord.loads("e1", None) is None
    assert CardRecord.loads("e1", "not json") is None
    assert CardRecord.loads("e1", '{"sync_id": 3}') is None


def test_interval_is_a_quarter_of_the_threshold_within_bounds():
    base = dict(slack_bot_token="xoxb-1", slack_signing_secret="s", polytomic_api_key="k", bot_mode="http")
    assert monitor_interval(load_settings(**base)) == 30.0  # defaults: 3600 s threshold, 30 s ceiling
    assert monitor_interval(load_settings(**base, bot_long_run_s=20)) == 5.0
    assert monitor_interval(load_settings(**base, bot_long_run_s=0.5)) == 1.0  # at least a second


def test_alert_cards_are_valid_and_escaped():
    now = datetime(2026, 1, 1, 13, 5, tzinfo=UTC)
    started = now - timedelta(hours=1, minutes=5)
    entries = [
        SchemaExecution(
            schema="<!channel> accounts", execution_id="e1", status="running", started_at=started
        ),
        SchemaExecution(schema="contacts", execution_id="e1", status="completed", started_at=started),
    ]
    sync_id = "0b6c1c3e-5a55-4d6f-9a57-1f3c0f3f9a11"
    card = validate(
        cards.long_run_alert(
            sync_id=sync_id,
            sync_name="<@U1> evil & co",
            execution_id="e1",
            started_at=started,
            entries=entries,
            threshold_s=3600,
            now=now,
        )
    )
    dump = json.dumps(card)
    assert "1h 5m" in dump and "polytomic.cancel_sync" in dump and "polytomic.refresh" in dump
    assert [b["action_id"] for b in _buttons(card)][:1] == ["polytomic.cancel_schema:0"]
    ended = validate(
        cards.long_run_ended(
            sync_id=sync_id,
            sync_name="x",
            execution_id="e1",
            started_at=started,
            outcome="canceled",
            ended_at=now,
            entries=entries,
            now=now,
        )
    )
    assert "canceled" in ended["text"] and _buttons(ended) == []
    failed = validate(
        cards.event_alert(
            "bulk_sync.failed",
            sync_id=sync_id,
            sync_name="n",
            execution_id="e1",
            error="<!here> boom & `x`",
            at=now,
        )
    )
    assert [b["action_id"] for b in _buttons(failed)] == ["polytomic.refresh"]
    assert "&lt;!here&gt; boom &amp;" in json.dumps(failed)


def _buttons(msg):
    out = []
    for block in msg["blocks"]:
        out += [e for e in block.get("elements", []) if e.get("type") == "button"]
        if (block.get("accessory") or {}).get("type") == "button":
            out.append(block["accessory"])
    return out


# -- end to end ------------------------------------------------------------------------------------


async def test_long_run_gets_one_card_kept_current_then_closed(worlds):
    world = await worlds.make()
    polytomic, slack = world.polytomic, world.slack
    sync_id = polytomic.add_sync(NAME, ["accounts", "contacts"])
    exec_id = polytomic.start_run(sync_id, durations={"accounts": 3.0, "contacts": 1.8})
    card = await slack.wait_for(lambda: _one_card(slack), timeout=10)
    assert NAME in card.text
    actions = [b["action_id"].split(":")[0] for b in card.buttons()]
    assert actions.count("polytomic.cancel_schema") == 2
    assert "polytomic.cancel_sync" in actions and "polytomic.refresh" in actions
    values = [json.loads(b["value"]) for b in card.buttons()]
    assert {"sync_id": sync_id, "schema_id": "accounts"} in values
    assert exec_id in json.dumps(card.blocks)
    # contacts completes: the card is updated in place (one schema button left)
    await slack.wait_for(
        lambda: (
            [
                b
                for b in slack.message(ALERTS, card.ts).buttons()
                if b["action_id"].startswith("polytomic.cancel_schema")
            ]
            == [
                b
                for b in slack.message(ALERTS, card.ts).buttons()
                if json.loads(b["value"]).get("schema_id") == "accounts"
            ]
        ),
        timeout=10,
    )
    # the run ends by itself: the card says so, without buttons
    await slack.wait_for(lambda: "completed" in slack.message(ALERTS, card.ts).text, timeout=10)
    closed = slack.message(ALERTS, card.ts)
    assert closed.buttons() == []
    await asyncio.sleep(0.6)  # a few more listings: nothing new
    assert len(_cards(slack)) == 1
    assert slack.thread(ALERTS, card.ts) == []
    # one list-status per interval for every sync, never one status call per sync
    listings = _status_listings(polytomic)
    assert listings and all(("all", "true") in r.query for r in listings)
    assert polytomic.requests_to("GET", "/api/bulk/syncs/*/status") == []
    print("\n" + slack.transcript(ALERTS))


async def test_short_runs_get_no_card(worlds):
    world = await worlds.make(bot_long_run_s=2.0)
    sync_id = world.polytomic.add_sync(NAME, ["accounts"])
    world.polytomic.start_run(sync_id, durations=0.5)
    await asyncio.sleep(1.5)
    assert _cards(world.slack) == []


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
async def test_two_bot_processes_post_one_card(worlds, backend):
    if backend == "postgresql":
        if not pg_url():
            pytest.skip("BOT_TEST_DATABASE_URL not set")
        async with isolated_pg_url(pg_url()) as url:
            await _two_bots(worlds, bot_database_url=url)
    else:
        await _two_bots(worlds)


async def _two_bots(worlds, **overrides):
    first = await worlds.make(owner="replica-a", **overrides)
    second = await worlds.make(owner="replica-b", **overrides)
    slack, polytomic = first.slack, first.polytomic
    syncs = [polytomic.add_sync(f"Sync {i}", ["accounts", "contacts"]) for i in range(3)]
    for sync_id in syncs:
        polytomic.start_run(sync_id, durations={"accounts": 3.0, "contacts": 600})
    await slack.wait_for(lambda: len(_cards(slack)) == 3, timeout=10)
    await asyncio.sleep(1.0)
    posted = [r.runtime.monitor.posted for r in (first.bot, second.bot)]
    assert sum(posted) == 3
    assert len(_cards(slack)) == 3
    assert len(slack.calls_to("chat.postMessage")) == 3
    # both replicas keep them current (accounts completes), without fighting: the last version
    # of each card shows one cancel button, and no card was rewritten twice for the same change
    await slack.wait_for(
        lambda: all(
            sum(b["action_id"].startswith("polytomic.cancel_schema") for b in m.buttons()) == 1
            for m in _cards(slack)
        ),
        timeout=10,
    )
    await asyncio.sleep(0.6)
    for card in _cards(slack):
        texts = [e["blocks"] for e in card.edits] + [card.blocks]
        schema_buttons = [
            sum(
                1
                for b in blocks
                for el in [*(b.get("elements") or []), b.get("accessory") or {}]
                if str(el.get("action_id", "")).startswith("polytomic.cancel_schema")
            )
            for blocks in texts
        ]
        assert schema_buttons.count(1) <= 2  # at most one duplicate write in a race, never a fight


async def test_restart_adopts_the_open_card_and_closes_it(worlds):
    first = await worlds.make(owner="before")
    slack, polytomic = first.slack, first.polytomic
    sync_id = polytomic.add_sync(NAME, ["accounts"])
    polytomic.start_run(sync_id, durations=2.0)
    card = await slack.wait_for(lambda: _one_card(slack), timeout=10)
    await worlds.stop(first)
    # the run ends while no bot is running
    await slack.wait_for(lambda: polytomic.schema_status(sync_id, "accounts") == "completed", timeout=10)
    assert "completed" not in slack.message(ALERTS, card.ts).text
    await worlds.make(owner="after")
    await slack.wait_for(lambda: "completed" in slack.message(ALERTS, card.ts).text, timeout=10)
    assert slack.message(ALERTS, card.ts).buttons() == []
    assert len(_cards(slack)) == 1


async def test_restart_while_running_keeps_the_same_card(worlds):
    first = await worlds.make(owner="before")
    slack, polytomic = first.slack, first.polytomic
    sync_id = polytomic.add_sync(NAME, ["accounts", "contacts"])
    polytomic.start_run(sync_id, durations={"accounts": 2.5, "contacts": 600})
    card = await slack.wait_for(lambda: _one_card(slack), timeout=10)
    await worlds.stop(first)
    await worlds.make(owner="after")
    await slack.wait_for(
        lambda: (
            sum(
                b["action_id"].startswith("polytomic.cancel_schema")
                for b in slack.message(ALERTS, card.ts).buttons()
            )
            == 1
        ),
        timeout=10,
    )
    assert len(_cards(slack)) == 1


async def test_cancel_button_on_the_card_threads_and_the_monitor_lets_go(worlds):
    world = await worlds.make(bot_allowed_users=("U0001",))
    slack, polytomic = world.slack, world.polytomic
    sync_id = polytomic.add_sync(NAME, ["accounts", "contacts"])
    polytomic.start_run(sync_id, durations={"accounts": 600, "contacts": 2.5})
    card = await slack.wait_for(lambda: _one_card(slack), timeout=10)
    response = await world.user.click_button(
        card, "polytomic.cancel_schema", value=lambda v: json.loads(v)["schema_id"] == "accounts"
    )
    assert response.status_code == 200
    replies = await slack.wait_for(
        lambda: (r := slack.thread(ALERTS, card.ts)) and "canceled" in r[-1].text and r, timeout=15
    )
    assert "asked to cancel" in replies[0].text
    assert [(s, sc) for s, sc, _ in polytomic.cancel_requests()] == [(sync_id, "accounts")]
    # contacts completes and the execution ends: the card stays the cancellation's headline
    await slack.wait_for(lambda: polytomic.schema_status(sync_id, "contacts") == "completed", timeout=10)
    await asyncio.sleep(0.8)  # a few listings after the end
    head = slack.message(ALERTS, card.ts)
    assert "Long run" not in head.text and "U0001" in head.text + json.dumps(head.blocks)
    assert "polytomic.cancel" not in json.dumps(head.blocks)
    assert len(_cards(slack)) == 1
    print("\n" + slack.transcript(ALERTS))


async def test_cancel_execution_button_on_the_card(worlds):
    world = await worlds.make()
    slack, polytomic = world.slack, world.polytomic
    sync_id = polytomic.add_sync(NAME, ["accounts", "contacts"])
    exec_id = polytomic.start_run(sync_id, durations=600)
    card = await slack.wait_for(lambda: _one_card(slack), timeout=10)
    await world.user.click_button(card, "polytomic.cancel_sync")
    await slack.wait_for(
        lambda: (r := slack.thread(ALERTS, card.ts)) and "canceled" in r[-1].text, timeout=15
    )
    assert polytomic.requests_to("POST", f"/api/bulk/syncs/{sync_id}/executions/{exec_id}/cancel")
    await asyncio.sleep(0.6)
    assert "Long run" not in slack.message(ALERTS, card.ts).text


async def test_listing_outage_backs_off_then_recovers(worlds):
    world = await worlds.make()
    slack, polytomic = world.slack, world.polytomic
    await slack.wait_for(lambda: world.bot.runtime.monitor.listings >= 1, timeout=5)
    polytomic.add_fault("GET", "/api/bulk/syncs/status", status=503, times=None)
    sync_id = polytomic.add_sync(NAME, ["accounts"])
    polytomic.start_run(sync_id, durations=600)
    await asyncio.sleep(2.0)
    # at 0.25 s intervals, 2 s of outage would be 8 listings; the client's own retries (4 attempts)
    # and the monitor's back-off keep it to a handful
    during = len(_status_listings(polytomic))
    assert during <= 4 * 4, during
    assert _cards(slack) == []
    polytomic.clear_faults()
    card = await slack.wait_for(lambda: _one_card(slack), timeout=15)
    assert NAME in card.text


async def test_no_alert_channel_no_monitor(worlds):
    world = await worlds.make(bot_alert_channel=None)
    assert world.bot.runtime.monitor is None
    sync_id = world.polytomic.add_sync(NAME, ["accounts"])
    world.polytomic.start_run(sync_id, durations=600)
    await asyncio.sleep(0.8)
    assert _status_listings(world.polytomic) == []
