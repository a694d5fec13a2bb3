"""The message shortcut `polytomic_cancel_from_message`: cancel from any message (another tool's
alert, a pasted link), with the story in that message's thread.

1. The shortcut is acknowledged and a modal is opened at once with what the message itself shows
   (bulk sync UUIDs and Polytomic links in its text, blocks and attachments): the `trigger_id` is
   only good for 3 seconds, so Polytomic is asked nothing before `views.open`.
2. The modal is then updated (`views.update`) with the live state: for each sync named by the
   message (or whose running execution it names) a multi-select of "the whole execution" and its
   running schemas. No sync found: the modal says so and offers a sync picker, whose submission
   turns the modal into the same choice for the picked sync.
3. On submission access is checked (a refusal replaces the modal), the modal closes, and the
   cancel flow runs once per choice with exact ids (`CancelService.request_cancel`); the thread
   goes under the message (`Origin.source_ts`). When the bot cannot post in that channel, it says
   so and tells the story in a DM with the user instead. The user gets an ephemeral summary.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import uuid
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from slack_bolt.async_app import AsyncApp
from slack_sdk.errors import SlackApiError
from slack_sdk.webhook.async_client import AsyncWebhookClient

from bot import cards
from bot.access import Access
from bot.errors import AccessDenied, AmbiguousName, BadButton, NothingRunning, UnknownName
from bot.notifier import Notifier, SlackWriteError, slack_error_code
from bot.polytomic.client import PolytomicClient
from bot.polytomic.errors import PolytomicError
from bot.polytomic.models import BulkSync, SyncExecutionStatus, is_running
from bot.polytomic.resolve import looks_like_uuid
from bot.service import CancelResult, CancelService, CannotPost, Origin

log = logging.getLogger("bot.shortcut")

CALLBACK_ID = "polytomic_cancel_from_message"
MODAL_CALLBACK_ID = "polytomic_cancel_modal"
MAX_IDS = 10  # ids taken from one message
MAX_SYNCS = 5  # syncs offered in one modal
ACCESS_CHECK_S = 2.0  # the submission's ack must leave within 3 s
_UUID = re.compile(
    r"(?<![0-9A-Za-z-])[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}(?![0-9A-Za-z-])"
)
_URL = re.compile(r"https?://[^\s<>|\"']+", re.IGNORECASE)
# Keys of a message whose values are never about Polytomic (Slack's own ids; client_msg_id is a UUID).
_SKIP_KEYS = frozenset({"client_msg_id", "ts", "thread_ts", "user", "bot_id", "app_id", "team", "block_id"})


# --------------------------------------------------------------------------------------------
# Finding ids in a message (pure)


def _strings(node: Any, depth: int = 0) -> Iterable[str]:
    if depth > 12:
        return
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for key, value in node.items():
            if key not in _SKIP_KEYS:
                yield from _strings(value, depth + 1)
    elif isinstance(node, list):
        for value in node[:200]:
            yield from _strings(value, depth + 1)


def find_ids(message: dict | None, *, polytomic_hosts: Sequence[str] = ("polytomic.com",)) -> list[str]:
    """Bulk sync (or execution) UUIDs named by a message, lower-cased, at most MAX_IDS: those in
    Polytomic links to bulk syncs first, then those in other Polytomic links, then the rest, each
    group in order of appearance."""
    if not isinstance(message, dict):
        return []
    texts = [t for part in ("text", "blocks", "attachments") for t in _strings(message.get(part))]
    ranked: list[tuple[int, int, str]] = []
    order = 0
    hosts = tuple(h.lower() for h in polytomic_hosts if h)
    for text in texts:
        text = text[:40_000]
        in_links: dict[str, int] = {}
        for match in _URL.finditer(text):
            url = match.group(0)
            try:
                host = (urlsplit(url).hostname or "").lower()
            except ValueError:
                continue
            if not any(host == h or host.endswith("." + h) for h in hosts):
                continue
            rank = 0 if re.search(r"bulk|sync", urlsplit(url).path, re.IGNORECASE) else 1
            for found in _UUID.findall(url):
                in_links[found.lower()] = min(rank, in_links.get(found.lower(), rank))
        for found in _UUID.findall(text):
            key = found.lower()
            ranked.append((in_links.get(key, 2), order, key))
            order += 1
    seen: dict[str, tuple[int, int]] = {}
    for rank, position, key in ranked:
        if key not in seen or (rank, position) < seen[key]:
            seen[key] = (rank, position)
    return [k for k, _ in sorted(seen.items(), key=lambda item: item[1])][:MAX_IDS]


# --------------------------------------------------------------------------------------------
# The modal's private metadata (what the submission needs to know)


def _metadata(data: dict) -> str:
    """JSON within Slack's 3000 characters: schema lists are trimmed from the end to fit."""
    text = json.dumps(data, separators=(",", ":"))
    syncs = data.get("s") or []
    while len(text) > cards.PRIVATE_METADATA_MAX and any(ids for _sid, ids in syncs):
        longest = max(syncs, key=lambda entry: len(entry[1]))
        longest[1].pop()
        text = json.dumps(data, separators=(",", ":"))
    if len(text) > cards.PRIVATE_METADATA_MAX:  # only a huge response_url could do this
        data.pop("r", None)
        text = json.dumps(data, separators=(",", ":"))
    return text


