"""Shared pieces of the benchmarks: the fakes on loopback, the bot as a subprocess, its CPU and RSS,
seeding watches, py-spy profiles, candidate fixes (`--patch`) and the closing table.

Also a small launcher, run by the benchmarks as a subprocess (never by hand):

    python benchmarks/common.py serve --patch NAME ...   the bot (`python -m bot serve`) with fixes
                                                          applied by monkeypatching first
    python benchmarks/common.py baseline                  a bare Bolt AsyncApp that only acks, on the
                                                          bot's own server stack

Everything listens on and talks to 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable
SIGNING_SECRET = "bench-signing-secret-0123456789abcdef"
POLYTOMIC_KEY = "bench-polytomic-key"
TEAM = "T0001"
CLK_TCK = os.sysconf("SC_CLK_TCK")


# ------------------------------------------------------------------------------------------ output


def table(rows: Iterable[tuple[str, str, str, bool | None]], title: str = "") -> str:
    """metric | measured | goal | met? as a Markdown table (the benchmarks print it last)."""
    rows = list(rows)
    head = ("metric", "measured", "goal", "met?")
    cells = [head] + [(m, v, g, "-" if ok is None else ("yes" if ok else "NO")) for m, v, g, ok in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(4)]
    out = [title] if title else []
    for n, r in enumerate(cells):
        out.append("| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |")
        if n == 0:
            out.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(out)


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    k = min(len(s) - 1, max(0, round(q / 100 * (len(s) - 1))))
    return s[k]


def note(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ----------------------------------------------------------------------------------------- network


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RecordingApp:
    """ASGI wrapper: logs (monotonic time, server port, method, path) of every HTTP request, then
    hands it to the wrapped app. Serving one fake on several ports through it tells the callers
    apart (each bot process gets its own port) while they all see one world."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.log: list[tuple[float, int, str, str]] = []

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http":
            self.log.append((time.monotonic(), scope["server"][1], scope["method"], scope["path"]))
        await self.app(scope, receive, send)


class Fakes:
    """The fake Polytomic (served on `polytomic_ports` ports, one world) and the fake Slack, each on
    its own uvicorn thread in this process."""

    def __init__(self, *, polytomic_ports: int = 1, **polytomic_kw: Any) -> None:
        from bot.fakes.polytomic import FakePolytomic
        from bot.fakes.server import ThreadedServer
        from bot.fakes.slack import FakeSlack

        polytomic_kw.setdefault("api_key", POLYTOMIC_KEY)
        self.polytomic = FakePolytomic(**polytomic_kw)
        self.polytomic.page_size = polytomic_kw.get("page_size", self.polytomic.page_size)
        self.recorder = RecordingApp(self.polytomic.app)
        self._servers = [ThreadedServer(self.recorder).start() for _ in range(polytomic_ports)]
        self.polytomic_urls = [s.url for s in self._servers]
        self.slack = FakeSlack().start()

    def close(self) -> None:
        self.polytomic._stopping.set()
        for s in self._servers:
            s.stop()
        self.slack.stop()

    def __enter__(self) -> Fakes:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ClockTicker:
    """Drives a FakePolytomic built with `manual_clock=True` at `speed` x real time, from `start()`
    on, in small steps (so that the benchmark decides when fake time begins)."""

    def __init__(self, fake: Any, speed: float, step_s: float = 0.01) -> None:
        self.fake = fake
        self.speed = speed
        self.step_s = step_s
        self.started_mono: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="clock", daemon=True)
        self.fake_start = fake._ts()

    def start(self) -> None:
        self.started_mono = time.monotonic()
        self._thread.start()

    def _run(self) -> None:
        done = 0.0
        while not self._stop.is_set():
            time.sleep(self.step_s)
            target = (time.monotonic() - self.started_mono) * self.speed
            if target > done:
                self.fake.advance(target - done)
                done = target

    def fake_elapsed(self) -> float:
        return self.fake._ts() - self.fake_start

    def real_at(self, fake_offset_s: float) -> float:
        """Monotonic time at which the fake clock reaches `fake_offset_s` past the start."""
        assert self.started_mono is not None
        return self.started_mono + fake_offset_s / self.speed

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(2)


