"""Hostile text: the command parser over arbitrary Unicode (Hypothesis), names that try to mention
or format in every message the bot posts, and schema ids that try to reach another URL.

The parser's own grammar and round-trip properties live in tests/test_commands.py and the card
rendering properties in tests/test_cards.py; this file adds the properties they do not state and
runs the hostile strings through the real bot, between the fakes."""

from __future__ import annotations

import asyncio
import json
import re
import time

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bot import cards
from bot.commands import USAGE, Cancel, Help, Status, Syncs, parse, strip_invisible
from bot.errors import AmbiguousName, UnknownName, UsageError
from bot.polytomic.client import path_segment
from bot.polytomic.models import BulkSchema, BulkSync, SchemaExecution
from bot.polytomic.resolve import resolve_schema, resolve_sync

CHANNEL = "C0001"

# -- strategies ------------------------------------------------------------------------------------

# Every code point except lone surrogates (Slack sends UTF-8, which cannot carry them).
ANY_CHAR = st.characters(codec="utf-8")
HOSTILE_BITS = st.sampled_from(
    [
        "<!channel>",
        "<!here>",
        "<!everyone>",
        "<@U123>",
        "<#C999>",
        "<!subteam^S123>",
        "&lt;",
        "&gt;",
        "&amp;",
        "&lt;!channel&gt;",
        "`",
        "```",
        "*",
        "_",
        "~",
        ">",
        "\n",
        "\r\n",
        "\u2028",
        "\u202e",
        "\u200b",
        "\ufeff",
        "\x00",
        '"',
        "'",
        "\u201c",
        "\u201d",
        "\u00ab",
        "\\",
        "--yes",
        "--all",
        "-y",
        "--",
        "—yes",
        "<https://evil.example|click>",
        "<mailto:a@b.c>",
        ":rotating_light:",
        "%2F",
        "..",
        "/",
        "?",
        "#",
        "%",
        " ",
        "\u00a0",
        "\t",
    ]
)
HOSTILE_TEXT = st.lists(st.one_of(st.text(ANY_CHAR, max_size=8), HOSTILE_BITS), max_size=16).map("".join)
FULL_WIDTH_CANCEL = "\uff43\uff41\uff4e\uff43\uff45\uff4c "
SUBCOMMANDS = st.sampled_from(
    ["", "help ", "syncs ", "status ", "cancel ", "CANCEL ", "cancel x ", FULL_WIDTH_CANCEL]
)
INVISIBLE = st.sampled_from(["\u200b", "\u200c", "\u200d", "\u2060", "\ufeff"])


def _outcome(text: str):
    try:
        return parse(text)
    except UsageError as err:
        return ("usage", err.problem)


# -- parser properties -----------------------------------------------------------------------------


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sub=SUBCOMMANDS, rest=st.one_of(st.text(ANY_CHAR), HOSTILE_TEXT))
def test_parser_yields_a_command_or_the_usage_line(sub: str, rest: str) -> None:
    """Never raises anything but UsageError; a UsageError always carries the usage line and renders
    to an answer that shows it; a command always names a non-blank sync."""
    try:
        command = parse(sub + rest)
    except UsageError as err:
        assert err.usage == USAGE
        answer = cards.usage_error(err)
        assert "/polytomic cancel &lt;sync&gt; --all" in answer["text"]
        assert answer["blocks"]
        return
    assert isinstance(command, Help | Syncs | Status | Cancel)
    if isinstance(command, Status | Cancel):
        assert command.sync.strip()
        assert strip_invisible(command.sync) == command.sync
    if isinstance(command, Status) and command.schema is not None:
        assert command.schema.strip()


@settings(max_examples=300, deadline=None)
@given(text=st.one_of(st.text(ANY_CHAR), HOSTILE_TEXT), data=st.data())
def test_invisible_characters_anywhere_change_nothing(text: str, data) -> None:
    """Zero-width characters pasted anywhere (inside words, quotes, entities, options) give the
    same command, or the same kind of usage error."""
    positions = data.draw(st.lists(st.integers(0, len(text)), max_size=5))
    noisy = text
    for pos in sorted(positions, reverse=True):
        noisy = noisy[:pos] + data.draw(INVISIBLE) + noisy[pos:]
    plain, with_noise = _outcome(text), _outcome(noisy)
    if isinstance(plain, tuple):
        assert isinstance(with_noise, tuple)
    else:
        assert with_noise == plain


