"""Slack wiring: the Bolt `AsyncApp`, its listeners and the one error handler.

Every listener follows the same path: a cheap, local check (workspace, parse), `ack()` well
within Slack's 3 seconds, and only then any network work (Polytomic, Slack, the database).
Listeners raise domain errors; `answer_error` is the only place that turns an error into words.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import uuid
from datetime import UTC, datetime
from typing import Any

from slack_bolt.async_app import AsyncApp
from slack_sdk.web.async_client import AsyncWebClient

from bot import cards, commands, metrics
from bot.access import Access
from bot.errors import (
    AccessDenied,
    AmbiguousName,
    BadButton,
    BotError,
    NothingRunning,
    UnknownName,
    UsageError,
)
from bot.notifier import Notifier, SlackWriteError
from bot.polytomic.client import PolytomicClient
from bot.polytomic.errors import PolytomicError
from bot.polytomic.resolve import looks_like_uuid, resolve_schema
from bot.service import CancelResult, CancelService, CannotPost, Origin

log = logging.getLogger("bot.slack")

CANCEL_ACTIONS = re.compile(r"\Apolytomic\.(cancel_schema|cancel_sync|confirm_cancel)(:.*)?\Z", re.S)
REFRESH_ACTION = re.compile(r"\Apolytomic\.refresh(:.*)?\Z", re.S)
ANY_ACTION = re.compile(r".*")
MAX_VALUE_LEN = 2000
WORK_PERMITS = 32


def parse_button_value(raw: Any, *, need_schema: bool | None) -> tuple[str, str | None]:
    """A button's JSON value -> (sync_id, schema_id). Raises BadButton on anything else."""
    if not isinstance(raw, str) or not raw or len(raw) > MAX_VALUE_LEN:
        raise BadButton("This button carries no valid target.")
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError):
        raise BadButton("This button's value is not valid JSON.") from None
    if not isinstance(value, dict):
        raise BadButton("This button's value is not an object.")
    sync_id = value.get("sync_id")
    schema_id = value.get("schema_id")
    if not isinstance(sync_id, str) or not looks_like_uuid(sync_id):
        raise BadButton("This button does not name a bulk sync by its id.")
    if schema_id is not None and (not isinstance(schema_id, str) or not schema_id):
        raise BadButton("This button names a schema in a form I do not understand.")
    if need_schema is True and schema_id is None:
        raise BadButton("This cancel button does not name a schema.")
    if need_schema is False and schema_id is not None:
        raise BadButton("This button cancels a whole sync but names a schema.")
    return sync_id, schema_id


def _button_on_card(message: dict | None, action_id: str, value: str) -> bool:
    """A real click carries a button that is on the clicked card. Forged values are not."""
    if not message or not isinstance(message.get("blocks"), list):
        return True  # ephemeral cards are not sent back to us; nothing to compare with
    for block in message["blocks"]:
        if not isinstance(block, dict):
            continue
        elements = block.get("elements")
        candidates = list(elements) if isinstance(elements, list) else []
        if isinstance(block.get("accessory"), dict):
            candidates.append(block["accessory"])
        for element in candidates:
            if isinstance(element, dict) and element.get("action_id") == action_id and element.get(
                "value"
            ) == value:
                return True
    return False


def _obj(value: Any) -> dict:
    return value if isinstance(value, dict) else {}


def _str(value: Any) -> str:
    return value if isinstance(value, str) else ""


def first_action(body: Any) -> dict:
    """The clicked action, with `action_id` and `value` as strings (empty when absent or odd)."""
    actions = body.get("actions") if isinstance(body, dict) else None
    action = actions[0] if isinstance(actions, list) and actions and isinstance(actions[0], dict) else {}
    return {
        **action,
        "action_id": _str(action.get("action_id")),
        "value": action.get("value") if isinstance(action.get("value"), str) else None,
    }