# ------------------------------------------------------------------------------------- bot process


def bot_env(
    fakes: Fakes,
    *,
    port: int,
    database_url: str,
    polytomic_url: str | None = None,
    **settings: Any,
) -> dict[str, str]:
    """Environment for `python -m bot serve` between the fakes (settings names as in CONTRACT.md)."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("SLACK_", "BOT_", "POLYTOMIC_")) or k == "BOT_TEST_DATABASE_URL"
    }
    env.pop("BOT_TEST_DATABASE_URL", None)
    env.update(
        SLACK_BOT_TOKEN=fakes.slack.bot_token,
        SLACK_SIGNING_SECRET=SIGNING_SECRET,
        SLACK_API_URL=fakes.slack.api_url,
        BOT_MODE="http",
        BOT_HOST="127.0.0.1",
        BOT_PORT=str(port),
        POLYTOMIC_API_KEY=POLYTOMIC_KEY,
        POLYTOMIC_BASE_URL=polytomic_url or fakes.polytomic_urls[0],
        BOT_DATABASE_URL=database_url,
        BOT_ALLOWED_USERS="*",
        BOT_LOG_LEVEL="INFO",
        PYTHONUNBUFFERED="1",
    )
    for key, value in settings.items():
        env[key.upper()] = str(value)
    return env


class BotProcess:
    """`python -m bot serve` (or the launcher below with `--patch`es) as a child process."""

    def __init__(
        self, env: dict[str, str], *, patches: Iterable[str] = (), log_path: Path, name: str = "bot"
    ) -> None:
        self.env = env
        self.patches = [p for p in patches if p]
        self.log_path = log_path
        self.name = name
        self.port = int(env["BOT_PORT"])
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        self._log = None
        self.last_rss_peak_mb = 0.0
        self.last_cpu_s = 0.0

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def command(self) -> list[str]:
        if not self.patches:
            return [PY, "-m", "bot", "serve"]
        cmd = [PY, str(Path(__file__).resolve()), "serve"]
        for p in self.patches:
            cmd += ["--patch", p]
        return cmd

    def start(self, *, wait_ready: bool = True, timeout: float = 60) -> BotProcess:
        self._log = open(self.log_path, "ab")
        cwd = self.log_path.parent / f"cwd-{self.name}"  # an empty directory: no stray .env is read
        cwd.mkdir(exist_ok=True)
        self.proc = subprocess.Popen(
            self.command(), env=self.env, cwd=cwd, stdout=self._log, stderr=subprocess.STDOUT
        )
        if wait_ready:
            self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}; see {self.log_path}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.url + "/readyz", timeout=2).status_code == 200:
                    return
            time.sleep(0.1)
        raise RuntimeError(f"{self.name} not ready within {timeout}s; see {self.log_path}")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _status(self, key: str) -> float:
        try:
            with open(f"/proc/{self.pid}/status") as f:
                for line in f:
                    if line.startswith(key + ":"):
                        return int(line.split()[1]) / 1024.0
        except OSError:
            pass
        return float("nan")

    def rss_peak_mb(self) -> float:
        """VmHWM: the peak resident set of the process so far (MB)."""
        v = self._status("VmHWM")
        if v == v:
            self.last_rss_peak_mb = v
        return self.last_rss_peak_mb

    def rss_mb(self) -> float:
        return self._status("VmRSS")

    def cpu_s(self) -> float:
        """User + system CPU seconds of the process so far (/proc/<pid>/stat utime + stime)."""
        try:
            with open(f"/proc/{self.pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            self.last_cpu_s = (int(fields[11]) + int(fields[12])) / CLK_TCK
        except OSError:
            pass
        return self.last_cpu_s

    def stop(self, timeout: float = 20) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.rss_peak_mb()
            self.cpu_s()
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self._log is not None:
            self._log.close()
            self._log = None

    def kill(self) -> None:
        """SIGKILL: no shutdown, no lease release."""
        if self.proc is not None and self.proc.poll() is None:
            self.rss_peak_mb()
            self.cpu_s()
            self.proc.kill()
            self.proc.wait(5)

    def log_tail(self, n: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def log_count(self, needle: str) -> int:
        try:
            return self.log_path.read_text(errors="replace").count(needle)
        except OSError:
            return 0


# ------------------------------------------------------------------------------------ py-spy profile


class Profile:
    """`py-spy record` attached to a pid (raw collapsed stacks), summarised as the functions with the
    most samples: self (on top of the stack) and inclusive (anywhere on it). Idle threads excluded."""

    def __init__(self, pid: int, out: Path, rate: int = 100) -> None:
        self.out = out
        self.rate = rate
        self.started = time.monotonic()
        self.elapsed = 0.0
        self.proc = subprocess.Popen(
            ["py-spy", "record", "--pid", str(pid), "--rate", str(rate), "--format", "raw",
             "--output", str(out), "--nonblocking"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )

    def stop(self) -> None:
        self.elapsed = time.monotonic() - self.started
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()

    def summary(self, top: int = 12) -> str:
        if not self.out.exists():
            return f"(no profile written to {self.out}; is py-spy installed?)"
        groups = {"main": (collections.Counter(), collections.Counter()),
                  "other threads": (collections.Counter(), collections.Counter())}
        totals = collections.Counter()
        for line in self.out.read_text(errors="replace").splitlines():
            stack, _, count = line.rpartition(" ")
            if not stack or not count.isdigit():
                continue
            n = int(count)
            raw = [f for f in stack.split(";") if f]
            if raw and raw[-1].startswith(("EpollSelector.select", "select (")):
                continue  # waiting for I/O: idle, whatever py-spy made of it
            main = bool(raw) and not raw[0].startswith("Thread._bootstrap")
            frames = [_short_frame(f) for f in raw]
            group = "main" if main else "other threads"
            totals[group] += n
            self_c, incl = groups[group]
            self_c[frames[-1]] += n
            for f in set(frames):
                incl[f] += n
        if not totals:
            return "(empty profile)"
        secs = self.elapsed or 1.0
        lines = [f"py-spy ({self.out.name}, {self.rate}/s, idle excluded): main thread busy "
                 f"{100 * totals['main'] / (self.rate * secs):.0f}% of the time; other threads "
                 f"{100 * totals['other threads'] / (self.rate * secs):.0f}% of a core"]
        self_c, incl = groups["main"]
        total = totals["main"] or 1
        lines.append("  main thread, self% (top of stack):")
        lines += [f"    {100 * c / total:5.1f}  {f}" for f, c in self_c.most_common(top)]
        lines.append("  main thread, incl% (anywhere on the stack):")
        interesting = [(f, c) for f, c in incl.most_common(400) if not _boring(f)]
        lines += [f"    {100 * c / total:5.1f}  {f}" for f, c in interesting[:top]]
        o_self, _ = groups["other threads"]
        if totals["other threads"]:
            lines.append("  other threads, self%:")
            lines += [f"    {100 * c / totals['other threads']:5.1f}  {f}" for f, c in o_self.most_common(4)]
        return "\n".join(lines)


def _short_frame(frame: str) -> str:
    # "func (path/to/file.py:123)" -> "func (file.py)" so that lines of one function add up
    name, _, where = frame.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    parts = Path(path).parts
    short = "/".join(parts[-2:]) if len(parts) >= 2 else path
    for marker in ("site-packages/", "lib/python3"):
        if marker in path:
            short = path.split(marker, 1)[1].split("/", 1)[-1] if marker == "lib/python3" else path.split(
                marker, 1
            )[1]
            break
    return f"{name} ({short})"


def _boring(frame: str) -> bool:
    return any(
        k in frame
        for k in ("asyncio/", "<frozen runpy>", "<module>", "threading.py", "(bot/cli.py)", "_launcher (",
                  "run (asyncio", "_run_once")
    )


# ------------------------------------------------------------------------------------- the world


def make_syncs(fake: Any, n_syncs: int, n_schemas: int, prefix: str) -> list[tuple[str, str, list[str]]]:
    """n_syncs bulk syncs named `<prefix>-000`... with schemas `s0`...; returns (id, name, schemas)."""
    out = []
    for i in range(n_syncs):
        name = f"{prefix}-{i:03d}"
        schemas = [f"s{j}" for j in range(n_schemas)]
        out.append((fake.add_sync(name, schemas), name, schemas))
    return out


def new_watch(**kw: Any):
    """A Watch as CancelService would have stored it once the cancel was sent and the headline posted."""
    from bot.store import Watch

    now = datetime.now(UTC)
    sync_id, schema_id, execution_id = kw["sync_id"], kw.get("schema_id"), kw["execution_id"]
    defaults = dict(
        dedupe_key=f"{TEAM}:{sync_id}:{schema_id or '*'}:{execution_id}",
        team_id=TEAM,
        requested_by="U0001",
        request_id=uuid.uuid4().hex[:12],
        deadline_at=now + timedelta(hours=2),
        cancel_state="sent",
        created_at=now,
        next_poll_at=now,
        schema_label=schema_id,
    )
    defaults.update(kw)
    return Watch(**defaults)


async def seed_watches(database_url: str, watches: list[Any], *, concurrency: int = 1) -> float:
    """Insert watches through the public Store API (create_watch); returns seconds taken."""
    from bot.store import Store

    started = time.monotonic()
    store = await Store.open(database_url)
    try:
        sem = asyncio.Semaphore(concurrency)

        async def one(w) -> None:
            async with sem:
                _, created = await store.create_watch(w)
                assert created, "dedupe key clash while seeding"

        await asyncio.gather(*(one(w) for w in watches))
    finally:
        await store.close()
    return time.monotonic() - started


async def lease_owners(database_url: str) -> dict[str | None, int]:
    """Open watches (not finished or final reply not posted) per lease owner, read from the store."""
    from bot.store import Store

    store = await Store.open(database_url, migrate=False)
    try:
        counts: dict[str | None, int] = collections.Counter()
        for w in await store.unfinished_watches():
            live = w.lease_until is not None and w.lease_until > datetime.now(UTC)
            counts[w.lease_owner if live else None] += 1
        return dict(counts)
    finally:
        await store.close()


class WatchLoad:
    """The watch load of watch_many.py and scale_out.py, on a fake Polytomic with a manual clock.

    `n_syncs` bulk syncs with `n_schemas` schemas each, one watch per schema (cancel sent, headline
    posted, last seen `scheduled`). Fake time starts when the ClockTicker starts; over a window of
    `window_s` fake seconds (W), sync i's run starts at `start_at[i]` (spread over 0.03..0.33 W: one
    `running` state change per watch) and `terminal_share` of the schemas (the first ones of each sync)
    complete at `end_at[watch]` (spread over 0.4..0.9 W: the terminal reply); the others run for ten
    hours. The last 0.1 W leave time for the last replies. Root messages are put in the fake Slack as
    the bot's own.
    """

    def __init__(self, fakes: Fakes, *, n_syncs: int = 200, n_schemas: int = 10, terminal_share: float = 0.2,
                 channels: int = 20, window_s: float = 300.0) -> None:
        self.fakes = fakes
        self.n_syncs, self.n_schemas = n_syncs, n_schemas
        fake = fakes.polytomic
        self.syncs = make_syncs(fake, n_syncs, n_schemas, "wm")
        n_term = max(0, min(n_schemas, round(n_schemas * terminal_share)))
        total_term = n_syncs * n_term
        self.start_at: dict[str, float] = {}
        self.end_at: dict[tuple[str, str], float] = {}  # (sync, schema) -> fake offset of completion
        self.watches = []
        self.channel_of: dict[tuple[str, str], str] = {}
        # one creation instant for all: claims go by (next_poll_at, id), i.e. in random order, not in
        # the order of the scenario's end times
        created = datetime.now(UTC)
        k = 0
        for i, (sync_id, name, schemas) in enumerate(self.syncs):
            start = window_s * (0.033 + 0.3 * i / max(1, n_syncs - 1))
            self.start_at[sync_id] = start
            durations: dict[str, float] = {}
            for j, schema in enumerate(schemas):
                if j < n_term:
                    end = window_s * (0.4 + 0.5 * k / max(1, total_term - 1))
                    k += 1
                    self.end_at[(sync_id, schema)] = end
                    durations[schema] = end - start
                else:
                    durations[schema] = 36000.0
            execution_id = fake.start_run(sync_id, durations=durations, start_after=start)
            for j, schema in enumerate(schemas):
                channel = f"C{2000 + (i * n_schemas + j) % channels}"
                root = fakes.slack.add_message(
                    channel, f"Cancelling {schema} in {name}", user=fakes.slack.bot_user_id,
                    bot_id=fakes.slack.bot_id,
                )
                self.channel_of[(sync_id, schema)] = channel
                self.watches.append(new_watch(
                    sync_id=sync_id, sync_name=name, schema_id=schema, execution_id=execution_id,
                    channel_id=channel, root_ts=root.ts, last_state="scheduled", created_at=created,
                    next_poll_at=created,
                ))
        self.root_of = {w.root_ts: (w.sync_id, w.schema_id) for w in self.watches}

    # -- analysis over a window of fake time [0, fake_s) started by `ticker` -------------------

    def status_polls(self, t0: float, t1: float) -> dict[str, list[tuple[float, int]]]:
        """sync id -> [(monotonic time, port)] of status requests in [t0, t1)."""
        polls: dict[str, list[tuple[float, int]]] = collections.defaultdict(list)
        for t, port, method, path in list(self.fakes.recorder.log):
            if t0 <= t < t1 and method == "GET" and path.endswith("/status") and path.count("/") == 5:
                polls[path.split("/")[4]].append((t, port))
        return polls

    def requests_between(self, t0: float, t1: float) -> collections.Counter:
        kinds: collections.Counter[str] = collections.Counter()
        for t, _port, method, path in list(self.fakes.recorder.log):
            if t0 <= t < t1:
                parts = path.split("/")
                if path.endswith("/status"):
                    kind = "status"
                elif "executions" in parts:
                    kind = "execution"
                else:
                    kind = "cancel" if parts[-1] == "cancel" else "other"
                kinds[f"{method} {kind}"] += 1
        return kinds

    def slack_story(self, ticker: ClockTicker, fake_s: float, wall_offset: float) -> dict[str, Any]:
        """Thread replies and headline updates per watch and the terminal-reply delays, against what
        changed in the fake during the window (ground truth from the scenario)."""
        t_start_wall = ticker.started_mono + wall_offset
        replies: dict[str, list[Any]] = collections.defaultdict(list)
        updates: collections.Counter[str] = collections.Counter()
        other: collections.Counter[str] = collections.Counter()
        for call in list(self.fakes.slack.calls):
            if call.time < t_start_wall:
                continue
            ts = call.params.get("thread_ts") if call.method == "chat.postMessage" else call.params.get("ts")
            if call.method == "chat.postMessage" and ts in self.root_of:
                replies[ts].append(call)
            elif call.method == "chat.update" and ts in self.root_of:
                updates[ts] += 1
            else:
                other[call.method] += 1
        expected_changes = 0
        delays = []
        delay_of: dict[tuple[str, str], float] = {}
        missing_final = 0
        extra = 0
        for w in self.watches:
            key = (w.sync_id, w.schema_id)
            changes = 0
            if self.start_at[w.sync_id] < fake_s:
                changes += 1
            end = self.end_at.get(key)
            if end is not None and end < fake_s:
                changes += 1
                finals = [c for c in replies.get(w.root_ts, []) if "completed" in str(c.params.get("text"))]
                if finals:
                    delays.append(finals[0].time - (ticker.real_at(end) + wall_offset))
                    delay_of[key] = delays[-1]
                else:
                    missing_final += 1
            expected_changes += changes
            extra += max(0, len(replies.get(w.root_ts, [])) - changes)
        n_replies = sum(len(v) for v in replies.values())
        return {
            "expected_changes": expected_changes, "replies": n_replies, "updates": sum(updates.values()),
            "other_calls": dict(other), "delays": delays, "delay_of": delay_of,
            "missing_final": missing_final, "extra_replies": extra,
        }


def signed_headers(body: bytes) -> dict[str, str]:
    from bot.fakes.slack import sign

    return {"Content-Type": "application/x-www-form-urlencoded", **sign(SIGNING_SECRET, body)}


# --------------------------------------------------------------------- candidate fixes (--patch NAME)
# Each patch monkeypatches the bot inside its own process before it starts, so the owner of the file
# can see the effect measured before applying the change for real. The report/README give each one
# as a diff against the file it belongs to.


def _patch_claim() -> None:
    """bot/watcher.py Watcher._claim_and_renew: when a claim comes back full (`limit` = 100 watches),
    claim again at once (bounded: 20 batches per cycle) instead of waiting for the next cycle
    (lease/6 = 5 s). Before: a replica that finds 2,000 open watches (start, restart, takeover)
    holds them all only after 20 cycles, about 100 s."""
    from bot import watcher as watcher_mod

    original = watcher_mod.Watcher._claim_and_renew

    async def _claim_and_renew(self) -> None:
        for _ in range(20):
            before = len(self.held)
            await original(self)
            if len(self.held) - before < 100 or getattr(self, "_draining", False):
                break

    watcher_mod.Watcher._claim_and_renew = _claim_and_renew


def _patch_fence() -> None:
    """bot/watcher.py Watcher._fence: skip the per-poll lease renewal (a write transaction) and the
    sync_holders read while the leases renewed by the last claim cycle still have more than half of
    their time left (the claim cycle renews every held lease each lease/6 s). The fence still
    renews, and still hands a sync over, when that renewal is older than lease/2 (a paused replica)."""
    from bot import watcher as watcher_mod

    original_fence = watcher_mod.Watcher._fence
    original_claim = watcher_mod.Watcher._claim_and_renew

    async def _claim_and_renew(self) -> None:
        started = time.monotonic()
        await original_claim(self)
        self._bench_renewed_at = started

    async def _fence(self, sync_id):
        last = getattr(self, "_bench_renewed_at", None)
        if last is not None and time.monotonic() - last < self.lease_s / 2 and not self._stopping:
            starting = self.service.starting
            return [w for w in self.held.values() if w.sync_id == sync_id and w.id not in starting]
        return await original_fence(self, sync_id)

    watcher_mod.Watcher._claim_and_renew = _claim_and_renew
    watcher_mod.Watcher._fence = _fence


def _patch_worksem() -> None:
    """bot/slack_app.py SlackHandlers: the work a listener does after its ack (Polytomic, the store,
    Slack) waits for one of 32 permits; the ack itself never waits. A burst then queues as cheap
    waiting coroutines instead of hundreds of requests in flight, which keeps the event loop (and so
    every later ack) responsive."""
    from bot import slack_app

    permits = 32
    names = ("on_command", "on_cancel_click", "on_refresh_click")

    def wrap(fn):
        async def handler(self, ack, body, respond):
            sem = self.__dict__.get("_bench_work")
            if sem is None:
                sem = self.__dict__["_bench_work"] = asyncio.Semaphore(permits)
            held = False

            async def ack_then_queue(*a, **kw):
                nonlocal held
                await ack(*a, **kw)
                if not held:
                    await sem.acquire()
                    held = True

            try:
                await fn(self, ack_then_queue, body, respond)
            finally:
                if held:
                    sem.release()

        handler.__name__ = fn.__name__
        handler.__qualname__ = fn.__qualname__
        return handler

    for name in names:
        setattr(slack_app.SlackHandlers, name, wrap(getattr(slack_app.SlackHandlers, name)))


def _patch_readfirst() -> None:
    """bot/store.py Store.create_watch: look for the unfinished watch (covering key, then own key) with
    a plain read before taking the write lock; insert only when there is none. A repeated cancel (a
    second click, a second engineer) then costs two writes (add_requester, audit) instead of three,
    and never waits for the single SQLite writer just to find that the watch exists. The insert
    path is unchanged, so a race still ends in ON CONFLICT as before."""
    from bot import store as store_mod

    original = store_mod.Store.create_watch

    async def create_watch(self, watch, **kw):
        for key in (kw.get("covered_by"), watch.dedupe_key):
            if key:
                found = await self.find_unfinished(key)
                if found is not None:
                    return found, False
        return await original(self, watch, **kw)

    store_mod.Store.create_watch = create_watch


def _patch_synccache() -> None:
    """bot/polytomic/client.py PolytomicClient.list_syncs: keep the list for 15 s (one in-flight
    fetch shared by concurrent callers). Name resolution of every typed command pages through all
    bulk syncs (4 requests and 200 models for 200 syncs) before anything else happens."""
    from bot.polytomic import client as client_mod

    original = client_mod.PolytomicClient.list_syncs
    ttl = 15.0

    async def list_syncs(self, *, active=None):
        cache = self.__dict__.setdefault("_bench_sync_cache", {})
        key = active
        hit = cache.get(key)
        now = time.monotonic()
        if hit is not None and (isinstance(hit, asyncio.Future) or now - hit[0] < ttl):
            if isinstance(hit, asyncio.Future):
                return list(await asyncio.shield(hit))
            return list(hit[1])
        fut = asyncio.get_running_loop().create_future()
        cache[key] = fut
        try:
            syncs = await original(self, active=active)
        except BaseException as exc:
            cache.pop(key, None)
            if not fut.done():
                fut.set_exception(exc)
                fut.exception()  # retrieved: no "never retrieved" warning
            raise
        cache[key] = (now, syncs)
        fut.set_result(syncs)
        return list(syncs)

    client_mod.PolytomicClient.list_syncs = list_syncs


def _patch_sniffio() -> None:
    """httpcore tries `import sniffio` for every lock and event it sets up; sniffio is not installed
    (recent anyio no longer pulls it in), so each try scans sys.path again. Equivalent to adding
    `sniffio` to the dependencies in pyproject.toml."""
    import types

    if "sniffio" not in sys.modules:
        try:
            import sniffio  # noqa: F401
        except ImportError:
            stub = types.ModuleType("sniffio")
            stub.current_async_library = lambda: "asyncio"  # type: ignore[attr-defined]
            sys.modules["sniffio"] = stub


def _patch_clientsem() -> None:
    """bot/polytomic/client.py PolytomicClient._call: at most `max_connections` requests in flight
    (an asyncio.Semaphore around the httpx call). Beyond the pool size httpcore queues requests and
    rescans the whole queue on every state change (quadratic under a backlog)."""
    from bot.polytomic import client as client_mod

    original = client_mod.PolytomicClient._call

    async def _call(self, *a, **kw):
        sem = self.__dict__.get("_bench_sem")
        if sem is None:
            sem = self.__dict__["_bench_sem"] = asyncio.Semaphore(50)
        async with sem:
            return await original(self, *a, **kw)

    client_mod.PolytomicClient._call = _call


def _patch_gcstat() -> None:
    """Not a fix: log the garbage collector's pauses (count, total, max per generation) at exit."""
    import atexit
    import gc

    stats: dict[int, list[float]] = {0: [], 1: [], 2: []}
    started = [0.0]

    def callback(phase, info):
        if phase == "start":
            started[0] = time.perf_counter()
        else:
            stats[info["generation"]].append(time.perf_counter() - started[0])

    gc.callbacks.append(callback)

    def report() -> None:
        parts = [f"gen{g}: {len(v)} pauses, total {sum(v):.2f} s, max {1000 * max(v, default=0):.0f} ms"
                 for g, v in stats.items()]
        print("GC " + "; ".join(parts), file=sys.stderr, flush=True)

    atexit.register(report)