@settings(max_examples=200, deadline=None)
@given(name=HOSTILE_TEXT.filter(lambda s: s.strip()))
def test_options_inside_quoted_names_never_confirm(name: str) -> None:
    """`--yes` only ever comes from an unquoted word the user typed, never from a quoted name."""
    quoted = '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'
    outcome = _outcome(f"cancel {quoted} {quoted}")
    if isinstance(outcome, Cancel):
        assert outcome.yes is False and outcome.all is False


def test_parser_and_resolver_stay_fast_on_huge_hostile_input() -> None:
    """Slash command text is bounded only by the request size: ~100k characters of the worst
    shapes must not block the event loop (loose bound; it takes milliseconds)."""
    shapes = [
        '"' * 100_000,
        "'" + "\\" * 100_000,
        "<http://" * 20_000,
        "<https://x|" * 20_000,
        "&amp;" * 40_000,
        "-" * 100_000,
        "cancel " + "a " * 50_000,
        "status \u201c" + "\u201c " * 50_000,
        "cancel " + "\u200b" * 100_000 + "x --yes",
    ]
    started = time.monotonic()
    for text in shapes:
        _outcome(text)
    assert time.monotonic() - started < 5.0

    syncs = [
        BulkSync(id=f"00000000-0000-4000-8000-{i:012d}", name=f"sync number {i} " * 6) for i in range(400)
    ]
    schemas = [BulkSchema(id=f"schema_{i}_" + "x" * 200, output_name="y" * 300) for i in range(500)]
    started = time.monotonic()
    for query in ("x" * 4000, "sync number " * 300, "a " * 2000, "\u00e9" * 4000):
        for resolve, pool in ((resolve_sync, syncs), (resolve_schema, schemas)):
            try:
                resolve(query, pool)
            except (UnknownName, AmbiguousName):
                pass
    # Before the fix in resolve.closest this took ~50 s (quadratic difflib on the whole strings).
    assert time.monotonic() - started < 5.0


@settings(max_examples=300, deadline=None)
@given(query=st.one_of(st.text(ANY_CHAR), HOSTILE_TEXT), names=st.lists(HOSTILE_TEXT, max_size=8))
def test_resolvers_only_raise_name_errors(query: str, names: list[str]) -> None:
    syncs = [BulkSync(id=f"00000000-0000-4000-8000-{i:012d}", name=n) for i, n in enumerate(names)]
    schemas = [BulkSchema(id=n or f"s{i}", output_name=n) for i, n in enumerate(names)]
    running = [SchemaExecution.model_validate({"schema": n or "r", "output_name": n}) for n in names]
    for call in (lambda: resolve_sync(query, syncs), lambda: resolve_schema(query, schemas, running)):
        try:
            call()
        except (UnknownName, AmbiguousName) as err:
            assert len(err.candidates) <= 5 or isinstance(err, AmbiguousName)
            rendered = cards.unknown_name(err)
            assert "<!" not in json.dumps(rendered)


@settings(max_examples=500, deadline=None)
@given(schema_id=st.one_of(st.text(ANY_CHAR, min_size=1), HOSTILE_TEXT.filter(bool)))
def test_a_schema_id_is_always_exactly_one_path_segment(schema_id: str) -> None:
    from urllib.parse import unquote

    segment = path_segment(schema_id)
    assert unquote(segment) == schema_id
    assert not set(segment) & set("/?#\\ \t\r\n")
    assert segment not in (".", "..")
    assert re.fullmatch(r"[A-Za-z0-9\-._~%]+", segment)


# -- end to end: what the bot posts ---------------------------------------------------------------

