"""PolytomicClient against the fake Polytomic over real sockets."""

from __future__ import annotations

import asyncio
import base64
import logging
import socket
import time
import traceback
import uuid
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest
from pydantic import SecretStr

from bot.fakes.polytomic import FakePolytomic
from bot.polytomic.client import PolytomicClient, new_idempotency_key, parse_retry_after, path_segment
from bot.polytomic.errors import (
    BadRequest,
    BadResponse,
    Conflict,
    Forbidden,
    NotFound,
    PolytomicError,
    PolytomicTimeout,
    RateLimited,
    ServerError,
    Unauthorized,
    Unreachable,
)

KEY = "sk-live-SUPERSECRET-0123456789abcdef"
ORG = "9a0e4c12-6f3b-4d8e-a7b5-2c1f0e9d8b76"
ODD_IDS = ["Sales Data/Q1 2026.csv", "a?b#c%d", "..", "../status", ".", "%2E%2E", "public.orders"]
FAST = dict(
    timeout=2.0, connect_timeout=1.0, max_attempts=4, retry_budget_s=5.0,
    backoff_base_s=0.01, backoff_cap_s=0.05,
)


@pytest.fixture(scope="module")
def shared_fake():
    with FakePolytomic(api_key=KEY, read_only_keys=("sk-readonly-key-0001",), cancel_delay_s=0.3,
                       sync_cancel_delay_s=0.3) as server:
        yield server


@pytest.fixture
def fake(shared_fake):
    """One server for the module (starting one costs more than most tests); each test starts with
    no faults and an empty request log, and creates its own syncs."""
    shared_fake.clear_faults()
    shared_fake.reset_log()
    yield shared_fake
    shared_fake.clear_faults()


@pytest.fixture
async def make_client(fake):
    clients: list[PolytomicClient] = []

    def make(**kw) -> PolytomicClient:
        args = {**FAST, **kw}
        base = args.pop("base_url", fake.url)
        key = args.pop("api_key", KEY)
        client = PolytomicClient(base, key, **args)
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.aclose()


@pytest.fixture
async def client(make_client):
    return make_client()


def _closed_port_url() -> str:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return f"http://127.0.0.1:{port}"


# --- pure helpers ------------------------------------------------------------------------------


def test_path_segment_is_one_segment():
    assert path_segment("Sales Data/Q1 2026.csv") == "Sales%20Data%2FQ1%202026.csv"
    assert path_segment("a?b#c%d") == "a%3Fb%23c%25d"
    assert path_segment("..") == "%2E%2E"
    assert path_segment(".") == "%2E"
    assert path_segment("../status") == "..%2Fstatus"
    assert path_segment("public.orders") == "public.orders"


def test_parse_retry_after():
    now = datetime(2026, 5, 4, 14, 0, 0, tzinfo=UTC)
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after("0.5") == 0.5
    assert parse_retry_after("-4") == 0.0
    assert parse_retry_after(format_datetime(now + timedelta(seconds=30), usegmt=True), now=now) == 30.0
    assert parse_retry_after(format_datetime(now - timedelta(seconds=30), usegmt=True), now=now) == 0.0
    assert parse_retry_after("soon") is None
    assert parse_retry_after("") is None
    assert parse_retry_after(None) is None


def test_new_idempotency_key_format():
    keys = {new_idempotency_key() for _ in range(100)}
    assert len(keys) == 100
    for key in keys:
        assert 8 <= len(key) <= 255
        assert all(c.isascii() and (c.isalnum() or c in "-_") for c in key)


def test_constructor_refuses_bad_keys_without_echoing_them():
    with pytest.raises(ValueError) as info:
        PolytomicClient("http://127.0.0.1:1", "bad\nkey-SECRETISH")
    assert "SECRETISH" not in str(info.value)
    with pytest.raises(ValueError):
        PolytomicClient("http://127.0.0.1:1", "   ")


# --- auth and headers --------------------------------------------------------------------------


