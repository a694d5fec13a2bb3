"""The message shortcut end to end: on another tool's message with zero, one or several bulk sync
UUIDs / Polytomic links, the modal opens within the trigger's 3 seconds, then shows the live
choice; its submission cancels with the thread under that message (or in a DM when the bot cannot
post there)."""

from __future__ import annotations

import json
import time

import pytest
from alert_world import AlertWorlds

from bot.fakes.slack import SlackUser
from bot.shortcut import MAX_IDS, find_ids, selections

CHANNEL = "C0001"
NAME = "Salesforce to Snowflake"
SCHEMAS = ["accounts", "contacts", "Sales Data/Q1 2026.csv"]


@pytest.fixture
async def worlds(fake_polytomic, fake_slack, tmp_path):
    async with AlertWorlds(fake_polytomic, fake_slack, tmp_path, bot_long_run_s=600) as w:
        yield w


def _alert(slack, text, *, blocks=None, channel=CHANNEL):
    """A message another app posted (the bot cannot edit it)."""
    return slack.add_message(channel, text, blocks=blocks, user="UDATADOG", bot_id="BDATADOG")


def _section(text):
    return {"type": "section", "text": {"type": "mrkdwn", "text": text}}


async def _modal(slack, user="U0001", *, ready=lambda v: v.inputs()):
    """The user's latest modal once `ready(view)` holds (default: it offers a choice)."""

    def latest():
        views = slack.views(user)
        return views and ready(views[-1]) and views[-1]

    return await slack.wait_for(latest, timeout=10)


def _values(view, block_id, *labels):
    return [o["value"] for o in view.options(block_id) if any(label in o["text"]["text"] for label in labels)]


async def _thread_done(slack, channel, ts, count=1, word="canceled"):
    def done():
        replies = slack.thread(channel, ts)
        finals = [r for r in replies if word in r.text and "asked to cancel" not in r.text]
        return replies if len(finals) >= count else None

    return await slack.wait_for(done, timeout=20)


# -- finding ids (pure) ----------------------------------------------------------------------------

A = "0b6c1c3e-5a55-4d6f-9a57-1f3c0f3f9a11"
B = "1c7d2d4f-6b66-4e70-8b68-2a4d1a4a0b22"
C = "2d8e3e50-7c77-4f81-9c79-3b5e2b5b1c33"


def test_find_ids_in_text_blocks_and_attachments():
    message = {
        "text": f"run {C} is slow; sync {A.upper()}",
        "client_msg_id": B,  # Slack's own id of a person's message: not about Polytomic
        "blocks": [_section(f"<https://app.polytomic.com/bulk/syncs/{B}|open the sync>")],
        "attachments": [{"fallback": f"again {A}", "fields": [{"value": f"x{C}x"}]}],
    }
    assert find_ids(message) == [B, C, A]  # the Polytomic bulk link first, then in order, deduped
    assert find_ids({"text": "nothing here 1234-5678"}) == []
    assert find_ids({"text": f"{A}0"}) == []  # not a UUID on its own
    many = " ".join(f"{i:08x}-0000-4000-8000-000000000000" for i in range(30))
    assert len(find_ids({"text": many})) == MAX_IDS
    self_hosted = {"text": f"see https://polytomic.example.org/connections/{C} and {A}"}
    assert find_ids(self_hosted, polytomic_hosts=("polytomic.example.org",)) == [C, A]
    assert find_ids(None) == []


def test_selections_whole_execution_covers_its_schemas():
    meta = {"s": [[A, ["accounts", "contacts"]], [B, ["x"]], ["not-a-uuid", ["y"]]]}
    view = {
        "state": {
            "values": {
                "sync:0": {"pick": {"selected_options": [{"value": "s:0:1"}, {"value": "s:0:0"}]}},
                "sync:1": {"pick": {"selected_options": [{"value": "s:1:0"}, {"value": "x:1"}]}},
                "sync:2": {"pick": {"selected_options": [{"value": "s:2:0"}]}},
                "junk": {"pick": {"selected_options": [{"value": "s:9:9"}]}},
            }
        }
    }
    assert selections(view, meta) == [(A, "contacts"), (A, "accounts"), (B, None)]