EVIL_SYNC = "<!channel> Evil & `co`\n*bold* <@U123> &lt;!here&gt; ```x"
EVIL_SCHEMA = "<@U123> `table`\n>quote <!everyone>"
EVIL_STATUS = "<!channel> failed: `oops`\n>quoted <@U123> &lt;!here&gt; <https://evil.example|click>"
EVIL_API_ERROR = "<!channel> read-only key `x`\n*bold* <@U123>"
FORBIDDEN = ("<!channel>", "<!here>", "<!everyone>", "<@U123>", "<!subteam", "<#C999>", "<https://evil")
ALLOWED_MARKUP = re.compile(
    r"^(@U000\d|@UBOT|#C000\d|https://[a-z-]+\.slack\.com/archives/[^|<>]+(\|[^<>]*)?)$"
)


def _texts_of(obj) -> list[str]:
    """Every `text` string in a message (top-level text, mrkdwn/plain_text objects, confirm dialogs)."""
    out: list[str] = []
    if isinstance(obj, dict):
        for key, value in obj.items():
            if key == "text" and isinstance(value, str):
                out.append(value)
            else:
                out += _texts_of(value)
    elif isinstance(obj, list):
        for item in obj:
            out += _texts_of(item)
    return out


def _everything_posted(world, response_urls: list[str], acks: list) -> list[str]:
    """All text the bot put in front of people: Web API writes, response_url posts, ack bodies."""
    texts: list[str] = []
    for call in world.slack.calls:
        if call.method in (
            "chat.postMessage",
            "chat.update",
            "chat.postEphemeral",
            "views.open",
            "views.update",
        ):
            params = dict(call.params)
            if isinstance(params.get("blocks"), str):
                params["blocks"] = json.loads(params["blocks"])
            texts += _texts_of(params)
    for url in response_urls:
        for body in world.slack.responses(url):
            texts += _texts_of(body)
    for ack in acks:
        if ack.content and ack.headers.get("content-type", "").startswith("application/json"):
            texts += _texts_of(ack.json())
    return texts


def _inert_problems(texts: list[str]) -> list[tuple[str, str]]:
    problems = []
    for text in texts:
        for bad in FORBIDDEN:
            if bad in text:
                problems.append((f"live {bad}", text))
        for markup in re.findall(r"<([^<>]*)>", text):
            if not ALLOWED_MARKUP.match(markup):
                problems.append((f"markup <{markup}>", text))
        for broken in ("\n>quote", "\n>quoted", "\n*bold*", "`table`", "`co`", "`oops`"):
            if broken in text:
                problems.append((f"formatting {broken!r} escaped its span", text))
    return problems


def _assert_inert(texts: list[str]) -> None:
    assert texts
    assert _inert_problems(texts) == []


async def _wait_final(world, root_ts: str, timeout: float = 20):
    final = re.compile(
        r"\*(canceled|completed|failed|errors|interrupted|not found|ended|timed out|cancel failed)\*"
    )

    def done():
        replies = world.slack.thread(CHANNEL, root_ts)
        return replies if replies and final.search(replies[-1].text) else None

    return await world.slack.wait_for(done, timeout=timeout)


def _serve_status(world, sync_id: str, mutate) -> object:
    """From now on GET .../status answers the current status with `mutate` applied to its data."""
    body = world.polytomic.status_json(sync_id)
    mutate(body["data"])
    return world.polytomic.add_fault("GET", f"/api/bulk/syncs/{sync_id}/status", status=200, body=body)


