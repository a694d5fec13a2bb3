"""End to end: the real bot in HTTP mode between the fake Slack and the fake Polytomic, driven by
signed Slack requests over real sockets."""

from __future__ import annotations

import asyncio
import json
import time

import httpx

from bot.fakes.slack import sign

CHANNEL = "C0001"


def _setup(world, *, schemas=("accounts", "contacts", "Sales Data/Q1 2026.csv"), durations=600.0):
    sync_id = world.polytomic.add_sync("Salesforce to Snowflake", list(schemas))
    exec_id = world.polytomic.start_run(sync_id, durations=durations)
    return sync_id, exec_id


async def _final_thread(world, root_ts, word, channel=CHANNEL):
    def done():
        replies = world.slack.thread(channel, root_ts)
        return replies if any(word in r.text for r in replies[-1:]) else None

    return await world.slack.wait_for(done, timeout=20)


def _headline(world, channel=CHANNEL):
    roots = world.slack.messages(channel)
    assert roots, "no headline posted"
    return roots[-1]


def _ack_ok(response: httpx.Response, started: float) -> None:
    assert response.status_code == 200, response.text
    assert time.monotonic() - started < 3.0  # Slack's ack limit


async def test_typed_cancel_with_yes_threads_until_canceled(world):
    sync_id, _ = _setup(world)
    started = time.monotonic()
    response = await world.user.slash('cancel "Salesforce to Snowflake" accounts --yes')
    _ack_ok(response, started)
    await world.slack.wait_for(lambda: world.slack.messages(CHANNEL))
    root = _headline(world)
    replies = await _final_thread(world, root.ts, "canceled")
    texts = [r.text for r in replies]
    assert "asked to cancel" in texts[0]
    assert sum("canceled" in t for t in texts[-1:]) == 1
    assert world.polytomic.cancel_requests() == [
        (sync_id, "accounts", world.polytomic.cancel_requests()[0][2])
    ]
    key = world.polytomic.cancel_requests()[0][2]
    assert key and 8 <= len(key) <= 255
    assert world.polytomic.schema_status(sync_id, "accounts") == "canceled"
    # the headline is current, without buttons, and names who asked
    await world.slack.wait_for(lambda: "canceled" in world.slack.message(CHANNEL, root.ts).text)
    head = world.slack.message(CHANNEL, root.ts)
    assert "U0001" in json.dumps(head.blocks) + head.text
    assert "polytomic.cancel" not in json.dumps(head.blocks)
    # no reply repeats an unchanged state
    assert len(texts) == len(set(texts))
    print("\n" + world.slack.transcript(CHANNEL))


async def test_typed_cancel_preview_then_confirm(world):
    sync_id, _ = _setup(world)
    response = await world.user.slash("cancel salesforce accounts")
    assert response.status_code == 200
    preview = await world.slack.wait_for(lambda: world.slack.responses(world.user.last_response_url))
    assert world.polytomic.cancel_requests() == []  # nothing until the click
    card = preview[-1]
    assert card.get("response_type", "ephemeral") == "ephemeral"
    button = next(
        e
        for b in card["blocks"]
        for e in (b.get("elements") or [b.get("accessory") or {}])
        if str(e.get("action_id", "")).startswith("polytomic.confirm_cancel")
    )
    assert json.loads(button["value"]) == {"sync_id": sync_id, "schema_id": "accounts"}
    assert button.get("style") == "danger" and "confirm" in button
    await world.user.click(button["action_id"], button["value"], ephemeral=True)
    root = await world.slack.wait_for(
        lambda: world.slack.messages(CHANNEL) and world.slack.messages(CHANNEL)[-1]
    )
    await _final_thread(world, root.ts, "canceled")
    assert len(world.polytomic.cancel_requests()) == 1


async def test_click_on_alert_card_makes_it_the_headline(world):
    sync_id, _ = _setup(world)
    # An alert pipeline posts with the bot's token a card carrying the contract's buttons.
    async with httpx.AsyncClient() as http:
        value = json.dumps({"sync_id": sync_id, "schema_id": "Sales Data/Q1 2026.csv"})
        posted = (
            await http.post(
                world.slack.api_url + "chat.postMessage",
                headers={"Authorization": f"Bearer {world.slack.bot_token}"},
                json={
                    "channel": CHANNEL,
                    "text": "Long run",
                    "blocks": [
                        {
                            "type": "actions",
                            "elements": [
                                {
                                    "type": "button",
                                    "action_id": "polytomic.cancel_schema:alert",
                                    "value": value,
                                    "text": {"type": "plain_text", "text": "Cancel"},
                                    "style": "danger",
                                }
                            ],
                        }
                    ],
                },
            )
        ).json()
    card = world.slack.message(CHANNEL, posted["ts"])
    started = time.monotonic()
    response = await world.user.click_button(card, "polytomic.cancel_schema")
    _ack_ok(response, started)
    replies = await _final_thread(world, card.ts, "canceled")
    assert replies[0].thread_ts == card.ts
    head = world.slack.message(CHANNEL, card.ts)
    assert "polytomic.cancel" not in json.dumps(head.blocks)  # buttons gone
    assert [(s, sc) for s, sc, _ in world.polytomic.cancel_requests()] == [
        (sync_id, "Sales Data/Q1 2026.csv")
    ]
    assert len(world.slack.messages(CHANNEL)) == 1  # no second root