async def test_bearer_auth_and_headers_on_every_request(fake, client):
    sync_id = fake.add_sync("Orders", ["public.orders"])
    fake.start_run(sync_id)
    identity = await client.me()
    assert identity.email == "ops-bot@example.com"
    await client.list_syncs()
    await client.get_sync_status(sync_id)
    await client.cancel_sync(sync_id, idempotency_key=new_idempotency_key())
    assert len(fake.requests) == 4
    for req in fake.requests:
        assert req.headers["authorization"] == f"Bearer {KEY}"
        assert req.headers["x-polytomic-version"] == "2025-09-18"
        assert req.headers["accept"] == "application/json"
    assert all("idempotency-key" not in r.headers for r in fake.requests if r.method == "GET")


async def test_basic_org_scoped_auth():
    with FakePolytomic(api_key=KEY, org_id=ORG) as fake:
        client = PolytomicClient(fake.url, SecretStr(KEY), org_id=ORG, api_version="2024-02-08", **FAST)
        async with client:
            identity = await client.me()
            await client.list_syncs()
        assert identity.is_organization is True
        expected = "Basic " + base64.b64encode(f"{ORG}:{KEY}".encode()).decode()
        assert [r.headers["authorization"] for r in fake.requests] == [expected, expected]
        assert {r.headers["x-polytomic-version"] for r in fake.requests} == {"2024-02-08"}
        assert "SUPERSECRET" not in repr(client)


async def test_from_settings(fake):
    from bot.settings import load_settings

    settings = load_settings(
        slack_bot_token="xoxb-test", slack_signing_secret="sig", bot_mode="http",
        polytomic_api_key=KEY, polytomic_base_url=fake.url + "/", polytomic_api_version="2025-09-18",
    )
    async with PolytomicClient.from_settings(settings) as client:
        assert (await client.me()).role == "admin"
    assert fake.requests[-1].headers["authorization"] == f"Bearer {KEY}"


# --- paths ---------------------------------------------------------------------------------------


async def test_odd_schema_ids_reach_the_right_url(fake, client):
    sync_id = fake.add_sync("Files", ODD_IDS)
    fake.start_run(sync_id, durations=30.0)
    for schema_id in ODD_IDS:
        schema = await client.get_schema(sync_id, schema_id)
        assert schema.id == schema_id
        got = fake.requests[-1]
        assert got.raw_path == f"/api/bulk/syncs/{sync_id}/schemas/{path_segment(schema_id)}"
        assert got.status == 200
    assert fake.requests_to("GET", "*")[0].raw_path.endswith("/schemas/Sales%20Data%2FQ1%202026.csv")

    for schema_id in ODD_IDS:
        key = new_idempotency_key()
        assert await client.cancel_schema(sync_id, schema_id, idempotency_key=key) == "Cancellation requested"
        assert fake.requests[-1].raw_path.endswith(f"/schemas/{path_segment(schema_id)}/cancel")
        assert fake.cancel_requests()[-1] == (sync_id, schema_id, key)
    await asyncio.sleep(0.5)
    assert {fake.schema_status(sync_id, s) for s in ODD_IDS} == {"canceled"}


async def test_non_uuid_ids_raise_not_found_without_a_request(fake, client):
    sync_id = fake.add_sync("S", ["a"])
    with pytest.raises(NotFound):
        await client.get_sync("../api/me")
    with pytest.raises(NotFound):
        await client.get_sync_status("not-a-uuid")
    with pytest.raises(NotFound):
        await client.get_execution(sync_id, "x/../../status")
    with pytest.raises(NotFound):
        await client.cancel_sync(f" {sync_id}", idempotency_key=new_idempotency_key())
    with pytest.raises(NotFound):
        await client.cancel_schema(sync_id, "", idempotency_key=new_idempotency_key())
    with pytest.raises(NotFound):
        await client.list_sync_statuses([sync_id, "nope"])
    with pytest.raises(ValueError):
        await client.cancel_sync(sync_id, idempotency_key="short")
    with pytest.raises(ValueError):
        await client.cancel_sync(sync_id, idempotency_key="has space in it")
    assert fake.requests == []


# --- reading -------------------------------------------------------------------------------------


