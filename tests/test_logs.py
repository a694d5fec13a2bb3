"""Structured logs: the line shape, the context that follows a click, and redaction of secrets."""

from __future__ import annotations

import io
import json
import logging
import re

import pytest
from conftest import SIGNING_SECRET

from bot import logs

CHANNEL = "C0001"
TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


@pytest.fixture
def capture():
    """Configure our logging into a buffer; restore the root logger afterwards."""
    root = logging.getLogger()
    saved_level = root.level
    saved_libs = {name: logging.getLogger(name).level for name in logs.NOISY_LOGGERS}
    buf = io.StringIO()

    def configure(level="DEBUG", fmt="json", **kw):
        logs.configure(level, fmt, stream=buf, **kw)
        return buf

    yield configure
    logs.reset()
    root.setLevel(saved_level)
    for name, level in saved_libs.items():
        logging.getLogger(name).setLevel(level)


def _lines(buf: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in buf.getvalue().splitlines() if line.strip()]


def test_json_line_shape_context_and_extra(capture):
    buf = capture("INFO")
    log = logging.getLogger("bot.test")
    with logs.request_context(user_id="U1", channel_id="C1"):
        logs.bind(sync_id="s-1", schema_id="accounts")
        log.info("hello %s", "world", extra={"correlation_id": "abc123"})
    log.debug("not at INFO")
    log.warning("outside")
    first, second = _lines(buf)
    assert TIME.match(first["time"])
    assert (first["level"], first["logger"], first["message"]) == ("info", "bot.test", "hello world")
    assert first["user_id"] == "U1" and first["channel_id"] == "C1"
    assert first["sync_id"] == "s-1" and first["schema_id"] == "accounts"
    assert first["correlation_id"] == "abc123"
    assert re.fullmatch(r"[0-9a-f]{12}", first["request_id"])
    assert list(first)[:4] == ["time", "level", "logger", "message"]
    assert second["message"] == "outside" and "request_id" not in second and "user_id" not in second


def test_exception_and_newlines_stay_on_one_line(capture):
    buf = capture("INFO")
    try:
        raise ValueError("bad\nthing")
    except ValueError:
        logging.getLogger("bot.test").exception("it broke:\nsecond line")
    text = buf.getvalue()
    assert text.count("\n") == 1
    (line,) = _lines(buf)
    assert line["level"] == "error" and "ValueError: bad" in line["exception"]


def test_console_format(capture):
    buf = capture("INFO", "console")
    with logs.request_context(request_id="r1", watch_id="w1"):
        logging.getLogger("bot.test").info("hello")
    text = buf.getvalue()
    assert "INFO" in text and "bot.test" in text and "hello" in text
    assert "request_id=r1" in text and "watch_id=w1" in text


def test_level_and_format_from_the_environment(monkeypatch):
    monkeypatch.setenv("BOT_LOG_LEVEL", "warn")
    monkeypatch.setenv("BOT_LOG_FORMAT", "Console")
    assert logs.resolve() == ("WARNING", "console")
    monkeypatch.setenv("BOT_LOG_LEVEL", "loud")
    with pytest.raises(logs.LogConfigError, match="BOT_LOG_LEVEL"):
        logs.resolve()
    monkeypatch.setenv("BOT_LOG_LEVEL", "info")
    monkeypatch.setenv("BOT_LOG_FORMAT", "xml")
    with pytest.raises(logs.LogConfigError, match="BOT_LOG_FORMAT"):
        logs.resolve()


