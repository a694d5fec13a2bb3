"""Domain errors. Listeners and the service raise these; one error handler turns each into the
right ephemeral answer. None of them formats Slack text itself."""

from __future__ import annotations

from dataclasses import dataclass, field


class BotError(Exception):
    """An error the user can act on (shown to them ephemerally)."""


@dataclass
class UsageError(BotError):
    """The command line could not be parsed."""

    problem: str
    usage: str = ""

    def __str__(self) -> str:
        return self.problem


@dataclass
class UnknownName(BotError):
    """No sync/schema matches `query`. `candidates` are the closest names, closest first."""

    kind: str  # "sync" | "schema"
    query: str
    candidates: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        return f"unknown {self.kind} {self.query!r}"


@dataclass
class AmbiguousName(BotError):
    """Several syncs/schemas match `query` as a prefix; `candidates` are their names."""

    kind: str
    query: str
    candidates: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        return f"ambiguous {self.kind} {self.query!r}"


@dataclass
class AccessDenied(BotError):
    """The user (or channel, or workspace) may not cancel. `setting` names what grants access."""

    reason: str
    setting: str

    def __str__(self) -> str:
        return self.reason


@dataclass
class NothingRunning(BotError):
    """There is no running work to cancel."""

    what: str
    last_status: str | None = None

    def __str__(self) -> str:
        return f"nothing running for {self.what}"


@dataclass
class BadButton(BotError):
    """A button value that is not what this bot puts on its buttons."""

    problem: str

    def __str__(self) -> str:
        return self.problem
