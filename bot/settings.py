"""Settings from the environment (and `.env`), exactly as ../shared/CONTRACT.md names them.

`load_settings()` turns every validation problem into a `SettingsError` whose text is one line that
names the variable and what is wrong, and never echoes a secret value.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class SettingsError(Exception):
    """A missing or malformed setting. `str()` is one line fit for the operator."""


def _csv(value: object) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, (list, tuple, set)):
        items = [str(v) for v in value]
    else:
        items = str(value).split(",")
    return tuple(item.strip() for item in items if item.strip())


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", case_sensitive=False
    )

    slack_bot_token: SecretStr
    slack_app_token: SecretStr | None = None
    slack_signing_secret: SecretStr | None = None
    slack_api_url: str = "https://slack.com/api/"

    bot_mode: Literal["socket", "http"] | None = None
    bot_host: str = "0.0.0.0"
    bot_port: int = Field(default=3000, ge=0, le=65535)

    polytomic_api_key: SecretStr
    polytomic_org_id: str | None = None
    polytomic_base_url: str = "https://app.polytomic.com"
    polytomic_api_version: str = "2025-09-18"
    polytomic_webhook_secret: SecretStr | None = None

    bot_database_url: str = "sqlite:///polytomic-bot.db"

    bot_allowed_users: Annotated[tuple[str, ...], NoDecode] = ()
    bot_allowed_usergroups: Annotated[tuple[str, ...], NoDecode] = ()
    bot_allowed_channels: Annotated[tuple[str, ...], NoDecode] = ()

    bot_alert_channel: str | None = None
    bot_long_run_s: float = Field(default=3600.0, gt=0)
    bot_poll_interval_s: float = Field(default=5.0, gt=0)
    bot_poll_max_interval_s: float = Field(default=30.0, gt=0)
    bot_watch_timeout_s: float = Field(default=3600.0, gt=0)

    @field_validator("bot_allowed_users", "bot_allowed_usergroups", "bot_allowed_channels", mode="before")
    @classmethod
    def _split_csv(cls, value: object) -> tuple[str, ...]:
        return _csv(value)

    @field_validator(
        "slack_app_token",
        "slack_signing_secret",
        "polytomic_org_id",
        "polytomic_webhook_secret",
        "bot_alert_channel",
        "bot_mode",
        mode="before",
    )
    @classmethod
    def _blank_is_unset(cls, value: object) -> object:
        if isinstance(value, str) and not value.strip():
            return None
        return value.strip() if isinstance(value, str) else value

    @field_validator("bot_mode", mode="before")
    @classmethod
    def _mode_lower(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    @field_validator("slack_bot_token")
    @classmethod
    def _bot_token_kind(cls, value: SecretStr) -> SecretStr:
        token = value.get_secret_value().strip()
        if token.startswith("xapp-"):
            raise ValueError("is an app-level token (xapp-); put the bot token (xoxb-) here")
        if not token.startswith("xoxb-"):
            raise ValueError("must be a bot token starting with xoxb-")
        return SecretStr(token)

    @field_validator("slack_app_token")
    @classmethod
    def _app_token_kind(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None:
            return None
        token = value.get_secret_value().strip()
        if token.startswith("xoxb-"):
            raise ValueError("is a bot token (xoxb-); put the app-level token (xapp-) here")
        if not token.startswith("xapp-"):
            raise ValueError("must be an app-level token starting with xapp-")
        return SecretStr(token)

    @field_validator("polytomic_api_key")
    @classmethod
    def _key_present(cls, value: SecretStr) -> SecretStr:
        key = value.get_secret_value().strip()
        if not key:
            raise ValueError("is empty")
        return SecretStr(key)

    @field_validator("slack_api_url", "polytomic_base_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        value = value.strip()
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value

    @field_validator("bot_database_url")
    @classmethod
    def _db_url(cls, value: str) -> str:
        value = value.strip()
        if not value.startswith(("sqlite", "postgresql", "postgres://")):
            raise ValueError("must be a sqlite:///path or postgresql://... URL")
        return value

    @model_validator(mode="after")
    def _mode_needs(self) -> Settings:
        if self.bot_poll_max_interval_s < self.bot_poll_interval_s:
            raise ValueError("BOT_POLL_MAX_INTERVAL_S: must be at least BOT_POLL_INTERVAL_S")
        if self.mode == "socket" and self.slack_app_token is None:
            raise ValueError("SLACK_APP_TOKEN: required when BOT_MODE=socket")
        if self.mode == "http" and self.slack_signing_secret is None:
            raise ValueError(
                "SLACK_SIGNING_SECRET: required in HTTP mode (BOT_MODE=http or no SLACK_APP_TOKEN)"
            )
        return self

    # Derived values -------------------------------------------------------------------------

    @property
    def mode(self) -> str:
        if self.bot_mode:
            return self.bot_mode
        return "socket" if self.slack_app_token is not None else "http"

    @property
    def slack_api_base(self) -> str:
        return self.slack_api_url if self.slack_api_url.endswith("/") else self.slack_api_url + "/"

    @property
    def polytomic_base(self) -> str:
        return self.polytomic_base_url.rstrip("/")

    @property
    def async_database_url(self) -> str:
        return async_database_url(self.bot_database_url)

    @property
    def access_configured(self) -> bool:
        return bool(self.bot_allowed_users or self.bot_allowed_usergroups or self.bot_allowed_channels)


def async_database_url(url: str) -> str:
    """Map the operator's URL onto the async driver SQLAlchemy needs."""
    if url.startswith("sqlite+") or url.startswith("postgresql+"):
        return url
    if url.startswith("sqlite:"):
        return "sqlite+aiosqlite:" + url[len("sqlite:") :]
    if url.startswith("postgres://"):
        return "postgresql+asyncpg://" + url[len("postgres://") :]
    if url.startswith("postgresql:"):
        return "postgresql+asyncpg:" + url[len("postgresql:") :]
    return url


def _describe(error: dict) -> str:
    loc = [str(part) for part in error.get("loc", ()) if part != "__root__"]
    msg = str(error.get("msg", "invalid"))
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    if not loc:
        # model-level validators put the variable name at the start of the message already.
        return msg
    name = loc[0].upper()
    if error.get("type") == "missing":
        return f"{name}: required but not set"
    if error.get("type") in ("literal_error",):
        return f"{name}: {msg.replace('Input should be', 'must be')}"
    return f"{name}: {msg}"


def load_settings(**overrides: object) -> Settings:
    """Read settings or raise `SettingsError` with one line naming each bad variable."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        problems = [_describe(err) for err in exc.errors(include_input=False, include_url=False)]
        raise SettingsError("configuration error: " + "; ".join(problems)) from None
