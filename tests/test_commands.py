"""The `/polytomic` command grammar (CONTRACT.md, "Slash command")."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from bot.cards import escape
from bot.commands import USAGE, Cancel, Help, Status, Syncs, parse, quote, strip_invisible
from bot.errors import UsageError

NBSP = "\u00a0"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", Help()),
        ("   ", Help()),
        ("\u200b", Help()),
        ("help", Help()),
        ("HELP", Help()),
        ("  Help  ", Help()),
        ("help cancel", Help()),
        ("--help", Help()),
        ("syncs", Syncs(filter=None)),
        ("SYNCS", Syncs(filter=None)),
        ("syncs salesforce", Syncs(filter="salesforce")),
        ("syncs  salesforce   to  snow", Syncs(filter="salesforce to snow")),
        ('syncs "Salesforce to"', Syncs(filter="Salesforce to")),
        ('syncs ""', Syncs(filter=None)),
        ("status abc", Status(sync="abc", schema=None)),
        ("Status abc accounts", Status(sync="abc", schema="accounts")),
        ('status "Salesforce to Snowflake"', Status(sync="Salesforce to Snowflake", schema=None)),
        (
            "status 'Salesforce to Snowflake' accounts",
            Status(sync="Salesforce to Snowflake", schema="accounts"),
        ),
        (
            "status \u201cSalesforce to Snowflake\u201d accounts",
            Status(sync="Salesforce to Snowflake", schema="accounts"),
        ),
        ("status \u201dSalesforce to Snowflake\u201d x", Status(sync="Salesforce to Snowflake", schema="x")),
        ("status \u201eSalesforce to Snowflake\u201c x", Status(sync="Salesforce to Snowflake", schema="x")),
        ("status \u2018Salesforce to Snowflake\u2019 x", Status(sync="Salesforce to Snowflake", schema="x")),
        ("status \u00abSalesforce to Snowflake\u00bb x", Status(sync="Salesforce to Snowflake", schema="x")),
        ("status \u00bbSalesforce to Snowflake\u00ab x", Status(sync="Salesforce to Snowflake", schema="x")),
        ("status 'Bob's sync' x", Status(sync="Bob's sync", schema="x")),
        ("status O'Brien", Status(sync="O'Brien", schema=None)),
        ('status "say \\"hi\\" now"', Status(sync='say "hi" now', schema=None)),
        ('status "C:\\temp x"', Status(sync="C:\\temp x", schema=None)),
        ('status "--yes"', Status(sync="--yes", schema=None)),
        (f"status{NBSP}abc{NBSP}accounts", Status(sync="abc", schema="accounts")),
        ("status\tabc\naccounts", Status(sync="abc", schema="accounts")),
        ("status\u3000abc\u2003accounts", Status(sync="abc", schema="accounts")),
        ("sta\u200btus ab\u200bc\ufeff", Status(sync="abc", schema=None)),
        # Names are not NFKC-normalised; the subcommand is.
        (
            "\uff53\uff54\uff41\uff54\uff55\uff53 \uff46\uff55\uff4c\uff4c",
            Status(sync="\uff46\uff55\uff4c\uff4c", schema=None),
        ),
        ("status \uff21\u2460", Status(sync="\uff21\u2460", schema=None)),
        # Slack link markup and entities
        (
            "status <https://app.polytomic.com/bulk/123|app.polytomic.com/bulk/123>",
            Status(sync="https://app.polytomic.com/bulk/123", schema=None),
        ),
        ("status <https://app.polytomic.com/bulk/123>", Status(sync="https://app.polytomic.com/bulk/123")),
        ("status <https://x.test/?a=1&amp;b=2|x>", Status(sync="https://x.test/?a=1&b=2")),
        ('status "Salesforce &amp; HubSpot"', Status(sync="Salesforce & HubSpot")),
        ("status a&lt;b&gt;", Status(sync="a<b>")),
        ("status &amp;lt;", Status(sync="&lt;")),
        # cancel
        ("cancel abc accounts", Cancel(sync="abc", schema="accounts", all=False, yes=False)),
        ("CANCEL abc accounts --yes", Cancel(sync="abc", schema="accounts", all=False, yes=True)),
        ("cancel --yes abc accounts", Cancel(sync="abc", schema="accounts", all=False, yes=True)),
        ("cancel abc -y accounts", Cancel(sync="abc", schema="accounts", all=False, yes=True)),
        ("cancel abc accounts -Y", Cancel(sync="abc", schema="accounts", all=False, yes=True)),
        ("cancel abc accounts --YES", Cancel(sync="abc", schema="accounts", all=False, yes=True)),
        ("cancel abc accounts \u2014yes", Cancel(sync="abc", schema="accounts", all=False, yes=True)),
        ("cancel abc accounts \u2013yes", Cancel(sync="abc", schema="accounts", all=False, yes=True)),
        ("cancel abc accounts \uff0d\uff0dyes", Cancel(sync="abc", schema="accounts", all=False, yes=True)),
        ("cancel abc accounts --yes --yes", Cancel(sync="abc", schema="accounts", all=False, yes=True)),
        ("cancel abc --all", Cancel(sync="abc", schema=None, all=True, yes=False)),
        ("cancel --all abc", Cancel(sync="abc", schema=None, all=True, yes=False)),
        ("cancel abc --all --yes", Cancel(sync="abc", schema=None, all=True, yes=True)),
        ("cancel abc \u2014all \u2014yes", Cancel(sync="abc", schema=None, all=True, yes=True)),
        ("cancel abc --ALL -y", Cancel(sync="abc", schema=None, all=True, yes=True)),
        (
            'cancel "My Sync" "My Schema" --yes',
            Cancel(sync="My Sync", schema="My Schema", all=False, yes=True),
        ),
        ("cancel abc -- -weird", Cancel(sync="abc", schema="-weird", all=False, yes=False)),
        ('cancel abc "-weird"', Cancel(sync="abc", schema="-weird", all=False, yes=False)),
    ],
)
def test_grammar(text: str, expected: object) -> None:
    assert parse(text) == expected


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("frobnicate", ["unknown command"]),
        ("--yes", ["unknown command"]),
        ("status", ["status needs a sync"]),
        ("status a b c", ["too many arguments", "quotes"]),
        ("status a --yes", ["only apply to cancel"]),
        ("status a --all", ["only apply to cancel"]),
        ("syncs --all", ["only apply to cancel"]),
        ("status a --bogus", ["unknown option"]),
        ("cancel", ["needs a sync and a schema"]),
        ("cancel --yes", ["needs a sync and a schema"]),
        ("cancel abc", ["missing", "schema", "--all"]),
        ("cancel abc --yes", ["missing", "schema", "--all"]),
        ("cancel abc accounts --all", ["either a schema or --all"]),
        ("cancel abc accounts extra", ["too many arguments"]),
        ("cancel abc --all extra", ["either a schema or --all"]),
        ("cancel a b c d", ["too many arguments"]),
        ("cancel abc accounts --force", ["unknown option"]),
        ("cancel abc accounts ---yes", ["unknown option"]),
        ("cancel abc accounts -x", ["unknown option"]),
        ('status "abc', ["unterminated quote"]),
        ("status 'abc", ["unterminated quote"]),
        ("status \u201cabc", ["unterminated quote"]),
        ('status "abc"def', ["unterminated quote"]),
        ('status ""', ["empty"]),
        ('cancel "  " x', ["empty"]),
        ("cancel x '' ", ["empty"]),
    ],
)
def test_usage_errors(text: str, words: list[str]) -> None:
    with pytest.raises(UsageError) as info:
        parse(text)
    assert info.value.usage == USAGE
    for word in words:
        assert word in info.value.problem


def test_usage_has_the_five_contract_lines() -> None:
    lines = USAGE.splitlines()
    assert len(lines) == 5
    assert lines[0] == "/polytomic help"
    assert lines[1].startswith("/polytomic syncs [text]")
    assert lines[2].startswith("/polytomic status <sync> [<schema>]")
    assert lines[3].startswith("/polytomic cancel <sync> <schema> [--yes]")
    assert lines[4].startswith("/polytomic cancel <sync> --all [--yes]")


def test_error_messages_stay_short_for_huge_input() -> None:
    with pytest.raises(UsageError) as info:
        parse("cancel a b " + "x" * 100_000)
    assert len(info.value.problem) < 300
    with pytest.raises(UsageError) as info:
        parse('status "' + "y" * 100_000)
    assert len(info.value.problem) < 300


def test_quote_examples() -> None:
    assert quote("abc") == "abc"
    assert quote("Salesforce to Snowflake") == '"Salesforce to Snowflake"'
    assert quote("--yes") == '"--yes"'
    assert quote('say "hi" now') == '\u201csay "hi" now\u201d'
    assert (
        parse("status " + quote("a\" b\u201c c\u201d d' e\u00bb f")).sync
        == "a\" b\u201c c\u201d d' e\u00bb f"
    )


# -- properties -----------------------------------------------------------------------------------

_PREFIXES = st.sampled_from(
    ["", "help ", "syncs ", "status ", "cancel ", "Cancel x ", "cancel x y ", 'status "', "cancel 'a' "]
)
_ODD_CHARS = (
    "\"'\u201c\u201d\u201e\u2018\u2019\u201a\u00ab\u00bb\u2039\u203a<>&|\\-\u2014\u2013"
    "\u00a0\u200b\u200d\ufeff\u2028\x00\x1f\t\n "
)
_ODD = st.sampled_from([*_ODD_CHARS, "--yes", "--all", "-y", "&amp;"])
_TEXT = st.lists(st.one_of(st.text(max_size=12), _ODD), max_size=12).map("".join)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(prefix=_PREFIXES, rest=st.one_of(st.text(), _TEXT))
def test_parse_raises_only_usage_error(prefix: str, rest: str) -> None:
    try:
        result = parse(prefix + rest)
    except UsageError as err:
        assert err.problem
        assert err.usage == USAGE
        return
    assert isinstance(result, Help | Syncs | Status | Cancel)
    if isinstance(result, Cancel):
        assert result.all != (result.schema is not None)
        assert result.sync.strip()


_NAMES = st.one_of(st.text(min_size=1), _TEXT).map(strip_invisible).filter(lambda s: s.strip() != "")


@settings(max_examples=300, deadline=None)
@given(name=_NAMES, schema=_NAMES)
def test_quote_round_trip_through_slack_encoding(name: str, schema: str) -> None:
    # Slack sends the typed text with &, < and > as entities; the parser decodes them.
    assert parse(escape(f"status {quote(name)}")) == Status(sync=name, schema=None)
    got = parse(escape(f"cancel {quote(name)} --yes {quote(schema)}"))
    assert got == Cancel(sync=name, schema=schema, all=False, yes=True)


@settings(max_examples=200, deadline=None)
@given(name=_NAMES)
def test_quote_round_trip_typed_verbatim(name: str) -> None:
    # Without Slack's encoding, names round-trip unless they contain entity or link markup.
    assume("&" not in name and "<" not in name)
    assert parse(f"cancel {quote(name)} --all") == Cancel(sync=name, schema=None, all=True, yes=False)