def _patch_stagestat() -> None:
    """Not a fix: wall time spent awaiting the store, Slack, Polytomic and response_url answers
    (count, mean, max per method), printed at exit."""
    import atexit
    import functools

    from bot import store as store_mod
    from bot.notifier import Notifier
    from bot.polytomic.client import PolytomicClient

    stats: dict[str, list[float]] = collections.defaultdict(list)

    def timed(owner, name, label):
        original = getattr(owner, name)

        @functools.wraps(original)
        async def wrapper(*a, **kw):
            t = time.perf_counter()
            try:
                return await original(*a, **kw)
            finally:
                key = label(a, kw) if callable(label) else label
                stats[key].append(time.perf_counter() - t)

        setattr(owner, name, wrapper)

    for name in ("create_watch", "get_watch", "find_unfinished", "update_watch", "add_requester", "audit",
                 "renew", "claim_due", "sync_holders", "finish_watch", "mark_final_posted"):
        if hasattr(store_mod.Store, name):
            timed(store_mod.Store, name, f"store.{name}")
    timed(Notifier, "_call", lambda a, kw: f"slack.{a[1]}")
    timed(PolytomicClient, "_call", lambda a, kw: f"polytomic {a[1]} {a[2]}")
    try:
        from slack_bolt.context.respond.async_respond import AsyncRespond

        timed(AsyncRespond, "__call__", "respond (response_url)")
    except ImportError:
        pass

    def report() -> None:
        rows = sorted(stats.items(), key=lambda kv: -sum(kv[1]))
        lines = [f"  {k}: n={len(v)} mean={1000 * sum(v) / len(v):.1f} ms max={1000 * max(v):.0f} ms"
                 for k, v in rows]
        print("STAGES\n" + "\n".join(lines), file=sys.stderr, flush=True)

    atexit.register(report)


