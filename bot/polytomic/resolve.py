"""Turn what a user typed into a bulk sync or a schema id. Pure functions, no network.

- :func:`resolve_sync`: sync id (case-insensitive) > exact name (casefold, surrounding spaces
  ignored) > unique name prefix (casefold).
- :func:`resolve_schema`: schema id exactly > id casefold > output name / user output name casefold,
  over the configured schemas plus any schema that only appears in a running execution.

Failures raise the domain errors :class:`bot.errors.AmbiguousName` / :class:`bot.errors.UnknownName`
whose ``candidates`` the Slack layer shows to the user.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Sequence

from bot.errors import AmbiguousName, UnknownName
from bot.polytomic.models import BulkSchema, BulkSync, SchemaExecution

_UUID_RE = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
_TOKEN_RE = re.compile(r"[^\w]+")

MAX_CANDIDATES = 5
_CUTOFF = 0.6
# Fuzzy matching is quadratic in the lengths compared and runs on the event loop: a 4,000-character
# query against a few hundred names took seconds. Only this many characters of the query, of each
# name and of each name token are compared, and only this many tokens of a name are tried.
_FUZZY_CHARS = 64
_FUZZY_TOKENS = 16


def looks_like_uuid(text: str) -> bool:
    """True for the canonical 8-4-4-4-12 hex form (any case, surrounding spaces ignored)."""
    return isinstance(text, str) and bool(_UUID_RE.match(text.strip()))


def _fold(text: str | None) -> str:
    return (text or "").strip().casefold()


def _ratio(a: str, b: str) -> float:
    """SequenceMatcher ratio of the first `_FUZZY_CHARS` characters, skipped when even its cheap
    upper bound cannot reach the cut-off."""
    matcher = difflib.SequenceMatcher(None, a[:_FUZZY_CHARS], b[:_FUZZY_CHARS], autojunk=False)
    if matcher.real_quick_ratio() < _CUTOFF * 0.9 or matcher.quick_ratio() < _CUTOFF * 0.9:
        return 0.0
    return matcher.ratio()


def _score(query: str, name: str) -> float:
    """Similarity of two casefolded strings in [0, 1]; substring and per-word matches count.

    The work is bounded (see `_FUZZY_CHARS`): at most ~(1 + `_FUZZY_TOKENS`) comparisons of
    64 x 64 characters per name, whatever the lengths of the query and the name."""
    if not query or not name:
        return 0.0
    score = _ratio(query, name)
    if query in name or name in query:
        shorter, longer = sorted((len(query), len(name)))
        score = max(score, 0.7 + 0.3 * shorter / longer)
    tokens = [t for t in _TOKEN_RE.split(name[: _FUZZY_CHARS * 4]) if t][:_FUZZY_TOKENS]
    if len(tokens) > 1:
        for token in tokens:
            score = max(score, 0.9 * _ratio(query, token))
    return score


def closest(query: str, names: Iterable[str], limit: int = MAX_CANDIDATES) -> list[str]:
    """Up to `limit` distinct names closest to `query`, closest first; [] when nothing is close."""
    q = _fold(query)
    if not q:
        return []
    best: dict[str, tuple[float, str]] = {}
    for name in names:
        if not name or not name.strip():
            continue
        key = _fold(name)
        score = _score(q, key)
        if score >= _CUTOFF and (key not in best or best[key][0] < score):
            best[key] = (score, name.strip())
    ranked = sorted(best.items(), key=lambda item: (-item[1][0], item[0]))
    return [display for _, (_, display) in ranked[:limit]]


def _names(syncs: Iterable[BulkSync]) -> list[str]:
    return sorted({(s.name or "").strip() for s in syncs if (s.name or "").strip()}, key=str.casefold)


def resolve_sync(query: str, syncs: Sequence[BulkSync]) -> BulkSync:
    """Find the bulk sync the user means; raise AmbiguousName / UnknownName otherwise."""
    q = _fold(query)
    if not q:
        raise UnknownName("sync", query, [])
    for sync in syncs:
        if sync.id and sync.id.strip().casefold() == q:
            return sync
    exact = [s for s in syncs if _fold(s.name) == q]
    if len(exact) == 1:
        return exact[0]
    if exact:
        # Same name on several syncs: only the id tells them apart; the names are what we have.
        raise AmbiguousName("sync", query, [(s.name or "").strip() for s in exact])
    prefixed = [s for s in syncs if s.name and _fold(s.name).startswith(q)]
    if len(prefixed) == 1:
        return prefixed[0]
    if prefixed:
        raise AmbiguousName("sync", query, _names(prefixed))
    raise UnknownName("sync", query, closest(query, (s.name or "" for s in syncs)))


def resolve_schema(
    query: str, schemas: Sequence[BulkSchema], running: Sequence[SchemaExecution] = ()
) -> str:
    """Return the schema id the user means (id, id casefold, then output name casefold)."""
    # (id, [names]) in listing order; ids only seen in a running execution come after.
    entries: dict[str, list[str]] = {}
    for schema in schemas:
        if schema.id:
            names = entries.setdefault(schema.id, [])
            names.extend(n for n in (schema.output_name, schema.user_output_name) if n and n.strip())
    for entry in running:
        if entry.schema_id:
            names = entries.setdefault(entry.schema_id, [])
            if entry.output_name and entry.output_name.strip():
                names.append(entry.output_name)

    if query in entries:
        return query
    stripped = query.strip()
    if stripped and stripped in entries:
        return stripped
    q = stripped.casefold()
    if not q:
        raise UnknownName("schema", query, [])

    by_id = [schema_id for schema_id in entries if schema_id.strip().casefold() == q]
    if len(by_id) == 1:
        return by_id[0]
    if by_id:
        raise AmbiguousName("schema", query, by_id)

    by_name = [schema_id for schema_id, names in entries.items() if any(_fold(n) == q for n in names)]
    if len(by_name) == 1:
        return by_name[0]
    if by_name:
        raise AmbiguousName("schema", query, by_name)

    pool: list[str] = []
    for schema_id, names in entries.items():
        pool.append(schema_id)
        pool.extend(names)
    raise UnknownName("schema", query, closest(query, pool))