# -- end to end ------------------------------------------------------------------------------------


async def test_one_uuid_in_a_link_modal_then_cancel_two_schemas_threaded_under_the_message(worlds):
    world = await worlds.make()
    slack, polytomic = world.slack, world.polytomic
    sync_id = polytomic.add_sync(NAME, SCHEMAS)
    polytomic.start_run(sync_id, durations=600)
    alert = _alert(
        slack,
        "Datadog: sync slow",
        blocks=[_section(f"<https://app.polytomic.com/bulk/syncs/{sync_id}|Salesforce sync> is slow")],
    )
    started = time.monotonic()
    response = await world.user.shortcut(alert)
    assert response.status_code == 200 and time.monotonic() - started < 3.0
    view = await _modal(slack)
    assert view.trigger_age is not None and view.trigger_age < 3.0
    assert len(view.history) == 1  # opened at once with what the message shows, then updated
    labels = view.option_labels("sync:0")
    assert "whole execution" in labels[0] and len(labels) == 4
    picks = _values(view, "sync:0", "accounts", "sales_data")
    assert len(picks) == 2
    response = await world.user.submit_view(view.id, {"sync:0": picks})
    assert response.status_code == 200
    assert slack.view(view.id).closed
    replies = await _thread_done(slack, CHANNEL, alert.ts, count=2)
    assert sorted(sc for _s, sc, _k in polytomic.cancel_requests()) == ["Sales Data/Q1 2026.csv", "accounts"]
    assert len(slack.messages(CHANNEL)) == 1  # no new root: everything is under the alert
    assert all(r.thread_ts == alert.ts for r in replies)
    assert "Datadog" in slack.message(CHANNEL, alert.ts).text  # someone else's message is untouched
    summary = await slack.wait_for(lambda: slack.responses(world.user.last_response_url), timeout=10)
    assert "requested" in summary[-1]["text"] and summary[-1]["replace_original"] is False
    print("\n" + slack.transcript(CHANNEL))


async def test_no_uuid_offers_a_sync_picker(worlds):
    world = await worlds.make()
    slack, polytomic = world.slack, world.polytomic
    idle = polytomic.add_sync("Zendesk to BigQuery", ["tickets"])
    sync_id = polytomic.add_sync(NAME, SCHEMAS)
    exec_id = polytomic.start_run(sync_id, durations=600)
    alert = _alert(slack, "The nightly ETL is slow again")
    response = await world.user.shortcut(alert)
    assert response.status_code == 200
    picker = await _modal(slack)
    assert "no bulk sync id" in picker.text().lower()
    labels = picker.option_labels("sync")
    assert labels[0].startswith(NAME) and "running" in labels[0]
    assert "Zendesk to BigQuery" in labels[1] and "running" not in labels[1] and idle
    response = await world.user.submit_view(picker.id, {"sync": sync_id})
    assert response.json()["response_action"] == "update"
    view = await _modal(slack, ready=lambda v: any(b.get("block_id") == "sync:0" for b in v.inputs()))
    assert view.id == picker.id
    await world.user.submit_view(view.id, {"sync:0": _values(view, "sync:0", "whole execution")})
    await _thread_done(slack, CHANNEL, alert.ts)
    assert polytomic.requests_to("POST", f"/api/bulk/syncs/{sync_id}/executions/{exec_id}/cancel")


