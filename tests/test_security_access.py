"""Access through the real bot: people outside the allow-lists, user groups whose membership
changes, channels that are not allowed, another workspace or Enterprise Grid org. Each refusal is
answered (ephemerally, naming what grants access), audited, and sends nothing: no Polytomic
request, no channel message.

tests/test_access.py covers the Access rules as a unit; tests/test_e2e_* cover one denied user
and one foreign workspace. This file runs every way in (typed, preview, the three buttons)."""

from __future__ import annotations

import asyncio
import json
from urllib.parse import urlencode

import httpx
import pytest
from conftest import SIGNING_SECRET, Bot, World, bot_settings

from bot.fakes.slack import FakeSlack, SlackUser, sign

CHANNEL = "C0001"


async def _post_signed(world, body: bytes) -> httpx.Response:
    headers = {"Content-Type": "application/x-www-form-urlencoded", **sign(SIGNING_SECRET, body)}
    async with httpx.AsyncClient(timeout=15) as http:
        return await http.post(world.bot.url + "/slack/events", content=body, headers=headers)


def _running(world, schemas=("accounts", "contacts")) -> str:
    sync_id = world.polytomic.add_sync("Salesforce to Snowflake", list(schemas))
    world.polytomic.start_run(sync_id, durations=600)
    return sync_id


async def _attempts(world, user: SlackUser, sync_id: str, **kw) -> list[tuple[str, str]]:
    """Every way to ask for a cancel; returns (way, response_url) pairs. Answers given in the ack
    (a foreign workspace) are delivered by the fake as ephemeral messages."""
    out = []
    for way, text in [
        ("typed --yes", "cancel salesforce accounts --yes"),
        ("preview", "cancel salesforce --all"),
    ]:
        response = await user.slash(text, **kw)
        assert response.status_code == 200
        out.append((way, user.last_response_url))
    buttons = [
        ("polytomic.cancel_schema", {"sync_id": sync_id, "schema_id": "accounts"}),
        ("polytomic.cancel_sync", {"sync_id": sync_id}),
        ("polytomic.confirm_cancel", {"sync_id": sync_id, "schema_id": "contacts"}),
        ("polytomic.confirm_cancel", {"sync_id": sync_id}),
    ]
    for action_id, value in buttons:
        response = await user.click(action_id, json.dumps(value), ephemeral=True, **kw)
        assert response.status_code == 200
        out.append((action_id, user.last_response_url))
    return out


async def _denials(world, n: int) -> list[dict]:
    records: list[dict] = []
    for _ in range(200):
        records = [
            r for r in await world.bot.runtime.store.audit_records(limit=500) if r["outcome"] == "denied"
        ]
        if len(records) >= n:
            break
        await asyncio.sleep(0.05)
    return records


def _answer_text(world, url: str, user_id: str) -> str:
    bodies = world.slack.responses(url)
    if bodies:
        return json.dumps(bodies)
    return json.dumps([m.text for m in world.slack.ephemerals(None, user_id)])


async def _assert_refused(world, user: SlackUser, attempts, *, words: tuple[str, ...], channel=CHANNEL):
    for way, url in attempts:
        answer = await world.slack.wait_for(
            lambda url=url: world.slack.responses(url) or world.slack.ephemerals(None, user.user_id),
            timeout=10,
        )
        dump = _answer_text(world, url, user.user_id)
        assert answer and any(w in dump for w in words), (way, dump[:400])
        for body in world.slack.responses(url):
            assert body.get("response_type", "ephemeral") == "ephemeral", (way, body)
            assert body.get("replace_original") is not True, (way, body)
    await asyncio.sleep(0.3)
    assert world.polytomic.requests_to("POST", "*") == []
    assert world.polytomic.cancel_requests() == []
    assert world.slack.messages(channel) == []
    assert world.slack.calls_to("chat.postMessage") == []


async def test_users_outside_the_allow_list_are_refused_everywhere_and_audited(world):
    sync_id = _running(world)
    stranger = world.as_user("U0666")
    attempts = await _attempts(world, stranger, sync_id)
    await _assert_refused(world, stranger, attempts, words=("BOT_ALLOWED_USERS",))
    # refused before anything was looked up: the sync's state was never read either
    assert world.polytomic.requests == []
    records = await _denials(world, len(attempts))
    assert len(records) == len(attempts)
    assert {r["user_id"] for r in records} == {"U0666"}
    assert {r["channel_id"] for r in records} == {CHANNEL}
    assert {r["team_id"] for r in records} == {"T0001"}
    assert all("BOT_ALLOWED_USERS" in (r["detail"] or "") for r in records)
    # read-only commands still work for everybody in the workspace, and are not denials
    await stranger.slash("status salesforce")
    card = await world.slack.wait_for(lambda: world.slack.responses(stranger.last_response_url))
    assert "Salesforce" in json.dumps(card)
    assert len(await _denials(world, 0)) == len(attempts)


