"""Watching many runs: 2,000 open watches over 200 bulk syncs (10 schemas each) for 5 minutes of fake
time, on one bot process (`python -m bot serve`, SQLite), its CPU and peak RSS read from /proc.

    python benchmarks/watch_many.py                    # speed 2: 300 fake s in 150 s (~4.5 min in all)
    python benchmarks/watch_many.py --speed 10         # 30 s of watching at ten times the request rate
    python benchmarks/watch_many.py --patch claim --profile

How the watches are made: inserted into the store (Store.create_watch, as CancelService leaves them
once the cancel is sent and the headline posted) before the bot starts, with their root messages put
in the fake Slack as the bot's own. Creating 2,000 through signed `cancel --yes` commands takes minutes
on this machine (see ack_latency.py), and a bot that finds open watches at start is exactly the
restart case: the time it takes to hold all of them is measured as "pick-up".

Fake time: the fake Polytomic runs on a manual clock held still until the bot holds every watch (or
`--pickup-limit` passes), then advances at `--speed` x real time. The bot's poll interval is scaled
the same way (BOT_POLL_INTERVAL_S = 5 s / speed; the ceiling BOT_POLL_MAX_INTERVAL_S = `--max-interval`
/ speed, 5 s by default: a fixed interval, the worst case for request rate, and the one that makes the
ideal exact: one status request per sync per interval). Leases keep their real-time default (30 s).

In the window: each sync's run starts (one `running` reply per watch), and 20% of the schemas complete
(one terminal reply per watch), spread over the window; the rest keep running.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    BotProcess,
    ClockTicker,
    Fakes,
    Profile,
    WatchLoad,
    bot_env,
    free_port,
    lease_owners,
    note,
    pct,
    seed_watches,
    table,
    workdir,
)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--syncs", type=int, default=200)
    ap.add_argument("--schemas", type=int, default=10)
    ap.add_argument("--fake-minutes", type=float, default=5.0)
    ap.add_argument("--speed", type=float, default=2.0, help="fake seconds per real second")
    ap.add_argument("--interval", type=float, default=5.0, help="poll interval, fake seconds")
    ap.add_argument("--max-interval", type=float, default=5.0, help="poll back-off ceiling, fake seconds")
    ap.add_argument("--pickup-limit", type=float, default=150.0, help="real seconds to wait for the bot "
                    "to hold every watch before fake time starts")
    ap.add_argument("--patch", action="append", default=[], help="candidate fix(es) from common.PATCHES")
    ap.add_argument("--profile", action="store_true", help="py-spy the bot during the window")
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()

    n_watches = args.syncs * args.schemas
    interval_real = args.interval / args.speed
    fake_s = args.fake_minutes * 60
    window_real = fake_s / args.speed
    t_begin = time.monotonic()
    profile_text = ""
    with workdir("bench-watch-", keep=args.keep) as tmp, Fakes(manual_clock=True) as fakes:
        note(f"work directory {tmp}")
        load = WatchLoad(fakes, n_syncs=args.syncs, n_schemas=args.schemas, window_s=fake_s)
        db = f"sqlite:///{tmp / 'bot.db'}"
        took = asyncio.run(seed_watches(db, load.watches))
        note(f"{n_watches} watches inserted through Store.create_watch in {took:.1f} s")
        ticker = ClockTicker(fakes.polytomic, args.speed)
        env = bot_env(
            fakes, port=free_port(), database_url=db,
            BOT_POLL_INTERVAL_S=interval_real, BOT_POLL_MAX_INTERVAL_S=args.max_interval / args.speed,
            BOT_WATCH_TIMEOUT_S=7200,
        )
        proc = BotProcess(env, patches=args.patch, log_path=tmp / "bot.log")
        t_spawn = time.monotonic()
        proc.start()
        note(f"bot ready in {time.monotonic() - t_spawn:.1f} s (pid {proc.pid}); waiting until it holds "
             f"all {n_watches} watches")
        held, pickup = 0, None
        while time.monotonic() - t_spawn < args.pickup_limit:
            owners = asyncio.run(lease_owners(db))
            held = sum(n for o, n in owners.items() if o)
            if held >= n_watches:
                pickup = time.monotonic() - t_spawn
                break
            time.sleep(1.0)
        when = f"after {pickup:.1f} s" if pickup is not None else f"after {args.pickup_limit:.0f} s (limit)"
        note(f"bot holds {held}/{n_watches} watches {when}")
        # let the first polls of everything settle, then start fake time
        time.sleep(max(1.0, 2 * interval_real))
        wall_offset = time.time() - time.monotonic()
        prof = Profile(proc.pid, tmp / "watch-profile.txt") if args.profile else None
        cpu0, own0 = proc.cpu_s(), time.process_time()
        ticker.start()
        t0 = ticker.started_mono
        note(f"fake time runs: {fake_s:.0f} fake s in {window_real:.0f} s")
        rss_samples = []
        while time.monotonic() < t0 + window_real:
            time.sleep(1.0)
            rss_samples.append(proc.rss_mb())
        t1 = time.monotonic()
        cpu1, own1 = proc.cpu_s(), time.process_time()
        rss_peak = proc.rss_peak_mb()
        if prof is not None:
            prof.stop()
            profile_text = prof.summary()
        ticker.stop()
        story = load.slack_story(ticker, fake_s, wall_offset)
        polls = load.status_polls(t0, t1)
        kinds = load.requests_between(t0, t1)
        proc.stop()
        errors_logged = proc.log_count('"level": "error"') + proc.log_count(" ERROR ")
        if errors_logged:
            note(f"bot logged {errors_logged} error lines; last lines:\n{proc.log_tail(10)}")

    # ---- figures
    status_n = sum(len(v) for v in polls.values())
    all_n = sum(kinds.values())
    ideal = args.syncs * window_real / interval_real
    gaps = [b[0] - a[0] for v in polls.values() for a, b in itertools.pairwise(v)]
    syncs_polled = len(polls)
    changes = story["expected_changes"]
    reply_ratio = story["replies"] / changes if changes else float("nan")
    update_ratio = story["updates"] / changes if changes else float("nan")
    delays = story["delays"]
    delay_goal = args.max_interval / args.speed + 1.0
    cpu = cpu1 - cpu0
    cpu_per_real_min = cpu / (window_real / 60)
    cpu_per_fake_min = cpu / (fake_s / 60)
    elapsed = time.monotonic() - t_begin

    print()
    if profile_text:
        print(profile_text)
        print()
    print(f"Polytomic requests in the window: {dict(kinds)}; status-poll gap per sync p50 "
          f"{pct(gaps, 50):.2f} s, p1 {pct(gaps, 1):.2f} s, p99 {pct(gaps, 99):.2f} s "
          f"(interval {interval_real:.2f} s)")
    print(f"Slack in the window: {story['replies']} thread replies and {story['updates']} headline updates "
          f"for {changes} state changes; {story['extra_replies']} replies beyond one per change; "
          f"{story['missing_final']} terminal replies missing; other calls {story['other_calls'] or 'none'}")
    print(f"terminal reply delay: p50 {pct(delays, 50):.2f} s, p99 {pct(delays, 99):.2f} s, "
          f"max {max(delays, default=float('nan')):.2f} s over {len(delays)} runs")
    rss_now = rss_samples[-1] if rss_samples else float("nan")
    print(f"bot CPU {cpu:.1f} s in {window_real:.0f} s ({100 * cpu / window_real:.0f}% of a core at speed "
          f"{args.speed:g}); fakes (this process) {100 * (own1 - own0) / window_real:.0f}% of a core; "
          f"RSS now {rss_now:.0f} MB")
    print(f"patches: {', '.join(args.patch) or 'none'}; {n_watches} watches, {args.syncs} syncs; speed "
          f"{args.speed:g}; poll {args.interval:g}..{args.max_interval:g} fake s; {elapsed:.0f} s in all")
    rows = [
        ("pick-up: all watches held after start", f"{pickup:.1f} s" if pickup is not None else
         f"{held}/{n_watches} after {args.pickup_limit:.0f} s", "(reported)", None),
        ("syncs polled in the window", f"{syncs_polled} of {args.syncs}", f"{args.syncs}",
         syncs_polled == args.syncs),
        ("status requests / ideal (1 per sync per interval)",
         f"{status_n} / {ideal:.0f} = {status_n / ideal:.2f}x", "<= 1.1x", status_n / ideal <= 1.1),
        ("all Polytomic requests / ideal", f"{all_n} / {ideal:.0f} = {all_n / ideal:.2f}x", "<= 1.1x",
         all_n / ideal <= 1.1),
        ("poll interval kept: gap per sync, p50", f"{pct(gaps, 50):.2f} s", f"<= {1.1 * interval_real:.2f} s",
         pct(gaps, 50) <= 1.1 * interval_real),
        ("thread replies per state change", f"{reply_ratio:.3f}", "1", abs(reply_ratio - 1) < 0.005),
        ("headline updates per state change", f"{update_ratio:.3f}", "1", abs(update_ratio - 1) < 0.005),
        ("peak RSS of the bot (VmHWM)", f"{rss_peak:.0f} MB", "< 200 MB", rss_peak < 200),
        ("CPU s per minute of watching (speed 1)", f"{cpu_per_fake_min:.2f} s", "(reported)", None),
        (f"CPU s per real minute at speed {args.speed:g}", f"{cpu_per_real_min:.1f} s", "(reported)", None),
        ("terminal state -> reply, max (p99)",
         f"{max(delays, default=float('nan')):.2f} s ({pct(delays, 99):.2f} s)",
         f"<= {delay_goal:.2f} s", bool(delays) and max(delays) <= delay_goal and not story["missing_final"]),
    ]
    print(table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