async def test_several_uuids_sync_and_execution_ids(worlds):
    world = await worlds.make()
    slack, polytomic = world.slack, world.polytomic
    first = polytomic.add_sync("First sync", ["a1", "a2"])
    second = polytomic.add_sync("Second sync", ["b1"])
    third = polytomic.add_sync("Third sync", ["c1", "c2"])
    idle = polytomic.add_sync("Idle sync", ["d1"])
    polytomic.start_run(first, durations=600)
    second_exec = polytomic.start_run(second, durations=600)
    third_exec = polytomic.start_run(third, durations=600)
    unknown = "3e9f4f61-8d88-4a92-ad8a-4c6f3c6c2d44"
    alert = _alert(
        slack,
        f"Syncs {first} and {second}, run {third_exec}, idle {idle}, and {unknown}",
    )
    await world.user.shortcut(alert)
    view = await _modal(slack)
    text = view.text()
    assert "First sync" in text and "Second sync" in text and "Third sync" in text
    assert "Nothing is running for `Idle sync`" in text
    assert unknown in text
    assert [b["block_id"] for b in view.inputs()] == ["sync:0", "sync:1", "sync:2"]
    response = await world.user.submit_view(
        view.id,
        {
            "sync:1": _values(view, "sync:1", "whole execution"),
            "sync:2": _values(view, "sync:2", "c2"),
        },
    )
    assert response.status_code == 200
    await _thread_done(slack, CHANNEL, alert.ts, count=2)
    assert polytomic.requests_to("POST", f"/api/bulk/syncs/{second}/executions/{second_exec}/cancel")
    assert [(s, sc) for s, sc, _ in polytomic.cancel_requests() if sc] == [(third, "c2")]
    assert not any(s == first for s, _sc, _k in polytomic.cancel_requests())


async def test_cannot_post_there_tells_the_story_in_a_dm(worlds):
    world = await worlds.make()
    slack, polytomic = world.slack, world.polytomic
    slack.set_channel("G0PRIV", private=True, member=False)
    sync_id = polytomic.add_sync(NAME, SCHEMAS)
    polytomic.start_run(sync_id, durations=600)
    alert = _alert(slack, f"slow: https://app.polytomic.com/bulk/syncs/{sync_id}", channel="G0PRIV")
    await world.user.shortcut(alert)
    view = await _modal(slack)
    await world.user.submit_view(view.id, {"sync:0": _values(view, "sync:0", "accounts")})
    dm = "D0001"
    roots = await slack.wait_for(lambda: len(slack.messages(dm)) >= 2 and slack.messages(dm), timeout=10)
    assert "cannot post" in roots[0].text and "not_in_channel" in roots[0].text
    await _thread_done(slack, dm, roots[1].ts)
    assert [m.ts for m in slack.messages("G0PRIV")] == [alert.ts]
    assert slack.thread("G0PRIV", alert.ts) == []
    assert [sc for _s, sc, _k in polytomic.cancel_requests()] == ["accounts"]
    print("\n" + slack.transcript(dm))


async def test_access_is_checked_on_submission(worlds):
    world = await worlds.make()
    slack, polytomic = world.slack, world.polytomic
    sync_id = polytomic.add_sync(NAME, SCHEMAS)
    polytomic.start_run(sync_id, durations=600)
    alert = _alert(slack, f"slow {sync_id}")
    stranger = world.as_user("U0666")
    await stranger.shortcut(alert)
    view = await _modal(slack, "U0666")  # anyone may look
    response = await stranger.submit_view(view.id, {"sync:0": _values(view, "sync:0", "accounts")})
    assert response.json()["response_action"] == "update"
    assert "BOT_ALLOWED_USERS" in slack.view(view.id).text()
    assert polytomic.cancel_requests() == []
    assert slack.thread(CHANNEL, alert.ts) == []


async def test_submitting_nothing_is_an_error_in_the_modal(worlds):
    world = await worlds.make()
    slack, polytomic = world.slack, world.polytomic
    sync_id = polytomic.add_sync(NAME, SCHEMAS)
    polytomic.start_run(sync_id, durations=600)
    alert = _alert(slack, f"slow {sync_id}")
    await world.user.shortcut(alert)
    view = await _modal(slack)
    response = await world.user.submit_view(view.id, {})
    assert response.json()["response_action"] == "errors"
    assert "sync:0" in slack.view(view.id).errors and not slack.view(view.id).closed
    assert polytomic.cancel_requests() == []


async def test_modal_opens_in_time_even_when_polytomic_is_slow(worlds):
    world = await worlds.make()
    slack, polytomic = world.slack, world.polytomic
    sync_id = polytomic.add_sync(NAME, SCHEMAS)
    polytomic.start_run(sync_id, durations=600)
    polytomic.add_fault("GET", "/api/bulk/syncs", delay=3.5, times=1)
    alert = _alert(slack, f"slow {sync_id}")
    started = time.monotonic()
    await world.user.shortcut(alert)
    first = await _modal(slack, ready=lambda v: True)
    assert first.trigger_age < 3.0 and time.monotonic() - started < 3.0
    assert "Looking up" in first.text()
    view = await _modal(slack)  # updated once Polytomic answered
    assert view.id == first.id and json.dumps(view.options("sync:0"))


