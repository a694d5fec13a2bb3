"""`polytomic-bot check`: validate the configuration and reach every dependency, one line each.

    ok   slack auth.test: bot token (xoxb) of @polytomic (UBOT) in team "Acme" (T0123)
    FAIL polytomic GET /api/me: HTTP 401 ... (hint: ...)
    warn access: nobody may cancel (hint: set BOT_ALLOWED_USERS or BOT_ALLOWED_USERGROUPS)

Exit status 1 when any line is FAIL. Every line goes through the log redactor with the settings'
secrets registered, so no token, key or password is ever printed, also on failures. The checks run
concurrently with short timeouts: the operator runs this when something is already wrong.
"""

from __future__ import annotations

import asyncio
import os
import re
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import urlsplit

from bot import logs
from bot.settings import Settings, SettingsError, load_settings

TIMEOUT_S = 5.0
REQUIRED_SCOPES = ("commands", "chat:write", "chat:write.public", "usergroups:read")
SECRET_ENV = (
    "SLACK_BOT_TOKEN",
    "SLACK_APP_TOKEN",
    "SLACK_SIGNING_SECRET",
    "POLYTOMIC_API_KEY",
    "POLYTOMIC_WEBHOOK_SECRET",
)
README = "the Settings table in README.md"

SETTING_HINTS = {
    "SLACK_BOT_TOKEN": "the Bot User OAuth Token (xoxb-...) from the app's OAuth & Permissions page",
    "SLACK_APP_TOKEN": "an app-level token (xapp-...) with connections:write from Basic Information -> "
    "App-Level Tokens; leave it unset for HTTP mode",
    "SLACK_SIGNING_SECRET": "Basic Information -> App Credentials -> Signing Secret; or set SLACK_APP_TOKEN "
    "to use Socket Mode",
    "SLACK_API_URL": "leave unset for https://slack.com/api/",
    "BOT_MODE": "socket (needs SLACK_APP_TOKEN) or http (needs SLACK_SIGNING_SECRET)",
    "BOT_PORT": "a TCP port number, 3000 by default",
    "POLYTOMIC_API_KEY": "an API key from Polytomic's settings (API keys)",
    "POLYTOMIC_BASE_URL": "https://app.polytomic.com, or your self-hosted deployment's URL",
    "BOT_DATABASE_URL": "sqlite:///path/to/polytomic-bot.db or postgresql://user:password@host:5432/db",
    "BOT_POLL_MAX_INTERVAL_S": "make it at least BOT_POLL_INTERVAL_S",
    "BOT_LOG_LEVEL": "DEBUG, INFO, WARNING or ERROR",
    "BOT_LOG_FORMAT": "json or console",
}


@dataclass
class Line:
    status: str  # "ok" | "warn" | "FAIL"
    what: str
    detail: str
    hint: str | None = None

    def render(self) -> str:
        head = {"ok": "ok  ", "warn": "warn", "FAIL": "FAIL"}[self.status]
        text = f"{head} {self.what}: {_one_line(self.detail)}"
        if self.hint:
            text += f" (hint: {_one_line(self.hint)})"
        return logs.redact(text)


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def ok(what: str, detail: str) -> Line:
    return Line("ok", what, detail)


def warn(what: str, detail: str, hint: str | None = None) -> Line:
    return Line("warn", what, detail, hint)


def fail(what: str, detail: str, hint: str | None = None) -> Line:
    return Line("FAIL", what, detail, hint)