async def test_cancel_whole_execution(world):
    sync_id, exec_id = _setup(world)
    await world.user.slash(f"cancel {sync_id} --all --yes")
    root = await world.slack.wait_for(
        lambda: world.slack.messages(CHANNEL) and world.slack.messages(CHANNEL)[-1]
    )
    replies = await _final_thread(world, root.ts, "canceled")
    assert any("canceling" in r.text for r in replies)
    print("\n" + world.slack.transcript(CHANNEL))
    assert [(s, sc) for s, sc, _ in world.polytomic.cancel_requests()] == [(sync_id, None)]
    assert world.polytomic.requests_to("POST", f"/api/bulk/syncs/{sync_id}/executions/{exec_id}/cancel")


async def test_nothing_running_sends_no_cancel(world):
    sync_id = world.polytomic.add_sync("Idle sync", ["accounts"])
    await world.user.slash("cancel idle accounts --yes")
    answer = await world.slack.wait_for(lambda: world.slack.responses(world.user.last_response_url))
    assert "not running" in answer[-1]["text"].lower() or "nothing" in answer[-1]["text"].lower()
    assert world.polytomic.cancel_requests() == []
    assert world.slack.messages(CHANNEL) == []
    assert sync_id


async def test_completed_before_the_cancel_landed(world):
    world.polytomic.cancel_delay_s = 5.0
    sync_id, _ = _setup(world, durations={"accounts": 1.5, "contacts": 600, "Sales Data/Q1 2026.csv": 600})
    await world.user.slash("cancel salesforce accounts --yes")
    root = await world.slack.wait_for(
        lambda: world.slack.messages(CHANNEL) and world.slack.messages(CHANNEL)[-1]
    )
    replies = await _final_thread(world, root.ts, "completed")
    assert "before" in replies[-1].text.lower()
    assert world.polytomic.schema_status(sync_id, "accounts") == "completed"


async def test_unknown_names_get_suggestions(world):
    _setup(world)
    await world.user.slash("status salesforse")
    answer = await world.slack.wait_for(lambda: world.slack.responses(world.user.last_response_url))
    assert "Salesforce to Snowflake" in answer[-1]["text"] + json.dumps(answer[-1].get("blocks"))
    await world.user.slash("cancel salesforce acounts --yes")
    answer = await world.slack.wait_for(lambda: world.slack.responses(world.user.last_response_url))
    assert "accounts" in answer[-1]["text"] + json.dumps(answer[-1].get("blocks"))
    assert world.polytomic.cancel_requests() == []


async def test_denied_user_is_told_which_setting(world):
    _setup(world)
    stranger = world.as_user("U0666")
    await stranger.slash("cancel salesforce accounts --yes")
    answer = await world.slack.wait_for(lambda: world.slack.responses(stranger.last_response_url))
    assert "BOT_ALLOWED_USERS" in answer[-1]["text"] + json.dumps(answer[-1].get("blocks"))
    assert world.polytomic.cancel_requests() == []


async def test_other_workspace_refused(world):
    _setup(world)
    response = await world.user.slash("cancel salesforce accounts --yes", team_id="T0BAD")
    assert response.status_code == 200
    assert "workspace" in response.text.lower()
    await asyncio.sleep(0.3)
    assert world.polytomic.cancel_requests() == []


async def test_forged_and_stale_signatures_are_401_and_do_nothing(world):
    _setup(world)
    body = world.user.slash_body("cancel salesforce accounts --yes")
    raw = httpx.QueryParams(body).__str__().encode()
    async with httpx.AsyncClient() as http:
        url = world.bot.url + "/slack/events"
        ctype = {"Content-Type": "application/x-www-form-urlencoded"}
        bad = await http.post(url, content=raw, headers={**ctype, **sign("wrong-secret", raw)})
        stale = await http.post(
            url,
            content=raw,
            headers={
                **ctype,
                **sign(
                    world.bot.settings.slack_signing_secret.get_secret_value(), raw, int(time.time()) - 600
                ),
            },
        )
        missing = await http.post(url, content=raw, headers=ctype)
    assert (bad.status_code, stale.status_code, missing.status_code) == (401, 401, 401)
    await asyncio.sleep(0.3)
    assert world.polytomic.cancel_requests() == []
    assert world.polytomic.requests == [] or all(r.method == "GET" for r in world.polytomic.requests) is False