def origin_of(body: dict) -> Origin:
    """Who and where, from a slash command or an interaction payload."""
    if "command" in body:
        return Origin(
            team_id=_str(body.get("team_id")),
            user_id=_str(body.get("user_id")),
            channel_id=_str(body.get("channel_id")),
            enterprise_id=_str(body.get("enterprise_id")) or None,
        )
    user, team, container, channel, enterprise = (
        _obj(body.get(key)) for key in ("user", "team", "container", "channel", "enterprise")
    )
    return Origin(
        team_id=_str(team.get("id")) or _str(user.get("team_id")),
        user_id=_str(user.get("id")),
        channel_id=_str(container.get("channel_id")) or _str(channel.get("id")),
        enterprise_id=_str(enterprise.get("id")) or _str(team.get("enterprise_id")) or None,
    )


class SlackHandlers:
    def __init__(
        self,
        *,
        app: AsyncApp,
        client: PolytomicClient,
        service: CancelService,
        access: Access,
        notifier: Notifier,
        slack: AsyncWebClient,
    ) -> None:
        self.app = app
        self.client = client
        self.service = service
        self.access = access
        self.notifier = notifier
        self.slack = slack
        self._work = asyncio.Semaphore(WORK_PERMITS)

    def register(self) -> None:
        self.app.command(re.compile(r"^/.+"))(self._queued(self.on_command))
        self.app.action(CANCEL_ACTIONS)(self._queued(self.on_cancel_click))
        self.app.action(REFRESH_ACTION)(self._queued(self.on_refresh_click))
        self.app.action(ANY_ACTION)(self.on_unknown_action)
        self.app.error(self.on_bolt_error)

    def _queued(self, listener):
        """The work a listener does after its ack (Polytomic, the store, Slack) waits for one of
        `WORK_PERMITS`; the ack itself never waits. A burst then queues as cheap coroutines instead
        of hundreds of requests in flight, which keeps the event loop, and every later ack, fast."""

        async def handler(ack, body, respond) -> None:
            held = False

            async def ack_then_queue(*args, **kwargs) -> None:
                nonlocal held
                await ack(*args, **kwargs)
                if not held:
                    await self._work.acquire()
                    held = True

            try:
                await listener(ack_then_queue, body, respond)
            finally:
                if held:
                    self._work.release()

        handler.__name__ = listener.__name__
        return handler

    # -- slash command ---------------------------------------------------------------------

    async def on_command(self, ack, body: dict, respond) -> None:
        origin = origin_of(body)
        try:
            self.access.check_workspace(origin.team_id, origin.enterprise_id)
            command = commands.parse(body.get("text") or "")
        except (UsageError, AccessDenied) as exc:
            await ack(response_type="ephemeral", **self._render(exc, origin))
            if isinstance(exc, AccessDenied):
                await self._audit_denied(exc, origin, "command")
            return
        if isinstance(command, commands.Help):
            await ack(response_type="ephemeral", **cards.help_message(commands.USAGE))
            return
        await ack()
        log.info(
            "command %s from %s in %s",
            type(command).__name__.lower(),
            origin.user_id,
            origin.channel_id,
            extra={"request_id": origin.request_id},
        )
        try:
            if isinstance(command, commands.Syncs):
                await self._syncs(command, respond)
            elif isinstance(command, commands.Status):
                await self._status(command, respond)
            elif isinstance(command, commands.Cancel):
                await self._cancel_command(command, origin, respond)
        except Exception as exc:
            await self.answer_error(exc, respond, origin, click=False)

    async def _syncs(self, command: commands.Syncs, respond) -> None:
        syncs = await self.client.list_syncs()
        if command.filter:
            needle = command.filter.casefold()
            syncs = [
                s for s in syncs if needle in (s.name or "").casefold() or needle == (s.id or "").casefold()
            ]
        statuses = {}
        ids = [s.id for s in syncs if s.id]
        if ids:
            for item in await self.client.list_sync_statuses(ids[:200]):
                if item.sync_id:
                    statuses[item.sync_id] = item
        rows = [(s, statuses.get(s.id or "")) for s in syncs]
        await respond(response_type="ephemeral", **cards.sync_list(rows, command.filter))

    async def _status(self, command: commands.Status, respond) -> None:
        sync = await self.service.find_sync(command.sync)
        status = await self.client.get_sync_status(sync.id or command.sync)
        schema_id = None
        if command.schema is not None:
            schemas = await self.client.list_schemas(sync.id or command.sync)
            current = status.current_execution
            schema_id = resolve_schema(command.schema, schemas, current.schemas if current else ())
        card = cards.status_card(sync, status, schema_filter=schema_id, now=datetime.now(UTC))
        await respond(response_type="ephemeral", replace_original=False, **card)

    async def _cancel_command(self, command: commands.Cancel, origin: Origin, respond) -> None:
        schema_ref = None if command.all else command.schema
        if not command.yes:
            await self.access.check_cancel(
                user_id=origin.user_id,
                channel_id=origin.channel_id,
                team_id=origin.team_id,
                enterprise_id=origin.enterprise_id,
            )
            target = await self.service.locate(command.sync, schema_ref)
            await respond(
                response_type="ephemeral",
                **cards.cancel_preview(target.sync, target.status, target.schema_id),
            )
            return
        result = await self.service.request_cancel(origin, command.sync, schema_ref)
        await self._tell_requester(result, respond, replace=False)

    # -- buttons ---------------------------------------------------------------------------

    async def on_cancel_click(self, ack, body: dict, respond) -> None:
        await ack()  # first: nothing in a malformed payload may delay the ack
        origin = origin_of(body)
        try:
            self.access.check_workspace(origin.team_id, origin.enterprise_id)
            action = first_action(body)
            action_id = str(action.get("action_id") or "")
            kind = CANCEL_ACTIONS.match(action_id)
            need_schema = {"cancel_schema": True, "cancel_sync": False}.get(
                kind.group(1) if kind else "", None
            )
            raw_value = action.get("value")
            sync_id, schema_id = parse_button_value(raw_value, need_schema=need_schema)
            container = _obj(body.get("container"))
            ephemeral = bool(container.get("is_ephemeral"))
            message = None if ephemeral else (_obj(body.get("message")) or None)
            if not _button_on_card(message, action_id, raw_value):
                raise BadButton("This button's target does not match the card it is on.")
            if message and message.get("ts"):
                origin.source_ts = str(message["ts"])
            log.info(
                "click %s by %s in %s",
                action_id,
                origin.user_id,
                origin.channel_id,
                extra={"request_id": origin.request_id},
            )
            result = await self.service.request_cancel(origin, sync_id, schema_id, exact_ids=True)
            await self._tell_requester(result, respond, replace=ephemeral)
        except Exception as exc:
            await self.answer_error(exc, respond, origin, click=True)

    async def on_refresh_click(self, ack, body: dict, respond) -> None:
        await ack()  # first: nothing in a malformed payload may delay the ack
        origin = origin_of(body)
        try:
            self.access.check_workspace(origin.team_id, origin.enterprise_id)
            action = first_action(body)
            sync_id, _ = parse_button_value(action.get("value"), need_schema=None)
            container = _obj(body.get("container"))
            sync = await self.client.get_sync(sync_id)
            status = await self.client.get_sync_status(sync_id)
            card = cards.status_card(sync, status, now=datetime.now(UTC))
            if container.get("is_ephemeral") or not (body.get("message") or {}).get("ts"):
                await respond(replace_original=True, **card)
            else:
                await self.notifier.update(origin.channel_id, body["message"]["ts"], card)
        except Exception as exc:
            await self.answer_error(exc, respond, origin, click=True)

    async def on_unknown_action(self, ack, body: dict, respond) -> None:
        await ack()
        action = first_action(body)
        log.info("ignored unknown action %r", str(action.get("action_id"))[:80])
        await self.answer_error(BadButton("I do not know this button."), respond, origin_of(body), click=True)

    # -- answers ---------------------------------------------------------------------------

    async def _tell_requester(self, result: CancelResult, respond, *, replace: bool) -> None:
        link = await self.notifier.permalink(result.watch.channel_id, result.watch.root_ts)
        message = (
            cards.pointer_to_thread(result.watch, link) if not result.created else _sent_message(result, link)
        )
        if replace:
            await respond(replace_original=True, **message)
        else:
            await respond(response_type="ephemeral", replace_original=False, **message)

    def _render(self, exc: BaseException, origin: Origin) -> dict:
        metrics.note_outcome(exc)
        if isinstance(exc, UsageError):
            return cards.usage_error(exc)
        if isinstance(exc, AccessDenied):
            return cards.access_denied(exc)
        if isinstance(exc, (UnknownName, AmbiguousName)):
            return cards.unknown_name(exc)
        if isinstance(exc, NothingRunning):
            return cards.nothing_running(exc.what, exc.last_status)
        if isinstance(exc, BadButton):
            return {
                "text": cards.escape(str(exc)),
                "blocks": [
                    {
                        "type": "section",
                        "text": {"type": "mrkdwn", "text": ":warning: " + cards.escape(str(exc))},
                    }
                ],
            }
        if isinstance(exc, PolytomicError):
            return cards.polytomic_error(exc)
        if isinstance(exc, CannotPost):
            if exc.error == "not_in_channel":
                return cards.not_in_channel(exc.channel_id)
            if exc.error in ("invalid_auth", "token_revoked", "account_inactive", "not_authed"):
                text = (
                    f"Slack refused the bot's token ({exc.error}), so nothing was cancelled. "
                    "An operator must check SLACK_BOT_TOKEN (reinstall the app if it was revoked)."
                )
                block = {"type": "section", "text": {"type": "mrkdwn", "text": text}}
                return {"text": text, "blocks": [block]}
            text = (
                f"I cannot post in this channel ({exc.error}), so nothing was cancelled. "
                "Try from a channel I am in."
            )
            return {"text": text, "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": text}}]}
        if isinstance(exc, SlackWriteError):
            text = f"Slack did not accept my message ({exc.error}). " + (
                "I will keep trying in the background." if not exc.permanent else "Nothing more was done."
            )
            return {"text": text, "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": text}}]}
        if isinstance(exc, BotError):
            return {"text": cards.escape(str(exc)), "blocks": []}
        ref = uuid.uuid4().hex[:8]
        log.error(
            "unexpected error ref=%s: %s",
            ref,
            type(exc).__name__,
            exc_info=exc,
            extra={"request_id": origin.request_id, "correlation_id": ref},
        )
        return cards.unexpected_error(ref)

    async def _audit_denied(self, exc: AccessDenied, origin: Origin, action: str) -> None:
        """Every refusal leaves a record: who tried what, where, and which rule said no."""
        try:
            await self.service.store.audit(
                action=action,
                outcome="denied",
                team_id=origin.team_id or None,
                user_id=origin.user_id or None,
                channel_id=origin.channel_id or None,
                detail=f"{exc.reason} [{exc.setting}]"[:500],
                request_id=origin.request_id,
            )
        except Exception as audit_exc:
            log.warning("could not audit a denial: %s", type(audit_exc).__name__)

    async def answer_error(self, exc: BaseException, respond, origin: Origin, *, click: bool) -> None:
        if isinstance(exc, AccessDenied):
            await self._audit_denied(exc, origin, "click" if click else "command")
        if not isinstance(exc, (BotError, PolytomicError, CannotPost, SlackWriteError)):
            message = self._render(exc, origin)
        else:
            log.info(
                "answered %s to %s",
                type(exc).__name__,
                origin.user_id,
                extra={"request_id": origin.request_id},
            )
            message = self._render(exc, origin)
        message = {k: v for k, v in message.items() if v}
        try:
            await respond(response_type="ephemeral", replace_original=False, **message)
        except Exception as send_exc:
            log.warning(
                "could not answer via response_url (%s); trying chat.postEphemeral", type(send_exc).__name__
            )
            try:
                await self.notifier.ephemeral(origin.channel_id, origin.user_id, message)
            except Exception as eph_exc:
                log.warning("could not answer the user at all: %s", type(eph_exc).__name__)

    async def on_bolt_error(self, error: Exception, body: dict, respond) -> None:
        """Last resort for errors raised before our own handlers catch them."""
        await self.answer_error(error, respond, origin_of(body or {}), click="actions" in (body or {}))


def _sent_message(result: CancelResult, link: str | None) -> dict:
    w = result.watch
    what = (
        f"{cards.code(w.schema_label or w.schema_id)} in {cards.code(w.sync_name)}"
        if w.schema_id
        else f"the running execution of {cards.code(w.sync_name)}"
    )
    where = f"<{link}|the thread>" if link else "the thread in this channel"
    if w.outcome == "cancel_failed":
        text = f"The cancel of {what} was refused by Polytomic; {where} says why."
    else:
        text = f"Cancellation of {what} requested. Follow {where}."
    return {"text": text, "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": text}}]}
