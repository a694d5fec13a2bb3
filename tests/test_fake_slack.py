"""The fake Slack, checked against the real clients: slack_sdk's AsyncWebClient, its aiohttp Socket Mode
client, its webhook client (response_url), its signature verifier, and a Bolt app in both modes."""

from __future__ import annotations

import asyncio
import json
import re
import time

import pytest
from slack_bolt.adapter.socket_mode.async_handler import AsyncSocketModeHandler
from slack_bolt.adapter.starlette.async_handler import AsyncSlackRequestHandler
from slack_bolt.app.async_app import AsyncApp
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_async_handlers import (
    AsyncRateLimitErrorRetryHandler,
    AsyncServerErrorRetryHandler,
)
from slack_sdk.signature import SignatureVerifier
from slack_sdk.socket_mode.aiohttp import SocketModeClient
from slack_sdk.socket_mode.response import SocketModeResponse
from slack_sdk.web.async_client import AsyncWebClient
from slack_sdk.webhook.async_client import AsyncWebhookClient
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.routing import Route

from bot.fakes.server import serve_in_thread
from bot.fakes.slack import FakeSlack, SlackUser, sign

SECRET = "test-signing-secret"

CARD = [
    {"type": "header", "text": {"type": "plain_text", "text": "Salesforce to Snowflake"}},
    {"type": "section", "text": {"type": "mrkdwn", "text": "*accounts* is running"}},
    {
        "type": "actions",
        "block_id": "card-actions",
        "elements": [
            {
                "type": "button",
                "action_id": "polytomic.cancel_schema:accounts",
                "text": {"type": "plain_text", "text": "Cancel accounts"},
                "value": json.dumps({"sync_id": "s-1", "schema_id": "accounts"}),
                "style": "danger",
            },
            {
                "type": "button",
                "action_id": "polytomic.refresh",
                "text": {"type": "plain_text", "text": "Refresh"},
                "value": json.dumps({"sync_id": "s-1"}),
            },
        ],
    },
]


@pytest.fixture
def slack():
    with FakeSlack() as fake:
        yield fake


@pytest.fixture
def client(slack):
    return AsyncWebClient(token=slack.bot_token, base_url=slack.api_url)


async def api_error(coro) -> SlackApiError:
    with pytest.raises(SlackApiError) as info:
        await coro
    return info.value


# ------------------------------------------------------------------------------------------ Web API
async def test_auth_test_and_bad_tokens(slack, client):
    me = await client.auth_test()
    assert (me["team_id"], me["user_id"], me["bot_id"]) == ("T0001", "UBOT", "BBOT")

    wrong = AsyncWebClient(token="xoxb-wrong", base_url=slack.api_url)
    err = await api_error(wrong.chat_postMessage(channel="C1", text="hi"))
    assert err.response.status_code == 200
    assert err.response["error"] == "invalid_auth"

    app_token = AsyncWebClient(token=slack.app_token, base_url=slack.api_url)
    err = await api_error(app_token.auth_test())
    assert err.response["error"] == "not_allowed_token_type"
    err = await api_error(client.apps_connections_open(app_token="xapp-wrong"))
    assert err.response["error"] == "invalid_auth"

    slack.revoke_token()
    err = await api_error(client.auth_test())
    assert err.response["error"] == "token_revoked"
    assert slack.messages("C1") == []