def safe_url(url: str) -> str:
    """A URL without its password or query string (which may hold credentials)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "(unparseable URL)"
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, host = netloc.rsplit("@", 1)
        user = userinfo.split(":", 1)[0]
        netloc = f"{user}:***@{host}" if ":" in userinfo else f"{user}@{host}"
    return f"{parts.scheme}://{netloc}{parts.path}"


# ----------------------------------------------------------------------------------- settings


def settings_lines(overrides: dict[str, Any] | None = None) -> tuple[Settings | None, list[Line]]:
    lines: list[Line] = []
    try:
        logs.resolve()
    except logs.LogConfigError as exc:
        name = str(exc).split(":", 1)[0]
        lines.append(fail(f"setting {name}", str(exc).split(":", 1)[1].strip(), SETTING_HINTS.get(name)))
    try:
        settings = load_settings(**(overrides or {}))
    except SettingsError as exc:
        text = str(exc).removeprefix("configuration error:").strip()
        problems: list[str] = []
        for part in text.split("; "):  # problems are "NAME: what"; a message may contain "; " too
            if problems and not re.match(r"[A-Z][A-Z0-9_]+: ", part):
                problems[-1] += "; " + part
            elif part.strip():
                problems.append(part.strip())
        for problem in problems:
            name, _, detail = problem.partition(":")
            if not re.fullmatch(r"[A-Z][A-Z0-9_]+", name) or not detail:
                lines.append(fail("settings", problem, f"see {README}"))
                continue
            lines.append(fail(f"setting {name}", detail.strip(), SETTING_HINTS.get(name, f"see {README}")))
        return None, lines
    logs.add_secrets(*logs.secrets_of(settings))
    s = settings
    where = f"listening on {s.bot_host}:{s.bot_port}"
    detail = (
        f"{s.mode} mode, {where}, Slack API {safe_url(s.slack_api_base)}, "
        f"Polytomic {safe_url(s.polytomic_base)} (API version {s.polytomic_api_version}), "
        f"database {safe_url(s.bot_database_url)}"
    )
    lines.insert(0, ok("settings", detail))
    if s.mode == "http" and s.slack_app_token is not None:
        lines.append(
            warn(
                "settings",
                "SLACK_APP_TOKEN is set but BOT_MODE=http: the bot serves /slack/events and does not use it",
                "unset BOT_MODE to use Socket Mode",
            )
        )
    return settings, lines


# --------------------------------------------------------------------------------------- Slack


def _slack_client(settings: Settings, limit_s: float):
    from slack_sdk.web.async_client import AsyncWebClient

    return AsyncWebClient(
        token=settings.slack_bot_token.get_secret_value(),
        base_url=settings.slack_api_base,
        timeout=max(1, round(limit_s)),
        retry_handlers=[],
    )


SLACK_HINTS = {
    "invalid_auth": "the token is not valid for any workspace: copy it again from the app's settings",
    "not_authed": "the token is empty or was not sent",
    "token_revoked": "the token was revoked (app reinstalled or removed): copy the new token",
    "account_inactive": "the app or its workspace was deactivated: reinstall the app",
    "not_allowed_token_type": "this is the wrong kind of token for this call",
    "ratelimited": "Slack is rate-limiting this token; try again in a minute",
    "missing_scope": "add the scope in OAuth & Permissions and reinstall the app",
    "team_access_not_granted": "the app is not installed in this workspace",
}


def _slack_problem(exc: BaseException, api: str) -> tuple[str, str | None]:
    from slack_sdk.errors import SlackApiError

    if isinstance(exc, SlackApiError):
        from bot.notifier import slack_error_code

        code = slack_error_code(exc)
        return code, SLACK_HINTS.get(code)
    if isinstance(exc, TimeoutError):
        return f"no answer from {api}", "check SLACK_API_URL, DNS, proxy and outbound HTTPS from this host"
    return (
        f"cannot reach {api} ({type(exc).__name__})",
        "check SLACK_API_URL, DNS, proxy and outbound HTTPS from this host",
    )


async def check_slack(settings: Settings, limit_s: float) -> list[Line]:
    what = "slack auth.test"
    api = safe_url(settings.slack_api_base)
    client = _slack_client(settings, limit_s)
    try:
        async with asyncio.timeout(limit_s):
            response = await client.auth_test()
    except Exception as exc:
        detail, hint = _slack_problem(exc, api)
        if detail in ("invalid_auth", "not_authed", "token_revoked", "account_inactive"):
            hint = f"SLACK_BOT_TOKEN: {hint}; use the Bot User OAuth Token (xoxb-) from OAuth & Permissions"
        elif detail == "not_allowed_token_type":
            hint = "SLACK_BOT_TOKEN must be the bot token (xoxb-), not an app-level or user token"
        return [fail(what, detail, hint)]
    data = response.data if isinstance(response.data, dict) else {}
    kind = settings.slack_bot_token.get_secret_value()[:4]
    bot = f"@{data.get('user') or '?'} ({data.get('user_id') or '?'}"
    bot += f", bot {data['bot_id']})" if data.get("bot_id") else ")"
    team = f'team "{data.get("team") or "?"}" ({data.get("team_id") or "?"})'
    if data.get("enterprise_id"):
        team += f" of enterprise {data['enterprise_id']}"
    lines = [ok(what, f"bot token ({kind}) of {bot} in {team}, API {api}")]
    if not data.get("bot_id"):
        lines.append(
            warn(what, "the token has no bot user", "use the Bot User OAuth Token (xoxb-), not a user token")
        )
    headers = getattr(response, "headers", None) or {}
    scopes_header = next((v for k, v in headers.items() if k.lower() == "x-oauth-scopes"), None)
    if isinstance(scopes_header, list):
        scopes_header = ",".join(scopes_header)
    if scopes_header is not None:
        granted = {s.strip() for s in str(scopes_header).split(",") if s.strip()}
        missing = [s for s in REQUIRED_SCOPES if s not in granted]
        if missing:
            lines.append(
                warn(
                    "slack scopes",
                    "missing " + ", ".join(missing),
                    "add them in OAuth & Permissions (or from manifest.yaml) and reinstall the app",
                )
            )
        else:
            lines.append(ok("slack scopes", ", ".join(REQUIRED_SCOPES)))
    return lines


async def check_socket(settings: Settings, limit_s: float) -> list[Line]:
    what = "slack socket mode"
    if settings.slack_app_token is None:
        return []
    used = "used: BOT_MODE=socket" if settings.mode == "socket" else "not used: BOT_MODE=http"
    api = safe_url(settings.slack_api_base)
    client = _slack_client(settings, limit_s)
    try:
        async with asyncio.timeout(limit_s):
            response = await client.apps_connections_open(
                app_token=settings.slack_app_token.get_secret_value()
            )
    except Exception as exc:
        detail, hint = _slack_problem(exc, api)
        if detail in ("invalid_auth", "not_authed", "token_revoked", "not_allowed_token_type"):
            hint = (
                "SLACK_APP_TOKEN must be an app-level token (xapp-) with the connections:write scope, "
                "from Basic Information -> App-Level Tokens"
            )
        return [fail(what, f"apps.connections.open: {detail}", hint)]
    has_url = bool((response.data or {}).get("url")) if isinstance(response.data, dict) else False
    if not has_url:
        return [
            fail(what, "apps.connections.open returned no URL", "enable Socket Mode in the app's settings")
        ]
    return [ok(what, f"app-level token (xapp) can open a connection ({used}; not connected by check)")]


async def check_access(settings: Settings, limit_s: float) -> list[Line]:
    s = settings
    lines: list[Line] = []
    for name, values, pattern in (
        ("BOT_ALLOWED_USERS", s.bot_allowed_users, r"[UW][A-Z0-9]{2,}|\*"),
        ("BOT_ALLOWED_USERGROUPS", s.bot_allowed_usergroups, r"S[A-Z0-9]{2,}"),
        ("BOT_ALLOWED_CHANNELS", s.bot_allowed_channels, r"[CGD][A-Z0-9]{2,}"),
    ):
        odd = [v for v in values if not re.fullmatch(pattern, v)]
        if odd:
            lines.append(
                warn(
                    f"setting {name}",
                    f"{len(odd)} value(s) do not look like Slack IDs: {', '.join(v[:30] for v in odd[:3])}",
                    "use IDs (U..., S..., C...), not names or @handles",
                )
            )
    if not s.access_configured:
        lines.insert(
            0,
            warn(
                "access",
                "nobody may cancel: none of BOT_ALLOWED_USERS, BOT_ALLOWED_USERGROUPS, "
                "BOT_ALLOWED_CHANNELS is set",
                "set BOT_ALLOWED_USERS or BOT_ALLOWED_USERGROUPS (e.g. your on-call group's ID, S...)",
            ),
        )
        return lines
    who: list[str] = []
    if "*" in s.bot_allowed_users:
        who.append("every member of the workspace (BOT_ALLOWED_USERS=*)")
    else:
        named = [u for u in s.bot_allowed_users if u != "*"]
        if named:
            who.append(f"{len(named)} user(s)")
    if s.bot_allowed_usergroups:
        who.append(f"members of {len(s.bot_allowed_usergroups)} user group(s)")
    if not who:
        who.append("every member")
    where = (
        f"only in {', '.join(s.bot_allowed_channels[:5])}"
        + (f" and {len(s.bot_allowed_channels) - 5} more" if len(s.bot_allowed_channels) > 5 else "")
        if s.bot_allowed_channels
        else "in any channel"
    )
    lines.insert(0, ok("access", f"{' and '.join(who)} may cancel, {where}"))
    if s.bot_allowed_usergroups:
        lines.extend(await _check_usergroups(settings, limit_s))
    return lines


async def _check_usergroups(settings: Settings, limit_s: float) -> list[Line]:
    from slack_sdk.errors import SlackApiError

    client = _slack_client(settings, limit_s)
    groups = list(settings.bot_allowed_usergroups)[:20]

    async def one(group: str) -> Line:
        what = f"user group {group}"
        try:
            async with asyncio.timeout(limit_s):
                response = await client.usergroups_users_list(usergroup=group)
        except SlackApiError as exc:
            code, _ = _slack_problem(exc, "")
            if code == "missing_scope":
                return fail(what, "missing_scope", "add the usergroups:read scope and reinstall the app")
            if code in ("no_such_subteam", "subteam_not_found"):
                return fail(what, "not found", "use the group's ID (S...) from its Slack profile URL")
            return fail(what, code, SLACK_HINTS.get(code))
        except Exception as exc:
            detail, hint = _slack_problem(exc, safe_url(settings.slack_api_base))
            return fail(what, detail, hint)
        users = list((response.data or {}).get("users") or []) if isinstance(response.data, dict) else []
        if not users:
            return warn(what, "has no members: nobody gets access through it", "add people to the group")
        return ok(what, f"{len(users)} member(s)")

    return list(await asyncio.gather(*(one(g) for g in groups)))


# ------------------------------------------------------------------------------------ Polytomic


async def check_polytomic(settings: Settings, limit_s: float) -> list[Line]:
    from bot.polytomic.client import PolytomicClient
    from bot.polytomic.errors import (
        BadRequest,
        Forbidden,
        NotFound,
        PolytomicError,
        PolytomicTimeout,
        Unauthorized,
        Unreachable,
    )

    what = "polytomic GET /api/me"
    base = safe_url(settings.polytomic_base)
    try:
        client = PolytomicClient(
            settings.polytomic_base_url,
            settings.polytomic_api_key,
            org_id=settings.polytomic_org_id,
            api_version=settings.polytomic_api_version,
            timeout=limit_s,
            connect_timeout=min(3.0, limit_s),
            max_attempts=2,
            retry_budget_s=limit_s,
        )
    except ValueError as exc:
        return [fail(what, str(exc), "check POLYTOMIC_API_KEY and POLYTOMIC_ORG_ID for stray characters")]
    try:
        async with asyncio.timeout(limit_s * 2):
            me = await client.me()
    except Unauthorized:
        hint = "POLYTOMIC_API_KEY was refused: check the key"
        hint += (
            "; with POLYTOMIC_ORG_ID set the key must be an organization-scoped (partner) key of that "
            "organization"
            if settings.polytomic_org_id
            else "; an organization-scoped (partner) key also needs POLYTOMIC_ORG_ID"
        )
        return [fail(what, f"HTTP 401 from {base}", hint)]
    except Forbidden:
        return [fail(what, f"HTTP 403 from {base}", "the key may not read its own identity: use another key")]
    except NotFound:
        return [
            fail(
                what,
                f"HTTP 404 from {base}",
                "POLYTOMIC_BASE_URL does not point at a Polytomic API (https://app.polytomic.com "
                "or your deployment's URL)",
            )
        ]
    except BadRequest as exc:
        return [
            fail(
                what,
                f"HTTP {exc.status or 400} from {base}",
                f"POLYTOMIC_API_VERSION={settings.polytomic_api_version} may not be supported by "
                "this deployment",
            )
        ]
    except (Unreachable, PolytomicTimeout, TimeoutError) as exc:
        kind = "no answer in time" if not isinstance(exc, Unreachable) else "connection failed"
        return [
            fail(
                what,
                f"cannot reach {base}: {kind}",
                "check POLYTOMIC_BASE_URL, DNS, proxy and outbound HTTPS",
            )
        ]
    except PolytomicError as exc:
        return [fail(what, f"{type(exc).__name__} from {base}", "Polytomic may be degraded; try again")]
    finally:
        await client.aclose()
    cred = me.credential or {}
    method = str(cred.get("method") or "unknown")
    if me.is_partner:
        holder = "partner"
    elif me.is_organization:
        holder = "organization"
    elif me.is_user:
        holder = f"user {me.email}" if me.email else "user"
    elif me.is_system:
        holder = "system"
    else:
        holder = "unknown holder"
    org = f'organization "{me.organization_name or "?"}" ({me.organization_id or "?"})'
    detail = f"{org}, credential {method} ({holder}), role {me.role or '?'}, API version "
    detail += f"{settings.polytomic_api_version} at {base}"
    lines = [ok(what, detail)]
    mode = str(cred.get("mode") or "")
    if mode == "read_only" or (me.role or "").replace("-", "").replace("_", "") == "readonly":
        lines.append(
            warn(
                "polytomic key",
                "the key is read-only: every cancel will be refused with 403",
                "use a key that may run and cancel syncs",
            )
        )
    if settings.polytomic_org_id and me.organization_id and me.organization_id != settings.polytomic_org_id:
        lines.append(
            warn(
                "polytomic key",
                f"the key acts for organization {me.organization_id}, not POLYTOMIC_ORG_ID",
                "check POLYTOMIC_ORG_ID",
            )
        )
    return lines


# ------------------------------------------------------------------------------------- database


_DB_HINTS = {
    "InvalidPasswordError": "check the user and password in BOT_DATABASE_URL",
    "InvalidAuthorizationSpecificationError": "check the user in BOT_DATABASE_URL and pg_hba.conf",
    "InvalidCatalogNameError": "the database named in BOT_DATABASE_URL does not exist: create it",
    "ConnectionRefusedError": "nothing listens there: is PostgreSQL running, and are host and port right?",
    "gaierror": "the host name does not resolve: check the host in BOT_DATABASE_URL",
}


def _sqlite_paths(path: Path) -> tuple[bool, bool, bool]:
    parent = path.parent
    return path.exists(), parent.is_dir(), os.access(parent, os.W_OK)


async def check_database(settings: Settings, limit_s: float) -> list[Line]:
    from sqlalchemy.engine import make_url

    from bot.store import Store

    url = settings.bot_database_url
    what = "database"
    shown = safe_url(url)
    if url.startswith("sqlite"):
        database = make_url(settings.async_database_url).database
        if database in (None, "", ":memory:"):
            return [warn(what, "in-memory SQLite: watches are lost at exit", "use a file or PostgreSQL")]
        path = Path(database)
        exists, parent_ok, writable = await asyncio.to_thread(_sqlite_paths, path)
        if not exists:
            folder = path.parent
            if not parent_ok:
                return [fail(what, f"directory {folder} does not exist", "create it or fix BOT_DATABASE_URL")]
            if not writable:
                return [fail(what, f"directory {folder} is not writable", "fix its permissions or the path")]
            return [ok(what, f"sqlite file {path} does not exist yet; `serve` creates it (one replica only)")]
    store = None
    started = asyncio.get_running_loop().time()
    try:
        store = await Store.open(url, migrate=False)
        reachable = await store.ping(within_s=limit_s)
        if not reachable:
            reason = f"no answer within {limit_s:g} s"
            hint = "is the database running and reachable from this host?"
            if asyncio.get_running_loop().time() - started < limit_s * 0.9:
                try:
                    async with asyncio.timeout(limit_s):
                        await store.schema_version()
                except Exception as exc:
                    cause = getattr(exc, "orig", None) or exc.__cause__ or exc
                    name = type(cause).__name__
                    reason = f"cannot connect ({name})"
                    hint = _DB_HINTS.get(name, hint)
            return [fail(what, f"{store.dialect} at {shown}: {reason}", hint)]
        try:
            async with asyncio.timeout(limit_s):
                version = await store.schema_version()
            schema = f"schema version {version}" if version else "schema not created yet (`serve` creates it)"
        except Exception:
            schema = "schema not created yet (`serve` creates it)"
        lines = [ok(what, f"{store.dialect} at {shown} answers; {schema}")]
        if store.dialect == "sqlite":
            lines[0].detail += " (SQLite: one replica only)"
        return lines
    except Exception as exc:
        return [fail(what, f"cannot open {shown} ({type(exc).__name__})", "check BOT_DATABASE_URL")]
    finally:
        if store is not None:
            await store.close()


# ---------------------------------------------------------------------------------------- all


async def run_checks(overrides: dict[str, Any] | None = None, *, limit_s: float = TIMEOUT_S) -> list[Line]:
    """Every check, in a fixed order. `overrides` are passed to `load_settings` (tests)."""
    for name in SECRET_ENV:
        logs.add_secrets(os.environ.get(name))
    for key, value in (overrides or {}).items():
        if key.upper() in SECRET_ENV and isinstance(value, str):
            logs.add_secrets(value)
    settings, lines = settings_lines(overrides)
    if settings is None:
        return lines
    steps: list[Callable[[Settings, float], Awaitable[list[Line]]]] = [
        check_slack,
        check_socket,
        check_polytomic,
        check_database,
        check_access,
    ]
    results = await asyncio.gather(*(step(settings, limit_s) for step in steps), return_exceptions=True)
    for step, result in zip(steps, results, strict=True):
        if isinstance(result, BaseException):
            what = step.__name__.removeprefix("check_")
            lines.append(fail(what, f"the check itself failed ({type(result).__name__})", "please report it"))
        else:
            lines.extend(result)
    return lines


def summary(lines: list[Line]) -> str:
    counts = {k: sum(1 for line in lines if line.status == k) for k in ("ok", "warn", "FAIL")}
    verdict = "FAILED" if counts["FAIL"] else "passed"
    return f"check {verdict}: {counts['ok']} ok, {counts['warn']} warning(s), {counts['FAIL']} failure(s)"


def main(out: TextIO | None = None, overrides: dict[str, Any] | None = None) -> int:
    out = out or sys.stdout
    lines = asyncio.run(run_checks(overrides))
    for line in lines:
        print(line.render(), file=out)
    print(logs.redact(summary(lines)), file=out)
    return 1 if any(line.status == "FAIL" for line in lines) else 0
