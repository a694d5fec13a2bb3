"""The bot with its alerts wired in (long-run monitor, Polytomic event webhooks, message shortcut),
between the fakes, for tests/test_monitor.py, tests/test_webhooks.py and tests/test_shortcut.py.

`Runtime` wires the alerts itself; `AlertRuntime` only adds the test knobs (a short monitor
interval), and keeps the fallback wiring for a Runtime built without them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from conftest import SIGNING_SECRET, Bot, World, bot_settings

from bot import shortcut, webhooks
from bot.monitor import LongRunMonitor
from bot.runtime import Runtime, http_server

ALERTS = "C0ALERT"
WEBHOOK_SECRET = "whsec-test-0123456789"


class AlertRuntime(Runtime):
    def __init__(self, settings: Any, *, monitor_interval_s: float | None = None, **kw: Any) -> None:
        self.monitor: LongRunMonitor | None = None
        self.events: webhooks.EventReceiver | None = None
        self.shortcut: shortcut.MessageShortcut | None = None
        self._monitor_interval_s = monitor_interval_s
        super().__init__(settings, **kw)

    def _build_http(self):
        app = super()._build_http()
        if not any(getattr(r, "path", None) == webhooks.PATH for r in app.routes):
            # WIRING (Runtime._build_http): one more route
            app.router.routes.append(
                webhooks.route(
                    lambda: self.events, enabled=self.settings.polytomic_webhook_secret is not None
                )
            )
        return app

    async def start(self) -> None:
        await super().start()
        s = self.settings
        assert self.service is not None and self.watcher is not None
        if self.shortcut is not None:  # Runtime wires the alerts itself now: keep the test knob only
            if self.monitor is not None and self._monitor_interval_s:
                self.monitor.interval_s = self._monitor_interval_s
            return
        notifier = self.service.notifier
        # WIRING (Runtime.start, after the service and the Bolt app exist):
        extra = {"interval_s": self._monitor_interval_s} if self._monitor_interval_s else {}
        self.monitor = LongRunMonitor.from_settings(
            s, client=self.client, store=self.store, notifier=notifier, owner=self.owner, **extra
        )
        self.events = webhooks.EventReceiver.from_settings(
            s, store=self.store, client=self.client, notifier=notifier, monitor=self.monitor
        )
        self.shortcut = shortcut.register(
            self.app,
            service=self.service,
            client=self.client,
            notifier=notifier,
            access=self.service.access,
            settings=s,
            bot_user_id=self.bot_user_id,
        )
        if self.monitor is not None:
            self.monitor.start()
        self._wired_here = True

    async def stop(self) -> None:
        # WIRING (Runtime.stop, before the store closes):
        if self.monitor is not None and getattr(self, "_wired_here", False):
            await self.monitor.stop()
        await super().stop()


class AlertBot(Bot):
    def __init__(self, settings: Any, *, owner: str | None = None, lease_s: float = 30.0, **kw: Any) -> None:
        super().__init__(settings, owner=owner, lease_s=lease_s)
        self.runtime = AlertRuntime(settings, owner=owner, lease_s=lease_s, **kw)
        self._server = http_server(self.runtime.http_app, "127.0.0.1", self.port)


class AlertWorlds:
    """Bots with alerts wired in, all stopped at the end (use as an async context manager)."""

    def __init__(self, fake_polytomic: Any, fake_slack: Any, tmp_path: Path, **defaults: Any) -> None:
        self.defaults = defaults
        self.polytomic = fake_polytomic
        self.slack = fake_slack
        self.tmp_path = tmp_path
        self.bots: list[AlertBot] = []

    def settings(self, **overrides: Any) -> Any:
        env: dict[str, Any] = {
            "bot_alert_channel": ALERTS,
            "bot_long_run_s": 1.0,
            "polytomic_webhook_secret": WEBHOOK_SECRET,
        }
        env.update(self.defaults)
        env.update(overrides)
        return bot_settings(self.polytomic, self.slack, self.tmp_path, **env)

    async def make(
        self, *, owner: str | None = None, monitor_interval_s: float | None = None, **overrides: Any
    ) -> World:
        bot = AlertBot(self.settings(**overrides), owner=owner, monitor_interval_s=monitor_interval_s)
        await bot.start()
        self.bots.append(bot)
        return World(self.polytomic, self.slack, bot, self.tmp_path)

    async def stop(self, world: World) -> None:
        await world.bot.stop()
        self.bots.remove(world.bot)

    async def __aenter__(self) -> AlertWorlds:
        return self

    async def __aexit__(self, *exc: object) -> None:
        for bot in list(self.bots):
            await bot.stop()
        self.bots.clear()


__all__ = [
    "ALERTS",
    "SIGNING_SECRET",
    "WEBHOOK_SECRET",
    "AlertBot",
    "AlertRuntime",
    "AlertWorlds",
]