def test_redaction_everywhere_in_a_record(capture, caplog):
    secret = "polytomic-key-9f8e7d6c5b4a"
    buf = capture("DEBUG", secrets=[secret, "signing-secret-0a1b2c3d"])
    log = logging.getLogger("bot.test")
    caplog.set_level(logging.DEBUG, logger="bot.test")
    log.info("token xoxb-1234-5678-abcdefABCDEF in the message")
    log.info("args: %s and %r", "xapp-1-A01-123-abcdef", {"key": secret})
    log.info("headers %s", {"Authorization": "Bearer some-opaque-value-1234"})
    log.info("url %s", "postgresql://bot:hunter2hunter2@db.example.com:5432/bot")
    log.info("user token xoxp-111-222-333 and refresh xoxe-1-abc", extra={"detail": f"x {secret} y"})
    try:
        raise RuntimeError(f"failed with signing-secret-0a1b2c3d and {secret}")
    except RuntimeError:
        log.exception("boom")
    text = buf.getvalue()
    for leaked in (
        secret,
        "signing-secret-0a1b2c3d",
        "xoxb-1234",
        "xapp-1-A01",
        "some-opaque-value",
        "hunter2",
        "xoxp-111",
        "xoxe-1-abc",
    ):
        assert leaked not in text, leaked
        assert leaked not in caplog.text, leaked  # the factory redacts for every handler
    assert text.count(logs.REDACTED) >= 8
    assert "db.example.com" in text  # only the password goes


async def _cancel_by_click(world, schema="accounts"):
    sync_id = world.polytomic.add_sync("Salesforce to Snowflake", ["accounts", "contacts"])
    world.polytomic.start_run(sync_id, durations=600.0)
    response = await world.user.slash('status "Salesforce to Snowflake"')
    assert response.status_code == 200
    card = await world.slack.wait_for(
        lambda: next((m for m in world.slack.ephemerals(CHANNEL, "U0001") if m.buttons()), None)
    )
    response = await world.user.click_button(
        card, "polytomic.cancel_schema", value=lambda v: json.loads(v)["schema_id"] == schema
    )
    assert response.status_code == 200

    def ended():
        roots = world.slack.messages(CHANNEL)
        replies = world.slack.thread(CHANNEL, roots[-1].ts) if roots else []
        return replies if replies and "canceled" in replies[-1].text else None

    await world.slack.wait_for(ended, timeout=20)
    return sync_id


async def test_a_click_at_debug_logs_no_secret_and_one_request_id(capture, world):
    buf = capture("DEBUG", secrets=logs.secrets_of(world.bot.settings))
    for name in ("slack_bolt", "slack_sdk", "httpx", "aiohttp"):
        logging.getLogger(name).setLevel(logging.DEBUG)
    sync_id = await _cancel_by_click(world)
    # the end is logged right after the final reply is recorded
    await world.slack.wait_for(lambda: "final reply posted" in buf.getvalue())
    lines = _lines(buf)
    raw = buf.getvalue()
    for secret in (SIGNING_SECRET, "test-polytomic-key", world.slack.bot_token, world.slack.app_token):
        assert secret not in raw
    assert any(line["logger"].startswith("slack_") for line in lines)  # libraries were logging too

    acked = [
        line
        for line in lines
        if line["logger"] == "bot.requests"
        and line["message"].startswith("action polytomic.cancel_schema acked")
    ]
    assert len(acked) == 1, [line["message"] for line in lines if line["logger"] == "bot.requests"]
    request_id = acked[0]["request_id"]
    assert acked[0]["user_id"] == "U0001" and acked[0]["channel_id"] == CHANNEL

    click = [line for line in lines if line["message"].startswith("click polytomic.cancel_schema")]
    final = [line for line in lines if "final reply posted" in line["message"]]
    assert click and final, "the click and the end of its watch are logged"
    assert click[0]["request_id"] == request_id
    assert final[-1]["request_id"] == request_id
    assert final[-1]["sync_id"] == sync_id and final[-1]["schema_id"] == "accounts"
    watch_id = final[-1]["watch_id"]
    of_watch = [line for line in lines if line.get("watch_id") == watch_id]
    assert {line["request_id"] for line in of_watch} == {request_id}
    # Slack writes of the watch (headline, thread replies) carry it too, from ack to final reply.
    writes = [line for line in lines if line["message"].startswith("slack chat.") and line.get("request_id")]
    assert writes and {line["request_id"] for line in writes} == {request_id}
