"""`polytomic-bot serve` and `polytomic-bot check` (same as `python -m bot`)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys

from bot import __version__
from bot.settings import SettingsError, load_settings


def configure_logging() -> None:
    level = os.environ.get("BOT_LOG_LEVEL", "INFO").upper()
    logging.basicConfig(
        level=getattr(logging, level, logging.INFO), format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    for noisy in ("slack_bolt", "slack_sdk", "httpx", "httpcore", "aiohttp", "asyncio"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger().level))


def _serve() -> int:
    try:
        settings = load_settings()
    except SettingsError as exc:
        print(f"polytomic-bot: {exc}", file=sys.stderr)
        return 2
    configure_logging()
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
    try:
        load_settings()
    except SettingsError as exc:
        print(f"FAIL settings: {exc}")
        return 1
    print("ok   settings")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="polytomic-bot", description=__doc__)
    parser.add_argument("--version", action="version", version=f"polytomic-bot {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("serve", help="run the bot")
    sub.add_parser("check", help="validate configuration and reachability")
    args = parser.parse_args(argv)
    if args.command == "serve":
        return _serve()
    return _check()


if __name__ == "__main__":
    raise SystemExit(main())
