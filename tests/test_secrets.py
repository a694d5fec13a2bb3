"""Secrets never leave the bot: with every logger at DEBUG, no log line, no exception text, no Slack
message (every Web API call and response_url post, with its parameters), no HTTP answer of the bot
and no audit record contains the Slack bot token, the app-level token, the signing secret or the
Polytomic key (nor the Basic token derived from it), while the scenarios make the fakes echo
those secrets back in error bodies.

Two layers are checked: the bot's own loggers (`bot.*`) must be clean as they are; everything
else (Bolt, slack_sdk, httpx, uvicorn, ...) must be clean once the production logging
(`bot.logs.configure`, which `polytomic-bot serve` installs) is in place."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
import traceback

import httpx
import pytest
from conftest import SIGNING_SECRET, Bot, World, bot_settings

from bot.fakes.polytomic import FakePolytomic
from bot.fakes.slack import FakeSlack, SlackUser, sign

BOT_TOKEN = "xoxb-1111-SECRETbot-4f2a9c"
APP_TOKEN = "xapp-1-A0001-SECRETapp-77ab"
POLYTOMIC_KEY = "pk-SECRETpolytomic-9d8e7f6a"
ORG_ID = "0b7d5e7c-3a1f-4c8e-9d2b-6f4e1a2b3c4d"
BASIC = base64.b64encode(f"{ORG_ID}:{POLYTOMIC_KEY}".encode()).decode()
SECRETS = {
    "bot token": BOT_TOKEN,
    "app token": APP_TOKEN,
    "signing secret": SIGNING_SECRET,
    "polytomic key": POLYTOMIC_KEY,
    "basic token": BASIC,
}
CHANNEL = "C0001"


def _leaks(text: str, where: str) -> list[tuple[str, str, str]]:
    out = []
    for name, secret in SECRETS.items():
        # also a recognisable half, in case something was cut or split
        for piece in (secret, secret[: len(secret) // 2 + 4]):
            if piece in text:
                out.append((name, where, text[max(0, text.index(piece) - 80) : text.index(piece) + 80]))
                break
    return out


def _record_texts(record: logging.LogRecord, *, formatted_exc: bool) -> list[str]:
    """What a handler can write from the record. `formatted_exc`: format `exc_info` afresh (no
    handler formatted it yet); otherwise use `exc_text` when set, as logging.Formatter does."""
    texts = [record.getMessage(), str(record.msg)]
    if record.args:
        texts.append(repr(record.args))
    if record.exc_info and record.exc_info[0] is not None and (formatted_exc or not record.exc_text):
        texts.append("".join(traceback.format_exception(*record.exc_info)))
    if record.exc_text:
        texts.append(record.exc_text)
    if record.stack_info:
        texts.append(record.stack_info)
    for key, value in record.__dict__.items():
        if key not in logging.LogRecord("x", 0, "x", 0, "x", None, None).__dict__:
            texts.append(f"{key}={value!r}")
    return texts


class Evidence:
    """Everything the bot said to anybody during a scenario."""

    def __init__(self) -> None:
        self.answers: list[str] = []  # HTTP answers of the bot itself
        self.response_urls: list[str] = []
        self.exceptions: list[BaseException] = []

    def leaks(self, world: World, records: list[logging.LogRecord], *, own_only: bool) -> list:
        found = []
        for record in records:
            if own_only and not record.name.startswith("bot"):
                continue
            for text in _record_texts(record, formatted_exc=own_only):
                found += _leaks(text, f"log {record.name}")
        for call in world.slack.calls:
            found += _leaks(json.dumps(call.params, default=str), f"slack {call.method}")
        for url in self.response_urls:
            found += _leaks(json.dumps(world.slack.responses(url)), "response_url")
        for answer in self.answers:
            found += _leaks(answer, "bot HTTP answer")
        for exc in self.exceptions:
            found += _leaks("".join(traceback.format_exception(exc)), "exception")
        for request in world.polytomic.requests:
            found += _leaks(
                request.body.decode("latin-1") + repr(request.query) + request.raw_path, "polytomic"
            )
        return found


@pytest.fixture
def secret_fakes():
    with (
        FakePolytomic(
            api_key=POLYTOMIC_KEY, org_id=ORG_ID, cancel_delay_s=0.6, sync_cancel_delay_s=0.6
        ) as poly,
        FakeSlack(bot_token=BOT_TOKEN, app_token=APP_TOKEN) as slack,
    ):
        yield poly, slack


@pytest.fixture
async def secret_world(secret_fakes, tmp_path):
    poly, slack = secret_fakes
    settings = bot_settings(poly, slack, tmp_path, polytomic_api_key=POLYTOMIC_KEY, polytomic_org_id=ORG_ID)
    assert settings.slack_bot_token.get_secret_value() == BOT_TOKEN
    bot = await Bot(settings).start()
    try:
        yield World(poly, slack, bot, tmp_path)
    finally:
        await bot.stop()


@pytest.fixture
def production_logging():
    """What `polytomic-bot serve` installs at BOT_LOG_LEVEL=DEBUG (redaction of every record)."""
    import io

    from bot import logs

    stream = io.StringIO()
    handler = logs.configure(
        "DEBUG", "json", stream=stream, secrets=list(SECRETS.values()), quiet_libraries=False
    )
    try:
        yield stream
    finally:
        logs.reset()
        logging.getLogger().removeHandler(handler)


async def _scenarios(world: World, evidence: Evidence, monkeypatch, *, planted: bool = True) -> None:
    """Everything that makes a bot talk: commands, a cancel to its end, errors that echo secrets."""
    user = world.user
    poly = world.polytomic

    async def slash(text: str, who: SlackUser | None = None) -> None:
        who = who or user
        response = await who.slash(text)
        evidence.answers.append(response.text)
        evidence.response_urls.append(who.last_response_url)

    sync_id = poly.add_sync("Salesforce to Snowflake", ["accounts", "contacts", "leads"])
    poly.start_run(sync_id, durations=600)
    for text in ("help", "syncs", "status salesforce", "cancel salesforce accounts", "frobnicate"):
        await slash(text)

    # a cancel to its end, with Slack and Polytomic failing on the way and echoing secrets
    poly.cancel_delay_s = 2.0
    world.slack.fail("chat.update", "invalid_auth", times=1)
    world.slack.fail("chat.postMessage", "ratelimited", times=1, retry_after=0)
    await slash("cancel salesforce accounts --yes")
    root = await world.slack.wait_for(
        lambda: world.slack.messages(CHANNEL) and world.slack.messages(CHANNEL)[-1]
    )
    await world.slack.wait_for(lambda: world.slack.thread(CHANNEL, root.ts))
    status = f"/api/bulk/syncs/{sync_id}/status"
    poly.add_fault(
        "GET",
        status,
        status=500,
        times=2,
        body={"message": f"Authorization: Basic {BASIC} / {POLYTOMIC_KEY}"},
    )
    poly.add_fault(
        "GET", status, status=200, times=2, body=f"<html>proxy error for key {POLYTOMIC_KEY}</html>"
    )
    poly.add_fault(
        "GET", status, status=401, times=2, body={"error": f"bad key {POLYTOMIC_KEY} ({BOT_TOKEN})"}
    )
    await world.slack.wait_for(
        lambda: any("canceled" in r.text for r in world.slack.thread(CHANNEL, root.ts)), timeout=30
    )

    # errors answered to the user, quoting what Polytomic said
    poly.clear_faults()
    poly.add_fault(
        "GET", "/api/bulk/syncs", status=401, times=1, body={"message": f"key {POLYTOMIC_KEY} revoked"}
    )
    await slash("status salesforce")
    poly.add_fault("POST", "*", status=403, times=1, body={"message": f"read-only key {POLYTOMIC_KEY}"})
    await slash("cancel salesforce contacts --yes")
    poly.add_fault("GET", "*", status=200, times=1, malformed=True)
    await slash("syncs")

    if planted:
        # an unexpected failure inside the bot whose text carries secrets (only the production
        # logging can catch this one: the bot logs unexpected exceptions with their traceback)
        async def boom(*_a, **_k):
            raise RuntimeError(f"boom: {POLYTOMIC_KEY} {BOT_TOKEN} {SIGNING_SECRET}")

        monkeypatch.setattr(world.bot.runtime.client, "list_syncs", boom)
        await slash("syncs")
        monkeypatch.undo()

    # forged traffic (a body that mentions the secret, a wrong signature)
    async with httpx.AsyncClient() as http:
        raw = f"text=cancel+x+--yes&token={SIGNING_SECRET}".encode()
        for headers in (sign("wrong", raw), {}, sign(SIGNING_SECRET, raw, int(time.time()) - 900)):
            response = await http.post(
                world.bot.url + "/slack/events",
                content=raw,
                headers={"Content-Type": "application/x-www-form-urlencoded", **headers},
            )
            evidence.answers.append(response.text)
        for path in ("/healthz", "/readyz", "/metrics"):
            evidence.answers.append((await http.get(world.bot.url + path)).text)

    await asyncio.sleep(0.5)
    for url in evidence.response_urls:
        await world.slack.wait_for(lambda url=url: world.slack.responses(url) or True)
    for record in await world.bot.runtime.store.audit_records(limit=500):
        evidence.answers.append(json.dumps(record, default=str))


async def test_no_secret_in_the_bots_own_logs_messages_or_answers(secret_world, caplog, monkeypatch):
    caplog.set_level(logging.DEBUG)
    evidence = Evidence()
    await _scenarios(secret_world, evidence, monkeypatch, planted=False)
    assert len(caplog.records) > 50
    assert any(r.name.startswith("bot") and r.levelno == logging.DEBUG for r in caplog.records)
    leaks = evidence.leaks(secret_world, caplog.records, own_only=True)
    assert leaks == [], leaks[:5]


async def test_no_secret_anywhere_with_production_logging(
    secret_world, production_logging, caplog, monkeypatch
):
    caplog.set_level(logging.DEBUG)
    evidence = Evidence()
    await _scenarios(secret_world, evidence, monkeypatch)
    leaks = evidence.leaks(secret_world, caplog.records, own_only=False)
    assert leaks == [], leaks[:5]
    written = production_logging.getvalue()
    assert len(written.splitlines()) > 50
    assert _leaks(written, "log output") == []
    assert "[redacted]" in written  # the echoed secrets were there, and were removed


async def test_no_secret_in_socket_mode_logs(secret_fakes, tmp_path, caplog, production_logging):
    poly, slack = secret_fakes
    caplog.set_level(logging.DEBUG)
    settings = bot_settings(
        poly,
        slack,
        tmp_path,
        bot_mode="socket",
        slack_app_token=APP_TOKEN,
        polytomic_api_key=POLYTOMIC_KEY,
        polytomic_org_id=ORG_ID,
    )
    bot = await Bot(settings).start()
    try:
        world = World(poly, slack, bot, tmp_path)
        await slack.wait_for(slack.socket_connected)
        user = SlackUser(None, None, slack)
        assert "/polytomic" in json.dumps(await user.slash_via_socket("help"))
        await slack.disconnect_socket(notify=False)
        await slack.wait_for(lambda: slack.socket_connected() and slack.socket_connections >= 2, timeout=30)
        assert "/polytomic" in json.dumps(await user.slash_via_socket("help", timeout=10))
        leaks = Evidence().leaks(world, caplog.records, own_only=False)
        assert leaks == [], leaks[:5]
        assert slack.calls_to("apps.connections.open")[0].token == APP_TOKEN  # the token was used...
    finally:
        await bot.stop()
