"""Ack latency under load (HTTP mode): signed `/polytomic status`, `cancel --yes` and cancel-button
clicks at a fixed rate (open loop) while watches poll in the background, against a bare Bolt app on
the same server stack in the same run.

    python benchmarks/ack_latency.py                  # 100 and 300 req/s, 30 s each (~3.5 min)
    python benchmarks/ack_latency.py --duration 10    # shorter
    python benchmarks/ack_latency.py --patch synccache --profile

Processes: this one runs the fake Slack and the fake Polytomic (threads); the bot runs as
`python -m bot serve` and the baseline as `python benchmarks/common.py baseline`, each alone in turn;
the load generator is a third process (aiohttp, `--connections` keep-alive connections) that sends
each request at its scheduled instant whether or not earlier ones were answered. Latency is from the
scheduled instant to the end of the HTTP 200, so a generator that falls behind shows up as latency
(its own lag is printed). An error is anything but HTTP 200 within 3 s (Slack's limit).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlencode

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    PY,
    SIGNING_SECRET,
    BotProcess,
    Fakes,
    Profile,
    bot_env,
    free_port,
    lease_owners,
    make_syncs,
    note,
    pct,
    table,
    workdir,
)

KINDS = ("status", "cancel", "click")
ACK_LIMIT_S = 3.0


# ------------------------------------------------------------------------------- load generator


def loadgen_main(spec_path: str, out_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    results = asyncio.run(_loadgen(spec))
    Path(out_path).write_text(json.dumps(results))


async def _loadgen(spec: dict) -> list:
    import aiohttp

    from bot.fakes.slack import sign

    url, rate, reqs = spec["url"], float(spec["rate"]), spec["requests"]
    results: list = [None] * len(reqs)
    connector = aiohttp.TCPConnector(limit=spec["connections"], force_close=False)
    timeout = aiohttp.ClientTimeout(total=spec["timeout"])
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        t0 = time.monotonic() + 0.1

        async def one(i: int, kind: str, body: bytes) -> None:
            intended = t0 + i / rate
            start = time.monotonic()
            headers = {"Content-Type": "application/x-www-form-urlencoded", **sign(SIGNING_SECRET, body)}
            try:
                async with session.post(url, data=body, headers=headers) as resp:
                    await resp.read()
                    status: int | str = resp.status
            except TimeoutError:
                status = "timeout"
            except Exception as exc:
                status = type(exc).__name__
            results[i] = (kind, start - intended, time.monotonic() - intended, status)

        tasks = []
        for i, (kind, body) in enumerate(reqs):
            delay = t0 + i / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(i, kind, body.encode())))
        await asyncio.gather(*tasks)
    return results


# ----------------------------------------------------------------------------------- the phases


class Baseline(BotProcess):
    def command(self) -> list[str]:
        return [PY, str(Path(__file__).resolve().parent / "common.py"), "baseline"]


def build_requests(fakes: Fakes, syncs, n: int, rng: random.Random, *, by_name: bool) -> list:
    """n requests cycling status / cancel --yes / click, on random syncs, by random users and channels.
    Cancels and clicks target the watched schema `s0` (a burst of people cancelling the same runs).
    Returns [(kind, body, response_url)]."""
    from bot.fakes.slack import SlackUser

    out = []
    for i in range(n):
        kind = KINDS[i % len(KINDS)]
        sync_id, name, _ = syncs[rng.randrange(len(syncs))]
        user = SlackUser(None, None, fakes.slack, user_id=f"U{1000 + rng.randrange(100)}",
                         channel_id=f"C{1000 + rng.randrange(10)}")
        ref = name if by_name else sync_id
        if kind == "status":
            body = user.slash_body(f"status {ref}")
            out.append((kind, urlencode(body), body["response_url"]))
        elif kind == "cancel":
            body = user.slash_body(f"cancel {ref} s0 --yes")
            out.append((kind, urlencode(body), body["response_url"]))
        else:
            value = json.dumps({"sync_id": sync_id, "schema_id": "s0"})
            payload = user.block_actions_payload("polytomic.cancel_schema", value, ephemeral=True)
            out.append((kind, urlencode({"payload": json.dumps(payload)}), payload["response_url"]))
    return out


def run_load(url: str, rate: float, reqs: list, *, connections: int, tmp: Path, label: str) -> list:
    spec = tmp / f"spec-{label}.json"
    out = tmp / f"out-{label}.json"
    spec.write_text(json.dumps({
        "url": url + "/slack/events", "rate": rate, "connections": connections, "timeout": 5.0,
        "requests": [(k, b) for k, b, _ in reqs],
    }))
    subprocess.run([PY, str(Path(__file__).resolve()), "--loadgen", str(spec), str(out)], check=True)
    return json.loads(out.read_text())


def summarise(results: list) -> dict:
    ok = [r[2] for r in results if r[3] == 200 and r[2] <= ACK_LIMIT_S]
    errors = [r for r in results if not (r[3] == 200 and r[2] <= ACK_LIMIT_S)]
    kinds: dict[str, int] = {}
    for r in errors:
        key = str(r[3]) if r[3] != 200 else "late(>3s)"
        kinds[key] = kinds.get(key, 0) + 1
    per_kind = {k: pct([r[2] for r in results if r[0] == k and r[3] == 200], 99) for k in KINDS}
    return {
        "n": len(results), "p50": pct(ok, 50), "p99": pct(ok, 99), "max": max(ok) if ok else float("nan"),
        "errors": len(errors), "error_kinds": kinds, "lag_max": max((r[1] for r in results), default=0.0),
        "p99_by_kind": per_kind,
    }


def answered(fakes: Fakes, reqs: list) -> int:
    return sum(1 for _, _, rurl in reqs if fakes.slack.responses(rurl))


def drain(fakes: Fakes, reqs: list, limit_s: float = 30.0) -> tuple[int, float]:
    """Wait until every request got its answer (or no progress for 5 s); returns (answered, seconds)."""
    start = time.monotonic()
    last, last_change = -1, start
    while time.monotonic() - start < limit_s:
        n = answered(fakes, reqs)
        if n == len(reqs):
            return n, time.monotonic() - start
        if n != last:
            last, last_change = n, time.monotonic()
        elif time.monotonic() - last_change > 5:
            break
        time.sleep(0.5)
    return answered(fakes, reqs), time.monotonic() - start


def wait_held(database_url: str, n: int, limit_s: float) -> int:
    """Wait until the (restarted) bot holds n watches; returns how many it holds."""
    deadline = time.monotonic() + limit_s
    held = 0
    while time.monotonic() < deadline:
        owners = asyncio.run(lease_owners(database_url))
        held = sum(v for k, v in owners.items() if k)
        if held >= n:
            break
        time.sleep(0.5)
    return held


async def seed_watches_via_slack(url: str, fakes: Fakes, syncs, n: int) -> float:
    """n watches the way users make them: signed `cancel <sync> s0 --yes`, 8 at a time."""
    import httpx

    from bot.fakes.slack import SlackUser

    started = time.monotonic()
    user = SlackUser(url, SIGNING_SECRET, fakes.slack, user_id="U0001", channel_id="C0001")
    sem = asyncio.Semaphore(8)

    async def one(sync_id: str) -> None:
        async with sem:
            r = await user.slash(f"cancel {sync_id} s0 --yes")
            assert r.status_code == 200, r.text

    await asyncio.gather(*(one(s[0]) for s in syncs[:n]))
    deadline = time.monotonic() + 120
    while len(fakes.polytomic.cancel_requests()) < n and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    del httpx
    return time.monotonic() - started


# ------------------------------------------------------------------------------------------ main


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rates", default="100,300", help="requests per second, comma-separated")
    ap.add_argument("--duration", type=float, default=30.0, help="seconds per rate")
    ap.add_argument("--watches", type=int, default=200, help="background watches (one per sync)")
    ap.add_argument("--syncs", type=int, default=200)
    ap.add_argument("--connections", type=int, default=64, help="load generator keep-alive connections")
    ap.add_argument("--by-id", action="store_true", help="type sync ids instead of names")
    ap.add_argument("--patch", action="append", default=[], help="candidate fix(es) from common.PATCHES")
    ap.add_argument("--no-baseline", action="store_true")
    ap.add_argument("--profile", action="store_true", help="py-spy the bot during the last rate")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (logs, profile)")
    ap.add_argument("--seed", type=int, default=8)
    ap.add_argument("--loadgen", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.loadgen:
        loadgen_main(*args.loadgen)
        return 0

    rates = [float(r) for r in args.rates.split(",") if r.strip()]
    rng = random.Random(args.seed)
    baseline: dict[float, dict] = {}
    bot: dict[float, dict] = {}
    extra: dict[float, dict] = {}
    profile_text = ""
    t_begin = time.monotonic()
    with workdir("bench-ack-", keep=args.keep) as tmp, Fakes(
        cancel_delay_s=1e6, sync_cancel_delay_s=1e6
    ) as fakes:
        note(f"work directory {tmp}")
        syncs = make_syncs(fakes.polytomic, args.syncs, 10, "sync")
        for sync_id, _, _ in syncs:
            fakes.polytomic.start_run(sync_id, durations=36000.0)
        plans = {
            rate: build_requests(fakes, syncs, int(rate * args.duration), rng, by_name=not args.by_id)
            for rate in rates
        }
        warm = build_requests(fakes, syncs, 150, rng, by_name=not args.by_id)

        if not args.no_baseline:
            port = free_port()
            env = bot_env(fakes, port=port, database_url="sqlite:///unused.db")
            base = Baseline(env, log_path=tmp / "baseline.log", name="baseline").start()
            try:
                run_load(base.url, 50, warm, connections=args.connections, tmp=tmp, label="bwarm")
                for rate in rates:
                    note(f"baseline: {rate:g} req/s for {args.duration:g} s")
                    cpu0, t0 = base.cpu_s(), time.monotonic()
                    baseline[rate] = summarise(
                        run_load(base.url, rate, plans[rate], connections=args.connections, tmp=tmp,
                                 label=f"b{rate:g}")
                    )
                    baseline[rate]["cpu_frac"] = (base.cpu_s() - cpu0) / max(1e-9, time.monotonic() - t0)
            finally:
                base.stop()

        port = free_port()
        env = bot_env(
            fakes, port=port, database_url=f"sqlite:///{tmp / 'bot.db'}",
            BOT_POLL_INTERVAL_S=5, BOT_POLL_MAX_INTERVAL_S=30, BOT_WATCH_TIMEOUT_S=7200,
        )
        db_url = env["BOT_DATABASE_URL"]
        errors_logged = 0
        for n, rate in enumerate(rates):
            # a fresh process per rate (same database): no backlog carried from one rate to the next
            proc = BotProcess(env, patches=args.patch, log_path=tmp / f"bot-{rate:g}.log").start()
            try:
                if n == 0:
                    took = asyncio.run(seed_watches_via_slack(proc.url, fakes, syncs, args.watches))
                    note(f"bot: {args.watches} background watches created through Slack in {took:.1f} s")
                else:
                    held = wait_held(db_url, args.watches, 60)
                    note(f"bot restarted; it holds {held} watches")
                run_load(proc.url, 50, warm, connections=args.connections, tmp=tmp, label=f"warm{n}")
                drain(fakes, warm, 20)
                note(f"bot: {rate:g} req/s for {args.duration:g} s")
                prof = None
                if args.profile and n == len(rates) - 1:
                    prof = Profile(proc.pid, tmp / "ack-profile.txt")
                cpu0, t0, own0 = proc.cpu_s(), time.monotonic(), time.process_time()
                log0 = len(fakes.recorder.log)
                res = run_load(proc.url, rate, plans[rate], connections=args.connections, tmp=tmp,
                               label=f"{rate:g}")
                cpu1, t1, own1 = proc.cpu_s(), time.monotonic(), time.process_time()
                if prof is not None:
                    prof.stop()
                    profile_text = prof.summary()
                got, drained = drain(fakes, plans[rate])
                bot[rate] = summarise(res)
                extra[rate] = {
                    "cpu_frac": (cpu1 - cpu0) / max(1e-9, t1 - t0),
                    "fakes_frac": (own1 - own0) / max(1e-9, t1 - t0),
                    "polytomic_per_req": (len(fakes.recorder.log) - log0) / len(plans[rate]),
                    "answered": got, "drain_s": drained, "n": len(plans[rate]),
                    "rss": proc.rss_peak_mb(),
                }
            finally:
                proc.stop()
                errors_logged += proc.log_count('"level": "error"') + proc.log_count(" ERROR ")
        if errors_logged:
            note(f"the bot logged {errors_logged} error lines (see the logs with --keep)")

    elapsed = time.monotonic() - t_begin
    print()
    if profile_text:
        print(profile_text)
        print()
    lines = []
    for rate in rates:
        b, r, x = baseline.get(rate), bot[rate], extra[rate]
        by_kind = ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in r["p99_by_kind"].items())
        lines.append(
            f"{rate:g} req/s: bot p99 by kind {by_kind}; generator lag max {r['lag_max'] * 1000:.0f} ms;"
            f" bot CPU {x['cpu_frac'] * 100:.0f}% of a core, fakes {x['fakes_frac'] * 100:.0f}%;"
            f" Polytomic requests per command {x['polytomic_per_req']:.1f};"
            f" answers delivered {x['answered']}/{x['n']} ({x['drain_s']:.0f} s after the load);"
            f" peak RSS {x['rss']:.0f} MB; errors {r['error_kinds'] or 'none'}"
        )
        if b:
            lines.append(f"{rate:g} req/s: baseline CPU {b['cpu_frac'] * 100:.0f}% of a core; "
                         f"generator lag max {b['lag_max'] * 1000:.0f} ms; "
                         f"errors {b['error_kinds'] or 'none'}")
    print("\n".join(lines))
    print(f"patches: {', '.join(args.patch) or 'none'}; typed commands by {'id' if args.by_id else 'name'};"
          f" {args.watches} background watches; {elapsed:.0f} s in all")
    rows = []
    for rate in rates:
        b, r = baseline.get(rate), bot[rate]
        ms = lambda v: f"{v * 1000:.1f} ms"  # noqa: E731
        if b:
            rows.append((f"baseline p50 / p99 / max @{rate:g}/s",
                         f"{ms(b['p50'])} / {ms(b['p99'])} / {ms(b['max'])}", "(reference)", None))
        rows.append((f"bot p50 / p99 / max @{rate:g}/s", f"{ms(r['p50'])} / {ms(r['p99'])} / {ms(r['max'])}",
                     "p99 < 250 ms", r["p99"] < 0.250))
        rows.append((f"bot errors @{rate:g}/s", f"{r['errors']} of {r['n']}", "0", r["errors"] == 0))
        if b:
            ratio = r["p50"] / b["p50"] if b["p50"] else float("inf")
            rows.append((f"bot p50 / baseline p50 @{rate:g}/s", f"{ratio:.2f}x", "<= 1.5x", ratio <= 1.5))
    print(table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
