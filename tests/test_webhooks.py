"""Polytomic event webhooks end to end: the fake Polytomic delivers signed events to the real bot's
`POST /polytomic/events`. Signed, unsigned, mis-signed, tampered, replayed and duplicate deliveries;
failure alerts; `bulk_sync.running` starting the long-run clock; `completed`/`canceled` closing
the card."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from alert_world import ALERTS, WEBHOOK_SECRET, AlertWorlds

from bot.fakes.polytomic import sign_event
from bot.webhooks import signature_ok

NAME = "Salesforce to Snowflake"


@pytest.fixture
async def worlds(fake_polytomic, fake_slack, tmp_path):
    # no long-run cards unless a test asks for them (runs here are short; clocks differ by < 1 s)
    async with AlertWorlds(fake_polytomic, fake_slack, tmp_path, bot_long_run_s=600) as w:
        yield w


def _url(world) -> str:
    return world.bot.url + "/polytomic/events"


def _cards(slack):
    return slack.messages(ALERTS)


# -- signatures (pure) -----------------------------------------------------------------------------


def test_signature_encodings():
    body = b'{"id":"1","type":"bulk_sync.running"}'
    secret = b"s3cret-key"
    mac = hmac.new(secret, body, hashlib.sha256).digest()
    good = [
        mac.hex(),
        mac.hex().upper(),
        "sha256=" + mac.hex(),
        "SHA256=" + mac.hex(),
        base64.b64encode(mac).decode(),
        base64.b64encode(mac).decode().rstrip("="),
        base64.urlsafe_b64encode(mac).decode().rstrip("="),
        "sha256=" + base64.b64encode(mac).decode(),
        "deadbeef, " + mac.hex(),  # several signatures (rotation): one must match
    ]
    for header in good:
        assert signature_ok(body, header, secret), header
    wrong = hmac.new(b"other", body, hashlib.sha256).digest()
    bad = [
        None,
        "",
        wrong.hex(),
        base64.b64encode(wrong).decode(),
        mac.hex()[:-2],
        "sha1=" + hmac.new(secret, body, hashlib.sha1).hexdigest(),
        hmac.new(secret, body, hashlib.sha512).hexdigest(),
        "sha256=",
        "x" * 500,
    ]
    for header in bad:
        assert not signature_ok(body, header, secret), header
    assert not signature_ok(body + b" ", mac.hex(), secret)
    assert not signature_ok(body, mac.hex(), b"")


# -- deliveries ------------------------------------------------------------------------------------


async def test_signed_failure_event_posts_one_escaped_alert(worlds):
    world = await worlds.make()
    polytomic, slack = world.polytomic, world.slack
    sync_id = polytomic.add_sync(NAME, ["accounts"])
    polytomic.start_run(sync_id, durations=0.2, fail=["accounts"])
    event = polytomic.event("bulk_sync.failed", sync_id, error="<!channel> disk full & `rm -rf` <@U1>")
    started = time.monotonic()
    response = await polytomic.deliver(event, url=_url(world), secret=WEBHOOK_SECRET)
    assert response.status_code == 200 and time.monotonic() - started < 3.0
    card = await slack.wait_for(lambda: _cards(slack) and _cards(slack)[0], timeout=10)
    dump = card.text + json.dumps(card.blocks)
    assert NAME in dump and "failed" in card.text
    assert "disk full &amp;" in dump and "<!channel>" not in dump and "<@U1>" not in dump
    assert [b["action_id"] for b in card.buttons()] == ["polytomic.refresh"]
    assert json.loads(card.buttons()[0]["value"]) == {"sync_id": sync_id}
    # the same delivery again (a replay) and the same event re-sent: accepted, nothing more done
    again = await polytomic.deliver(event, url=_url(world), secret=WEBHOOK_SECRET)
    assert again.status_code == 200 and again.json().get("duplicate") is True
    base64_copy = await polytomic.deliver(event, url=_url(world), secret=WEBHOOK_SECRET, encoding="base64")
    assert base64_copy.status_code == 200 and base64_copy.json().get("duplicate") is True
    # Polytomic re-sending the same failure under a new event id: still one card
    resent = dict(event, id="another-id-for-the-same-failure")
    assert (await polytomic.deliver(resent, url=_url(world), secret=WEBHOOK_SECRET)).status_code == 200
    await asyncio.sleep(0.5)
    assert len(_cards(slack)) == 1
    # its Refresh button works like every other card's
    await world.user.click_button(card, "polytomic.refresh", channel_id=ALERTS)
    await slack.wait_for(lambda: slack.message(ALERTS, card.ts).edits, timeout=10)
    print("\n" + slack.transcript(ALERTS))


async def test_completed_with_error_and_name_key(worlds):
    world = await worlds.make()
    polytomic, slack = world.polytomic, world.slack
    sync_id = polytomic.add_sync(NAME, ["accounts"])
    polytomic.start_run(sync_id, durations=0.2)
    event = polytomic.event("bulk_sync.completed_with_error", sync_id, name_key="name", name="Named <b>")
    assert (await polytomic.deliver(event, url=_url(world), secret=WEBHOOK_SECRET)).status_code == 200
    card = await slack.wait_for(lambda: _cards(slack) and _cards(slack)[0], timeout=10)
    assert "completed with errors" in card.text and "Named &lt;b&gt;" in card.text


async def test_forged_unsigned_tampered_deliveries_are_401_and_do_nothing(worlds):
    world = await worlds.make()
    polytomic, slack = world.polytomic, world.slack
    sync_id = polytomic.add_sync(NAME, ["accounts"])
    polytomic.start_run(sync_id, durations=0.2, fail=["accounts"])
    event = polytomic.event("bulk_sync.failed", sync_id)
    body = json.dumps(event).encode()
    tampered = json.dumps(dict(event, type="bulk_sync.completed_with_error")).encode()
    answers = [
        await polytomic.deliver(event, url=_url(world), secret="not-the-secret"),
        await polytomic.deliver(event, url=_url(world), signed=False),
        await polytomic.deliver(event, url=_url(world), signature="sha256=" + "0" * 64),
        await polytomic.deliver(event, url=_url(world), signature="garbage"),
        await polytomic.deliver(tampered, url=_url(world), signature=sign_event(body, WEBHOOK_SECRET)),
    ]
    assert [a.status_code for a in answers] == [401] * 5
    assert all("secret" not in a.text.lower() for a in answers)
    await asyncio.sleep(0.5)
    assert _cards(slack) == []
    # nothing was recorded either: the genuine delivery is still accepted afterwards
    good = await polytomic.deliver(event, url=_url(world), secret=WEBHOOK_SECRET)
    assert good.status_code == 200 and "duplicate" not in good.json()
    await slack.wait_for(lambda: len(_cards(slack)) == 1, timeout=10)


async def test_every_signature_encoding_is_accepted(worlds):
    world = await worlds.make()
    polytomic = world.polytomic
    sync_id = polytomic.add_sync(NAME, ["accounts"])
    for encoding, prefix in [("hex", ""), ("hex", "sha256="), ("base64", ""), ("base64url", "sha256=")]:
        event = polytomic.event(
            "bulk_sync.canceled", sync_id, execution_id="9a0e4c12-0000-4000-8000-00000000000a"
        )
        response = await polytomic.deliver(
            event, url=_url(world), secret=WEBHOOK_SECRET, encoding=encoding, prefix=prefix
        )
        assert response.status_code == 200, (encoding, prefix)


async def test_bad_bodies(worlds):
    world = await worlds.make()
    polytomic = world.polytomic
    huge = json.dumps({"id": "x", "type": "bulk_sync.running", "pad": "x" * 70_000}).encode()
    not_json = b"{not json"
    no_id = json.dumps({"type": "bulk_sync.running", "event": {}}).encode()
    old = polytomic.event(
        "bulk_sync.failed",
        polytomic.add_sync(NAME, ["accounts"]),
        created_at=datetime.now(UTC) - timedelta(days=3),
    )
    results = [
        await polytomic.deliver(huge, url=_url(world), secret=WEBHOOK_SECRET),
        await polytomic.deliver(not_json, url=_url(world), secret=WEBHOOK_SECRET),
        await polytomic.deliver(no_id, url=_url(world), secret=WEBHOOK_SECRET),
        await polytomic.deliver(old, url=_url(world), secret=WEBHOOK_SECRET),
    ]
    assert [r.status_code for r in results] == [413, 400, 400, 200]
    assert results[3].json().get("ignored") == "stale"
    async with httpx.AsyncClient() as http:
        get = await http.get(_url(world))
    assert get.status_code == 405
    await asyncio.sleep(0.3)
    assert _cards(world.slack) == []


async def test_disabled_without_a_secret(worlds):
    world = await worlds.make(polytomic_webhook_secret=None)
    sync_id = world.polytomic.add_sync(NAME, ["accounts"])
    event = world.polytomic.event("bulk_sync.failed", sync_id)
    response = await world.polytomic.deliver(event, url=_url(world), secret=WEBHOOK_SECRET)
    assert response.status_code == 404


async def test_answer_comes_before_the_slack_work(worlds):
    world = await worlds.make()
    polytomic, slack = world.polytomic, world.slack
    sync_id = polytomic.add_sync(NAME, ["accounts"])
    slack.fail("chat.postMessage", "ratelimited", times=1, retry_after=1)
    started = time.monotonic()
    response = await polytomic.deliver(
        polytomic.event("bulk_sync.failed", sync_id), url=_url(world), secret=WEBHOOK_SECRET
    )
    assert response.status_code == 200 and time.monotonic() - started < 3.0
    assert _cards(slack) == []  # posted after the answer (here: after a 429 and its Retry-After)
    await slack.wait_for(lambda: len(_cards(slack)) == 1, timeout=10)


async def test_registered_webhook_receives_signed_events(worlds):
    world = await worlds.make()
    polytomic = world.polytomic
    async with httpx.AsyncClient() as http:
        created = await http.post(
            polytomic.url + "/api/webhooks",
            headers={"Authorization": f"Bearer {polytomic.api_key}"},
            json={"endpoint": _url(world), "secret": WEBHOOK_SECRET},
        )
        assert created.status_code == 200
        hook = created.json()["data"]
        assert hook["endpoint"] == _url(world) and hook["disabled"] is False
        second = await http.post(
            polytomic.url + "/api/webhooks",
            headers={"Authorization": f"Bearer {polytomic.api_key}"},
            json={"endpoint": _url(world), "secret": WEBHOOK_SECRET},
        )
        assert second.status_code == 409  # one webhook per organization
        short = await http.put(
            polytomic.url + f"/api/webhooks/{hook['id']}",
            headers={"Authorization": f"Bearer {polytomic.api_key}"},
            json={"endpoint": _url(world), "secret": "abc"},
        )
        assert short.status_code == 400
    sync_id = polytomic.add_sync(NAME, ["accounts"])
    response = await polytomic.deliver(polytomic.event("bulk_sync.failed", sync_id))
    assert response.status_code == 200
    assert polytomic.deliveries[-1].headers["Polytomic-Signature"] == sign_event(
        polytomic.deliveries[-1].body, WEBHOOK_SECRET
    )
    await world.slack.wait_for(lambda: len(_cards(world.slack)) == 1, timeout=10)


async def test_running_event_starts_the_long_run_clock_and_completed_closes_the_card(worlds):
    # listings every 30 s: only the event can make the alert come on time
    world = await worlds.make(monitor_interval_s=30, bot_long_run_s=1.5)
    polytomic, slack = world.polytomic, world.slack
    monitor = world.bot.runtime.monitor
    await slack.wait_for(lambda: monitor.listings >= 1, timeout=5)  # the first listing saw nothing
    sync_id = polytomic.add_sync(NAME, ["accounts", "contacts"])
    exec_id = polytomic.start_run(sync_id, durations={"accounts": 4.0, "contacts": 600})
    started = time.monotonic()
    event = polytomic.event("bulk_sync.running", sync_id)
    assert (await polytomic.deliver(event, url=_url(world), secret=WEBHOOK_SECRET)).status_code == 200
    card = await slack.wait_for(lambda: _cards(slack) and _cards(slack)[0], timeout=10)
    assert time.monotonic() - started < 10  # far sooner than the next listing (30 s)
    assert exec_id in json.dumps(card.blocks)
    # the run is canceled in Polytomic by someone else; the event closes the card at once
    async with httpx.AsyncClient() as http:
        await http.post(
            polytomic.url + f"/api/bulk/syncs/{sync_id}/cancel",
            headers={"Authorization": f"Bearer {polytomic.api_key}", "Idempotency-Key": "k-ui-cancel-1"},
        )
    await slack.wait_for(lambda: polytomic.schema_status(sync_id, "contacts") == "canceled", timeout=10)
    canceled = polytomic.event("bulk_sync.canceled", sync_id)
    assert (await polytomic.deliver(canceled, url=_url(world), secret=WEBHOOK_SECRET)).status_code == 200
    await slack.wait_for(lambda: "canceled" in slack.message(ALERTS, card.ts).text, timeout=5)
    assert slack.message(ALERTS, card.ts).buttons() == []
    assert len(_cards(slack)) == 1
    print("\n" + slack.transcript(ALERTS))


async def test_early_completed_event_does_not_close_a_running_card(worlds):
    world = await worlds.make(monitor_interval_s=30, bot_long_run_s=1.0)
    polytomic, slack = world.polytomic, world.slack
    sync_id = polytomic.add_sync(NAME, ["accounts"])
    polytomic.start_run(sync_id, durations=600)
    await polytomic.deliver(
        polytomic.event("bulk_sync.running", sync_id), url=_url(world), secret=WEBHOOK_SECRET
    )
    card = await slack.wait_for(lambda: _cards(slack) and _cards(slack)[0], timeout=10)
    # a stray "completed" event (unordered, or for an older run): Polytomic says it still runs
    stray = polytomic.event("bulk_sync.completed", sync_id)
    assert (await polytomic.deliver(stray, url=_url(world), secret=WEBHOOK_SECRET)).status_code == 200
    await asyncio.sleep(0.8)
    assert any(
        b["action_id"].startswith("polytomic.cancel") for b in slack.message(ALERTS, card.ts).buttons()
    )


async def test_served_in_socket_mode_too(worlds):
    world = await worlds.make(bot_mode="socket", slack_app_token="xapp-1-test-app-token")
    polytomic, slack = world.polytomic, world.slack
    sync_id = polytomic.add_sync(NAME, ["accounts"])
    event = polytomic.event("bulk_sync.failed", sync_id)
    assert (await polytomic.deliver(event, url=_url(world), secret="wrong-secret")).status_code == 401
    assert (await polytomic.deliver(event, url=_url(world), secret=WEBHOOK_SECRET)).status_code == 200
    await slack.wait_for(lambda: len(_cards(slack)) == 1, timeout=10)


async def test_running_event_for_an_unlisted_run_does_not_spin(worlds):
    world = await worlds.make(monitor_interval_s=30, bot_long_run_s=0.5)
    polytomic = world.polytomic
    monitor = world.bot.runtime.monitor
    await world.slack.wait_for(lambda: monitor.listings >= 1, timeout=5)
    sync_id = polytomic.add_sync(NAME, ["accounts"])  # nothing runs: the event is stale or early
    event = polytomic.event("bulk_sync.running", sync_id, execution_id="9a0e4c12-0000-4000-8000-00000000000b")
    assert (await polytomic.deliver(event, url=_url(world), secret=WEBHOOK_SECRET)).status_code == 200
    await asyncio.sleep(2.5)
    assert 2 <= monitor.listings <= 4  # looked again when due, then every 2 s, not in a loop
    assert _cards(world.slack) == []