def _read_metadata(raw: Any) -> dict:
    try:
        data = json.loads(raw) if isinstance(raw, str) and raw else {}
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def selections(view: dict, meta: dict) -> list[tuple[str, str | None]]:
    """(sync id, schema id or None for the whole execution) chosen in the modal; a whole
    execution covers its sync's schema choices."""
    values = ((view.get("state") or {}).get("values")) or {}
    syncs = meta.get("s") or []
    picked: dict[str, list[str | None]] = {}
    for block_id, actions in values.items():
        if not isinstance(block_id, str) or not block_id.startswith("sync:") or not isinstance(actions, dict):
            continue
        options = (actions.get("pick") or {}).get("selected_options") or []
        for option in options:
            parts = str((option or {}).get("value") or "").split(":")
            try:
                n = int(parts[1])
                sync_id, schema_ids = syncs[n][0], syncs[n][1]
            except (IndexError, ValueError, TypeError):
                continue
            if not isinstance(sync_id, str) or not looks_like_uuid(sync_id):
                continue
            if parts[0] == cards.WHOLE_EXECUTION and len(parts) == 2:
                picked.setdefault(sync_id, []).append(None)
            elif parts[0] == cards.ONE_SCHEMA and len(parts) == 3:
                try:
                    schema_id = schema_ids[int(parts[2])]
                except (IndexError, ValueError, TypeError):
                    continue
                if isinstance(schema_id, str) and schema_id:
                    picked.setdefault(sync_id, []).append(schema_id)
    out: list[tuple[str, str | None]] = []
    for sync_id, choices in picked.items():
        if None in choices:
            out.append((sync_id, None))
        else:
            out.extend((sync_id, s) for s in dict.fromkeys(c for c in choices if c is not None))
    return out


# --------------------------------------------------------------------------------------------
# The listeners