async def test_outage_during_watch_is_reported_once_and_watch_goes_on(world):
    world.polytomic.cancel_delay_s = 3.0
    sync_id, _ = _setup(world)
    await world.user.slash("cancel salesforce accounts --yes")
    root = await world.slack.wait_for(
        lambda: world.slack.messages(CHANNEL) and world.slack.messages(CHANNEL)[-1]
    )
    await world.slack.wait_for(lambda: world.slack.thread(CHANNEL, root.ts))
    world.polytomic.add_fault("GET", f"/api/bulk/syncs/{sync_id}/status", status=503, times=None)
    await world.slack.wait_for(
        lambda: any(
            "not answering" in r.text.lower() or "trouble" in r.text.lower() or "struggling" in r.text.lower()
            for r in world.slack.thread(CHANNEL, root.ts)
        ),
        timeout=20,
    )
    await asyncio.sleep(1.0)
    world.polytomic.clear_faults()
    replies = await _final_thread(world, root.ts, "canceled")
    trouble = [
        r
        for r in replies
        if "not answering" in r.text.lower() or "struggling" in r.text.lower() or "trouble" in r.text.lower()
    ]
    assert len(trouble) == 1


async def test_slack_429_on_update_is_retried(world):
    _setup(world)
    world.slack.fail("chat.update", "ratelimited", times=2, retry_after=1)
    await world.user.slash("cancel salesforce accounts --yes")
    root = await world.slack.wait_for(
        lambda: world.slack.messages(CHANNEL) and world.slack.messages(CHANNEL)[-1]
    )
    await _final_thread(world, root.ts, "canceled")
    await world.slack.wait_for(lambda: "canceled" in world.slack.message(CHANNEL, root.ts).text, timeout=15)


async def test_watch_timeout_is_said_once(make_world):
    world = await make_world(bot_watch_timeout_s=1.5)
    world.polytomic.cancel_delay_s = 120
    _setup(world)
    await world.user.slash("cancel salesforce accounts --yes")
    root = await world.slack.wait_for(
        lambda: world.slack.messages(CHANNEL) and world.slack.messages(CHANNEL)[-1]
    )
    replies = await world.slack.wait_for(
        lambda: [r for r in world.slack.thread(CHANNEL, root.ts) if "watching" in r.text.lower()], timeout=20
    )
    await asyncio.sleep(1.0)
    assert len([r for r in world.slack.thread(CHANNEL, root.ts) if "stopped watching" in r.text.lower()]) <= 1
    assert replies


async def test_mentions_in_names_are_inert(world):
    sync_id = world.polytomic.add_sync("<!channel> evil & co", ["<@U123> table", "accounts"])
    world.polytomic.start_run(sync_id, durations=600)
    await world.user.slash(f'cancel {sync_id} "<@U123> table" --yes')
    root = await world.slack.wait_for(
        lambda: world.slack.messages(CHANNEL) and world.slack.messages(CHANNEL)[-1]
    )
    await _final_thread(world, root.ts, "canceled")
    everything = [root, *world.slack.thread(CHANNEL, root.ts), world.slack.message(CHANNEL, root.ts)]
    for m in everything:
        dump = m.text + json.dumps(m.blocks)
        assert "<!channel>" not in dump and "<@U123>" not in dump


async def test_twenty_concurrent_clicks_send_one_cancel(make_world):
    world = await make_world(bot_allowed_users=("*",))
    sync_id, _ = _setup(world)
    value = json.dumps({"sync_id": sync_id, "schema_id": "accounts"})
    users = [world.as_user(f"U{i:04d}") for i in range(1, 21)]
    started = time.monotonic()
    responses = await asyncio.gather(
        *(u.click("polytomic.cancel_schema", value, ephemeral=True) for u in users)
    )
    assert all(r.status_code == 200 for r in responses)
    assert time.monotonic() - started < 3.0 * 2  # twenty acks, each well within Slack's limit
    root = await world.slack.wait_for(
        lambda: world.slack.messages(CHANNEL) and world.slack.messages(CHANNEL)[-1]
    )
    await _final_thread(world, root.ts, "canceled")
    assert len(world.polytomic.cancel_requests()) == 1
    assert len(world.slack.messages(CHANNEL)) == 1
    also = [r for r in world.slack.thread(CHANNEL, root.ts) if "also asked" in r.text]
    assert len(also) == 19