async def test_hostile_names_and_api_strings_render_inert_everywhere(world):
    urls: list[str] = []
    acks = []
    answers_to_cancels: list[str] = []  # checked by the next test (a known defect)

    async def slash(text, user=None):
        user = user or world.user
        acks.append(await user.slash(text))
        (answers_to_cancels if text.endswith("--yes") else urls).append(user.last_response_url)

    sync_id = world.polytomic.add_sync(EVIL_SYNC, [EVIL_SCHEMA, "accounts", "contacts"])
    world.polytomic.start_run(sync_id, durations=600)
    world.polytomic.cancel_delay_s = 30  # the end is served below, with a hostile status message

    # read-only views: list, status card, unknown names with hostile suggestions, usage errors
    await slash("syncs")
    await slash("syncs <!channel>")
    await slash(f"status {sync_id}")
    await slash('status "<!channel> Evil"')
    await slash("status <@U123>")
    await slash("frobnicate <!channel> `x`\n*y*")
    await slash(f'cancel {sync_id} "<@U123> `tabl"')
    await slash(f'cancel {sync_id} "{EVIL_SCHEMA}"')  # the preview card
    await world.slack.wait_for(
        lambda: all(a.content or world.slack.responses(u) for a, u in zip(acks, urls, strict=True)),
        timeout=10,
    )

    # a cancel whose thread carries the hostile names, then a hostile terminal status message
    await slash(f'cancel {sync_id} "{EVIL_SCHEMA}" --yes')
    root = await world.slack.wait_for(
        lambda: world.slack.messages(CHANNEL) and world.slack.messages(CHANNEL)[-1]
    )
    await world.slack.wait_for(lambda: world.slack.thread(CHANNEL, root.ts))

    def ended(data):
        for entry in data["current_execution"]["schemas"]:
            if entry["schema"] == EVIL_SCHEMA:
                entry["status"] = "failed"
                entry["status_message"] = EVIL_STATUS
        data["current_execution"]["status_message"] = EVIL_STATUS

    _serve_status(world, sync_id, ended)
    await _wait_final(world, root.ts)
    world.polytomic.clear_faults()

    # a refused cancel: the API's error message is quoted back to the user
    world.polytomic.add_fault("POST", "*", status=403, body={"status": 403, "message": EVIL_API_ERROR})
    await slash(f"cancel {sync_id} accounts --yes")
    await world.slack.wait_for(lambda: world.slack.responses(answers_to_cancels[-1]), timeout=10)
    world.polytomic.clear_faults()

    # an outage reply while another cancel is watched
    await slash(f"cancel {sync_id} contacts --yes")
    await world.slack.wait_for(lambda: len(world.slack.messages(CHANNEL)) >= 3)
    world.polytomic.add_fault(
        "GET", f"/api/bulk/syncs/{sync_id}/status", status=503, body={"message": EVIL_API_ERROR}
    )
    root3 = world.slack.messages(CHANNEL)[-1]
    await world.slack.wait_for(lambda: len(world.slack.thread(CHANNEL, root3.ts)) >= 2, timeout=15)
    world.polytomic.clear_faults()

    texts = _everything_posted(world, urls, acks)
    dump = "\n".join(texts)
    assert "Evil" in dump and "table" in dump  # the names are shown, just inert
    assert "read-only key" in dump or "read-only" in "\n".join(
        _texts_of(world.slack.responses(answers_to_cancels[1]))
    )
    _assert_inert(texts)
    print("\n" + world.slack.transcript(CHANNEL))


async def test_the_answer_to_a_confirmed_cancel_renders_names_inert(world):
    sync_id = world.polytomic.add_sync(EVIL_SYNC, [EVIL_SCHEMA, "accounts"])
    world.polytomic.start_run(sync_id, durations=600)
    await world.user.slash(f'cancel {sync_id} "{EVIL_SCHEMA}" --yes')
    first = world.user.last_response_url
    await world.user.slash(f"cancel {sync_id} --all --yes")
    second = world.user.last_response_url
    answers = await world.slack.wait_for(
        lambda: (
            world.slack.responses(first)
            and world.slack.responses(second)
            and world.slack.responses(first) + world.slack.responses(second)
        )
    )
    texts = _texts_of(answers)
    assert "Evil" in "".join(texts)
    _assert_inert(texts)


# Schema ids that try to reach another route, a query string or a fragment.
ODD_SCHEMA_IDS = [
    "a/b",
    "Sales Data/Q1 2026.csv",
    "q?x=1&y=2",
    "frag#top",
    "100%",
    "%2F",
    "a%2Fb",
    "%2e%2e",
    "..",
    ".",
    "...",
    "../../../api/me",
    "..%2F..%2Fapi%2Fme",
    "with space",
    " leading",
    "trailing ",
    "back\\slash",
    "semi;colon",
    "plus+sign",
    "ünïcødé/ß",
    "tab\there",
    "~tilde",
]


