"""`polytomic-bot check` against the fakes: a good configuration, and each kind of bad one. One
line per check, FAIL lines with a hint, exit 1 on any FAIL, and never a secret in the output."""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from bot import check

BOT_TOKEN = "xoxb-test-bot-token"
APP_TOKEN = "xapp-1-test-app-token"
POLYTOMIC_KEY = "test-polytomic-key"
SIGNING = "check-signing-secret-0123456789"
CONTRACT_VARS = (
    "SLACK_BOT_TOKEN SLACK_APP_TOKEN SLACK_SIGNING_SECRET SLACK_API_URL BOT_MODE BOT_HOST BOT_PORT "
    "POLYTOMIC_API_KEY POLYTOMIC_ORG_ID POLYTOMIC_BASE_URL POLYTOMIC_API_VERSION POLYTOMIC_WEBHOOK_SECRET "
    "BOT_DATABASE_URL BOT_ALLOWED_USERS BOT_ALLOWED_USERGROUPS BOT_ALLOWED_CHANNELS BOT_ALERT_CHANNEL "
    "BOT_LONG_RUN_S BOT_POLL_INTERVAL_S BOT_POLL_MAX_INTERVAL_S BOT_WATCH_TIMEOUT_S "
    "BOT_LOG_LEVEL BOT_LOG_FORMAT"
).split()


@pytest.fixture(autouse=True)
def clean_env(monkeypatch, tmp_path):
    for name in CONTRACT_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)  # no stray .env


@pytest.fixture
def good(fake_slack, fake_polytomic, tmp_path):
    fake_slack.set_usergroup("S0ONCALL", ["U0001", "U0002"])
    return dict(
        slack_bot_token=fake_slack.bot_token,
        slack_signing_secret=SIGNING,
        slack_api_url=fake_slack.api_url,
        bot_mode="http",
        polytomic_api_key=POLYTOMIC_KEY,
        polytomic_base_url=fake_polytomic.url,
        bot_database_url=f"sqlite:///{tmp_path / 'bot.db'}",
        bot_allowed_users=("U0001",),
        bot_allowed_usergroups=("S0ONCALL",),
    )


async def _run(overrides) -> tuple[int, str, list[check.Line]]:
    lines = await check.run_checks(overrides, limit_s=3.0)
    out = io.StringIO()
    for line in lines:
        print(line.render(), file=out)
    print(check.summary(lines), file=out)
    code = 1 if any(line.status == "FAIL" for line in lines) else 0
    return code, out.getvalue(), lines


def _no_secret(text: str, *secrets: str) -> None:
    for secret in (BOT_TOKEN, APP_TOKEN, POLYTOMIC_KEY, SIGNING, *secrets):
        assert secret not in text, secret


def _line(lines, what_prefix: str) -> check.Line:
    found = [line for line in lines if line.what.startswith(what_prefix)]
    assert found, f"no line for {what_prefix!r}"
    return found[0]


async def test_good_configuration_passes(good, fake_slack, fake_polytomic):
    code, out, lines = await _run(good)
    assert code == 0, out
    assert all(line.status == "ok" for line in lines), out
    assert out.splitlines()[-1].startswith("check passed: ")
    for line in out.splitlines()[:-1]:
        assert line[:5] in ("ok   ", "warn ", "FAIL ")
    slack = _line(lines, "slack auth.test").detail
    assert "xoxb" in slack and "T0001" in slack and "UBOT" in slack and "Test Workspace" in slack
    me = _line(lines, "polytomic GET /api/me").detail
    assert "Example Co" in me and "api_key" in me and "user" in me
    assert "sqlite" in _line(lines, "database").detail  # not created yet: serve creates it
    assert "may cancel" in _line(lines, "access").detail
    assert "2 member" in _line(lines, "user group S0ONCALL").detail
    assert fake_slack.calls_to("auth.test") and fake_polytomic.requests_to("GET", "/api/me")
    assert not (Path.cwd() / "bot.db").exists()
    _no_secret(out)


async def test_existing_database_and_socket_mode_token(good, fake_slack, tmp_path):
    from bot.store import Store

    store = await Store.open(good["bot_database_url"])
    await store.close()
    code, out, lines = await _run({**good, "slack_app_token": fake_slack.app_token, "bot_mode": "socket"})
    assert code == 0, out
    assert "schema version" in _line(lines, "database").detail
    assert "xapp" in _line(lines, "slack socket mode").detail
    assert not fake_slack.socket_connected()
    _no_secret(out)


async def test_bad_token_kinds_fail_as_settings(good):
    code, out, lines = await _run({**good, "slack_bot_token": APP_TOKEN, "slack_app_token": BOT_TOKEN})
    assert code == 1
    names = [line.what for line in lines if line.status == "FAIL"]
    assert names == ["setting SLACK_BOT_TOKEN", "setting SLACK_APP_TOKEN"], out
    assert "xapp-" in _line(lines, "setting SLACK_BOT_TOKEN").detail and "hint:" in out
    _no_secret(out)


