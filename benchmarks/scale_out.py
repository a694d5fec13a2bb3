"""Scale-out: the watch load of watch_many.py (2,000 watches over 200 syncs) on two bot processes
sharing PostgreSQL; the split of the watches, duplicate polls, and the takeover after SIGKILL.

    python benchmarks/scale_out.py                     # ~4 min
    python benchmarks/scale_out.py --lease 10          # BOT_LEASE_S=10 (the runtime's internal knob)
    python benchmarks/scale_out.py --patch claim

Database: BOT_TEST_DATABASE_URL, else postgresql://postgres@127.0.0.1:5432/test, in a fresh schema
(bot.store.isolated_pg_url) dropped afterwards. Watches are inserted into the store before the two
processes start (as in watch_many.py), so both start by claiming.

Telling the processes apart: one fake Polytomic (one world, one lock) is served on two ports, and each
process is given its own port as POLYTOMIC_BASE_URL; every request is logged with the port it came in
on. Leases are read from the store (`lease_owner` holds the pid).

Duplicate poll: a status request for a sync from one process while the other process requested that
sync's status less than half a poll interval before (both processes polling one sync). Goal: none.
Takeover: after SIGKILL of process A (no lease release), the time until process B holds every open
watch, and until B has polled every sync A was polling.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    BotProcess,
    ClockTicker,
    Fakes,
    WatchLoad,
    bot_env,
    free_port,
    note,
    pct,
    seed_watches,
    table,
    workdir,
)

DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432/test"


async def holdings(store, pids: dict[int, str]) -> tuple[dict[str, int], dict[str, set[str]]]:
    """Open watches and their syncs per process name ('-' = no live lease)."""
    now = datetime.now(UTC)
    counts: dict[str, int] = collections.Counter()
    syncs: dict[str, set[str]] = collections.defaultdict(set)
    for w in await store.unfinished_watches():
        name = "-"
        if w.lease_owner and w.lease_until and w.lease_until > now:
            pid = _pid_of(w.lease_owner)
            name = pids.get(pid, f"other({w.lease_owner})")
        counts[name] += 1
        syncs[name].add(w.sync_id)
    return dict(counts), dict(syncs)


def _pid_of(owner: str) -> int | None:
    for part in owner.split("-"):
        if part.isdigit():
            return int(part)
    return None


def duplicates(polls: dict[str, list[tuple[float, int]]], half: float) -> tuple[int, int, set[str]]:
    """(duplicate status requests, all status requests, syncs polled by both ports)."""
    dup, total, both = 0, 0, set()
    for sync_id, events in polls.items():
        events = sorted(events)
        total += len(events)
        last: dict[int, float] = {}
        ports = set()
        for t, port in events:
            ports.add(port)
            if any(p != port and t - tl < half for p, tl in last.items()):
                dup += 1
            last[port] = t
        if len(ports) > 1:
            both.add(sync_id)
    return dup, total, both


async def timeline(args, fakes: Fakes, load: WatchLoad, db_url: str, tmp: Path) -> dict:
    from bot.store import Store

    interval_real = args.interval / args.speed
    fake_s = args.fake_minutes * 60
    window_real = fake_s / args.speed
    n_watches = len(load.watches)
    took = await seed_watches(db_url, load.watches, concurrency=8)
    note(f"{n_watches} watches inserted into PostgreSQL in {took:.1f} s")
    store = await Store.open(db_url, migrate=False)
    procs = {}
    port_name = {}
    extra = {"BOT_LEASE_S": args.lease} if args.lease else {}
    for k, name in enumerate(("A", "B")):
        env = bot_env(
            fakes, port=free_port(), database_url=db_url, polytomic_url=fakes.polytomic_urls[k],
            BOT_POLL_INTERVAL_S=interval_real, BOT_POLL_MAX_INTERVAL_S=args.max_interval / args.speed,
            BOT_WATCH_TIMEOUT_S=7200, **extra,
        )
        procs[name] = BotProcess(env, patches=args.patch, log_path=tmp / f"bot-{name}.log", name=name)
        port_name[int(fakes.polytomic_urls[k].rsplit(":", 1)[1])] = name
    t_spawn = time.monotonic()
    for p in procs.values():
        p.start(wait_ready=False)
    for p in procs.values():
        p.wait_ready()
    pids = {p.pid: name for name, p in procs.items()}
    note(f"A (pid {procs['A'].pid}) and B (pid {procs['B'].pid}) ready; waiting until they hold every watch")
    pickup = None
    while time.monotonic() - t_spawn < args.pickup_limit:
        counts, _ = await holdings(store, pids)
        if counts.get("-", 0) == 0:
            pickup = time.monotonic() - t_spawn
            break
        await asyncio.sleep(1.0)
    counts, syncs = await holdings(store, pids)
    split = dict(counts)
    split_syncs = {k: len(v) for k, v in syncs.items()}
    shared_syncs = len(syncs.get("A", set()) & syncs.get("B", set()))
    note(f"split after {time.monotonic() - t_spawn:.0f} s: watches {split}, syncs {split_syncs}")

    ticker = ClockTicker(fakes.polytomic, args.speed)
    wall_offset = time.time() - time.monotonic()
    ticker.start()
    t0 = ticker.started_mono
    note(f"fake time runs: {fake_s:.0f} fake s in {window_real:.0f} s; "
         f"SIGKILL A after {args.kill_after:.0f} s")
    await asyncio.sleep(args.kill_after)
    counts, syncs = await holdings(store, pids)
    a_syncs = set(syncs.get("A", set()))
    a_watches = counts.get("A", 0)
    t_kill = time.monotonic()
    procs["A"].kill()
    note(f"A killed holding {a_watches} watches of {len(a_syncs)} syncs")
    t_all_held = None
    while time.monotonic() < t0 + window_real:
        if t_all_held is None:
            counts, _ = await holdings(store, pids)
            if set(counts) <= {"B"}:
                t_all_held = time.monotonic() - t_kill
                note(f"B holds every open watch {t_all_held:.1f} s after the kill")
        await asyncio.sleep(0.5)
    t_end = time.monotonic()
    ticker.stop()
    await store.close()

    polls = load.status_polls(t0 - 10, t_end)
    b_port = next(p for p, n in port_name.items() if n == "B")
    first_b = {}
    for sync_id, events in load.status_polls(t_kill, t_end).items():
        for t, port in sorted(events):
            if port == b_port:
                first_b[sync_id] = t - t_kill
                break
    takeover_polls = [first_b.get(s, float("inf")) for s in a_syncs]
    before = {s: [e for e in v if e[0] < t_kill] for s, v in polls.items()}
    after = {s: [e for e in v if e[0] >= t_kill] for s, v in polls.items()}
    half = interval_real / 2
    story = load.slack_story(ticker, fake_s, wall_offset)
    by_port = collections.Counter(port_name.get(port, "?") for v in polls.values() for _, port in v)
    cpu = {n: p.cpu_s() for n, p in procs.items()}
    rss = {n: p.rss_peak_mb() for n, p in procs.items()}
    procs["B"].stop()
    errors_logged = {n: p.log_count('"level": "error"') for n, p in procs.items()}
    return {
        "pickup": pickup, "split": split, "split_syncs": split_syncs, "shared_syncs": shared_syncs,
        "a_watches": a_watches, "a_syncs": len(a_syncs), "t_all_held": t_all_held,
        "takeover_polls": takeover_polls, "dup_before": duplicates(before, half),
        "dup_after": duplicates(after, half), "story": story, "by_port": dict(by_port), "cpu": cpu,
        "rss": rss, "errors": errors_logged, "interval": interval_real, "n": n_watches,
        "a_delays": [d for (sync_id, _), d in story["delay_of"].items() if sync_id in a_syncs],
        "a_ends_in_gap": sum(
            1 for (sync_id, _), end in load.end_at.items()
            if sync_id in a_syncs and t_kill <= ticker.real_at(end) <= t_kill + (t_all_held or 0)
        ),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--syncs", type=int, default=200)
    ap.add_argument("--schemas", type=int, default=10)
    ap.add_argument("--fake-minutes", type=float, default=5.0)
    ap.add_argument("--speed", type=float, default=2.0)
    ap.add_argument("--interval", type=float, default=5.0, help="poll interval, fake seconds")
    ap.add_argument("--max-interval", type=float, default=5.0, help="poll back-off ceiling, fake seconds")
    ap.add_argument("--kill-after", type=float, default=40.0, help="real seconds into fake time")
    ap.add_argument("--lease", type=float, default=None, help="BOT_LEASE_S for both processes")
    ap.add_argument("--pickup-limit", type=float, default=150.0)
    ap.add_argument("--patch", action="append", default=[])
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    base = os.environ.get("BOT_TEST_DATABASE_URL") or DEFAULT_PG
    t_begin = time.monotonic()

    async def run() -> dict:
        from bot.store import isolated_pg_url

        async with isolated_pg_url(base, prefix="bench_scale") as url:
            return await asyncio.to_thread(_sync_part, url)

    def _sync_part(url: str) -> dict:
        with (
            workdir("bench-scale-", keep=args.keep) as tmp,
            Fakes(polytomic_ports=2, manual_clock=True) as fakes,
        ):
            note(f"work directory {tmp}")
            load = WatchLoad(fakes, n_syncs=args.syncs, n_schemas=args.schemas,
                             window_s=args.fake_minutes * 60)
            return asyncio.run(timeline(args, fakes, load, url, tmp))

    r = asyncio.run(run())
    elapsed = time.monotonic() - t_begin
    lease = args.lease or 30.0
    dup_b, tot_b, both_b = r["dup_before"]
    dup_a, tot_a, both_a = r["dup_after"]
    tp = [t for t in r["takeover_polls"] if t != float("inf")]
    never = len(r["takeover_polls"]) - len(tp)
    story = r["story"]
    delays = story["delays"]
    changes = story["expected_changes"]
    print()
    print(f"status requests by process: {r['by_port']}; CPU s: "
          + ", ".join(f"{k} {v:.0f}" for k, v in r["cpu"].items())
          + "; peak RSS: " + ", ".join(f"{k} {v:.0f} MB" for k, v in r["rss"].items())
          + f"; error log lines: {r['errors']}")
    print(f"before the kill: {len(both_b)} syncs polled by both processes; after: {len(both_a)}")
    print(f"Slack: {story['replies']} replies / {story['updates']} updates for {changes} state changes; "
          f"{story['extra_replies']} beyond one per change; "
          f"{story['missing_final']} terminal replies missing; "
          f"terminal reply delay p50 {pct(delays, 50):.1f} s, max {max(delays, default=float('nan')):.1f} s; "
          f"for A's watches max {max(r['a_delays'], default=float('nan')):.1f} s "
          f"({r['a_ends_in_gap']} of them ended during the takeover)")
    print(f"patches: {', '.join(args.patch) or 'none'}; lease {lease:g} s; {r['n']} watches, "
          f"{args.syncs} syncs; speed {args.speed:g}; poll interval {r['interval']:.2f} s; "
          f"{elapsed:.0f} s in all")
    # the design bound: the dead process's leases expire (lease), the survivor's next claim cycles pick
    # them up (one cycle, plus one for a lease that expired just after a claim), then one poll interval
    takeover_goal = lease + 2 * max(0.5, lease / 6) + r["interval"]
    rows = [
        ("pick-up: every watch held after start",
         f"{r['pickup']:.1f} s" if r["pickup"] else "not within limit", "(reported)", None),
        ("split of watches (A / B / none)",
         f"{r['split'].get('A', 0)} / {r['split'].get('B', 0)} / {r['split'].get('-', 0)}", "(reported)",
         None),
        ("split of syncs (A / B), syncs held by both",
         f"{r['split_syncs'].get('A', 0)} / {r['split_syncs'].get('B', 0)}, {r['shared_syncs']}", "both: 0",
         r["shared_syncs"] == 0),
        ("duplicate polls while both run", f"{dup_b} of {tot_b}", "0", dup_b == 0),
        ("duplicate polls after the kill", f"{dup_a} of {tot_a}", "0", dup_a == 0),
        ("takeover: B holds every open watch", f"{r['t_all_held']:.1f} s" if r["t_all_held"] else "never",
         f"<= {takeover_goal:.0f} s", bool(r["t_all_held"]) and r["t_all_held"] <= takeover_goal),
        (f"takeover: B polls all {r['a_syncs']} of A's syncs",
         f"{max(tp):.1f} s" + (f" ({never} never)" if never else "") if tp else "never",
         f"<= {takeover_goal:.0f} s", bool(tp) and not never and max(tp) <= takeover_goal),
        ("terminal reply delay, A's runs (max)", f"{max(r['a_delays'], default=float('nan')):.1f} s "
         f"({r['a_ends_in_gap']} ended in the takeover)", f"<= {takeover_goal:.0f} s",
         max(r["a_delays"], default=0.0) <= takeover_goal),
        ("thread replies per state change", f"{story['replies'] / changes:.3f}" if changes else "-",
         "1 (a SIGKILL may lose one)", None),
        ("terminal replies posted exactly once",
         f"{story['extra_replies']} extra, {story['missing_final']} missing", "0, 0",
         story["extra_replies"] == 0 and story["missing_final"] == 0),
    ]
    print(table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
