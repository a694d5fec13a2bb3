"""Settings: every name and default of the contract, one clear line on a bad value, no secret echoed."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from bot.settings import Settings, SettingsError, async_database_url, load_settings

BASE = {
    "SLACK_BOT_TOKEN": "xoxb-1-abc",
    "POLYTOMIC_API_KEY": "pk-secret-value",
    "SLACK_SIGNING_SECRET": "sig-secret",
}


@pytest.fixture(autouse=True)
def clean_env(monkeypatch, tmp_path):
    for name in list(os.environ):
        if name.startswith(("SLACK_", "BOT_", "POLYTOMIC_")):
            monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)  # no stray .env


def test_defaults_follow_the_contract(monkeypatch):
    for k, v in BASE.items():
        monkeypatch.setenv(k, v)
    s = load_settings()
    assert s.slack_api_url == "https://slack.com/api/"
    assert s.mode == "http"
    assert (s.bot_host, s.bot_port) == ("0.0.0.0", 3000)
    assert s.polytomic_base_url == "https://app.polytomic.com"
    assert s.polytomic_api_version == "2025-09-18"
    assert s.polytomic_org_id is None and s.polytomic_webhook_secret is None
    assert s.bot_database_url == "sqlite:///polytomic-bot.db"
    assert s.bot_allowed_users == s.bot_allowed_usergroups == s.bot_allowed_channels == ()
    assert s.bot_alert_channel is None
    assert (s.bot_long_run_s, s.bot_poll_interval_s, s.bot_poll_max_interval_s, s.bot_watch_timeout_s) == (
        3600,
        5,
        30,
        3600,
    )
    assert not s.access_configured


def test_socket_mode_when_app_token_set(monkeypatch):
    for k, v in BASE.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("SLACK_APP_TOKEN", "xapp-1-A1-xyz")
    assert load_settings().mode == "socket"
    monkeypatch.setenv("BOT_MODE", "HTTP")
    assert load_settings().mode == "http"


def test_lists_floats_and_dotenv(monkeypatch, tmp_path):
    (tmp_path / ".env").write_text(
        "SLACK_BOT_TOKEN=xoxb-from-dotenv\nPOLYTOMIC_API_KEY=k\nSLACK_SIGNING_SECRET=s\n"
        "BOT_ALLOWED_USERS= U1 ,U2,,\nBOT_ALLOWED_USERGROUPS=S1\nBOT_POLL_INTERVAL_S=0.5\n"
    )
    s = load_settings()
    assert s.slack_bot_token.get_secret_value() == "xoxb-from-dotenv"
    assert s.bot_allowed_users == ("U1", "U2")
    assert s.bot_allowed_usergroups == ("S1",)
    assert s.bot_poll_interval_s == 0.5


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"SLACK_BOT_TOKEN": None}, "SLACK_BOT_TOKEN: required but not set"),
        ({"POLYTOMIC_API_KEY": None}, "POLYTOMIC_API_KEY: required but not set"),
        ({"SLACK_BOT_TOKEN": "xapp-1-wrong-kind"}, "SLACK_BOT_TOKEN: is an app-level token (xapp-)"),
        ({"SLACK_APP_TOKEN": "xoxb-wrong-kind"}, "SLACK_APP_TOKEN: is a bot token (xoxb-)"),
        ({"SLACK_SIGNING_SECRET": None}, "SLACK_SIGNING_SECRET: required in HTTP mode"),
        ({"BOT_MODE": "socket"}, "SLACK_APP_TOKEN: required when BOT_MODE=socket"),
        ({"BOT_MODE": "carrier-pigeon"}, "BOT_MODE:"),
        ({"BOT_PORT": "http"}, "BOT_PORT:"),
        ({"BOT_POLL_INTERVAL_S": "-1"}, "BOT_POLL_INTERVAL_S:"),
        ({"BOT_WATCH_TIMEOUT_S": "soon"}, "BOT_WATCH_TIMEOUT_S:"),
        ({"BOT_POLL_MAX_INTERVAL_S": "1"}, "BOT_POLL_MAX_INTERVAL_S: must be at least BOT_POLL_INTERVAL_S"),
        ({"BOT_DATABASE_URL": "mysql://x"}, "BOT_DATABASE_URL:"),
        ({"POLYTOMIC_BASE_URL": "app.polytomic.com"}, "POLYTOMIC_BASE_URL: must start with http"),
    ],
)
def test_bad_setting_is_one_line_naming_it(monkeypatch, env, expected):
    for k, v in {**BASE, **env}.items():
        if v is not None:
            monkeypatch.setenv(k, v)
    with pytest.raises(SettingsError) as info:
        load_settings()
    text = str(info.value)
    assert expected in text
    assert "\n" not in text
    for secret in ("pk-secret-value", "sig-secret", "xoxb-1-abc", "xapp-1-wrong-kind", "xoxb-wrong-kind"):
        assert secret not in text


def test_secrets_are_secretstr(monkeypatch):
    for k, v in BASE.items():
        monkeypatch.setenv(k, v)
    s = load_settings()
    dumped = repr(s) + str(s.model_dump())
    for secret in BASE.values():
        assert secret not in dumped
    assert Settings.model_fields["slack_bot_token"].annotation.__name__ == "SecretStr"


def test_database_urls_map_to_async_drivers():
    assert async_database_url("sqlite:///polytomic-bot.db") == "sqlite+aiosqlite:///polytomic-bot.db"
    assert async_database_url("postgresql://u@h/db") == "postgresql+asyncpg://u@h/db"
    assert async_database_url("postgres://u@h/db") == "postgresql+asyncpg://u@h/db"


def _run_cli(args, env_extra, cwd):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLACK_", "BOT_", "POLYTOMIC_"))}
    env.update(env_extra)
    return subprocess.run(
        [sys.executable, "-m", "bot", *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=60
    )


def test_serve_with_missing_setting_prints_one_line_and_exits_nonzero(tmp_path):
    result = _run_cli(["serve"], {"POLYTOMIC_API_KEY": "pk-secret-value"}, tmp_path)
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines == ["polytomic-bot: configuration error: SLACK_BOT_TOKEN: required but not set"]
    assert "Traceback" not in result.stderr + result.stdout
    assert "pk-secret-value" not in result.stderr + result.stdout


def test_serve_with_wrong_token_kind(tmp_path):
    result = _run_cli(["serve"], {**BASE, "SLACK_BOT_TOKEN": "xapp-1-A-b"}, tmp_path)
    assert result.returncode != 0
    assert "SLACK_BOT_TOKEN" in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
