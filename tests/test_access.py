"""Access rules (CONTRACT: deny by default). The user-group lookups here go through a plain async
function; the end-to-end tests drive the same rules through the fake Slack."""

from __future__ import annotations

import asyncio

import pytest

from bot.access import Access
from bot.errors import AccessDenied


def _access(**kw):
    a = Access(**kw)
    a.own_team_id = "T0001"
    return a


async def test_nobody_may_cancel_by_default():
    with pytest.raises(AccessDenied) as info:
        await _access().check_cancel(user_id="U1", channel_id="C1", team_id="T0001")
    assert "BOT_ALLOWED_USERS" in info.value.setting


async def test_listed_user_and_star():
    await _access(users=["U1"]).check_cancel(user_id="U1", channel_id="C1", team_id="T0001")
    with pytest.raises(AccessDenied) as info:
        await _access(users=["U1"]).check_cancel(user_id="U2", channel_id="C1", team_id="T0001")
    assert "BOT_ALLOWED_USERS" in info.value.setting
    await _access(users=["*"]).check_cancel(user_id="U2", channel_id="C1", team_id="T0001")


async def test_channels_limit_where():
    a = _access(users=["*"], channels=["C1"])
    await a.check_cancel(user_id="U2", channel_id="C1", team_id="T0001")
    with pytest.raises(AccessDenied) as info:
        await a.check_cancel(user_id="U2", channel_id="C9", team_id="T0001")
    assert info.value.setting == "BOT_ALLOWED_CHANNELS"
    # channels alone: everyone in them
    await _access(channels=["C1"]).check_cancel(user_id="U7", channel_id="C1", team_id="T0001")


async def test_other_workspace_and_grid_org_refused():
    a = _access(users=["*"])
    with pytest.raises(AccessDenied):
        await a.check_cancel(user_id="U1", channel_id="C1", team_id="T9999")
    a.own_enterprise_id = "E1"
    with pytest.raises(AccessDenied):
        await a.check_cancel(user_id="U1", channel_id="C1", team_id="T0001", enterprise_id="E2")
    # another workspace of the same Grid org is the same organisation
    await a.check_cancel(user_id="U1", channel_id="C1", team_id="T0002", enterprise_id="E1")


async def test_usergroup_members_cached_and_expire():
    now = [0.0]
    members = {"S1": ["U1"]}
    calls = []

    async def fetch(group):
        calls.append(group)
        await asyncio.sleep(0.01)
        return members[group]

    a = _access(usergroups=["S1"], fetch_members=fetch, cache_ttl_s=60, clock=lambda: now[0])
    await asyncio.gather(*(a.check_cancel(user_id="U1", channel_id="C", team_id="T0001") for _ in range(10)))
    assert calls == ["S1"]  # ten concurrent checks share one lookup
    members["S1"] = ["U2"]
    await a.check_cancel(user_id="U1", channel_id="C", team_id="T0001")  # cached
    now[0] = 61
    with pytest.raises(AccessDenied):
        await a.check_cancel(user_id="U1", channel_id="C", team_id="T0001")
    await a.check_cancel(user_id="U2", channel_id="C", team_id="T0001")
    assert calls == ["S1", "S1"]


async def test_usergroup_lookup_failure_fails_closed():
    async def fetch(group):
        raise RuntimeError("slack down")

    with pytest.raises(AccessDenied):
        await _access(usergroups=["S1"], fetch_members=fetch).check_cancel(
            user_id="U1", channel_id="C", team_id="T0001"
        )