async def test_list_syncs_follows_pagination():
    with FakePolytomic(api_key=KEY, page_size=2) as fake:
        ids = [fake.add_sync(f"Sync {i}", ["a"], active=i != 3) for i in range(5)]
        async with PolytomicClient(fake.url, KEY, **FAST) as client:
            syncs = await client.list_syncs()
            assert [s.id for s in syncs] == ids
            assert len(fake.requests_to("GET", "/api/bulk/syncs")) == 3
            assert [q for q in fake.requests[0].query] == []
            assert ("page_token", fake.requests[1].query[0][1]) == fake.requests[1].query[0]
            active = await client.list_syncs(active=True)
            assert [s.id for s in active] == [i for n, i in enumerate(ids) if n != 3]
            assert ("active", "true") in fake.requests[-1].query


async def test_list_syncs_stops_on_a_repeating_token(fake, client):
    body = {"data": [{"id": str(uuid.uuid4()), "name": "loop"}], "pagination": {"next_page_token": "same"}}
    fake.add_fault("GET", "/api/bulk/syncs", status=200, body=body)
    syncs = await client.list_syncs()
    assert [s.name for s in syncs] == ["loop"]
    assert len(fake.requests) == 2


async def test_status_schemas_executions(fake, client):
    sync_id = fake.add_sync("Orders", ["public.orders", {"id": "Account", "enabled": False}])
    exec_id = fake.start_run(sync_id, durations=30.0)
    status = await client.get_sync_status(sync_id)
    assert status.current_execution.id == exec_id
    assert status.current_execution.status == "running"
    assert status.current_execution.schema_entry("public.orders").status == "running"

    assert [s.id for s in await client.list_schemas(sync_id)] == ["public.orders", "Account"]
    assert [s.id for s in await client.list_schemas(sync_id, enabled=True)] == ["public.orders"]
    assert ("filters[enabled]", "true") in fake.requests[-1].query

    executions = await client.list_executions(sync_id, limit=5)
    assert [e.id for e in executions] == [exec_id]
    assert ("limit", "5") in fake.requests[-1].query
    assert (await client.get_execution(sync_id, exec_id)).schemas[0].schema_id == "public.orders"
    assert (await client.get_sync(sync_id)).name == "Orders"

    msg = await client.cancel_execution(sync_id, exec_id, idempotency_key=new_idempotency_key())
    assert msg == "Cancellation requested"
    assert (await client.get_execution(sync_id, exec_id)).status == "canceling"


async def test_list_executions_follows_pages_up_to_limit(fake, client):
    sync_id = fake.add_sync("S", ["a"])
    ids = []
    for _ in range(5):
        ids.append(fake.start_run(sync_id, durations=0.0))
    executions = await client.list_executions(sync_id, limit=3)
    assert [e.id for e in executions] == ids[::-1][:3]
    fake.reset_log()
    page = {"data": [{"id": ids[4]}, {"id": ids[3]}],
            "pagination": {"next_page_token": fake_token(fake, sync_id)}}
    fake.add_fault("GET", "*/executions", status=200, times=1, body=page)
    executions = await client.list_executions(sync_id, limit=4)
    assert len(executions) == 4
    assert len(fake.requests) == 2
    assert ("limit", "2") in fake.requests[1].query


def fake_token(fake, sync_id):
    from bot.fakes.polytomic import _encode_token

    return _encode_token("executions", f"{sync_id}:False:False", 2)


async def test_list_sync_statuses_chunks_many_ids(fake, client):
    ids = [fake.add_sync(f"S{i}", ["a"]) for i in range(230)]
    fake.start_run(ids[7])
    statuses = await client.list_sync_statuses(ids + ids[:3])  # duplicates are sent once
    assert [s.sync_id for s in statuses] == ids
    assert statuses[7].status == "running" and statuses[7].schemas[0].schema_id == "a"
    reqs = fake.requests_to("GET", "/api/bulk/syncs/status")
    assert len(reqs) == 3
    assert max(len(r.query) for r in reqs) <= 100
    fake.reset_log()
    assert set(ids) <= {s.sync_id for s in await client.list_sync_statuses(all=True)}
    assert fake.requests[-1].query == [("all", "true")]


async def test_list_sync_statuses_leaves_out_unknown_ids(fake, client):
    known = [fake.add_sync(f"K{i}", ["a"]) for i in range(3)]
    gone = str(uuid.uuid4())
    statuses = await client.list_sync_statuses([known[0], gone, known[1], known[2]])
    assert sorted(s.sync_id for s in statuses) == sorted(known)
    assert fake.requests[0].status == 404  # then bisected
    with pytest.raises(NotFound):
        await client.list_sync_statuses([gone])
    with pytest.raises(NotFound):
        await client.list_sync_statuses([gone, str(uuid.uuid4())])