async def test_post_update_thread_and_records(slack, client):
    root = await client.chat_postMessage(channel="C1", text="card", blocks=CARD)
    r1 = await client.chat_postMessage(channel="C1", text="requested", thread_ts=root["ts"])
    await client.chat_update(channel="C1", ts=root["ts"], text="card v2", blocks=CARD[:2])
    r2 = await client.chat_postMessage(
        channel="C1", text="canceled", thread_ts=root["ts"], reply_broadcast=True
    )
    other = await client.chat_postMessage(channel="C1", text="second top-level")

    assert re.fullmatch(r"\d{10}\.\d{6}", root["ts"])
    tss = [root["ts"], r1["ts"], r2["ts"], other["ts"]]
    assert tss == sorted(tss) and len(set(tss)) == 4

    top = slack.messages("C1")
    assert [m.ts for m in top] == [root["ts"], other["ts"]]
    card = slack.message("C1", root["ts"])
    assert (card.text, card.blocks, card.user) == ("card v2", CARD[:2], "UBOT")
    assert card.edits == [{"text": "card", "blocks": CARD}]
    thread = slack.thread("C1", root["ts"])
    assert [(m.text, m.thread_ts, m.reply_broadcast) for m in thread] == [
        ("requested", root["ts"], False),
        ("canceled", root["ts"], True),
    ]
    assert [m.ts for m in slack.messages("C1", include_broadcasts=True)] == [
        root["ts"],
        r2["ts"],
        other["ts"],
    ]

    err = await api_error(client.chat_update(channel="C1", ts="1.000001", text="x"))
    assert err.response["error"] == "message_not_found"

    post = slack.calls_to("chat.postMessage")[0]
    assert post.params["blocks"] == CARD and post.params["channel"] == "C1"
    assert post.token == slack.bot_token
    assert post.headers["authorization"] == f"Bearer {slack.bot_token}"
    assert [c.method for c in slack.calls][:3] == ["chat.postMessage", "chat.postMessage", "chat.update"]


async def test_form_encoded_calls_and_token_parameter(slack, client):
    bare = AsyncWebClient(base_url=slack.api_url)
    resp = await bare.api_call(
        "chat.postMessage",
        data={"token": slack.bot_token, "channel": "C2", "text": "form", "blocks": json.dumps(CARD)},
    )
    assert slack.message("C2", resp["ts"]).blocks == CARD
    # read methods take query/form parameters; Slack ignores a JSON body there
    err = await api_error(client.api_call("conversations.info", json={"channel": "C2"}))
    assert err.response["error"] == "channel_not_found"
    info = await client.conversations_info(channel="C2")
    assert info["channel"]["id"] == "C2"
    err = await api_error(client.api_call("foo.bar"))
    assert err.response["error"] == "unknown_method"


async def test_ephemeral_permalink_usergroups_users(slack, client):
    root = await client.chat_postMessage(channel="C1", text="root")
    reply = await client.chat_postMessage(channel="C1", text="reply", thread_ts=root["ts"])
    eph = await client.chat_postEphemeral(channel="C1", user="U7", text="only you", thread_ts=root["ts"])
    [e] = slack.ephemerals(user="U7")
    assert (e.ts, e.text, e.channel, e.ephemeral_user, e.thread_ts) == (
        eph["message_ts"],
        "only you",
        "C1",
        "U7",
        root["ts"],
    )
    assert slack.ephemerals(channel="C9") == [] and slack.thread("C1", root["ts"])[0].text == "reply"
    err = await api_error(client.chat_update(channel="C1", ts=eph["message_ts"], text="edit"))
    assert err.response["error"] == "message_not_found"  # ephemeral messages cannot be updated

    link = (await client.chat_getPermalink(channel="C1", message_ts=root["ts"]))["permalink"]
    assert link == f"https://test-workspace.slack.com/archives/C1/p{root['ts'].replace('.', '')}"
    link = (await client.chat_getPermalink(channel="C1", message_ts=reply["ts"]))["permalink"]
    assert link.endswith(f"?thread_ts={root['ts']}&cid=C1")

    slack.set_usergroup("S1", ["U1", "U2"])
    assert (await client.usergroups_users_list(usergroup="S1"))["users"] == ["U1", "U2"]
    err = await api_error(client.usergroups_users_list(usergroup="S404"))
    assert err.response["error"] == "no_such_subteam"

    assert (await client.users_info(user="U1"))["user"]["id"] == "U1"
    slack.set_user("U404", exists=False)
    err = await api_error(client.users_info(user="U404"))
    assert err.response["error"] == "user_not_found"


@pytest.mark.parametrize(
    ("setting", "error"),
    [
        ({"member": False, "private": True}, "not_in_channel"),
        ({"archived": True}, "is_archived"),
        ({"exists": False}, "channel_not_found"),
    ],
)
async def test_channel_errors(slack, client, setting, error):
    slack.set_channel("C5", **setting)
    err = await api_error(client.chat_postMessage(channel="C5", text="hi"))
    assert err.response["error"] == error
    err = await api_error(client.chat_postEphemeral(channel="C5", user="U1", text="hi"))
    assert err.response["error"] == error