async def test_nobody_may_cancel_until_access_is_configured(make_world):
    world = await make_world(bot_allowed_users=())
    sync_id = _running(world)
    attempts = await _attempts(world, world.user, sync_id)
    await _assert_refused(world, world.user, attempts, words=("BOT_ALLOWED_USERS",))
    assert world.polytomic.requests == []
    assert len(await _denials(world, len(attempts))) == len(attempts)


async def test_a_request_without_a_user_is_refused(world):
    sync_id = _running(world)
    nobody = world.as_user("U0001")
    body = nobody.slash_body("cancel salesforce accounts --yes")
    body["user_id"] = ""
    response = await _post_signed(world, urlencode(body).encode())
    assert response.status_code == 200
    await world.slack.wait_for(lambda: world.slack.responses(body["response_url"]))
    payload = nobody.block_actions_payload(
        "polytomic.cancel_sync", json.dumps({"sync_id": sync_id}), ephemeral=True
    )
    payload["user"] = {"team_id": "T0001"}
    response = await _post_signed(world, urlencode({"payload": json.dumps(payload)}).encode())
    assert response.status_code == 200
    await world.slack.wait_for(lambda: world.slack.responses(payload["response_url"]))
    await asyncio.sleep(0.2)
    assert world.polytomic.requests_to("POST", "*") == []
    assert world.slack.messages(CHANNEL) == []


async def test_channels_not_allowed_are_refused_and_the_allowed_one_works(make_world):
    world = await make_world(bot_allowed_channels=("C0OPS",))
    sync_id = _running(world)
    attempts = await _attempts(world, world.user, sync_id)
    await _assert_refused(world, world.user, attempts, words=("BOT_ALLOWED_CHANNELS",))
    records = await _denials(world, len(attempts))
    assert len(records) == len(attempts) and {r["channel_id"] for r in records} == {CHANNEL}
    ops = world.as_user("U0001", channel_id="C0OPS")
    await ops.slash("cancel salesforce accounts --yes")
    await world.slack.wait_for(lambda: world.polytomic.cancel_requests())
    assert world.slack.messages(CHANNEL) == [] and world.slack.messages("C0OPS")


async def test_channels_alone_grant_everyone_in_them(make_world):
    world = await make_world(bot_allowed_users=(), bot_allowed_channels=("C0OPS",))
    _running(world)
    anyone = world.as_user("U0777", channel_id="C0OPS")
    await anyone.slash("cancel salesforce accounts --yes")
    await world.slack.wait_for(lambda: world.polytomic.cancel_requests())
    elsewhere = world.as_user("U0777", channel_id="C0002")
    await elsewhere.slash("cancel salesforce contacts --yes")
    answer = await world.slack.wait_for(lambda: world.slack.responses(elsewhere.last_response_url))
    assert "BOT_ALLOWED_CHANNELS" in json.dumps(answer)
    assert [s for _, s, _ in world.polytomic.cancel_requests()] == ["accounts"]


def _membership_clock(world) -> list[float]:
    """Make the bot's user-group cache expire on a clock the test moves.

    Runtime does not expose the cache TTL (requested: a `usergroup_cache_s` knob and a public
    `Runtime.access`); until then the test swaps the clock of the Access object the service holds."""
    access = world.bot.runtime.service.access
    now = [0.0]
    access._clock = lambda: now[0]
    access._cache.clear()
    return now


