"""The bot as a real separate process (`python -m bot serve`, HTTP mode) between the fakes that run in
the test process, so that a test can SIGKILL or SIGTERM it and start it again.

    bot = await BotProcess(fake_polytomic, fake_slack, database_url, tmp_path).start()
    await bot.user().slash("cancel ... --yes")
    await bot.kill()            # SIGKILL
    await bot.start()           # the same bot again (new pid, new port, same database)
    seconds = await bot.terminate()   # SIGTERM, returns how long the exit took

Every start writes its output to `<workdir>/<name>-<n>.log` (shown by `logs()` when a test fails).
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from bot.fakes.polytomic import FakePolytomic
from bot.fakes.slack import FakeSlack, SlackUser

SIGNING_SECRET = "test-signing-secret-0123456789abcdef"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class BotProcess:
    def __init__(
        self,
        polytomic: FakePolytomic,
        slack: FakeSlack,
        database_url: str,
        workdir: Path,
        *,
        name: str = "bot",
        polytomic_url: str | None = None,
        lease_s: float | None = 3.0,
        allowed_users: str = "U0001",
        env: dict[str, str] | None = None,
    ) -> None:
        self.polytomic = polytomic
        self.slack = slack
        self.database_url = database_url
        self.workdir = Path(workdir)
        self.name = name
        self.polytomic_url = polytomic_url or polytomic.url
        self.lease_s = lease_s
        self.allowed_users = allowed_users
        self.extra_env = dict(env or {})
        self.proc: subprocess.Popen | None = None
        self.port = 0
        self.starts = 0
        self.log_paths: list[Path] = []

    # -- life cycle ------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def environment(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR")}
        env.update(
            PYTHONUNBUFFERED="1",
            SLACK_BOT_TOKEN=self.slack.bot_token,
            SLACK_SIGNING_SECRET=SIGNING_SECRET,
            SLACK_API_URL=self.slack.api_url,
            BOT_MODE="http",
            BOT_HOST="127.0.0.1",
            BOT_PORT=str(self.port),
            POLYTOMIC_API_KEY=self.polytomic.api_key,
            POLYTOMIC_BASE_URL=self.polytomic_url,
            BOT_DATABASE_URL=self.database_url,
            BOT_ALLOWED_USERS=self.allowed_users,
            BOT_POLL_INTERVAL_S="0.2",
            BOT_POLL_MAX_INTERVAL_S="0.5",
            BOT_WATCH_TIMEOUT_S="120",
            BOT_LOG_LEVEL="INFO",
        )
        if self.lease_s is not None:
            env["BOT_LEASE_S"] = str(self.lease_s)
        env.update(self.extra_env)
        return env

    def spawn(self) -> BotProcess:
        """Start the process without waiting for it to be ready."""
        assert not self.running, "already running"
        self.port = free_port()
        self.starts += 1
        log_path = self.workdir / f"{self.name}-{self.starts}.log"
        self.log_paths.append(log_path)
        with open(log_path, "wb") as out:
            # cwd: an empty directory, so that no .env file of the developer's is read
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "bot", "serve"],
                cwd=self.workdir,
                env=self.environment(),
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    async def start(self, *, timeout: float = 30.0) -> BotProcess:
        """Start and wait until `GET /readyz` answers 200."""
        self.spawn()
        await self.wait_ready(timeout=timeout)
        return self

    async def wait_ready(self, *, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        async with httpx.AsyncClient(timeout=2) as http:
            while time.monotonic() < deadline:
                if not self.running:
                    raise AssertionError(f"{self.name} exited with {self.proc.returncode}:\n{self.logs()}")
                try:
                    if (await http.get(self.url + "/readyz")).status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                await asyncio.sleep(0.05)
        raise AssertionError(f"{self.name} not ready within {timeout}s:\n{self.logs()}")

    async def wait_exit(self, timeout: float = 15.0) -> int:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None:
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.name} did not exit within {timeout}s:\n{self.logs()}")
            await asyncio.sleep(0.02)
        return self.proc.returncode

    async def kill(self) -> None:
        """SIGKILL: no clean-up of any kind (leases stay until they expire)."""
        if self.running:
            self.proc.send_signal(signal.SIGKILL)
            await self.wait_exit()

    async def terminate(self, timeout: float = 15.0) -> float:
        """SIGTERM; returns the seconds until the process had exited."""
        assert self.running, "not running"
        started = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        await self.wait_exit(timeout)
        return time.monotonic() - started

    async def close(self) -> None:
        """For fixtures: make sure nothing is left running."""
        if self.running:
            self.proc.send_signal(signal.SIGKILL)
            with_deadline = time.monotonic() + 10
            while self.proc.poll() is None and time.monotonic() < with_deadline:
                await asyncio.sleep(0.02)

    # -- talking to it ---------------------------------------------------------------------

    def user(self, user_id: str = "U0001", **kw) -> SlackUser:
        return SlackUser(self.url, SIGNING_SECRET, self.slack, user_id=user_id, **kw)

    def logs(self, tail: int = 60) -> str:
        parts = []
        for path in self.log_paths:
            try:
                lines = path.read_text(errors="replace").splitlines()[-tail:]
            except OSError:
                continue
            parts.append(f"--- {path.name}\n" + "\n".join(lines))
        return "\n".join(parts)