async def test_public_channel_without_membership_and_conversations_info(slack, client):
    slack.set_channel("C6", member=False, name="alerts")
    await client.chat_postMessage(channel="C6", text="chat:write.public")
    info = (await client.conversations_info(channel="C6"))["channel"]
    assert (info["name"], info["is_member"], info["is_private"]) == ("alerts", False, False)
    slack.set_channel("G1", member=False, private=True)
    err = await api_error(client.conversations_info(channel="G1"))
    assert err.response["error"] == "channel_not_found"


@pytest.mark.filterwarnings("ignore:The top-level `text` argument is missing")
async def test_invalid_blocks_and_no_text(slack, client):
    err = await api_error(client.chat_postMessage(channel="C1", text="x", blocks=[CARD[1]] * 51))
    assert err.response["error"] == "invalid_blocks"
    long_value = dict(CARD[2]["elements"][1], value="v" * 2001)
    err = await api_error(
        client.chat_postMessage(
            channel="C1", text="x", blocks=[{"type": "actions", "elements": [long_value]}]
        )
    )
    assert err.response["error"] == "invalid_blocks"
    err = await api_error(client.chat_postMessage(channel="C1"))
    assert err.response["error"] == "no_text"
    assert slack.messages("C1") == []


async def test_ratelimited_and_server_errors(slack, client):
    slack.fail("chat.postMessage", retry_after=7)
    err = await api_error(client.chat_postMessage(channel="C1", text="x"))
    assert err.response.status_code == 429
    assert err.response["error"] == "ratelimited"
    assert err.response.headers["Retry-After"] in ("7", ["7"])

    retrying = AsyncWebClient(
        token=slack.bot_token,
        base_url=slack.api_url,
        retry_handlers=[AsyncRateLimitErrorRetryHandler(max_retry_count=1), AsyncServerErrorRetryHandler()],
    )
    slack.fail("chat.postMessage", retry_after=0)
    assert (await retrying.chat_postMessage(channel="C1", text="after 429"))["ok"]
    assert [c.status for c in slack.calls_to("chat.postMessage")] == [429, 429, 200]

    slack.fail("chat.update", status=503, times=2)
    err = await api_error(client.chat_update(channel="C1", ts="1.1", text="x"))
    assert err.response.status_code == 503
    root = slack.messages("C1")[0]
    assert (await retrying.chat_update(channel="C1", ts=root.ts, text="v2"))["ok"]

    slack.fail("chat.postEphemeral", "user_not_in_channel")
    err = await api_error(client.chat_postEphemeral(channel="C1", user="U1", text="x"))
    assert (err.response.status_code, err.response["error"]) == (200, "user_not_in_channel")
    assert (await client.chat_postEphemeral(channel="C1", user="U1", text="x"))["ok"]


# ------------------------------------------------------------------------------------- response_url
async def test_response_url_from_a_command(slack):
    url = slack.new_response_url(channel="C1", user="U1")
    hook = AsyncWebhookClient(url)
    assert (await hook.send(text="just you")).status_code == 200
    await hook.send(text="everyone", response_type="in_channel")
    assert slack.responses(url) == [
        {"text": "just you"},
        {"text": "everyone", "response_type": "in_channel"},
    ]
    assert [e.text for e in slack.ephemerals("C1", "U1")] == ["just you"]
    assert [m.text for m in slack.messages("C1")] == ["everyone"]
    for _ in range(3):
        await hook.send(text="more")
    assert (await hook.send(text="sixth")).status_code == 404  # 5 uses only
    assert len(slack.responses(url)) == 5

    bare = slack.new_response_url()
    await AsyncWebhookClient(bare).send(text="recorded only")
    assert slack.responses(bare) == [{"text": "recorded only"}]


async def test_response_url_from_a_click(slack, client):
    root = await client.chat_postMessage(channel="C1", text="alert", blocks=CARD)
    url = slack.new_response_url(channel="C1", user="U1", message_ts=root["ts"])
    hook = AsyncWebhookClient(url)
    await hook.send(text="error for you", response_type="ephemeral", replace_original=False)
    assert slack.message("C1", root["ts"]).text == "alert"
    assert [e.text for e in slack.ephemerals(user="U1")] == ["error for you"]
    await hook.send(text="oops", response_type="ephemeral")  # without replace_original: false it clobbers
    assert slack.message("C1", root["ts"]).text == "oops"
    await hook.send(delete_original=True)
    assert slack.messages("C1") == []


