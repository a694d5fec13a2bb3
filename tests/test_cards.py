"""Slack message rendering: Block Kit validity, limits, escaping and the button contract."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from slack_sdk.models.blocks import Block

from bot import cards
from bot.commands import USAGE
from bot.errors import AccessDenied, AmbiguousName, UnknownName, UsageError
from bot.polytomic import errors as perr
from bot.polytomic.models import BulkSync, Execution, SchemaExecution, SyncExecutionStatus, SyncStatus

NOW = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)
SYNC_ID = "0b6c1c3e-5a55-4d6f-9a57-1f3c0f3f9a11"
EVIL = (
    "<!channel> <!here|here> <@U123> <#C42> &lt;b&gt; & `tick` ```block``` *b* _i_ ~s~\n"
    "second line <https://evil.example|click> \u202etxt.exe \x00\x07 \U0001f600"
)
HUGE = ("x<@U1>&`\n" * 1200)[:10_000]

ACTION_RE = re.compile(r"polytomic\.(cancel_schema|cancel_sync|confirm_cancel|refresh)(:.*)?")
ALLOWED_MARKUP = re.compile(r"<@[UW][A-Z0-9]+>|<#[CGD][A-Z0-9]+>|<https://[^\s<>|]+\|[^<>]*>")


def u16(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


@dataclass
class Watch:
    sync_id: str = SYNC_ID
    sync_name: str = "Salesforce to Snowflake"
    schema_id: str | None = "sch_1"
    schema_label: str | None = "accounts"
    execution_id: str | None = "exec_1"
    requested_by: str = "U111"
    also_requested: list[str] = field(default_factory=list)
    last_state: str | None = "running"
    created_at: datetime = NOW - timedelta(seconds=72)
    deadline_at: datetime = NOW + timedelta(hours=1)
    finished_at: datetime | None = None
    outcome: str | None = None


# -- validation helpers ---------------------------------------------------------------------------


def _text_objects(node: Any, path: str = "") -> list[tuple[str, dict]]:
    """(path, text object) for every text object under `node`."""
    found: list[tuple[str, dict]] = []
    if isinstance(node, dict):
        if node.get("type") in ("mrkdwn", "plain_text") and isinstance(node.get("text"), str):
            found.append((path, node))
        for key, value in node.items():
            found.extend(_text_objects(value, f"{path}.{key}"))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            found.extend(_text_objects(value, f"{path}[{i}]"))
    return found


def _buttons(msg: dict) -> list[dict]:
    out = []
    for block in msg["blocks"]:
        if block["type"] == "actions":
            out.extend(e for e in block["elements"] if e["type"] == "button")
        accessory = block.get("accessory")
        if accessory and accessory.get("type") == "button":
            out.append(accessory)
    return out


def validate(msg: dict) -> dict:
    """Assert `msg` is a valid Slack message within every Block Kit limit; return it."""
    assert set(msg) == {"text", "blocks"}
    assert isinstance(msg["text"], str) and msg["text"].strip()
    assert u16(msg["text"]) <= 3000
    blocks = msg["blocks"]
    assert 1 <= len(blocks) <= 50
    action_ids: list[str] = []
    for block in blocks:
        parsed = Block.parse(block)
        assert parsed is not None, block
        parsed.validate_json()
        parsed.to_dict()  # validates nested elements and composition objects too
        kind = block["type"]
        assert kind in ("section", "header", "context", "actions", "divider")
        if kind == "section":
            assert block["text"]["type"] == "mrkdwn"
            assert 1 <= u16(block["text"]["text"]) <= 3000
        elif kind == "header":
            assert block["text"]["type"] == "plain_text"
            assert 1 <= u16(block["text"]["text"]) <= 150
        elif kind == "context":
            assert 1 <= len(block["elements"]) <= 10
            for element in block["elements"]:
                assert u16(element["text"]) <= 3000
        elif kind == "actions":
            assert 1 <= len(block["elements"]) <= 25
    for button in _buttons(msg):
        assert button["text"]["type"] == "plain_text"
        assert 1 <= u16(button["text"]["text"]) <= 75
        assert u16(button["value"]) <= 2000
        assert len(button["action_id"]) <= 255
        assert ACTION_RE.fullmatch(button["action_id"]), button["action_id"]
        action_ids.append(button["action_id"])
        base = button["action_id"].split(":")[0]
        if base in ("polytomic.cancel_schema", "polytomic.cancel_sync", "polytomic.confirm_cancel"):
            assert button["style"] == "danger"
            confirm = button["confirm"]
            assert confirm["style"] == "danger"
            assert confirm["title"]["type"] == "plain_text" and u16(confirm["title"]["text"]) <= 100
            assert confirm["text"]["type"] == "plain_text" and u16(confirm["text"]["text"]) <= 300
            assert u16(confirm["confirm"]["text"]) <= 30 and u16(confirm["deny"]["text"]) <= 30
        value = json.loads(button["value"])
        if base == "polytomic.cancel_schema":
            assert set(value) == {"sync_id", "schema_id"}
        elif base in ("polytomic.cancel_sync", "polytomic.refresh"):
            assert set(value) == {"sync_id"}
        else:
            assert set(value) in ({"sync_id"}, {"sync_id", "schema_id"})
        assert all(isinstance(v, str) and v for v in value.values())
        assert button["value"] == json.dumps(value, separators=(",", ":"), ensure_ascii=False) or (
            button["value"] == json.dumps(value, separators=(",", ":"))
        )
    assert len(action_ids) == len(set(action_ids)), action_ids
    assert_safe(msg)
    return msg


def all_texts(msg: dict) -> list[tuple[str, str]]:
    """(type, text) for the fallback and every text object; fallback counts as mrkdwn."""
    return [("mrkdwn", msg["text"])] + [(o["type"], o["text"]) for _, o in _text_objects(msg["blocks"])]


def _inline_code_spans(text: str) -> list[str]:
    spans = []
    for i, part in enumerate(text.split("```")):
        if i % 2 == 0:
            spans.extend(re.findall(r"`([^`]*)`", part))
    return spans


def assert_safe(msg: dict) -> None:
    """Nothing in any text can mention anyone or break out of formatting."""
    for kind, text in all_texts(msg):
        rest = ALLOWED_MARKUP.sub("", text)
        assert "<" not in rest, text
        assert "<!" not in text
        for line in rest.split("\n"):
            line = line[2:] if line.startswith("> ") else line
            assert ">" not in line, text
        assert "&" not in re.sub(r"&(amp|lt|gt);", "", rest), text
        for bad in ("\x00", "\x07", "\u202e"):
            assert bad not in text
        if kind == "mrkdwn":
            assert text.count("`") % 2 == 0, text
            for span in _inline_code_spans(text):
                assert "\n" not in span, text
        else:
            assert "\n" not in text or kind == "mrkdwn"


def joined(msg: dict) -> str:
    return "\n".join(t for _, t in all_texts(msg))


# -- fixtures -------------------------------------------------------------------------------------


def schema(i: int | str, status: str = "running", **kw: Any) -> SchemaExecution:
    data = {"schema": f"sch_{i}", "output_name": f"table_{i}", "status": status} | kw
    return SchemaExecution.model_validate(data)


def running_status(schemas: list[SchemaExecution], exec_status: str = "running") -> SyncStatus:
    return SyncStatus(
        current_execution=Execution(
            id="exec_1",
            status=exec_status,
            started_at=NOW - timedelta(minutes=75),
            record_count=12345,
            schemas=schemas,
        )
    )


def done_status(outcome: str = "completed") -> SyncStatus:
    return SyncStatus(
        current_execution=None,
        last_execution=Execution(
            id="exec_0",
            status=outcome,
            started_at=NOW - timedelta(hours=3),
            completed_at=NOW - timedelta(hours=2),
            schemas=[schema(1, "completed"), schema(2, outcome)],
        ),
        next_execution_time=NOW + timedelta(hours=1),
    )


SYNC = BulkSync(id=SYNC_ID, name="Salesforce to Snowflake", active=True)


def values(msg: dict, base: str) -> list[dict]:
    return [json.loads(b["value"]) for b in _buttons(msg) if b["action_id"].split(":")[0] == base]


# -- basics ---------------------------------------------------------------------------------------


def test_escape_and_mentions() -> None:
    assert cards.escape(None) == ""
    assert cards.escape("<!channel> & <@U1>") == "&lt;!channel&gt; &amp; &lt;@U1&gt;"
    assert cards.escape("&lt;") == "&amp;lt;"
    assert cards.user_mention("U123ABC") == "<@U123ABC>"
    assert cards.user_mention("W0ENT") == "<@W0ENT>"
    assert cards.user_mention("<!channel>") == "&lt;!channel&gt;"
    assert cards.user_mention("u123") == "u123"
    assert cards.user_mention("U123|x") == "U123|x"
    assert len(cards.user_mention("U" + "1" * 5000)) < 100


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0s"), (0.4, "0s"), (45, "45s"), (72, "1m 12s"), (3600, "1h 0m"), (3 * 86400 + 7200, "3d 2h"),
     (-5, "0s"), (float("nan"), "0s"), (float("inf"), "0s")],
)  # fmt: skip
def test_human_duration(seconds: float, text: str) -> None:
    assert cards.human_duration(seconds) == text


def test_clip_never_cuts_entities_or_markup() -> None:
    text = cards.escape("<" * 100)
    for limit in range(1, 40):
        clipped = cards.clip(text, limit)
        assert u16(clipped) <= limit
        assert re.fullmatch(r"(&lt;)*…", clipped), clipped
    assert cards.clip("ab <@U123> cd", 8) == "ab …"
    assert u16(cards.clip("\U0001f600" * 100, 11)) <= 11


def test_button_value_is_compact_contract_json() -> None:
    assert cards.button_value(SYNC_ID) == '{"sync_id":"' + SYNC_ID + '"}'
    assert cards.button_value(SYNC_ID, "a b") == '{"sync_id":"' + SYNC_ID + '","schema_id":"a b"}'
    assert cards.button_value(SYNC_ID, "x" * 1950) is None
    assert json.loads(cards.button_value(SYNC_ID, '\u00e9\U0001f600"\\')) == {
        "sync_id": SYNC_ID,
        "schema_id": '\u00e9\U0001f600"\\',
    }


# -- help / usage ---------------------------------------------------------------------------------


def test_help_and_usage_error() -> None:
    msg = validate(cards.help_message(USAGE))
    assert "/polytomic cancel &lt;sync&gt; --all [--yes]" in joined(msg)
    err = validate(cards.usage_error(UsageError(EVIL, usage=USAGE)))
    assert "&amp;lt;b&amp;gt;" in err["text"]
    assert "/polytomic status &lt;sync&gt;" in err["text"]
    validate(cards.usage_error(UsageError(HUGE)))  # usage="" -> the parser's USAGE
    assert "/polytomic help" in cards.usage_error(UsageError("x"))["text"]


# -- sync list ------------------------------------------------------------------------------------


def test_sync_list_orders_running_first_then_by_name() -> None:
    rows = [
        (BulkSync(id="id-b", name="beta"), SyncExecutionStatus(sync_id="id-b", status="completed")),
        (BulkSync(id="id-z", name="Zulu"), SyncExecutionStatus(
            sync_id="id-z", status="running", schemas=[schema(1), schema(2, "completed"), schema(3)])),
        (BulkSync(id="id-a", name="alpha", active=False), None),
        (BulkSync(id="id-c", name="Charlie"), SyncExecutionStatus(sync_id="id-c", status="exporting")),
    ]  # fmt: skip
    msg = validate(cards.sync_list(rows, None))
    body = joined(msg)
    order = [body.index(f"`{n}`") for n in ("Charlie", "Zulu", "alpha", "beta")]
    assert order == sorted(order)
    assert "2 of 3 schemas running" in body
    assert "2 running" in msg["text"]
    assert "paused" in body


def test_sync_list_empty_and_filter_escaped() -> None:
    msg = validate(cards.sync_list([], EVIL))
    assert "No bulk syncs" in msg["text"]
    assert "&lt;!channel&gt;" in msg["text"]


def test_sync_list_many_rows_and_huge_names() -> None:
    rows = [
        (BulkSync(id=f"id-{i}" + HUGE[:200], name=f"{i:03} " + HUGE), SyncExecutionStatus(
            status="running" if i % 7 == 0 else "completed",
            schemas=[schema(j, "running", status_message=HUGE) for j in range(30)],
        ))
        for i in range(500)
    ]  # fmt: skip
    msg = validate(cards.sync_list(rows, HUGE))
    assert "and 460 more" in joined(msg)
    assert len(json.dumps(msg)) < 40_000


# -- status card ----------------------------------------------------------------------------------


def test_status_card_running() -> None:
    schemas = [
        schema("a", "completed", record_count=10),
        schema("b", "running", record_count=1234, status_message="loading <@U999>"),
        schema("c", "exporting", started_at=NOW - timedelta(seconds=72)),
        schema("d", "failed", status_message="boom"),
    ]
    msg = validate(cards.status_card(SYNC, running_status(schemas), now=NOW))
    body = joined(msg)
    assert msg["blocks"][0]["type"] == "header"
    assert msg["blocks"][0]["text"]["text"] == "Salesforce to Snowflake"
    assert "`exec_1`" in body and "*running*" in body and "running for 1h 15m" in body
    assert "1,234 records" in body and "for 1m 12s" in body
    assert "&lt;@U999&gt;" in body
    # running schemas first, with their own cancel buttons
    assert body.index("`table_b`") < body.index("`table_a`")
    assert body.index("`table_c`") < body.index("`table_d`")
    assert values(msg, "polytomic.cancel_schema") == [
        {"sync_id": SYNC_ID, "schema_id": "sch_b"},
        {"sync_id": SYNC_ID, "schema_id": "sch_c"},
    ]
    assert values(msg, "polytomic.cancel_sync") == [{"sync_id": SYNC_ID}]
    assert values(msg, "polytomic.refresh") == [{"sync_id": SYNC_ID}]
    assert "running" in msg["text"]


def test_status_card_nothing_running_shows_last_outcome() -> None:
    msg = validate(cards.status_card(SYNC, done_status("failed"), now=NOW))
    body = joined(msg)
    assert "Nothing is running" in body
    assert "`exec_0`" in body and "*failed*" in body and "2024-05-01 10:00 UTC" in body
    assert "took 1h 0m" in body
    assert "nothing running" in msg["text"] and "failed" in msg["text"]
    assert values(msg, "polytomic.cancel_schema") == []
    assert values(msg, "polytomic.cancel_sync") == []
    assert values(msg, "polytomic.refresh") == [{"sync_id": SYNC_ID}]


def test_status_card_empty_status_and_missing_ids() -> None:
    validate(cards.status_card(SYNC, SyncStatus(), now=NOW))
    msg = validate(cards.status_card(BulkSync(), running_status([schema(1)]), now=NOW))
    assert _buttons(msg) == []
    no_schema_id = SchemaExecution(status="running", output_name="orphan")
    msg = validate(cards.status_card(SYNC, running_status([no_schema_id]), now=NOW))
    assert values(msg, "polytomic.cancel_schema") == []
    assert "did not give this schema's id" in joined(msg)


def test_status_card_schema_with_huge_id_gets_no_button() -> None:
    big = SchemaExecution.model_validate({"schema": "s" * 3000, "output_name": "big", "status": "running"})
    msg = validate(cards.status_card(SYNC, running_status([big, schema(1)]), now=NOW))
    assert values(msg, "polytomic.cancel_schema") == [{"sync_id": SYNC_ID, "schema_id": "sch_1"}]
    assert "too long for a Slack button" in joined(msg)


def test_status_card_500_schemas_and_huge_strings() -> None:
    schemas = [
        schema(i, "running" if i % 10 < 3 else "completed", record_count=i, status_message=HUGE)
        for i in range(500)
    ]
    schemas[7] = SchemaExecution.model_validate(
        {"schema": "sch_" + HUGE, "output_name": HUGE, "status": "running", "status_message": HUGE}
    )
    sync = BulkSync(id=SYNC_ID, name=HUGE)
    msg = validate(cards.status_card(sync, running_status(schemas), now=NOW))
    assert len(values(msg, "polytomic.cancel_schema")) == 20
    assert "+480 more schemas: 349 completed, 131 running" in joined(msg)
    assert f"/polytomic status {SYNC_ID} &lt;schema&gt;" in joined(msg)  # long name: suggest the id
    assert len(json.dumps(msg)) < 60_000
    msg = validate(cards.status_card(SYNC, running_status(schemas), now=NOW))
    assert '/polytomic status "Salesforce to Snowflake" &lt;schema&gt;' in joined(msg)


def test_status_card_schema_filter() -> None:
    schemas = [schema(i, "running") for i in range(5)] + [schema(9, "completed")]
    msg = validate(cards.status_card(SYNC, running_status(schemas), schema_filter="sch_3", now=NOW))
    assert values(msg, "polytomic.cancel_schema") == [{"sync_id": SYNC_ID, "schema_id": "sch_3"}]
    body = joined(msg)
    assert "`table_3`" in body and "`table_1`" not in body
    assert "+5 other schemas: 4 running, 1 completed" in body
    by_name = validate(cards.status_card(SYNC, running_status(schemas), schema_filter="TABLE_2", now=NOW))
    assert values(by_name, "polytomic.cancel_schema") == [{"sync_id": SYNC_ID, "schema_id": "sch_2"}]
    missing = validate(cards.status_card(SYNC, running_status(schemas), schema_filter=EVIL, now=NOW))
    assert "is not part of this execution" in joined(missing)
    assert values(missing, "polytomic.cancel_schema") == []


def test_status_card_escapes_everything() -> None:
    evil_schema = SchemaExecution.model_validate(
        {"schema": EVIL, "output_name": EVIL, "status": EVIL, "status_message": EVIL}
    )
    status = SyncStatus(
        current_execution=Execution(id=EVIL, status="running", status_message=EVIL, schemas=[evil_schema]),
    )
    msg = validate(cards.status_card(BulkSync(id=SYNC_ID, name=EVIL), status, now=NOW))
    assert "&amp;lt;b&amp;gt;" in msg["blocks"][0]["text"]["text"]
    assert "&amp;lt;b&amp;gt;" in msg["text"]
    evil_running = evil_schema.model_copy(update={"status": "running"})
    status.current_execution.schemas = [evil_running]
    msg = validate(cards.status_card(BulkSync(id=SYNC_ID, name=EVIL), status, now=NOW))
    assert values(msg, "polytomic.cancel_schema") == [{"sync_id": SYNC_ID, "schema_id": EVIL}]


# -- cancel preview -------------------------------------------------------------------------------


def test_cancel_preview_schema() -> None:
    status = running_status([schema(1, "running", record_count=5), schema(2, "completed")])
    msg = validate(cards.cancel_preview(SYNC, status, "sch_1"))
    assert values(msg, "polytomic.confirm_cancel") == [{"sync_id": SYNC_ID, "schema_id": "sch_1"}]
    body = joined(msg)
    assert "`table_1`" in body and "`Salesforce to Snowflake`" in body and "*running*" in body
    assert "`exec_1`" in body


def test_cancel_preview_whole_execution() -> None:
    status = running_status([schema(i, "running") for i in range(30)])
    msg = validate(cards.cancel_preview(SYNC, status, None))
    assert values(msg, "polytomic.confirm_cancel") == [{"sync_id": SYNC_ID}]
    assert "30 schemas in flight" in joined(msg) and "and 20 more" in joined(msg)


def test_cancel_preview_nothing_to_cancel_and_long_id() -> None:
    msg = validate(cards.cancel_preview(SYNC, done_status(), None))
    assert _buttons(msg) == [] and "Nothing to cancel" in msg["text"]
    msg = validate(cards.cancel_preview(SYNC, running_status([schema(1, "completed")]), "sch_1"))
    assert _buttons(msg) == []
    long_id = "s" * 3000
    msg = validate(cards.cancel_preview(SYNC, running_status([schema(1)]), long_id))
    assert _buttons(msg) == [] and "cannot be cancelled with a button" in msg["text"]
    validate(cards.cancel_preview(BulkSync(id=SYNC_ID, name=HUGE), SyncStatus(), HUGE))


# -- watch messages -------------------------------------------------------------------------------


def test_watch_headline_in_progress_and_finished() -> None:
    w = Watch(also_requested=["U222", "<!channel>", "U111"], last_state="canceling")
    msg = validate(cards.watch_headline(w, now=NOW))
    body = joined(msg)
    assert "<@U111>" in body and "<@U222>" in body and "&lt;!channel&gt;" in body
    assert "*canceling*" in body and "1m 12s" in body and "`accounts`" in body
    assert "13:00 UTC" in body
    assert _buttons(msg) == []
    done = Watch(outcome="canceled", finished_at=NOW, last_state="canceled")
    msg = validate(cards.watch_headline(done, now=NOW + timedelta(hours=5)))
    assert "canceled" in msg["text"] and "took 1m 12s" in joined(msg)
    many = Watch(also_requested=[f"U{i}" for i in range(100)], schema_id=None)
    msg = validate(cards.watch_headline(many, now=NOW))
    assert "and 90 more" in joined(msg) and "execution of" in msg["text"]


def test_state_reply() -> None:
    msg = validate(cards.state_reply(Watch(), "canceling", None))
    assert msg["text"] == "`accounts` is now *canceling*"
    msg = validate(cards.state_reply(Watch(schema_id=None), "running", EVIL))
    assert "The execution is now *running*" in msg["text"]
    assert "&amp;lt;b&amp;gt;" in joined(msg)


@pytest.mark.parametrize(
    ("outcome", "word"),
    [
        ("canceled", "canceled"),
        ("completed", "completed"),
        ("failed", "failed"),
        ("errors", "errors"),
        ("interrupted", "interrupted"),
        ("execution_ended", "ended"),
        ("timeout", "timed out"),
        ("not_found", "not found"),
        ("cancel_failed", "cancel failed"),
        ("something_new", "something_new"),
    ],
)
@pytest.mark.parametrize("schema_id", ["sch_1", None])
def test_final_reply_names_the_outcome(outcome: str, word: str, schema_id: str | None) -> None:
    w = Watch(schema_id=schema_id, last_state="canceling")
    msg = validate(cards.final_reply(w, outcome, took_s=72.4, detail="refused: <!here>"))
    assert word in msg["text"]
    body = joined(msg)
    assert ("1m 12s" in msg["text"]) == (outcome != "cancel_failed")
    assert "&lt;!here&gt;" in body
    if outcome == "timeout":
        assert "*canceling*" in msg["text"] and "may still land" in msg["text"]


def test_small_replies() -> None:
    w = Watch(sync_name=EVIL, schema_label=EVIL)
    msg = validate(cards.api_trouble_reply(w, "timeout after 10s <!channel>"))
    assert "not answering" in msg["text"] and "until 13:00 UTC" in msg["text"]
    assert "answering again" in validate(cards.api_recovered_reply(w))["text"]
    msg = validate(cards.also_asked_reply(w, "U2"))
    assert msg["text"] == "<@U2> also asked to cancel this; the cancel was sent once."
    validate(cards.also_asked_reply(w, "<!channel>"))
    link = "https://example.slack.com/archives/C1/p123?thread_ts=1&cid=C1"
    msg = validate(cards.pointer_to_thread(w, link))
    assert "Already being cancelled" in msg["text"]
    assert "<https://example.slack.com/archives/C1/p123?thread_ts=1&amp;cid=C1|" in msg["text"]
    for bad in (None, "", "javascript:alert(1)", "https://x|<!channel>", "https://x>y"):
        msg = validate(cards.pointer_to_thread(w, bad))
        assert "see the thread" in msg["text"]


# -- error answers --------------------------------------------------------------------------------


def test_error_answers() -> None:
    msg = validate(cards.nothing_running(EVIL, "completed"))
    assert "Nothing is running" in msg["text"] and "*completed*" in msg["text"]
    validate(cards.nothing_running("x", None))
    msg = validate(
        cards.access_denied(
            AccessDenied(reason="you are not allowed to cancel.", setting="BOT_ALLOWED_USERS")
        )
    )
    assert "`BOT_ALLOWED_USERS`" in msg["text"] and ".." not in msg["text"]
    validate(cards.access_denied(AccessDenied(reason=EVIL, setting=EVIL)))
    msg = validate(cards.unexpected_error("abc123"))
    assert msg["text"] == "Something went wrong (ref abc123). The operator can find it in the bot's log."
    validate(cards.unexpected_error(EVIL))
    msg = validate(cards.not_in_channel("C0123"))
    assert "<#C0123>" in msg["text"] and "/invite" in msg["text"]
    msg = validate(cards.not_in_channel("<!channel>", bot_user_id="U0BOT"))
    assert "/invite <@U0BOT>" in msg["text"]


def test_unknown_and_ambiguous_names() -> None:
    msg = validate(cards.unknown_name(UnknownName("sync", "salesfroce", ["Salesforce to Snowflake", EVIL])))
    assert "Did you mean" in msg["text"] and "`Salesforce to Snowflake`" in msg["text"]
    msg = validate(cards.unknown_name(UnknownName("schema", EVIL, [])))
    assert "No schema matches" in msg["text"]
    many = [f"{HUGE[:300]} {i}" for i in range(200)]
    msg = validate(cards.unknown_name(AmbiguousName("sync", "sales", many)))
    assert "matches several syncs" in msg["text"] and "and 180 more" in joined(msg)


@pytest.mark.parametrize(
    ("err", "words"),
    [
        (perr.Unauthorized("bad key"), ["key was refused", "POLYTOMIC_API_KEY", "POLYTOMIC_ORG_ID"]),
        (perr.Forbidden("nope"), ["may not do this", "read-only"]),
        (perr.NotFound("gone"), ["did not find"]),
        (perr.Conflict("already"), ["conflict"]),
        (perr.RateLimited("slow down", retry_after=30), ["rate-limiting", "30s"]),
        (perr.ServerError("oops", status=503), ["having trouble", "503"]),
        (perr.PolytomicTimeout("timed out"), ["did not answer in time"]),
        (perr.Unreachable("connection refused"), ["cannot reach"]),
        (perr.BadResponse("not json"), ["does not understand"]),
        (perr.BadRequest("invalid", status=422), ["invalid"]),
        (perr.PolytomicError(EVIL, status=418), ["418"]),
        (perr.PolytomicError(""), ["failed"]),
    ],
)
def test_polytomic_errors(err: perr.PolytomicError, words: list[str]) -> None:
    msg = validate(cards.polytomic_error(err))
    for word in words:
        assert word in msg["text"]
    if err.message and err.message != EVIL:
        assert err.message in joined(msg)


def test_polytomic_error_message_escaped_and_bounded() -> None:
    msg = validate(cards.polytomic_error(perr.ServerError(HUGE + EVIL, status=500)))
    assert len(json.dumps(msg)) < 10_000


# -- properties -----------------------------------------------------------------------------------

_ANY = st.text(max_size=300) | st.sampled_from([EVIL, HUGE, "", "`", "```", "&lt;", "<@U1>", "\n\n"])


@settings(max_examples=150, deadline=None)
@given(name=_ANY, label=_ANY, message=_ANY, state=_ANY, sid=_ANY)
def test_status_card_and_preview_always_valid(
    name: str, label: str, message: str, state: str, sid: str
) -> None:
    entries = [
        SchemaExecution.model_validate(
            {"schema": sid or "x", "output_name": label, "status": "running", "status_message": message}
        ),
        SchemaExecution.model_validate({"schema": "y", "output_name": label, "status": state}),
    ]
    status = SyncStatus(
        current_execution=Execution(id=sid, status="running", status_message=message, schemas=entries)
    )
    sync = BulkSync(id=SYNC_ID, name=name)
    validate(cards.status_card(sync, status, now=NOW))
    validate(cards.status_card(sync, status, schema_filter=label, now=NOW))
    validate(cards.cancel_preview(sync, status, sid or None))
    validate(cards.sync_list([(sync, SyncExecutionStatus(status=state, schemas=entries))], name))


@settings(max_examples=150, deadline=None)
@given(name=_ANY, label=_ANY, detail=_ANY, state=_ANY, user=_ANY)
def test_watch_messages_always_valid(name: str, label: str, detail: str, state: str, user: str) -> None:
    w = Watch(sync_name=name, schema_label=label, last_state=state, requested_by=user, also_requested=[user])
    validate(cards.watch_headline(w, now=NOW))
    validate(cards.state_reply(w, state, detail))
    for outcome in ("canceled", "timeout", "cancel_failed", state):
        validate(cards.final_reply(w, outcome, took_s=1.0, detail=detail))
    validate(cards.api_trouble_reply(w, detail))
    validate(cards.pointer_to_thread(w, detail))
    validate(cards.unknown_name(UnknownName(label, name, [detail, state])))
    validate(cards.usage_error(UsageError(detail)))
