"""`polytomic-bot serve | check | demo` (same as `python -m bot`)."""

from __future__ import annotations

import argparse
import asyncio
import sys

from bot import __version__
from bot.settings import SettingsError, load_settings


def _serve() -> int:
    from bot import logs

    try:
        settings = load_settings()
        logs.resolve()
    except (SettingsError, logs.LogConfigError) as exc:
        print(f"polytomic-bot: {exc}", file=sys.stderr)
        return 2
    logs.configure(secrets=logs.secrets_of(settings))
    from bot.runtime import StartupError, serve  # after the settings: a bad setting fails fast

    try:
        asyncio.run(serve(settings))
    except StartupError as exc:
        print(f"polytomic-bot: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    return 0


def _check() -> int:
    from bot import check

    return check.main()


def _demo(verbose: bool) -> int:
    from bot import demo

    try:
        return demo.main(verbose=verbose)
    except KeyboardInterrupt:
        return 130


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="polytomic-bot", description=__doc__)
    parser.add_argument("--version", action="version", version=f"polytomic-bot {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("serve", help="run the bot")
    sub.add_parser("check", help="validate configuration and reachability (one line per check)")
    demo = sub.add_parser(
        "demo", help="play an on-call story against a fake Slack and a fake Polytomic (no accounts needed)"
    )
    demo.add_argument(
        "-v", "--verbose", action="store_true", help="also show the bot's logs (console format)"
    )
    args = parser.parse_args(argv)
    if args.command == "serve":
        return _serve()
    if args.command == "demo":
        return _demo(args.verbose)
    return _check()


if __name__ == "__main__":
    raise SystemExit(main())
