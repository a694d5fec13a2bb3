"""End to end, beyond the cancel itself: help, syncs, status cards and their buttons, refresh,
errors in plain words, and Socket Mode."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time

from conftest import SIGNING_SECRET, Bot, World, bot_settings

from bot.fakes.slack import SlackUser

CHANNEL = "C0001"


def _texts(messages) -> str:
    return "\n".join(m.text + json.dumps(m.blocks) for m in messages)


async def _answer(world, user=None):
    user = user or world.user
    return await world.slack.wait_for(lambda: world.slack.responses(user.last_response_url))


async def test_help_and_usage_errors_are_answered_in_the_ack(world):
    started = time.monotonic()
    response = await world.user.slash("help")
    assert response.status_code == 200 and time.monotonic() - started < 3
    assert "/polytomic cancel &lt;sync&gt; &lt;schema&gt;" in response.json()["text"]
    response = await world.user.slash('cancel "unterminated')
    body = response.json()
    assert body["response_type"] == "ephemeral"
    assert "cancel" in json.dumps(body)  # the usage line
    response = await world.user.slash("cancel onlysync")
    assert "--all" in json.dumps(response.json())
    assert world.polytomic.requests == []  # nothing reached Polytomic for a usage error


async def test_syncs_lists_running_first_and_filters(world):
    idle = world.polytomic.add_sync("Zendesk to BigQuery", ["tickets"])
    busy = world.polytomic.add_sync("Salesforce to Snowflake", ["accounts"])
    world.polytomic.start_run(busy, durations=600)
    await world.user.slash("syncs")
    answer = (await _answer(world))[-1]
    dump = answer["text"] + json.dumps(answer["blocks"])
    assert dump.index("Salesforce") < dump.index("Zendesk")
    await world.user.slash("syncs zendesk")
    answer = (await _answer(world))[-1]
    dump = answer["text"] + json.dumps(answer["blocks"])
    assert "Zendesk" in dump and "Salesforce" not in dump
    assert idle


async def test_status_card_buttons_cancel_and_refresh(world):
    sync_id = world.polytomic.add_sync("Salesforce to Snowflake", ["accounts", "contacts"])
    world.polytomic.start_run(sync_id, durations={"accounts": 600, "contacts": 600})
    await world.user.slash("status salesforce")
    card = await world.slack.wait_for(lambda: world.slack.ephemerals(CHANNEL, "U0001")[-1:])
    card = card[-1]
    labels = " ".join(card.button_labels())
    assert "Refresh" in labels
    actions = [b["action_id"] for b in card.buttons()]
    assert any(a.startswith("polytomic.cancel_schema") for a in actions)
    assert any(a.startswith("polytomic.cancel_sync") for a in actions)
    assert all(
        b.get("style") == "danger" and b.get("confirm")
        for b in card.buttons()
        if b["action_id"].startswith("polytomic.cancel")
    )
    # refresh re-renders in place
    await world.user.click_button(card, "polytomic.refresh")
    await world.slack.wait_for(lambda: len(world.slack.responses(world.user.last_response_url)) >= 1)
    refreshed = world.slack.responses(world.user.last_response_url)[-1]
    assert refreshed.get("replace_original") is True
    # cancel one schema from the ephemeral card: a new headline in the channel, thread under it
    await world.user.click_button(
        card, "polytomic.cancel_schema", value=lambda v: json.loads(v)["schema_id"] == "contacts"
    )
    root = await world.slack.wait_for(
        lambda: world.slack.messages(CHANNEL) and world.slack.messages(CHANNEL)[-1]
    )
    await world.slack.wait_for(
        lambda: any("canceled" in r.text for r in world.slack.thread(CHANNEL, root.ts)), timeout=20
    )
    assert [(s, sc) for s, sc, _ in world.polytomic.cancel_requests()] == [(sync_id, "contacts")]
    assert world.polytomic.schema_status(sync_id, "accounts") == "running"


async def test_refresh_on_a_channel_card_updates_it(world):
    sync_id = world.polytomic.add_sync("Salesforce to Snowflake", ["accounts"])
    world.polytomic.start_run(sync_id, durations=600)
    card = world.slack.add_message(
        CHANNEL,
        "status",
        user="UBOT",
        bot_id="BBOT",
        blocks=[
            {
                "type": "actions",
                "elements": [
                    {
                        "type": "button",
                        "action_id": "polytomic.refresh",
                        "text": {"type": "plain_text", "text": "Refresh"},
                        "value": json.dumps({"sync_id": sync_id}),
                    }
                ],
            }
        ],
    )
    await world.user.click_button(card, "polytomic.refresh")
    await world.slack.wait_for(lambda: world.slack.message(CHANNEL, card.ts).edits)
    assert "Salesforce to Snowflake" in _texts([world.slack.message(CHANNEL, card.ts)])


async def test_not_in_channel_says_invite_and_cancels_nothing(world):
    sync_id = world.polytomic.add_sync("Salesforce to Snowflake", ["accounts"])
    world.polytomic.start_run(sync_id, durations=600)
    world.slack.set_channel("C0PRIV", member=False, private=True)
    user = world.as_user("U0001", channel_id="C0PRIV")
    await user.slash("cancel salesforce accounts --yes")
    answer = (await _answer(world, user))[-1]
    assert "invite" in (answer["text"] + json.dumps(answer.get("blocks"))).lower()
    assert world.polytomic.cancel_requests() == []
    # the watch was closed: asking again in a channel the bot is in works at once
    await world.user.slash("cancel salesforce accounts --yes")
    await world.slack.wait_for(lambda: world.polytomic.cancel_requests())
    await asyncio.sleep(0.3)
    assert len(world.polytomic.cancel_requests()) == 1


async def test_polytomic_errors_in_plain_words(world):
    sync_id = world.polytomic.add_sync("Salesforce to Snowflake", ["accounts"])
    world.polytomic.start_run(sync_id, durations=600)
    world.polytomic.add_fault("GET", "/api/bulk/syncs", status=401, times=1)
    await world.user.slash("status salesforce")
    answer = (await _answer(world))[-1]
    assert "POLYTOMIC_API_KEY" in answer["text"] + json.dumps(answer.get("blocks"))
    world.polytomic.add_fault("POST", "*", status=403, body={"status": 403, "message": "read-only key"})
    await world.user.slash("cancel salesforce accounts --yes")
    answer = (await _answer(world))[-1]
    dump = (answer["text"] + json.dumps(answer.get("blocks"))).lower()
    assert "read-only" in dump or "403" in dump or "may not" in dump
    world.polytomic.clear_faults()
    world.polytomic.add_fault("GET", "/api/bulk/syncs", status=503, times=None)
    await world.user.slash("status salesforce")
    answer = (await _answer(world))[-1]
    assert "trouble" in answer["text"].lower() or "503" in answer["text"]


async def test_unexpected_error_gets_a_correlation_id_in_answer_and_log(world, caplog, monkeypatch):
    sync_id = world.polytomic.add_sync("Salesforce to Snowflake", ["accounts"])
    world.polytomic.start_run(sync_id, durations=600)

    async def boom(*_a, **_k):
        raise RuntimeError("something nobody planned for")

    monkeypatch.setattr(world.bot.runtime.client, "list_syncs", boom)
    caplog.set_level(logging.ERROR, logger="bot")
    await world.user.slash("syncs")
    answer = (await _answer(world))[-1]
    ref = re.search(r"ref ([0-9a-f]{8})", answer["text"])
    assert ref, answer
    assert any(ref.group(1) in r.getMessage() for r in caplog.records)


async def test_unknown_button_and_bad_values_get_clear_answers(world):
    sync_id = world.polytomic.add_sync("Salesforce to Snowflake", ["accounts"])
    world.polytomic.start_run(sync_id, durations=600)
    for action, value in [
        ("someone.else", "x"),
        ("polytomic.cancel_schema", "not json"),
        ("polytomic.cancel_schema", json.dumps({"sync_id": sync_id})),
        ("polytomic.cancel_sync", "x" * 2500),
    ]:
        response = await world.user.click(action, value, ephemeral=True)
        assert response.status_code == 200
        answer = (await _answer(world))[-1]
        assert answer.get("replace_original") is False
    assert world.polytomic.cancel_requests() == []


async def test_socket_mode_end_to_end(fake_polytomic, fake_slack, tmp_path):
    settings = bot_settings(
        fake_polytomic, fake_slack, tmp_path, bot_mode="socket", slack_app_token="xapp-1-test-app-token"
    )
    bot = await Bot(settings).start()
    try:
        world = World(fake_polytomic, fake_slack, bot, tmp_path)
        user = SlackUser(None, None, fake_slack)
        await fake_slack.wait_for(fake_slack.socket_connected)
        sync_id = fake_polytomic.add_sync("Salesforce to Snowflake", ["accounts"])
        fake_polytomic.start_run(sync_id, durations=600)
        started = time.monotonic()
        ack = await user.slash_via_socket("help")
        assert time.monotonic() - started < 3
        assert "/polytomic" in json.dumps(ack)
        await user.slash_via_socket("cancel salesforce accounts --yes")
        root = await fake_slack.wait_for(
            lambda: fake_slack.messages(CHANNEL) and fake_slack.messages(CHANNEL)[-1]
        )
        await fake_slack.wait_for(
            lambda: any("canceled" in r.text for r in fake_slack.thread(CHANNEL, root.ts)), timeout=20
        )
        assert len(fake_polytomic.cancel_requests()) == 1
        async with __import__("httpx").AsyncClient() as http:
            ready = await http.get(bot.url + "/readyz")
            assert ready.status_code == 200, ready.text
            assert (await http.post(bot.url + "/slack/events", content=b"x")).status_code == 404
        assert world
    finally:
        await bot.stop()
    await asyncio.sleep(0)
    assert SIGNING_SECRET


async def test_watches_of_one_sync_share_one_poll(world):
    schemas = [f"table_{i}" for i in range(5)]
    sync_id = world.polytomic.add_sync("Warehouse", schemas)
    world.polytomic.cancel_delay_s = 3.0
    world.polytomic.start_run(sync_id, durations=600)
    for name in schemas:
        await world.user.slash(f"cancel warehouse {name} --yes")
    await world.slack.wait_for(lambda: len(world.slack.messages(CHANNEL)) == 5)
    before = len(world.polytomic.requests_to("GET", f"/api/bulk/syncs/{sync_id}/status"))
    started = time.monotonic()
    await asyncio.sleep(2.0)
    polls = len(world.polytomic.requests_to("GET", f"/api/bulk/syncs/{sync_id}/status")) - before
    elapsed = time.monotonic() - started
    interval = world.bot.settings.bot_poll_interval_s
    # one status request per poll for all five watches (unshared would be five per poll)
    assert polls <= elapsed / interval + 2, polls
    assert polls >= 1
    for root in world.slack.messages(CHANNEL):
        await world.slack.wait_for(
            lambda root=root: any("canceled" in r.text for r in world.slack.thread(CHANNEL, root.ts)),
            timeout=20,
        )


async def test_denials_are_audited(world):
    sync_id = world.polytomic.add_sync("Salesforce to Snowflake", ["accounts"])
    world.polytomic.start_run(sync_id, durations=600)
    stranger = world.as_user("U0666")
    await stranger.click("polytomic.cancel_sync", json.dumps({"sync_id": sync_id}), ephemeral=True)
    await _answer(world, stranger)
    await world.user.slash("syncs", team_id="T0BAD")
    records = []
    for _ in range(100):
        records = [r for r in await world.bot.runtime.store.audit_records() if r["outcome"] == "denied"]
        if len(records) >= 2:
            break
        await asyncio.sleep(0.05)
    assert {(r["user_id"], r["action"]) for r in records} == {("U0666", "click"), ("U0001", "command")}
    assert world.polytomic.cancel_requests() == []