async def test_tolerates_unknown_fields_and_statuses(fake, client):
    sync_id = fake.add_sync("S", ["a"])
    body = {"data": {"current_execution": {
        "id": "x", "status": "teleporting", "novel": {"x": 1}, "started_at": "",
        "schemas": [{"schema": "a", "status": "quantum", "completed_at": "garbage"}]}}}
    fake.add_fault("GET", "*/status", status=200, body=body, times=1)
    status = await client.get_sync_status(sync_id)
    assert status.current_execution.status == "teleporting"
    assert status.current_execution.started_at is None
    assert status.current_execution.schemas[0].status == "quantum"
    fake.add_fault("GET", "/api/bulk/syncs", status=200, body={"data": None}, times=1)
    assert await client.list_syncs() == []


# --- errors --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "body", "exc_type", "text"),
    [
        (400, {"status": 400, "message": "bad filter"}, BadRequest, "bad filter"),
        (422, {"message": "unprocessable"}, BadRequest, "unprocessable"),
        (401, {"code": 401, "error": "unauthorized", "status": "Unauthorized"}, Unauthorized, "unauthorized"),
        (403, {"message": "nope"}, Forbidden, "nope"),
        (404, {"message": "bulk sync not found", "key": "not_found"}, NotFound, "bulk sync not found"),
        (409, {"message": "busy"}, Conflict, "busy"),
        (503, b"<html>Service Unavailable</html>", ServerError, "HTTP 503"),
        (500, {"message": ""}, ServerError, "HTTP 500"),
    ],
)
async def test_error_mapping(fake, make_client, status, body, exc_type, text):
    client = make_client(max_attempts=2)
    sync_id = fake.add_sync("S", ["a"])
    fake.add_fault("GET", "*", status=status, body=body)
    with pytest.raises(exc_type) as info:
        await client.get_sync_status(sync_id)
    err = info.value
    assert err.status == status
    assert text in str(err)
    assert "GET /api/bulk/syncs/{id}/status" in str(err)
    assert err.api_message == text
    expected_requests = 2 if status >= 500 else 1  # only 5xx (and 429) are retried
    assert len(fake.requests) == expected_requests
    if status == 404:
        assert err.key == "not_found"


async def test_real_404_401_403_from_the_fake(fake, make_client, client):
    with pytest.raises(NotFound, match="bulk sync not found"):
        await client.get_sync(str(uuid.uuid4()))
    with pytest.raises(Unauthorized):
        await make_client(api_key="sk-wrong-key-000000").me()
    sync_id = fake.add_sync("S", ["a"])
    readonly = make_client(api_key="sk-readonly-key-0001")
    await readonly.get_sync(sync_id)
    with pytest.raises(Forbidden, match="read-only"):
        await readonly.cancel_sync(sync_id, idempotency_key=new_idempotency_key())
    assert len(fake.requests_to("POST", "*")) == 1


async def test_rate_limited_retries_honouring_retry_after(fake, client):
    fake.add_fault("GET", "/api/me", status=429, retry_after=0.3, times=1)
    started = time.monotonic()
    assert (await client.me()).email
    assert time.monotonic() - started >= 0.25
    assert [r.status for r in fake.requests] == [429, 200]


async def test_retry_after_beyond_budget_gives_up_at_once(fake, make_client):
    client = make_client(retry_budget_s=1.0, max_attempts=10)
    fake.add_fault("GET", "/api/me", status=429, retry_after=30)
    started = time.monotonic()
    with pytest.raises(RateLimited) as info:
        await client.me()
    assert time.monotonic() - started < 1.0
    assert info.value.retry_after == 30
    assert len(fake.requests) == 1


async def test_rate_limited_after_max_attempts(fake, make_client):
    client = make_client(max_attempts=3)
    fake.add_fault("GET", "/api/me", status=429, retry_after=0.01)
    with pytest.raises(RateLimited):
        await client.me()
    assert len(fake.requests) == 3