async def test_transcript_and_wait_for(slack, client):
    root = await client.chat_postMessage(channel="C1", text="Cancelling accounts", blocks=CARD)
    await client.chat_postMessage(channel="C1", text="cancellation requested", thread_ts=root["ts"])
    await client.chat_postEphemeral(channel="C1", user="U1", text="psst")
    text = slack.transcript("C1")
    lines = text.splitlines()
    assert lines[0] == "#c1 (C1)"
    assert lines[1].endswith("UBOT: Cancelling accounts")
    assert "    | # Salesforce to Snowflake" in lines
    assert "    | *accounts* is running" in lines
    assert "    | [Cancel accounts] [Refresh]" in lines
    assert any(line.startswith("    > [") and line.endswith("cancellation requested") for line in lines)
    assert lines[-1].startswith("(only visible to U1)")

    assert await slack.wait_for(lambda: slack.thread("C1", root["ts"])[0].text) == "cancellation requested"
    with pytest.raises(AssertionError, match="cancellation requested"):
        await slack.wait_for(lambda: slack.thread("C1", root["ts"])[5], timeout=0.1)


# ------------------------------------------------------------------------------------- Socket Mode
async def test_socket_mode_client_hello_envelope_ack_and_reconnect(slack):
    received: list[dict] = []

    async def on_message(client, message, raw):
        received.append(message)

    async def on_request(client, req):
        payload = {"text": f"got {req.payload.get('text')}"} if req.type == "slash_commands" else None
        await client.send_socket_mode_response(
            SocketModeResponse(envelope_id=req.envelope_id, payload=payload)
        )

    web = AsyncWebClient(base_url=slack.api_url)
    sm = SocketModeClient(app_token=slack.app_token, web_client=web, ping_interval=1)
    sm.message_listeners.append(on_message)
    sm.socket_mode_request_listeners.append(on_request)
    try:
        await sm.connect()
        await slack.wait_for(lambda: slack.socket_connected() and received)
        hello = received[0]
        assert hello["type"] == "hello" and hello["connection_info"] == {"app_id": "A0001"}
        assert slack.calls_to("apps.connections.open")[0].token == slack.app_token

        user = SlackUser(None, None, slack, user_id="U1", channel_id="C1")
        ack = await slack.send_envelope("slash_commands", user.slash_body("help"))
        assert ack == {"text": "got help"}
        assert [e.text for e in slack.ephemerals("C1", "U1")] == ["got help"]  # the ack is shown to the user
        assert await slack.send_envelope("interactive", user.block_actions_payload("x", "{}")) is None
        env = slack.envelopes[0]
        assert (env.type, env.ack) == ("slash_commands", {"text": "got help"}) and env.ack_seconds >= 0

        await slack.disconnect_socket()
        await slack.wait_for(lambda: slack.socket_connections == 2 and slack.socket_connected())
        assert await slack.send_envelope("slash_commands", user.slash_body("again")) == {"text": "got again"}
        assert len(slack.calls_to("apps.connections.open")) == 2
    finally:
        await sm.close()
    await slack.wait_for(lambda: not slack.socket_connected())
    with pytest.raises(TimeoutError):
        await slack.send_envelope("events_api", {"event": {}}, timeout=0.2)


async def test_unacked_envelope_times_out_and_bad_ticket_is_refused(slack):
    import aiohttp

    async def never_ack(client, req):
        return None

    sm = SocketModeClient(app_token=slack.app_token, web_client=AsyncWebClient(base_url=slack.api_url))
    sm.socket_mode_request_listeners.append(never_ack)
    try:
        await sm.connect()
        await slack.wait_for(slack.socket_connected)
        with pytest.raises(TimeoutError):
            await slack.send_envelope("interactive", {"type": "block_actions"}, timeout=0.3)
    finally:
        await sm.close()
    ws_url = slack.url.replace("http", "ws") + "/link/?ticket=forged"
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.WSServerHandshakeError):
            await session.ws_connect(ws_url)