async def test_user_group_membership_changes_take_effect_when_the_cache_expires(make_world):
    world = await make_world(bot_allowed_users=(), bot_allowed_usergroups=("S0ONCALL",))
    world.slack.set_usergroup("S0ONCALL", ["U0001"])
    now = _membership_clock(world)
    _running(world, schemas=("a1", "a2", "a3", "a4"))
    alice, bob = world.user, world.as_user("U0002")

    await alice.slash("cancel salesforce a1 --yes")
    await world.slack.wait_for(lambda: len(world.polytomic.cancel_requests()) == 1)

    # Alice leaves the on-call group, Bob joins: cached for the TTL, then the change is seen
    world.slack.set_usergroup("S0ONCALL", ["U0002"])
    await bob.slash("cancel salesforce a2 --yes")
    refused = await world.slack.wait_for(lambda: world.slack.responses(bob.last_response_url))
    assert "BOT_ALLOWED_USERGROUPS" in json.dumps(refused) or "not allowed" in json.dumps(refused)
    now[0] += 61
    await bob.slash("cancel salesforce a2 --yes")
    await world.slack.wait_for(lambda: len(world.polytomic.cancel_requests()) == 2)
    await alice.slash("cancel salesforce a3 --yes")
    refused = await world.slack.wait_for(lambda: world.slack.responses(alice.last_response_url))
    assert "not allowed" in json.dumps(refused).lower()
    assert [s for _, s, _ in world.polytomic.cancel_requests()] == ["a1", "a2"]
    lookups = world.slack.calls_to("usergroups.users.list")
    assert len(lookups) == 2  # one per cache period, not one per click
    records = await _denials(world, 2)
    assert [r["user_id"] for r in sorted(records, key=lambda r: r["id"])] == ["U0002", "U0001"]


@pytest.mark.parametrize("error", ["missing_scope", "no_such_subteam", "ratelimited", "invalid_auth"])
async def test_user_group_lookup_failures_fail_closed(make_world, error):
    world = await make_world(bot_allowed_users=(), bot_allowed_usergroups=("S0ONCALL",))
    world.slack.set_usergroup("S0ONCALL", ["U0001"])
    world.slack.fail("usergroups.users.list", error, times=20, retry_after=0.01)
    _running(world)
    await world.user.slash("cancel salesforce accounts --yes")
    answer = await world.slack.wait_for(
        lambda: world.slack.responses(world.user.last_response_url), timeout=15
    )
    assert "not allowed" in json.dumps(answer).lower()
    await asyncio.sleep(0.2)
    assert world.polytomic.cancel_requests() == [] and world.slack.messages(CHANNEL) == []
    assert len(await _denials(world, 1)) == 1


async def test_another_workspace_is_refused_for_everything(world):
    sync_id = _running(world)
    foreign = world.as_user("U0001", team_id="T0BAD")
    attempts = await _attempts(world, foreign, sync_id)
    for text in ("status salesforce", "syncs", "help"):
        response = await foreign.slash(text)
        assert response.status_code == 200
        if text != "help":
            assert "workspace" in response.text.lower(), response.text
    await _assert_refused(world, foreign, attempts, words=("workspace",))
    assert world.polytomic.requests == []  # not even a read for another workspace
    records = await _denials(world, len(attempts) + 2)
    assert {r["team_id"] for r in records} == {"T0BAD"}
    assert len(records) >= len(attempts) + 2


async def test_a_click_whose_team_differs_from_its_user_team_is_refused(world):
    sync_id = _running(world)
    payload = world.user.block_actions_payload(
        "polytomic.cancel_sync", json.dumps({"sync_id": sync_id}), ephemeral=True, team_id="T0BAD"
    )
    payload["user"]["team_id"] = "T0001"  # the user looks local, the request comes from elsewhere
    response = await _post_signed(world, urlencode({"payload": json.dumps(payload)}).encode())
    assert response.status_code == 200
    await world.slack.wait_for(lambda: world.slack.responses(payload["response_url"]))
    await asyncio.sleep(0.2)
    assert world.polytomic.requests == []


@pytest.fixture
async def grid_world(fake_polytomic, tmp_path):
    with FakeSlack(enterprise_id="E0001", team_id="T0001") as slack:
        bot = await Bot(bot_settings(fake_polytomic, slack, tmp_path)).start()
        try:
            yield World(fake_polytomic, slack, bot, tmp_path)
        finally:
            await bot.stop()


async def test_another_enterprise_grid_org_is_refused(grid_world):
    world = grid_world
    sync_id = _running(world)
    outsider = SlackUser(world.bot.url, SIGNING_SECRET, world.slack, user_id="U0001", team_id="T0009")
    attempts = await _attempts(world, outsider, sync_id, enterprise_id="E0BAD")
    await _assert_refused(world, outsider, attempts, words=("Enterprise Grid", "another"))
    assert world.polytomic.requests == []
    records = await _denials(world, len(attempts))
    assert len(records) == len(attempts)
    # another workspace of the same org is the same organisation: allowed
    sibling = SlackUser(world.bot.url, SIGNING_SECRET, world.slack, user_id="U0001", team_id="T0002")
    await sibling.slash("cancel salesforce accounts --yes")
    await world.slack.wait_for(lambda: world.polytomic.cancel_requests())
