"""The `/polytomic` command line: a pure parser from the slash command's `text` to a command value.

Grammar (CONTRACT.md, "Slash command"):

    help
    syncs [text]
    status <sync> [<schema>]
    cancel <sync> <schema> [--yes]
    cancel <sync> --all [--yes]

Lexing rules, in order:

1. Invisible characters (U+200B..U+200D, U+2060, U+FEFF) are removed everywhere; Slack clients and
   copy-paste insert them. Name resolvers should compare candidate names through
   :func:`strip_invisible` too.
2. Slack's link markup `<https://...|label>` / `<https://...>` is unwrapped to the URL.
3. The three entities Slack uses in message text (`&amp;`, `&lt;`, `&gt;`) are decoded, once.
4. Words are split on any Unicode whitespace (NBSP included). A word that *starts* with a quote
   (`"`, `'`, or the typographic quotes clients insert: U+201C/U+201D/U+201E double quotes,
   U+2018/U+2019/U+201A single quotes, U+00AB/U+00BB and U+2039/U+203A guillemets) runs to the first
   matching closing quote that is followed by whitespace or the end of the text, so
   `'Bob's sync'` is one name. Inside quotes, a backslash before a closing quote or before another
   backslash makes it literal; every other backslash is kept as is. Quote characters inside an
   unquoted word are literal.
5. Unquoted words starting with a dash (`-`, or the en/em dashes autocorrect produces) are options:
   `--yes`/`-y`, `--all` (case-insensitive, NFKC-normalised); `--` alone ends the options. The
   subcommand is NFKC-normalised and case-insensitive too. Names are kept exactly as typed.

:func:`parse` raises :class:`bot.errors.UsageError` and nothing else.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

from bot.errors import UsageError

__all__ = [
    "USAGE",
    "Cancel",
    "Command",
    "Help",
    "Status",
    "Syncs",
    "parse",
    "quote",
    "strip_invisible",
]


@dataclass(frozen=True)
class Help:
    pass


@dataclass(frozen=True)
class Syncs:
    filter: str | None = None


@dataclass(frozen=True)
class Status:
    sync: str
    schema: str | None = None


@dataclass(frozen=True)
class Cancel:
    sync: str
    schema: str | None
    all: bool
    yes: bool


Command = Help | Syncs | Status | Cancel

USAGE = (
    "/polytomic help\n"
    "/polytomic syncs [text]                     list bulk syncs (running first), optional name filter\n"
    "/polytomic status <sync> [<schema>]         status card, with cancel buttons for running work\n"
    "/polytomic cancel <sync> <schema> [--yes]   cancel one schema's running work\n"
    "/polytomic cancel <sync> --all [--yes]      cancel the sync's whole running execution"
)

_INVISIBLE = dict.fromkeys(map(ord, "\u200b\u200c\u200d\u2060\ufeff"))

# Slack link markup. Only web links are unwrapped; user/channel mentions stay as they are.
_SLACK_LINK = re.compile(r"<(https?://[^\s|<>]*)(?:\|[^<>]*)?>", re.IGNORECASE)
_ENTITY = re.compile(r"&(amp|lt|gt);")
_ENTITIES = {"amp": "&", "lt": "<", "gt": ">"}

# opening quote -> the characters that may close it
_DQ = "\u201c\u201d"  # left/right double quotation marks
_SQ = "\u2018\u2019"  # left/right single quotation marks
_GU = "\u00ab\u00bb"  # double guillemets
_SG = "\u2039\u203a"  # single guillemets
_QUOTES: dict[str, str] = {
    '"': '"',
    "'": "'",
    "\u201c": _DQ,  # English, and the German closing mark
    "\u201d": _DQ,  # Swedish/Finnish
    "\u201e": _DQ,  # German low opening mark
    "\u2018": _SQ,
    "\u2019": _SQ,
    "\u201a": _SQ,  # German low single opening mark
    "\u00ab": _GU,  # French
    "\u00bb": _GU,  # German/Danish reversed guillemets
    "\u2039": _SG,
    "\u203a": _SG,
}

# Characters accepted as the dash of an option (after NFKC, which already folds U+FE63, U+FF0D).
_DASHES = "-\u2010\u2011\u2012\u2013\u2014\u2015\u2212\ufe58"
_OPTION = re.compile(f"[{_DASHES}]{{1,2}}(.*)", re.DOTALL)
_OPTION_WORDS = {"yes": "yes", "y": "yes", "all": "all"}

_HELP_WORDS = {"help", "-h", "--help", "?"}


def strip_invisible(text: str) -> str:
    """Remove zero-width characters (the same set :func:`parse` removes)."""
    return text.translate(_INVISIBLE)


@dataclass(frozen=True)
class _Word:
    value: str
    quoted: bool


def _short(text: str, limit: int = 40) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _prepare(text: str) -> str:
    text = strip_invisible(text)
    text = _SLACK_LINK.sub(lambda m: m.group(1), text)
    return _ENTITY.sub(lambda m: _ENTITIES[m.group(1)], text)


def _split(text: str) -> list[_Word]:
    words: list[_Word] = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch.isspace():
            i += 1
            continue
        closers = _QUOTES.get(ch)
        if closers is None:
            j = i
            while j < n and not text[j].isspace():
                j += 1
            words.append(_Word(text[i:j], quoted=False))
            i = j
            continue
        buf: list[str] = []
        j = i + 1
        while True:
            if j >= n:
                raise UsageError(
                    f"unterminated quote: {_short(text[i:])} (add the closing quote)", usage=USAGE
                )
            c = text[j]
            if c == "\\" and j + 1 < n and (text[j + 1] == "\\" or text[j + 1] in closers):
                buf.append(text[j + 1])
                j += 2
                continue
            if c in closers and (j + 1 == n or text[j + 1].isspace()):
                break
            buf.append(c)
            j += 1
        words.append(_Word("".join(buf), quoted=True))
        i = j + 1
    return words


def _fold(text: str) -> str:
    return unicodedata.normalize("NFKC", text).casefold()


def _usage(problem: str) -> UsageError:
    return UsageError(problem, usage=USAGE)


def _name(value: str, what: str) -> str:
    if not value.strip():
        raise _usage(f"the {what} name is empty")
    return value


def parse(text: str) -> Command:
    """Parse the text after `/polytomic`. Raises :class:`UsageError` on any mistake."""
    try:
        return _parse(text if isinstance(text, str) else "")
    except UsageError:
        raise
    except Exception as exc:  # pragma: no cover - defensive: the parser must only raise UsageError
        raise _usage(f"could not read the command ({type(exc).__name__})") from None


def _parse(text: str) -> Command:
    words = _split(_prepare(text))
    if not words:
        return Help()
    sub = _fold(words[0].value).strip()
    rest = words[1:]
    if sub in _HELP_WORDS:
        return Help()
    if sub not in ("syncs", "status", "cancel"):
        raise _usage(
            f"unknown command {_short(words[0].value)}; the commands are help, syncs, status and cancel"
        )

    positional: list[str] = []
    options: set[str] = set()
    options_done = False
    for word in rest:
        if word.quoted or options_done:
            positional.append(word.value)
            continue
        m = _OPTION.fullmatch(_fold(word.value))
        if m is None:
            positional.append(word.value)
            continue
        if not m.group(1):  # "--" (or a lone dash): everything after it is a name
            options_done = True
            continue
        option = _OPTION_WORDS.get(m.group(1))
        if option is None:
            raise _usage(
                f"unknown option {_short(word.value)} (options are --yes and --all; "
                'quote a name that starts with "-")'
            )
        options.add(option)

    if sub == "syncs":
        if options:
            raise _usage(f"syncs takes no options ({_options(options)} only apply to cancel)")
        joined = " ".join(positional).strip()
        return Syncs(filter=joined or None)

    if sub == "status":
        if options:
            raise _usage(f"status takes no options ({_options(options)} only apply to cancel)")
        if not positional:
            raise _usage("status needs a sync: /polytomic status <sync> [<schema>]")
        if len(positional) > 2:
            raise _too_many("status", positional[2:])
        schema = _name(positional[1], "schema") if len(positional) == 2 else None
        return Status(sync=_name(positional[0], "sync"), schema=schema)

    # cancel
    all_ = "all" in options
    yes = "yes" in options
    if not positional:
        raise _usage(
            "cancel needs a sync and a schema (or --all): "
            "/polytomic cancel <sync> <schema> or /polytomic cancel <sync> --all"
        )
    if len(positional) > 2:
        raise _too_many("cancel", positional[2:])
    sync = _name(positional[0], "sync")
    if len(positional) == 2:
        if all_:
            raise _usage(
                "give either a schema or --all, not both: to cancel one schema drop --all, "
                "to cancel the whole execution drop the schema"
            )
        return Cancel(sync=sync, schema=_name(positional[1], "schema"), all=False, yes=yes)
    if not all_:
        raise _usage(
            "cancel is missing the <schema> (or --all): name the schema to cancel, "
            "or add --all to cancel the sync's whole running execution"
        )
    return Cancel(sync=sync, schema=None, all=True, yes=yes)


def _options(options: set[str]) -> str:
    return " and ".join(f"--{o}" for o in sorted(options))


def _too_many(sub: str, extra: list[str]) -> UsageError:
    shown = " ".join(_short(e, 30) for e in extra[:3])
    return _usage(
        f"too many arguments for {sub}: {_short(shown, 80)} (put names that contain spaces in quotes)"
    )


# -- quoting -------------------------------------------------------------------------------------

_QUOTE_PAIRS = (('"', '"'), ("\u201c", "\u201d"), ("'", "'"), ("\u00ab", "\u00bb"))


def _closes_early(name: str, closers: str) -> bool:
    """Would a closer inside `name` end the quoted word early, or a backslash be read as an escape?"""
    for i, c in enumerate(name):
        if c in closers and i + 1 < len(name) and name[i + 1].isspace():
            return True
        if c == "\\" and (i + 1 == len(name) or name[i + 1] == "\\" or name[i + 1] in closers):
            return True
    return False


def quote(name: str) -> str:
    """The text to type so that :func:`parse` reads `name` back as one name.

    Names without whitespace that do not look like an option or a quoted word come back as they
    are. The result is what the user types; Slack's own entity encoding of `&`, `<`, `>` (and the
    parser's decoding of it) is not applied here.
    """
    plain = (
        name
        and not any(c.isspace() for c in name)
        and name[0] not in _QUOTES
        and _fold(name)[:1] not in _DASHES
    )
    if plain:
        return name
    for opener, closer in _QUOTE_PAIRS:
        if not _closes_early(name, _QUOTES[opener]):
            return opener + name + closer
    # Last resort: double quotes with backslash escapes.
    escaped = name.replace("\\", "\\\\").replace('"', '\\"')
    return '"' + escaped + '"'
