"""Name resolution: pure functions, no network."""

from __future__ import annotations

import pytest

from bot.errors import AmbiguousName, UnknownName
from bot.polytomic.models import BulkSchema, BulkSync, SchemaExecution
from bot.polytomic.resolve import closest, looks_like_uuid, resolve_schema, resolve_sync

ID_A = "3f6c2a9e-8b1d-4c57-9e2a-0d4b7f1c6a53"
ID_B = "b21e7d40-5a3c-4f9b-8c11-7e6d2a90f4be"
ID_C = "c0ffee00-1111-4222-8333-444455556666"
ID_D = "d0d0d0d0-1111-4222-8333-444455556666"

SYNCS = [
    BulkSync(id=ID_A, name="Postgres to Snowflake (prod)"),
    BulkSync(id=ID_B, name="Salesforce to S3"),
    BulkSync(id=ID_C, name="Salesforce to Snowflake"),
    BulkSync(id=ID_D, name="salesforce"),
    BulkSync(id=None, name=None),  # the API may omit anything
]


def test_looks_like_uuid():
    assert looks_like_uuid(ID_A)
    assert looks_like_uuid(ID_A.upper())
    assert looks_like_uuid(f"  {ID_A} ")
    assert not looks_like_uuid("Salesforce to S3")
    assert not looks_like_uuid(ID_A.replace("-", ""))
    assert not looks_like_uuid(ID_A + "0")
    assert not looks_like_uuid("")


def test_sync_by_id_case_insensitive_beats_names():
    assert resolve_sync(ID_B.upper(), SYNCS).id == ID_B
    # a sync *named* like another sync's id still loses to the id
    syncs = [*SYNCS, BulkSync(id="e" * 8 + "-0000-4000-8000-000000000000", name=ID_A)]
    assert resolve_sync(ID_A, syncs).id == ID_A


def test_sync_exact_name_beats_prefix():
    # "salesforce" is an exact name and also a prefix of two others
    assert resolve_sync("SalesForce", SYNCS).id == ID_D
    assert resolve_sync("  salesforce to s3  ", SYNCS).id == ID_B


def test_sync_unique_prefix():
    assert resolve_sync("postgres", SYNCS).id == ID_A
    assert resolve_sync("Salesforce to Sn", SYNCS).id == ID_C


def test_sync_ambiguous_prefix_lists_names():
    with pytest.raises(AmbiguousName) as info:
        resolve_sync("Salesforce to", SYNCS)
    assert info.value.kind == "sync"
    assert info.value.query == "Salesforce to"
    assert sorted(info.value.candidates) == ["Salesforce to S3", "Salesforce to Snowflake"]


def test_sync_duplicate_exact_names_are_ambiguous():
    syncs = [
        BulkSync(id=ID_A, name="Nightly"),
        BulkSync(id=ID_B, name="nightly "),
        BulkSync(id=ID_C, name="Nightly 2"),
    ]
    with pytest.raises(AmbiguousName) as info:
        resolve_sync("nightly", syncs)
    assert len(info.value.candidates) == 2


def test_sync_unknown_suggests_closest_first():
    with pytest.raises(UnknownName) as info:
        resolve_sync("Salesforce to S4", SYNCS)
    assert info.value.kind == "sync"
    assert info.value.candidates[0] == "Salesforce to S3"
    assert len(info.value.candidates) <= 5


def test_sync_unknown_substring_is_a_candidate():
    with pytest.raises(UnknownName) as info:
        resolve_sync("snowflake", SYNCS)
    assert set(info.value.candidates) >= {"Salesforce to Snowflake", "Postgres to Snowflake (prod)"}


def test_sync_unknown_with_nothing_close_has_no_candidates():
    with pytest.raises(UnknownName) as info:
        resolve_sync("zzzzqqqq", SYNCS)
    assert info.value.candidates == []
    with pytest.raises(UnknownName):
        resolve_sync("anything", [])
    with pytest.raises(UnknownName):
        resolve_sync("   ", SYNCS)


def test_closest_caps_at_five_and_dedupes():
    names = [f"Orders {i}" for i in range(10)] + ["orders 1"]
    result = closest("orders", names)
    assert len(result) == 5
    assert len({n.casefold() for n in result}) == 5


SCHEMAS = [
    BulkSchema(id="public.orders", output_name="orders", user_output_name=""),
    BulkSchema(id="Sales Data/Q1 2026.csv", output_name="sales_data_q1_2026_csv"),
    BulkSchema(id="Account", output_name="account", user_output_name="accounts_custom"),
    BulkSchema(id="account", output_name="account_lower"),
    BulkSchema(id="Contact", output_name="shared"),
    BulkSchema(id="Lead", output_name="Shared"),
]


def test_schema_exact_id_first():
    assert resolve_schema("Account", SCHEMAS) == "Account"
    assert resolve_schema("account", SCHEMAS) == "account"
    assert resolve_schema("Sales Data/Q1 2026.csv", SCHEMAS) == "Sales Data/Q1 2026.csv"


def test_schema_id_casefold():
    assert resolve_schema("PUBLIC.ORDERS", SCHEMAS) == "public.orders"
    assert resolve_schema(" sales data/q1 2026.csv ", SCHEMAS) == "Sales Data/Q1 2026.csv"
    with pytest.raises(AmbiguousName) as info:
        resolve_schema("ACCOUNT", SCHEMAS)
    assert info.value.kind == "schema"
    assert sorted(info.value.candidates) == ["Account", "account"]


def test_schema_output_names():
    assert resolve_schema("Orders", SCHEMAS) == "public.orders"
    assert resolve_schema("accounts_custom", SCHEMAS) == "Account"
    assert resolve_schema("ACCOUNT_LOWER", SCHEMAS) == "account"
    with pytest.raises(AmbiguousName) as info:
        resolve_schema("shared", SCHEMAS)
    assert sorted(info.value.candidates) == ["Contact", "Lead"]


def test_schema_only_in_running_execution():
    running = [
        SchemaExecution(schema="public.orders", output_name="orders", status="running"),
        SchemaExecution(schema="Opportunity", output_name="opps", status="running"),
    ]
    assert resolve_schema("Opportunity", SCHEMAS, running) == "Opportunity"
    assert resolve_schema("OPPS", SCHEMAS, running) == "Opportunity"
    assert resolve_schema("opportunity", [], running) == "Opportunity"


def test_schema_unknown_lists_closest_ids_and_names():
    with pytest.raises(UnknownName) as info:
        resolve_schema("public.order", SCHEMAS)
    assert info.value.kind == "schema"
    assert info.value.candidates[0] == "public.orders"
    with pytest.raises(UnknownName) as info:
        resolve_schema("sales_data", SCHEMAS)
    assert "sales_data_q1_2026_csv" in info.value.candidates
    with pytest.raises(UnknownName) as info:
        resolve_schema("qqqqzzzz", SCHEMAS)
    assert info.value.candidates == []
    with pytest.raises(UnknownName):
        resolve_schema("", SCHEMAS)
