"""Prometheus metrics: what `GET /metrics` shows after a cancel through the real bot, and that no
label carries user text."""

from __future__ import annotations

import json

import httpx
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families
from slack_sdk.web.async_client import AsyncWebClient

from bot import metrics
from bot.polytomic.client import PolytomicClient
from bot.polytomic.errors import NotFound

CHANNEL = "C0001"
CANCEL_ENDPOINT = "/api/bulk/syncs/{id}/schemas/{schema_id}/cancel"


REQUESTS = "polytomic_bot_slack_requests_total"
POLYTOMIC = "polytomic_bot_polytomic_requests_total"
SLACK_CALLS = "polytomic_bot_slack_api_calls_total"
CLICK = {"kind": "action", "name": "polytomic.cancel_schema"}


def _value(metric: str, /, **labels: str) -> float:
    return REGISTRY.get_sample_value(metric, labels) or 0.0


async def _scrape(world) -> dict[tuple[str, tuple], float]:
    async with httpx.AsyncClient() as http:
        response = await http.get(world.bot.url + "/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


async def _status_card(world, user_id="U0001"):
    response = await world.user.slash('status "Salesforce to Snowflake"')
    assert response.status_code == 200
    return await world.slack.wait_for(
        lambda: next((m for m in world.slack.ephemerals(CHANNEL, user_id) if m.buttons()), None)
    )


def _setup(world):
    sync_id = world.polytomic.add_sync("Salesforce to Snowflake", ["accounts", "contacts"])
    world.polytomic.start_run(sync_id, durations=600.0)
    return sync_id


async def test_metrics_after_a_cancel_through_the_real_bot(world):
    sync_id = _setup(world)
    before = {
        "ack": _value("polytomic_bot_slack_ack_seconds_count", kind="action"),
        "ack_3s": _value("polytomic_bot_slack_ack_seconds_bucket", kind="action", le="3.0"),
        "click": _value(REQUESTS, **CLICK, outcome="ok"),
        "status": _value(REQUESTS, kind="command", name="status", outcome="ok"),
        "sent": _value("polytomic_bot_cancels_total", outcome="sent"),
        "watch": _value("polytomic_bot_watch_seconds_count", outcome="canceled"),
        "cancel_post": _value(POLYTOMIC, method="POST", endpoint=CANCEL_ENDPOINT, status="200"),
        "post": _value(SLACK_CALLS, method="chat.postMessage", outcome="ok"),
        "http": _value("polytomic_bot_http_request_seconds_count", route="/slack/events", status="200"),
    }
    card = await _status_card(world)
    await world.user.click_button(
        card, "polytomic.cancel_schema", value=lambda v: json.loads(v)["schema_id"] == "accounts"
    )

    def ended():
        roots = world.slack.messages(CHANNEL)
        replies = world.slack.thread(CHANNEL, roots[-1].ts) if roots else []
        return bool(replies) and "canceled" in replies[-1].text

    await world.slack.wait_for(ended, timeout=20)
    await world.slack.wait_for(
        lambda: _value("polytomic_bot_watch_seconds_count", outcome="canceled") > before["watch"]
    )
    samples = await _scrape(world)

    def scraped(metric, /, **labels):
        return samples.get((metric, tuple(sorted(labels.items()))), 0.0)

    assert scraped("polytomic_bot_slack_ack_seconds_count", kind="action") == before["ack"] + 1
    assert scraped("polytomic_bot_slack_ack_seconds_bucket", kind="action", le="3.0") == before["ack_3s"] + 1
    assert scraped(REQUESTS, **CLICK, outcome="ok") == before["click"] + 1
    assert scraped(REQUESTS, kind="command", name="status", outcome="ok") == before["status"] + 1
    assert scraped("polytomic_bot_cancels_total", outcome="sent") == before["sent"] + 1
    assert scraped("polytomic_bot_watch_seconds_count", outcome="canceled") == before["watch"] + 1
    cancel_posts = scraped(POLYTOMIC, method="POST", endpoint=CANCEL_ENDPOINT, status="200")
    assert cancel_posts == before["cancel_post"] + 1
    assert scraped(SLACK_CALLS, method="chat.postMessage", outcome="ok") >= (
        before["post"] + 2  # the headline and the thread replies
    )
    assert scraped("polytomic_bot_http_request_seconds_count", route="/slack/events", status="200") >= (
        before["http"] + 2  # the command and the click
    )
    for name in ("polytomic_bot_watches_active", "polytomic_bot_lease_takeovers_total"):
        assert any(key[0] == name for key in samples), name
    for outcome in metrics.CANCEL_OUTCOMES:
        assert ("polytomic_bot_cancels_total", (("outcome", outcome),)) in samples
    # No label carries user or API text: ids, names, channels never appear as label values.
    values = {v for (name, labels) in samples for _, v in labels if name.startswith("polytomic_bot_")}
    for text in (sync_id, "accounts", "Salesforce to Snowflake", "U0001", CHANNEL, "T0001"):
        assert not any(text in value for value in values), text


async def test_denials_and_usage_errors_are_counted_by_outcome(world):
    _setup(world)
    denied = _value("polytomic_bot_cancels_total", outcome="denied")
    clicks_denied = _value(REQUESTS, **CLICK, outcome="denied")
    usage = _value(REQUESTS, kind="command", name="other", outcome="usage_error")
    stranger = world.as_user("U0BOB")
    await stranger.slash('status "Salesforce to Snowflake"')
    card = await world.slack.wait_for(
        lambda: next((m for m in world.slack.ephemerals(CHANNEL, "U0BOB") if m.buttons()), None)
    )
    await stranger.click_button(card, "polytomic.cancel_schema")
    await world.slack.wait_for(lambda: _value("polytomic_bot_cancels_total", outcome="denied") == denied + 1)
    assert _value(REQUESTS, **CLICK, outcome="denied") == clicks_denied + 1
    await world.user.slash("frobnicate <!channel> everything")
    await world.slack.wait_for(
        lambda: _value(REQUESTS, kind="command", name="other", outcome="usage_error") == usage + 1
    )
    assert world.polytomic.cancel_requests() == []


async def test_slack_retry_handlers_count_429s_and_retries(fake_slack):
    fake_slack.fail("chat.postMessage", "ratelimited", times=1, retry_after=0)
    limited = _value("polytomic_bot_slack_rate_limited_total", method="chat.postMessage")
    retries = _value("polytomic_bot_slack_retries_total", method="chat.postMessage", reason="ratelimited")
    client = AsyncWebClient(
        token=fake_slack.bot_token, base_url=fake_slack.api_url, retry_handlers=metrics.slack_retry_handlers()
    )
    response = await client.chat_postMessage(channel=CHANNEL, text="hello")
    assert response["ok"]
    assert _value("polytomic_bot_slack_rate_limited_total", method="chat.postMessage") == limited + 1
    assert (
        _value("polytomic_bot_slack_retries_total", method="chat.postMessage", reason="ratelimited")
        == retries + 1
    )


async def test_polytomic_calls_are_labelled_by_endpoint_template(fake_polytomic):
    unknown = "00000000-0000-4000-8000-000000000000"
    template = "/api/bulk/syncs/{id}/status"
    before = _value(POLYTOMIC, method="GET", endpoint=template, status="404")
    async with PolytomicClient(fake_polytomic.url, "test-polytomic-key") as client:
        try:
            await client.get_sync_status(unknown)
        except NotFound:
            pass
    assert _value(POLYTOMIC, method="GET", endpoint=template, status="404") == before + 1
    assert _value("polytomic_bot_polytomic_request_seconds_count", method="GET", endpoint=template) >= 1


def test_label_values_come_from_bounded_sets():
    assert metrics.request_kind({"command": "/polytomic", "text": "x"}) == "command"
    assert metrics.request_name("command", {"text": "<!channel> hello"}) == "other"
    assert metrics.request_name("command", {"text": "  CANCEL foo bar"}) == "cancel"
    assert metrics.request_name("command", {"text": ""}) == "help"
    action = {"type": "block_actions", "actions": [{"action_id": "polytomic.cancel_schema:3"}]}
    assert metrics.request_name(metrics.request_kind(action), action) == "polytomic.cancel_schema"
    forged = {"type": "block_actions", "actions": [{"action_id": "polytomic.<@U1> hi"}]}
    assert metrics.request_name("action", forged) == "other"
    shortcut = {"type": "message_action", "callback_id": "polytomic_cancel_from_message"}
    assert metrics.request_name(metrics.request_kind(shortcut), shortcut) == "polytomic_cancel_from_message"
    assert metrics.request_name("view", {"view": {"callback_id": "someone else's view"}}) == "other"
    assert metrics.slack_method("chat.postMessage") == "chat.postMessage"
    assert metrics.slack_method("chat.postMessage?token=xoxb-1") == "other"

    before = _value(POLYTOMIC, method="GET", endpoint="other", status="200")
    metrics.polytomic_call("GET", "/api/bulk/syncs/1234/status", 200, 0.01)  # a real path, not a template
    assert _value(POLYTOMIC, method="GET", endpoint="other", status="200") == before + 1
    before = _value(SLACK_CALLS, method="chat.update", outcome="other_error")
    metrics.slack_call("chat.update", "some_new_error_code", 0.01)
    assert _value(SLACK_CALLS, method="chat.update", outcome="other_error") == before + 1

    class AccessDenied(Exception):
        pass

    class Unauthorized(Exception):
        pass

    assert metrics.outcome_of(AccessDenied()) == "denied"
    assert metrics.outcome_of(ValueError()) == "error"
    from bot.polytomic.errors import Unauthorized as RealUnauthorized

    assert metrics.outcome_of(RealUnauthorized("x")) == "polytomic_error"
    assert metrics.outcome_of(Unauthorized()) == "error"