async def test_retry_budget_bounds_5xx_retries(fake, make_client):
    client = make_client(max_attempts=1000, retry_budget_s=0.6, backoff_base_s=0.05, backoff_cap_s=0.1)
    fake.add_fault("GET", "*", status=502)
    started = time.monotonic()
    with pytest.raises(ServerError):
        await client.list_syncs()
    assert time.monotonic() - started < 2.0
    assert 2 <= len(fake.requests) < 1000


async def test_hang_times_out_then_retry_succeeds(fake, make_client):
    client = make_client(timeout=0.3, max_attempts=1)
    fake.add_fault("GET", "/api/me", hang=True, times=1)
    with pytest.raises(PolytomicTimeout, match=r"GET /api/me"):
        await client.me()
    fake.add_fault("GET", "/api/me", hang=True, times=1)
    retrying = make_client(timeout=0.3, max_attempts=2)
    assert (await retrying.me()).email
    assert [r.status for r in fake.requests] == [None, None, 200]


async def test_reset_is_unreachable_then_retried(fake, make_client):
    client = make_client(max_attempts=1)
    fake.add_fault("GET", "/api/me", reset=True, times=1)
    with pytest.raises(Unreachable):
        await client.me()
    fake.add_fault("GET", "/api/me", reset=True, times=2)
    assert (await make_client().me()).email
    assert len(fake.requests) == 4


async def test_connection_refused_is_unreachable(make_client):
    client = make_client(base_url=_closed_port_url(), max_attempts=2)
    with pytest.raises(Unreachable, match=r"GET /api/bulk/syncs"):
        await client.list_syncs()


async def test_malformed_and_shapeless_bodies_are_bad_responses(fake, client):
    sync_id = fake.add_sync("S", ["a"])
    fake.add_fault("GET", "*", malformed=True, times=1)
    with pytest.raises(BadResponse):
        await client.get_sync(sync_id)
    assert len(fake.requests) == 1  # not retried
    fake.add_fault("GET", "*", status=200, body={"items": []}, times=1)
    with pytest.raises(BadResponse):
        await client.list_syncs()
    fake.add_fault("GET", "*", status=200, body={"data": []}, times=1)
    with pytest.raises(BadResponse):
        await client.get_sync(sync_id)
    fake.add_fault("GET", "*", status=200, body={"data": [1, 2]}, times=1)
    with pytest.raises(BadResponse):
        await client.list_syncs()
    fake.add_fault("POST", "*", status=200, body=b"OK", times=1)
    with pytest.raises(BadResponse):
        await client.cancel_sync(sync_id, idempotency_key=new_idempotency_key())


# --- idempotent cancels -------------------------------------------------------------------------


async def test_cancel_retried_with_the_same_key(fake, client):
    sync_id = fake.add_sync("Files", ["Sales Data/Q1 2026.csv", "b"])
    fake.start_run(sync_id, durations=30.0)
    fake.add_fault("POST", "*/cancel", status=503, times=1)
    key = new_idempotency_key()
    assert await client.cancel_schema(sync_id, "Sales Data/Q1 2026.csv", idempotency_key=key)
    posts = fake.requests_to("POST", "*")
    assert [r.status for r in posts] == [503, 200]
    assert {r.headers["idempotency-key"] for r in posts} == {key}
    assert fake.cancel_requests() == [(sync_id, "Sales Data/Q1 2026.csv", key)]
    await asyncio.sleep(0.5)
    assert fake.schema_status(sync_id, "Sales Data/Q1 2026.csv") == "canceled"
    assert fake.schema_status(sync_id, "b") == "running"


async def test_cancel_not_retried_on_4xx(fake, client):
    sync_id = fake.add_sync("S", ["a"])
    with pytest.raises(NotFound, match="schema not found"):
        await client.cancel_schema(sync_id, "nope", idempotency_key=new_idempotency_key())
    fake.add_fault("POST", "*", status=400, body={"message": "bad key"})
    with pytest.raises(BadRequest):
        await client.cancel_sync(sync_id, idempotency_key=new_idempotency_key())
    assert len(fake.requests_to("POST", "*")) == 2