async def test_invalid_auth_from_slack(good):
    wrong = "xoxb-9999-wrong-token-abcdef"
    code, out, lines = await _run({**good, "slack_bot_token": wrong})
    assert code == 1
    line = _line(lines, "slack auth.test")
    assert line.status == "FAIL" and line.detail == "invalid_auth" and "SLACK_BOT_TOKEN" in line.hint
    _no_secret(out, wrong)


async def test_revoked_app_token(good, fake_slack):
    wrong = "xapp-1-A0-wrong-app-token"
    code, out, lines = await _run({**good, "slack_app_token": wrong})
    assert code == 1
    line = _line(lines, "slack socket mode")
    assert line.status == "FAIL" and "invalid_auth" in line.detail and "SLACK_APP_TOKEN" in line.hint
    _no_secret(out, wrong)


async def test_polytomic_401(good):
    wrong = "wrong-polytomic-key-123456"
    code, out, lines = await _run({**good, "polytomic_api_key": wrong})
    assert code == 1
    line = _line(lines, "polytomic GET /api/me")
    assert line.status == "FAIL" and "401" in line.detail and "POLYTOMIC_API_KEY" in line.hint
    assert "POLYTOMIC_ORG_ID" in line.hint
    _no_secret(out, wrong)


async def test_polytomic_unreachable_and_slack_unreachable(good):
    port = _closed_port()
    code, out, lines = await _run(
        {
            **good,
            "polytomic_base_url": f"http://127.0.0.1:{port}",
            "slack_api_url": f"http://127.0.0.1:{port}/api/",
        }
    )
    assert code == 1
    assert "cannot reach" in _line(lines, "polytomic GET /api/me").detail
    assert "cannot reach" in _line(lines, "slack auth.test").detail
    _no_secret(out)


async def test_database_unreachable(good):
    url = f"postgresql://bot:pg-password-42@127.0.0.1:{_closed_port()}/bot?connect_timeout=2"
    code, out, lines = await _run({**good, "bot_database_url": url})
    assert code == 1
    line = _line(lines, "database")
    assert line.status == "FAIL" and "127.0.0.1" in line.detail and line.hint, out
    _no_secret(out, "pg-password-42")


async def test_sqlite_in_a_missing_directory(good, tmp_path):
    code, _, lines = await _run({**good, "bot_database_url": f"sqlite:///{tmp_path}/nope/bot.db"})
    assert code == 1
    assert "does not exist" in _line(lines, "database").detail


async def test_nobody_may_cancel_is_a_warning(good):
    code, out, lines = await _run({**good, "bot_allowed_users": (), "bot_allowed_usergroups": ()})
    assert code == 0
    line = _line(lines, "access")
    assert line.status == "warn" and "nobody may cancel" in line.detail and "BOT_ALLOWED_USERS" in line.hint
    assert "1 warning" in out.splitlines()[-1]


async def test_everyone_and_odd_ids_and_unknown_group(good):
    code, _, lines = await _run(
        {**good, "bot_allowed_users": ("*", "@ana"), "bot_allowed_usergroups": ("S0NOPE",)}
    )
    assert code == 1
    assert "every member of the workspace" in _line(lines, "access").detail
    assert _line(lines, "setting BOT_ALLOWED_USERS").status == "warn"
    group = _line(lines, "user group S0NOPE")
    assert group.status == "FAIL" and "not found" in group.detail


async def test_missing_settings_one_line_each(monkeypatch):
    monkeypatch.setenv("BOT_LOG_LEVEL", "chatty")
    code, out, lines = await _run({})
    assert code == 1
    names = {line.what for line in lines}
    assert {"setting SLACK_BOT_TOKEN", "setting POLYTOMIC_API_KEY", "setting BOT_LOG_LEVEL"} <= names, out


def test_cli_exit_status_and_no_secret(good, tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in CONTRACT_VARS}
    env.update(
        SLACK_BOT_TOKEN="xoxb-0000-revoked-or-wrong",
        SLACK_SIGNING_SECRET=SIGNING,
        SLACK_API_URL=good["slack_api_url"],
        POLYTOMIC_API_KEY=POLYTOMIC_KEY,
        POLYTOMIC_BASE_URL=good["polytomic_base_url"],
        BOT_DATABASE_URL=good["bot_database_url"],
        BOT_ALLOWED_USERS="U0001",
    )
    done = subprocess.run(
        [sys.executable, "-m", "bot", "check"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert "FAIL slack auth.test: invalid_auth" in done.stdout
    assert "ok   polytomic GET /api/me" in done.stdout
    assert "Traceback" not in done.stderr
    _no_secret(done.stdout + done.stderr, "xoxb-0000-revoked-or-wrong")


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