async def test_odd_schema_ids_reach_exactly_their_url_through_the_bot(world):
    sync_id = world.polytomic.add_sync("Odd ids", ODD_SCHEMA_IDS)
    world.polytomic.start_run(sync_id, durations=600)
    for schema_id in ODD_SCHEMA_IDS[:-3]:  # by click (the id comes from the button value)
        response = await world.user.click(
            "polytomic.cancel_schema",
            json.dumps({"sync_id": sync_id, "schema_id": schema_id}),
            ephemeral=True,
        )
        assert response.status_code == 200
    for schema_id in ODD_SCHEMA_IDS[-3:]:  # typed (the id is resolved through the schema list)
        quoted = '"' + schema_id.replace("\\", "\\\\").replace('"', '\\"') + '"'
        await world.user.slash(f"cancel {sync_id} {quoted} --yes")
    await world.slack.wait_for(
        lambda: len(world.polytomic.cancel_requests()) >= len(ODD_SCHEMA_IDS), timeout=20
    )
    await asyncio.sleep(0.3)

    cancelled = sorted(schema for _, schema, _ in world.polytomic.cancel_requests())
    assert cancelled == sorted(ODD_SCHEMA_IDS)
    posts = world.polytomic.requests_to("POST", "*")
    expected = {f"/api/bulk/syncs/{sync_id}/schemas/{path_segment(s)}/cancel" for s in ODD_SCHEMA_IDS}
    assert {r.raw_path for r in posts} == expected
    assert len(posts) == len(ODD_SCHEMA_IDS)
    for request in world.polytomic.requests:
        # every request stayed under this sync's own routes: nothing reached /api/me or another sync
        assert request.raw_path.startswith(f"/api/bulk/syncs/{sync_id}"), request.raw_path
        assert request.status != 404, request.raw_path
        assert not request.query, request.query  # no schema id leaked into a query string
    for schema_id in ODD_SCHEMA_IDS:
        assert world.polytomic.schema_status(sync_id, schema_id) in ("canceled", "running")


def _hostile_slash_texts(n: int) -> list[str]:
    """`n` command texts drawn by Hypothesis (edge cases first), to send through the real bot."""
    drawn: list[str] = []

    @settings(
        max_examples=n,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
    )
    @given(sub=SUBCOMMANDS, rest=st.one_of(HOSTILE_TEXT, st.text(ANY_CHAR, max_size=40)))
    def draw(sub: str, rest: str) -> None:
        drawn.append(sub + rest)

    draw()
    return drawn[:n]


async def test_arbitrary_text_through_the_real_bot(world):
    """Each text gets an answer within Slack's 3 seconds: the usage line, or the command's own
    answer; never an unexpected error, never a cancel (nothing here carries --yes on a real name)."""
    sync_id = world.polytomic.add_sync("Salesforce to Snowflake", ["accounts"])
    world.polytomic.start_run(sync_id, durations=600)
    texts = [*_hostile_slash_texts(40), "cancel salesforce accounts —yes", "cancel “salesforce” --all"]
    urls, acks = [], []
    for text in texts:
        started = time.monotonic()
        response = await world.user.slash(text)
        assert response.status_code == 200, (text, response.status_code)
        assert time.monotonic() - started < 3.0
        acks.append(response)
        urls.append(world.user.last_response_url)
    await asyncio.sleep(1.0)
    for text, ack, url in zip(texts, acks, urls, strict=True):
        answers = ([ack.json()] if ack.content else []) + world.slack.responses(url)
        if not answers:  # a read-only command may still be answering; give it a moment
            answers = await world.slack.wait_for(lambda url=url: world.slack.responses(url), timeout=10)
        dump = json.dumps(answers)
        assert "Something went wrong" not in dump, (text, dump[:300])
    # a cancel only happens for a well-formed, confirmed command on a real name
    for _, schema, _ in world.polytomic.cancel_requests():
        assert schema is None or schema == "accounts"
    _assert_inert(_everything_posted(world, urls, acks))