class MessageShortcut:
    def __init__(
        self,
        *,
        service: CancelService,
        client: PolytomicClient,
        notifier: Notifier,
        access: Access,
        polytomic_hosts: Sequence[str] = ("polytomic.com",),
        bot_user_id: str | None = None,
    ) -> None:
        self.bot_user_id = bot_user_id
        self.service = service
        self.client = client
        self.notifier = notifier
        self.slack = notifier.slack
        self.access = access
        self.polytomic_hosts = tuple(polytomic_hosts)
        self.opened = 0  # modals opened (tests)

    # -- the shortcut ----------------------------------------------------------------------

    async def on_shortcut(self, ack, body: dict) -> None:
        await ack()
        user = (body.get("user") or {}).get("id") or ""
        team = (body.get("team") or {}).get("id") or (body.get("user") or {}).get("team_id") or ""
        enterprise = (
            (body.get("enterprise") or {}).get("id") if isinstance(body.get("enterprise"), dict) else None
        )
        channel = (body.get("channel") or {}).get("id") or ""
        message = body.get("message") or {}
        trigger = body.get("trigger_id") or ""
        try:
            self.access.check_workspace(team, enterprise)
        except AccessDenied as exc:
            await self._open(
                trigger, cards.shortcut_notice(MODAL_CALLBACK_ID, cards.access_denied(exc)["text"])
            )
            return
        found = find_ids(message, polytomic_hosts=self.polytomic_hosts)
        meta = {
            "c": channel,
            "t": self._thread_root(message, body.get("message_ts")),
            "r": body.get("response_url") or "",
            "f": found,
        }
        opened = await self._open(trigger, cards.shortcut_loading(MODAL_CALLBACK_ID, found, _metadata(meta)))
        if opened is None:
            return
        log.info("shortcut by %s in %s: %d id(s) found", user, channel, len(found))
        try:
            view = await self._choose_or_pick(found, meta)
        except Exception as exc:
            view = self._trouble(exc)
        await self._update(opened["id"], view, view_hash=opened.get("hash"))

    def _trouble(self, exc: BaseException) -> dict:
        """The modal when the live state could not be read."""
        if isinstance(exc, PolytomicError):
            return cards.shortcut_notice(MODAL_CALLBACK_ID, cards.polytomic_error(exc)["text"])
        ref = uuid.uuid4().hex[:8]
        log.error("unexpected error ref=%s while filling the shortcut's modal", ref, exc_info=exc)
        return cards.shortcut_notice(MODAL_CALLBACK_ID, cards.unexpected_error(ref)["text"])

    def _thread_root(self, message: dict, message_ts: Any) -> str:
        """The message whose thread tells the story ("" for a new message in the channel).

        The message itself, unless it is a reply: then its thread's parent when that parent is
        someone else's (our own could be another cancellation's headline, which must not be
        edited), else a new message."""
        ts = str(message.get("ts") or message_ts or "")
        parent = str(message.get("thread_ts") or "")
        if not parent or parent == ts:
            return ts
        parent_user = message.get("parent_user_id")
        if self.bot_user_id and parent_user and parent_user != self.bot_user_id:
            return parent
        return ""

    async def _open(self, trigger_id: str, view: dict) -> dict | None:
        try:
            response = await self.slack.views_open(trigger_id=trigger_id, view=view)
        except SlackApiError as exc:
            log.warning("could not open the shortcut's modal: %s", slack_error_code(exc))
            return None
        self.opened += 1
        return response.get("view") or {}

    async def _update(self, view_id: str | None, view: dict, *, view_hash: str | None = None) -> None:
        if not view_id:
            return
        kwargs: dict[str, Any] = {"view_id": view_id, "view": view}
        if view_hash:
            kwargs["hash"] = view_hash
        try:
            await self.slack.views_update(**kwargs)
        except SlackApiError as exc:  # closed by the user meanwhile, or changed since
            log.info("could not update the shortcut's modal: %s", slack_error_code(exc))

    async def _choose_or_pick(self, found: list[str], meta: dict) -> dict:
        """The live modal: the syncs the message names (by id, or by the id of their running
        execution, in order of appearance), else a picker of every sync."""
        syncs = await self.client.list_syncs()
        by_id = {s.id.lower(): s for s in syncs if s.id}
        listing: list[SyncExecutionStatus] | None = None
        by_execution: dict[str, str] = {}
        if not found or any(i not in by_id for i in found):
            listing = await self.client.list_sync_statuses(all=True)
            by_execution = {
                e.execution_id.lower(): item.sync_id.lower()
                for item in listing
                if item.sync_id
                for e in item.schemas
                if e.execution_id
            }
        chosen: list[BulkSync] = []
        unknown: list[str] = []
        for i in found:
            sync = by_id.get(i) or by_id.get(by_execution.get(i, ""))
            if sync is None:
                unknown.append(i)
            elif sync not in chosen:
                chosen.append(sync)
        if chosen:
            return await self._choose_view(chosen[:MAX_SYNCS], meta, unknown=unknown)
        statuses = {item.sync_id: item for item in listing or [] if item.sync_id}
        meta["m"] = "pick"
        rows = [(s, statuses.get(s.id or "")) for s in syncs]
        return cards.shortcut_pick_sync(MODAL_CALLBACK_ID, rows, found=found, metadata=_metadata(meta))

    async def _choose_view(
        self, syncs: Sequence[BulkSync], meta: dict, *, unknown: Sequence[str] = ()
    ) -> dict:
        results = await asyncio.gather(
            *(self.client.get_sync_status(s.id or "") for s in syncs), return_exceptions=True
        )
        targets = []
        schema_ids: list[list[str]] = []
        for sync, status in zip(syncs, results, strict=True):
            if isinstance(status, BaseException):
                if not isinstance(status, PolytomicError):
                    raise status
                targets.append(cards.ShortcutTarget(sync, None))
                schema_ids.append([])
                continue
            targets.append(cards.ShortcutTarget(sync, status))
            cur = status.current_execution
            ids = []
            if cur is not None and is_running(cur.status):
                ids = [e.schema_id for e in cur.schemas if e.schema_id and is_running(e.status)]
            schema_ids.append(ids)
        meta["m"] = "choose"
        meta["s"] = [[t.sync.id, ids] for t, ids in zip(targets, schema_ids, strict=True)]
        metadata = _metadata(meta)  # may trim the schema lists: render what was kept
        kept = [ids for _sid, ids in meta["s"]]
        return cards.shortcut_choose(
            MODAL_CALLBACK_ID,
            targets,
            found=meta.get("f") or [],
            unknown=unknown,
            metadata=metadata,
            schema_ids=kept,
            now=datetime.now(UTC),
        )

    # -- the submission --------------------------------------------------------------------

    async def on_submit(self, ack, body: dict, view: dict) -> None:
        meta = _read_metadata(view.get("private_metadata"))
        user = (body.get("user") or {}).get("id") or ""
        team = (body.get("team") or {}).get("id") or (body.get("user") or {}).get("team_id") or ""
        enterprise = (
            (body.get("enterprise") or {}).get("id") if isinstance(body.get("enterprise"), dict) else None
        )
        if meta.get("m") == "pick":
            await self._picked(ack, view, meta)
            return
        if meta.get("m") != "choose":
            await ack()
            return
        picks = selections(view, meta)
        if not picks:
            first = next(
                (b.get("block_id") for b in view.get("blocks") or [] if b.get("type") == "input"), "sync:0"
            )
            await ack(
                response_action="errors", errors={first: "Pick at least one schema or the whole execution."}
            )
            return
        origin = Origin(
            team_id=team, user_id=user, channel_id=str(meta.get("c") or ""), enterprise_id=enterprise
        )
        try:
            await asyncio.wait_for(
                self.access.check_cancel(
                    user_id=user, channel_id=origin.channel_id, team_id=team, enterprise_id=enterprise
                ),
                ACCESS_CHECK_S,
            )
        except AccessDenied as exc:
            await ack(
                response_action="update",
                view=cards.shortcut_notice(MODAL_CALLBACK_ID, cards.access_denied(exc)["text"]),
            )
            return
        except TimeoutError:
            pass  # request_cancel checks again, without the 3 s bound
        await ack()
        log.info("shortcut submission by %s: %d target(s)", user, len(picks))
        await self.cancel_all(origin, picks, source_ts=str(meta.get("t") or "") or None, meta=meta)

    async def _picked(self, ack, view: dict, meta: dict) -> None:
        values = ((view.get("state") or {}).get("values")) or {}
        option = ((values.get("sync") or {}).get("pick") or {}).get("selected_option") or {}
        sync_id = str(option.get("value") or "")
        if not looks_like_uuid(sync_id):
            await ack(response_action="errors", errors={"sync": "Pick a bulk sync."})
            return
        await ack(
            response_action="update",
            view=cards.shortcut_loading(MODAL_CALLBACK_ID, [sync_id], _metadata(meta)),
        )
        try:
            sync = await self.client.get_sync(sync_id)
            new_view = await self._choose_view([sync], meta)
        except Exception as exc:
            new_view = self._trouble(exc)
        await self._update(view.get("id"), new_view)

    # -- the cancellations -----------------------------------------------------------------

    async def cancel_all(
        self, origin: Origin, picks: Sequence[tuple[str, str | None]], *, source_ts: str | None, meta: dict
    ) -> list[str]:
        """Run the cancel flow for each pick; returns the summary lines told to the user."""
        lines: list[str] = []
        dm: str | None = None
        dm_failed = False
        for sync_id, schema_id in picks:
            attempt = Origin(
                team_id=origin.team_id,
                user_id=origin.user_id,
                channel_id=origin.channel_id,
                enterprise_id=origin.enterprise_id,
                source_ts=source_ts,
            )
            try:
                result = await self.service.request_cancel(attempt, sync_id, schema_id, exact_ids=True)
                lines.append(await self._line(result))
                continue
            except CannotPost as exc:
                if dm is None and not dm_failed:
                    dm = await self._open_dm(origin.user_id, origin.channel_id, exc.error)
                    dm_failed = dm is None
                if dm is None:
                    lines.append(
                        f"⚠️ I cannot post in {cards.code(origin.channel_id, 40)} ({cards.escape(exc.error)}) "
                        "and could not open a DM with you, so nothing was cancelled."
                    )
                    continue
            except Exception as exc:
                lines.append(self._words(exc, sync_id, schema_id))
                continue
            # The DM fallback (the channel refused the thread; nothing was cancelled there).
            in_dm = Origin(
                team_id=origin.team_id,
                user_id=origin.user_id,
                channel_id=dm,
                enterprise_id=origin.enterprise_id,
            )
            try:
                result = await self.service.request_cancel(in_dm, sync_id, schema_id, exact_ids=True)
                lines.append(await self._line(result, in_dm=True))
            except Exception as exc:
                lines.append(self._words(exc, sync_id, schema_id))
        await self._tell(origin, meta, lines, dm)
        return lines

    async def _open_dm(self, user_id: str, channel_id: str, error: str) -> str | None:
        try:
            response = await self.slack.conversations_open(users=user_id)
            dm = str(((response.get("channel") or {}).get("id")) or "")
            if not dm:
                return None
            await self.notifier.post(dm, cards.cannot_post_here(channel_id, error))
            return dm
        except (SlackApiError, SlackWriteError) as exc:
            code = exc.error if isinstance(exc, SlackWriteError) else slack_error_code(exc)
            log.warning("could not open a DM with %s: %s", user_id, code)
            return None

    async def _line(self, result: CancelResult, *, in_dm: bool = False) -> str:
        w = result.watch
        link = await self.notifier.permalink(w.channel_id, w.root_ts)
        if not result.created:
            return cards.pointer_to_thread(w, link)["text"]
        what = (
            f"{cards.code(w.schema_label or w.schema_id)} of {cards.code(w.sync_name)}"
            if w.schema_id
            else f"the running execution of {cards.code(w.sync_name)}"
        )
        where = f"<{link}|the thread>" if link and link.startswith("https://") else "the thread"
        if in_dm:
            where += " in our DM"
        if w.outcome == "cancel_failed":
            return f"❌ Polytomic refused the cancel of {what}; {where} says why."
        return f"🛑 Cancellation of {what} requested; follow {where}."

    def _words(self, exc: BaseException, sync_id: str, schema_id: str | None) -> str:
        if isinstance(exc, AccessDenied):
            return cards.access_denied(exc)["text"]
        if isinstance(exc, NothingRunning):
            return cards.nothing_running(exc.what, exc.last_status)["text"]
        if isinstance(exc, (UnknownName, AmbiguousName)):
            return cards.unknown_name(exc)["text"]
        if isinstance(exc, PolytomicError):
            return cards.polytomic_error(exc)["text"]
        if isinstance(exc, SlackWriteError):
            return f"⚠️ Slack did not accept my message ({cards.escape(exc.error)}); nothing more was done."
        if isinstance(exc, BadButton):
            return f"⚠️ {cards.escape(str(exc))}"
        ref = uuid.uuid4().hex[:8]
        log.error("unexpected error ref=%s in the shortcut for sync %s", ref, sync_id, exc_info=exc)
        return cards.unexpected_error(ref)["text"]

    async def _tell(self, origin: Origin, meta: dict, lines: list[str], dm: str | None) -> None:
        """The summary, as an ephemeral message where the shortcut was used (its response_url
        works even where the bot is no member), else chat.postEphemeral, else the DM."""
        message = cards.shortcut_result(lines)
        url = meta.get("r")
        if isinstance(url, str) and url.startswith(("https://", "http://")):
            try:
                response = await AsyncWebhookClient(url, timeout=10).send_dict(
                    {"response_type": "ephemeral", "replace_original": False, **message}
                )
                if response.status_code == 200:
                    return
            except Exception as exc:
                log.info("could not answer via response_url: %s", type(exc).__name__)
        try:
            await self.notifier.ephemeral(origin.channel_id, origin.user_id, message)
            return
        except SlackWriteError as exc:
            log.info("could not answer with chat.postEphemeral: %s", exc.error)
        if dm is not None:
            try:
                await self.notifier.post(dm, message)
            except SlackWriteError as exc:
                log.warning("could not tell %s the shortcut's outcome: %s", origin.user_id, exc.error)


def polytomic_hosts(settings: Any) -> tuple[str, ...]:
    """Hosts whose links count as Polytomic links: polytomic.com and the configured deployment."""
    hosts = ["polytomic.com"]
    base = getattr(settings, "polytomic_base_url", None)
    host = urlsplit(str(base)).hostname if base else None
    if host and host not in hosts:
        hosts.append(host)
    return tuple(hosts)


def register(
    app: AsyncApp,
    *,
    service: CancelService,
    client: PolytomicClient,
    notifier: Notifier,
    access: Access,
    settings: Any = None,
    bot_user_id: str | None = None,
) -> MessageShortcut:
    """Add the shortcut's listeners to the Bolt app (a shortcut and a view callback: neither
    competes with the block_actions listeners)."""
    shortcut = MessageShortcut(
        service=service,
        client=client,
        notifier=notifier,
        access=access,
        polytomic_hosts=polytomic_hosts(settings) if settings is not None else ("polytomic.com",),
        bot_user_id=bot_user_id,
    )
    app.shortcut(CALLBACK_ID)(shortcut.on_shortcut)
    app.view(MODAL_CALLBACK_ID)(shortcut.on_submit)
    return shortcut