async def test_nothing_running_says_so(worlds):
    world = await worlds.make()
    slack, polytomic = world.slack, world.polytomic
    sync_id = polytomic.add_sync(NAME, SCHEMAS)
    alert = _alert(slack, f"done {sync_id}")
    await world.user.shortcut(alert)
    view = await _modal(slack, ready=lambda v: len(v.history) >= 1)
    assert "Nothing is running" in view.text() and not view.inputs() and not view.view.get("submit")


async def test_socket_mode_shortcut_and_modal(worlds):
    world = await worlds.make(bot_mode="socket", slack_app_token="xapp-1-test-app-token")
    slack, polytomic = world.slack, world.polytomic
    await slack.wait_for(slack.socket_connected)
    user = SlackUser(None, None, slack)
    sync_id = polytomic.add_sync(NAME, SCHEMAS)
    polytomic.start_run(sync_id, durations=600)
    alert = _alert(slack, f"slow https://app.polytomic.com/bulk/syncs/{sync_id}")
    started = time.monotonic()
    await user.shortcut_via_socket(alert)
    assert time.monotonic() - started < 3.0
    view = await _modal(slack)
    assert view.trigger_age < 3.0
    ack = await user.submit_view_via_socket(view.id, {})
    assert ack and ack["response_action"] == "errors"
    await user.submit_view_via_socket(view.id, {"sync:0": _values(view, "sync:0", "contacts")})
    assert slack.view(view.id).closed
    await _thread_done(slack, CHANNEL, alert.ts)
    assert [sc for _s, sc, _k in polytomic.cancel_requests()] == ["contacts"]


async def test_shortcut_on_a_reply_threads_under_its_parent_unless_the_parent_is_ours(worlds):
    world = await worlds.make()
    slack, polytomic = world.slack, world.polytomic
    sync_id = polytomic.add_sync(NAME, SCHEMAS)
    polytomic.start_run(sync_id, durations=600)
    alert = _alert(slack, "Datadog: ETL slow")
    reply = slack.add_message(CHANNEL, f"is {sync_id} stuck?", user="U0002", thread_ts=alert.ts)
    await world.user.shortcut(reply)
    view = await _modal(slack)
    await world.user.submit_view(view.id, {"sync:0": _values(view, "sync:0", "accounts")})
    await _thread_done(slack, CHANNEL, alert.ts)
    assert [m.ts for m in slack.messages(CHANNEL)] == [alert.ts]
    # a reply under one of the bot's own messages (maybe another cancellation's headline): that
    # message is never edited; the story gets a new message in the channel
    ours = slack.add_message(CHANNEL, "a headline of the bot", user="UBOT", bot_id="BBOT")
    question = slack.add_message(CHANNEL, f"and {sync_id} contacts?", user="U0002", thread_ts=ours.ts)
    await world.user.shortcut(question)
    view = await _modal(slack, ready=lambda v: v.inputs() and not v.closed)
    await world.user.submit_view(view.id, {"sync:0": _values(view, "sync:0", "contacts")})
    roots = await slack.wait_for(
        lambda: len(slack.messages(CHANNEL)) == 3 and slack.messages(CHANNEL), timeout=10
    )
    await _thread_done(slack, CHANNEL, roots[-1].ts)
    assert slack.message(CHANNEL, ours.ts).text == "a headline of the bot"


async def test_polytomic_down_is_said_in_the_modal(worlds):
    world = await worlds.make()
    slack, polytomic = world.slack, world.polytomic
    polytomic.add_fault("GET", "/api/bulk/syncs", status=401)
    alert = _alert(slack, "ETL slow")
    await world.user.shortcut(alert)
    view = await _modal(slack, ready=lambda v: len(v.history) >= 1)
    assert "Polytomic request failed" in view.text() and not view.inputs()