async def test_cancel_waits_for_the_idempotency_lock(fake, make_client):
    client = make_client(max_attempts=30, retry_budget_s=5.0, backoff_base_s=0.05, backoff_cap_s=0.1)
    sync_id = fake.add_sync("S", ["a", "b"])
    fake.start_run(sync_id, durations=30.0)
    fake.add_fault("POST", "*/cancel", delay=0.6, times=1)  # the first request holds the key's lock
    key = new_idempotency_key()

    async def second():
        await asyncio.sleep(0.15)
        return await client.cancel_schema(sync_id, "a", idempotency_key=key)

    first, again = await asyncio.gather(client.cancel_schema(sync_id, "a", idempotency_key=key), second())
    assert first == again == "Cancellation requested"
    posts = fake.requests_to("POST", "*")
    statuses = [r.status for r in posts]
    assert 409 in statuses and statuses.count(200) == 2
    assert {r.headers["idempotency-key"] for r in posts} == {key}
    assert {c[2] for c in fake.cancel_requests()} == {key}
    await asyncio.sleep(0.5)
    assert fake.schema_status(sync_id, "a") == "canceled"


async def test_409_on_get_is_not_retried_and_post_gives_up_after_attempts(fake, make_client):
    client = make_client(max_attempts=3)
    sync_id = fake.add_sync("S", ["a"])
    fake.add_fault("POST", "*", status=409)
    with pytest.raises(Conflict):
        await client.cancel_sync(sync_id, idempotency_key=new_idempotency_key())
    assert len(fake.requests_to("POST", "*")) == 3


# --- secrets -------------------------------------------------------------------------------------


def _texts(exc: BaseException) -> list[str]:
    out = []
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        out += [str(exc), repr(exc), "".join(traceback.format_exception(exc))]
        exc = exc.__cause__ or exc.__context__
    return out


async def test_no_secret_in_exceptions_or_debug_logs(caplog):
    caplog.set_level(logging.DEBUG)
    basic = base64.b64encode(f"{ORG}:{KEY}".encode()).decode()
    errors: list[BaseException] = []
    with FakePolytomic(api_key=KEY, org_id=ORG) as fake:
        sync_id = fake.add_sync("S", ["a"])
        fake.start_run(sync_id)
        fast = {**FAST, "max_attempts": 2, "timeout": 0.3}
        async with PolytomicClient(fake.url, KEY, org_id=ORG, **fast) as client, \
                PolytomicClient(fake.url, KEY, **fast) as bearer, \
                PolytomicClient(_closed_port_url(), KEY, org_id=ORG, **fast) as nowhere:
            assert (await client.me()).is_organization
            scenarios = [
                (dict(status=500, body={"message": f"echo Authorization: Basic {basic} / {KEY}"}), client.me),
                (dict(status=401, body={"error": f"bad key {KEY}"}), bearer.me),
                (dict(status=429, retry_after=0.01), client.me),
                (dict(hang=True), client.me),
                (dict(reset=True), client.me),
                (dict(malformed=True), client.me),
                (dict(status=200, body=f"not json {KEY}"), client.me),
                (dict(status=200, body="x" * 70 + KEY), client.me),  # key across the snippet's end
            ]
            for fault, call in scenarios:
                fake.clear_faults()
                fake.add_fault("*", "*", **fault)
                with pytest.raises(PolytomicError) as info:
                    await call()
                errors.append(info.value)
            fake.clear_faults()
            fake.add_fault("POST", "*", status=503)
            with pytest.raises(ServerError) as info:
                await client.cancel_sync(sync_id, idempotency_key=new_idempotency_key())
            errors.append(info.value)
            with pytest.raises(Unreachable) as info:
                await nowhere.me()
            errors.append(info.value)
            for c in (client, bearer, nowhere):
                assert KEY not in repr(c) and basic not in repr(c)
    assert len(errors) == 10
    for err in errors:
        assert err.__cause__ is None
        for text in _texts(err):
            assert KEY[:10] not in text and basic[:10] not in text
    assert "[redacted]" in str(errors[0])
    records = [r for r in caplog.records if r.name.startswith("bot.polytomic")]
    assert any("attempt=" in r.getMessage() for r in records)
    for record in caplog.records:
        message = record.getMessage()
        assert KEY not in message and basic not in message
        if record.exc_info:
            formatted = "".join(traceback.format_exception(*record.exc_info))
            assert KEY not in formatted and basic not in formatted