# --------------------------------------------------------------------------- signatures and SlackUser
def test_sign_agrees_with_slack_sdk():
    body = b"token=x&text=status+%22Salesforce+to+Snowflake%22"
    headers = sign(SECRET, body)
    verifier = SignatureVerifier(SECRET)
    assert verifier.is_valid_request(body, headers)
    assert not SignatureVerifier("other-secret").is_valid_request(body, headers)
    old = sign(SECRET, body, timestamp=int(time.time()) - 600)
    assert not verifier.is_valid_request(body, old)  # outside Slack's 5-minute window
    assert headers["X-Slack-Signature"] == verifier.generate_signature(
        timestamp=headers["X-Slack-Request-Timestamp"], body=body
    )


def bolt_app(slack: FakeSlack, seen: list) -> AsyncApp:
    app = AsyncApp(
        client=AsyncWebClient(token=slack.bot_token, base_url=slack.api_url), signing_secret=SECRET
    )

    @app.command("/polytomic")
    async def command(ack, body, respond):
        seen.append(body)
        await ack(text=f"you said {body['text']}")

    @app.action(re.compile(r"^polytomic\.(cancel_schema|refresh)(:.*)?$"))
    async def button(ack, body, respond):
        seen.append(body)
        await ack()
        await respond(text="clicked", response_type="ephemeral", replace_original=False)

    return app


async def test_slack_user_drives_a_bolt_app_over_http(slack, client):
    seen: list[dict] = []
    handler = AsyncSlackRequestHandler(bolt_app(slack, seen))

    async def events(request: Request):
        return await handler.handle(request)

    with serve_in_thread(Starlette(routes=[Route("/slack/events", events, methods=["POST"])])) as server:
        user = SlackUser(server.url, SECRET, slack, user_id="U1", channel_id="C1")
        resp = await user.slash('status "Salesforce to Snowflake"')
        assert resp.status_code == 200
        assert seen[0]["text"] == 'status "Salesforce to Snowflake"' and seen[0]["user_id"] == "U1"
        assert [e.text for e in slack.ephemerals("C1", "U1")] == ['you said status "Salesforce to Snowflake"']
        assert slack.responses(user.last_response_url) == []  # the ack answered, not the response_url

        root = await client.chat_postMessage(channel="C1", text="card", blocks=CARD)
        card = slack.message("C1", root["ts"])
        resp = await user.click_button(card, "polytomic.cancel_schema")
        assert resp.status_code == 200
        await slack.wait_for(lambda: any(e.text == "clicked" for e in slack.ephemerals(user="U1")))
        assert slack.responses(user.last_response_url)[0]["replace_original"] is False
        body = seen[1]
        assert body["actions"][0]["action_id"] == "polytomic.cancel_schema:accounts"
        assert json.loads(body["actions"][0]["value"]) == {"sync_id": "s-1", "schema_id": "accounts"}
        assert body["actions"][0]["block_id"] == "card-actions"
        assert body["container"] == {
            "type": "message",
            "message_ts": root["ts"],
            "channel_id": "C1",
            "is_ephemeral": False,
        }
        assert body["message"]["blocks"] == CARD and body["channel"]["id"] == "C1"
        assert slack.message("C1", root["ts"]).text == "card"  # replace_original: false kept the card

        with pytest.raises(AssertionError, match="no button"):
            await user.click_button(card, "polytomic.cancel_sync")
        await user.click_button(card, "polytomic.", value=lambda v: "schema_id" not in v)
        await slack.wait_for(lambda: len(seen) == 3)
        assert seen[2]["actions"][0]["action_id"] == "polytomic.refresh"

        forged = SlackUser(server.url, "wrong-secret", slack)
        assert (await forged.slash("help")).status_code == 401


async def test_bolt_socket_mode_handler_against_the_fake(slack):
    seen: list[dict] = []
    app = bolt_app(slack, seen)
    handler = AsyncSocketModeHandler(app, slack.app_token)
    await handler.connect_async()
    try:
        await slack.wait_for(slack.socket_connected)
        user = SlackUser(None, None, slack, user_id="U2", channel_id="C3")
        assert await user.slash_via_socket("help") == {"text": "you said help"}
        msg = slack.add_message("C3", "third-party alert", blocks=CARD)
        assert await user.click_button_via_socket(msg, "polytomic.refresh") is None
        await slack.wait_for(lambda: any(e.text == "clicked" for e in slack.ephemerals("C3", "U2")))
        assert seen[1]["message"]["user"] == "UALERTS"
    finally:
        await handler.close_async()
        await asyncio.sleep(0)
