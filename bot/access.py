"""Who may cancel, where. Deny by default (CONTRACT.md, Settings): with none of the three
`BOT_ALLOWED_*` settings set, nobody may cancel. Read-only commands are not checked here.

Rules, in order:
- a request from another workspace (team or Enterprise Grid org) than the bot's own is refused;
- `BOT_ALLOWED_CHANNELS`, when set, limits where cancelling works;
- `BOT_ALLOWED_USERS` (`*` = every member) and `BOT_ALLOWED_USERGROUPS` grant it to people; when
  neither is set but channels are, everyone in those channels may cancel.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence

from bot.errors import AccessDenied

log = logging.getLogger("bot.access")

GRANTING = "BOT_ALLOWED_USERS or BOT_ALLOWED_USERGROUPS"

MembersFetcher = Callable[[str], Awaitable[Sequence[str]]]


class Access:
    def __init__(
        self,
        *,
        users: Sequence[str] = (),
        usergroups: Sequence[str] = (),
        channels: Sequence[str] = (),
        fetch_members: MembersFetcher | None = None,
        cache_ttl_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.users = frozenset(users)
        self.everyone = "*" in self.users
        self.usergroups = tuple(usergroups)
        self.channels = frozenset(channels)
        self._fetch = fetch_members
        self._ttl = cache_ttl_s
        self._clock = clock
        self._cache: dict[str, tuple[float, frozenset[str]]] = {}
        self._inflight: dict[str, asyncio.Future] = {}
        self.own_team_id: str | None = None
        self.own_enterprise_id: str | None = None

    @property
    def configured(self) -> bool:
        return bool(self.users or self.usergroups or self.channels)

    def check_workspace(self, team_id: str | None, enterprise_id: str | None = None) -> None:
        """Refuse requests that come from another workspace or Grid org than the bot's own."""
        if self.own_team_id is None:
            return  # unknown until auth.test answered; the transport verified the signature already
        if self.own_enterprise_id and enterprise_id and enterprise_id != self.own_enterprise_id:
            raise AccessDenied("This bot serves another Enterprise Grid organization.", setting="none")
        if (
            team_id
            and team_id != self.own_team_id
            and not (self.own_enterprise_id and enterprise_id == self.own_enterprise_id)
        ):
            raise AccessDenied("This bot serves another workspace.", setting="none")

    async def check_cancel(
        self, *, user_id: str, channel_id: str | None, team_id: str | None, enterprise_id: str | None = None
    ) -> None:
        """Return when `user_id` may cancel in `channel_id`, else raise AccessDenied."""
        self.check_workspace(team_id, enterprise_id)
        if not self.configured:
            raise AccessDenied(
                "Nobody may cancel syncs yet: the operator has not granted access to anyone.",
                setting=f"{GRANTING} (optionally BOT_ALLOWED_CHANNELS)",
            )
        if self.channels and channel_id not in self.channels:
            raise AccessDenied("Cancelling is not enabled in this channel.", setting="BOT_ALLOWED_CHANNELS")
        if not self.users and not self.usergroups:
            return  # channels alone grant access to everyone in them
        if self.everyone or user_id in self.users:
            return
        for group in self.usergroups:
            if user_id in await self.members(group):
                return
        raise AccessDenied("You are not allowed to cancel syncs.", setting=GRANTING)

    async def members(self, group_id: str) -> frozenset[str]:
        """Members of a user group, cached for `cache_ttl_s`; concurrent lookups share one call."""
        now = self._clock()
        cached = self._cache.get(group_id)
        if cached and cached[0] > now:
            return cached[1]
        if self._fetch is None:
            return frozenset()
        pending = self._inflight.get(group_id)
        if pending is None:
            pending = asyncio.ensure_future(self._load(group_id))
            self._inflight[group_id] = pending
            pending.add_done_callback(lambda _f: self._inflight.pop(group_id, None))
        return await asyncio.shield(pending)

    async def _load(self, group_id: str) -> frozenset[str]:
        try:
            users = frozenset(await self._fetch(group_id))  # type: ignore[misc]
        except Exception as exc:
            log.warning("could not list members of user group %s: %s", group_id, type(exc).__name__)
            stale = self._cache.get(group_id)
            # Fail closed, but a recent answer is better than locking on-call out during a Slack blip.
            return stale[1] if stale else frozenset()
        self._cache[group_id] = (self._clock() + self._ttl, users)
        return users
