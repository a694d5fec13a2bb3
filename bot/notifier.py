"""The only code that writes a watch's story to Slack: the headline message (kept current with
`chat.update`) and the replies in its thread. Everything is rendered from the stored watch, so a
retry, a restart or another replica heal the same way: render again from state.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime

from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from bot import cards, metrics
from bot.slack_errors import PERMANENT_SLACK_ERRORS
from bot.store import Watch

log = logging.getLogger("bot.notifier")



class SlackWriteError(Exception):
    """A Slack write failed. `permanent` says whether trying again can help."""

    def __init__(self, error: str, *, permanent: bool) -> None:
        super().__init__(error)
        self.error = error
        self.permanent = permanent


def slack_error_code(exc: BaseException) -> str:
    if isinstance(exc, SlackApiError):
        try:
            return str(exc.response.get("error") or "unknown_error")
        except Exception:
            return "unknown_error"
    return type(exc).__name__


def _wrap(exc: BaseException) -> SlackWriteError:
    code = slack_error_code(exc)
    return SlackWriteError(code, permanent=code in PERMANENT_SLACK_ERRORS)


class Notifier:
    def __init__(self, slack: AsyncWebClient, *, clock: Callable[[], datetime] | None = None) -> None:
        self.slack = slack
        self._clock = clock or (lambda: datetime.now(UTC))
        self._foreign_roots: set[tuple[str, str]] = set()  # roots that are other apps' messages

    # -- low level -------------------------------------------------------------------------

    async def _call(self, method: str, **kwargs) -> dict:
        """Call a Web API method through slack_sdk's own method (it knows which are sent as JSON
        and which as form data) and turn failures into SlackWriteError."""
        fn = getattr(self.slack, method.replace(".", "_"))
        started = time.monotonic()
        outcome = "ok"
        try:
            response = await fn(**kwargs)
            return response.data if isinstance(response.data, dict) else {}
        except SlackApiError as exc:
            outcome = slack_error_code(exc)
            raise _wrap(exc) from None
        except Exception as exc:  # connection errors after the client's own retries
            outcome = type(exc).__name__
            raise SlackWriteError(type(exc).__name__, permanent=False) from None
        finally:
            took = time.monotonic() - started
            metrics.slack_call(method, outcome, took)
            log.debug("slack %s -> %s in %.0f ms", method, outcome, took * 1000)

    async def post(
        self, channel: str, message: dict, *, thread_ts: str | None = None, broadcast: bool = False
    ) -> str:
        kwargs = {
            "channel": channel,
            "text": message["text"],
            "blocks": message.get("blocks"),
            "unfurl_links": False,
            "unfurl_media": False,
        }
        if thread_ts:
            kwargs["thread_ts"] = thread_ts
            if broadcast:
                kwargs["reply_broadcast"] = True
        data = await self._call("chat.postMessage", **{k: v for k, v in kwargs.items() if v is not None})
        return str(data.get("ts"))

    async def update(self, channel: str, ts: str, message: dict) -> None:
        await self._call(
            "chat.update", channel=channel, ts=ts, text=message["text"], blocks=message.get("blocks") or []
        )

    async def ephemeral(
        self, channel: str, user: str, message: dict, *, thread_ts: str | None = None
    ) -> None:
        kwargs = {"channel": channel, "user": user, "text": message["text"], "blocks": message.get("blocks")}
        if thread_ts:
            kwargs["thread_ts"] = thread_ts
        await self._call("chat.postEphemeral", **{k: v for k, v in kwargs.items() if v is not None})

    async def permalink(self, channel: str, ts: str | None) -> str | None:
        if not ts:
            return None
        try:
            data = await self._call("chat.getPermalink", channel=channel, message_ts=ts)
        except SlackWriteError:
            return None
        return data.get("permalink")

    # -- the story of a watch --------------------------------------------------------------

    def headline(self, w: Watch) -> dict:
        return cards.watch_headline(w, now=self._clock())

    async def open_headline(self, w: Watch) -> str:
        """Make the clicked card the headline, or post a new one. Returns the root ts.

        On someone else's message (the message shortcut on another tool's alert) the story goes
        into that message's thread: the headline is posted as its first reply (a snapshot, since
        it cannot be the message itself) and that message stays the root."""
        message = self.headline(w)
        if w.source_ts:
            try:
                await self.update(w.channel_id, w.source_ts, message)
                return w.source_ts
            except SlackWriteError as exc:
                if exc.error == "cant_update_message":
                    await self.post(w.channel_id, message, thread_ts=w.source_ts)
                    self._foreign_roots.add((w.channel_id, w.source_ts))
                    return w.source_ts
                if exc.error != "message_not_found":
                    raise
        return await self.post(w.channel_id, message)

    async def refresh_headline(self, w: Watch) -> None:
        if not w.root_ts or (w.channel_id, w.root_ts) in self._foreign_roots:
            return
        try:
            await self.update(w.channel_id, w.root_ts, self.headline(w))
        except SlackWriteError as exc:
            if exc.error != "cant_update_message":
                raise
            self._foreign_roots.add((w.channel_id, w.root_ts))

    async def reply(self, w: Watch, message: dict, *, broadcast: bool = False) -> None:
        await self.post(w.channel_id, message, thread_ts=w.root_ts, broadcast=broadcast)

    async def cancel_requested(self, w: Watch) -> None:
        await self.reply(w, cards.cancel_requested_reply(w, w.last_state))
        await self._headline_best_effort(w)

    async def state_changed(self, w: Watch, state: str, detail: str | None) -> None:
        await self.reply(w, cards.state_reply(w, state, detail))
        await self._headline_best_effort(w)

    async def also_asked(self, w: Watch, user_id: str) -> None:
        await self.reply(w, cards.also_asked_reply(w, user_id))
        await self._headline_best_effort(w)

    async def api_trouble(self, w: Watch, problem: str) -> None:
        await self.reply(w, cards.api_trouble_reply(w, problem))

    async def api_recovered(self, w: Watch) -> None:
        await self.reply(w, cards.api_recovered_reply(w))

    async def _headline_best_effort(self, w: Watch) -> None:
        """The thread reply is the record; the headline is rebuilt from state and heals on the next
        change, so a failed `chat.update` is logged, not raised."""
        try:
            await self.refresh_headline(w)
        except SlackWriteError as exc:
            log.warning("headline update failed for watch %s: %s", w.id, exc.error)