def _patch_gcfreeze() -> None:
    """bot/cli.py _serve (or Runtime.start): `gc.freeze()` once started, and a higher gen-0 threshold
    (50,000 instead of 700 allocations), so that full collections neither rescan the long-lived
    start-up objects nor run every few milliseconds under a burst."""
    import gc

    from bot import runtime

    original = runtime.Runtime.start

    async def start(self) -> None:
        await original(self)
        gc.collect()
        gc.freeze()
        gc.set_threshold(50_000, 20, 100)

    runtime.Runtime.start = start


PATCHES: dict[str, Callable[[], None]] = {
    "sniffio": _patch_sniffio,
    "clientsem": _patch_clientsem,
    "claim": _patch_claim,
    "gcstat": _patch_gcstat,
    "stagestat": _patch_stagestat,
    "gcfreeze": _patch_gcfreeze,
    "worksem": _patch_worksem,
    "fence": _patch_fence,
    "synccache": _patch_synccache,
    "readfirst": _patch_readfirst,
}


# ---------------------------------------------------------------------------- baseline Bolt app


def baseline_app():
    """A bare Bolt AsyncApp whose listeners only ack, behind the same Starlette adapter and signature
    verification as the bot, and with the same kind of Slack client (auth.test goes to the fake)."""
    import re

    from slack_bolt.adapter.starlette.async_handler import AsyncSlackRequestHandler
    from slack_bolt.async_app import AsyncApp
    from slack_sdk.web.async_client import AsyncWebClient
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    client = AsyncWebClient(token=os.environ["SLACK_BOT_TOKEN"], base_url=os.environ["SLACK_API_URL"])
    app = AsyncApp(client=client, signing_secret=os.environ["SLACK_SIGNING_SECRET"])

    async def only_ack(ack) -> None:
        await ack()

    app.command(re.compile(r"^/.+"))(only_ack)
    app.action(re.compile(r".*"))(only_ack)
    handler = AsyncSlackRequestHandler(app)

    async def events(request: Request):
        return await handler.handle(request)

    async def ok(_request: Request):
        return PlainTextResponse("ok")

    return Starlette(
        routes=[Route("/slack/events", events, methods=["POST"]), Route("/readyz", ok), Route("/healthz", ok)]
    )


def _launcher(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks/common.py")
    parser.add_argument("what", choices=["serve", "baseline"])
    parser.add_argument("--patch", action="append", default=[], choices=sorted(PATCHES))
    args = parser.parse_args(argv)
    if args.what == "baseline":
        from bot.runtime import http_server

        server = http_server(baseline_app(), "127.0.0.1", int(os.environ["BOT_PORT"]))
        asyncio.run(server.serve())
        return 0
    for name in args.patch:
        PATCHES[name]()
    from bot.cli import main

    return main(["serve"])


@contextlib.contextmanager
def workdir(prefix: str, keep: bool = False) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield path
    finally:
        if not keep:
            import shutil

            shutil.rmtree(path, ignore_errors=True)


def dump_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data))


if __name__ == "__main__":
    raise SystemExit(_launcher(sys.argv[1:]))
