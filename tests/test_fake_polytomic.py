"""The fake Polytomic API, over real sockets.

The contract test validates every kind of response against the official `polytomic` SDK's pydantic
types, strictly: no key the SDK does not declare (so `schema_id` instead of `schema` fails), every
Literal-typed value inside the SDK's Literal set (the SDK's own types accept any string), datetimes
in RFC 3339 UTC form.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import threading
import time
import types
import typing
from urllib.parse import quote

import httpx
import polytomic.types as pt
import pydantic
import pytest

from bot.fakes.polytomic import FakePolytomic

KEY = "test-polytomic-key"
AUTH = {"Authorization": f"Bearer {KEY}", "X-Polytomic-Version": "2025-09-18"}
ORG = "9a0e4c12-6f3b-4d8e-a7b5-2c1f0e9d8b76"
WEIRD = "Sales Data/Q1 2026.csv"


def enc(segment: str) -> str:
    return quote(segment, safe="")


# --------------------------------------------------------------------------------------------
# strict validation against the SDK types


def _check(tp: typing.Any, value: typing.Any, where: str) -> None:
    if tp is typing.Any:
        return
    origin = typing.get_origin(tp)
    if origin is typing.Annotated:
        return _check(typing.get_args(tp)[0], value, where)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None:
            assert type(None) in args, f"{where}: null not allowed"
            return
        literals = [a for a in args if typing.get_origin(a) is typing.Literal]
        if literals:  # the SDK's open enums: Literal[...] | Any -- hold values to the Literal set
            allowed = {v for lit in literals for v in typing.get_args(lit)}
            assert value in allowed, f"{where}: {value!r} not in {sorted(allowed)}"
            return
        rest = [a for a in args if a is not type(None)]
        assert len(rest) == 1, f"{where}: unexpected union {tp}"
        return _check(rest[0], value, where)
    if origin is typing.Literal:
        assert value in typing.get_args(tp), f"{where}: {value!r} not in {typing.get_args(tp)}"
        return
    if origin is list:
        assert isinstance(value, list), f"{where}: expected a list"
        (item,) = typing.get_args(tp)
        for i, v in enumerate(value):
            _check(item, v, f"{where}[{i}]")
        return
    if origin is dict:
        assert isinstance(value, dict), f"{where}: expected an object"
        return
    if isinstance(tp, type) and issubclass(tp, pydantic.BaseModel):
        assert isinstance(value, dict), f"{where}: expected an object, got {value!r}"
        fields = {(f.alias or name): f for name, f in tp.model_fields.items()}
        unknown = set(value) - set(fields)
        assert not unknown, f"{where}: keys {sorted(unknown)} not declared by {tp.__name__}"
        for key, f in fields.items():
            if f.is_required():
                assert key in value, f"{where}: required {key} missing"
        for key, v in value.items():
            _check(fields[key].annotation, v, f"{where}.{key}")
        return
    if tp is dt.datetime:
        assert isinstance(value, str) and value.endswith("Z"), f"{where}: {value!r} is not RFC 3339 UTC"
        dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
        return
    if tp is bool:
        assert isinstance(value, bool), f"{where}: expected bool"
        return
    if tp is int:
        assert isinstance(value, int) and not isinstance(value, bool), f"{where}: expected int"
        return
    if tp is str:
        assert isinstance(value, str), f"{where}: expected str"
        return
    raise AssertionError(f"{where}: no check for {tp}")


def strict(model: type[pydantic.BaseModel], data: typing.Any, *, extra: dict | None = None):
    """Validate with the SDK (types, datetimes), then strictly (keys, Literal sets).

    `extra` maps top-level keys the SDK type does not declare (but the reference documents) to
    the SDK type that checks them.
    """
    data = dict(data)
    for key, sub in (extra or {}).items():
        if key in data:
            _check(sub, data.pop(key), key)
    parsed = model.model_validate(data)
    _check(model, data, model.__name__)
    return parsed


def api_error(r: httpx.Response, status: int, key: str | None = None) -> dict:
    assert r.status_code == status, r.text
    assert r.headers["x-polytomic-version"] == "2025-09-18"
    body = r.json()
    strict(pt.ApiError, body)
    assert body["status"] == status and body["message"] and body["key"] and body["metadata"] == {}
    if key:
        assert body["key"] == key
    return body


# --------------------------------------------------------------------------------------------
# fixtures


@pytest.fixture
def fake():
    with FakePolytomic(manual_clock=True, page_size=3, read_only_keys=["ro-key-1"]) as f:
        yield f


def http_client(fake: FakePolytomic, **kw) -> httpx.Client:
    # verify=False: plain http anyway, and it skips loading a CA bundle (~30 ms per client)
    return httpx.Client(base_url=fake.url, timeout=5, verify=False, **kw)


@pytest.fixture
def client(fake):
    with http_client(fake, headers=AUTH) as c:
        yield c


def ok(r: httpx.Response) -> dict:
    assert r.status_code == 200, r.text
    assert r.headers["x-polytomic-version"] == "2025-09-18"
    return r.json()


def status_of(client: httpx.Client, sync_id: str) -> dict:
    return ok(client.get(f"/api/bulk/syncs/{sync_id}/status"))["data"]


def entry(execution: dict, schema_id: str) -> dict | None:
    return next((s for s in execution["schemas"] if s["schema"] == schema_id), None)


# --------------------------------------------------------------------------------------------
# contract


def test_contract_every_response_kind_matches_the_sdk_types(fake, client):
    exec_statuses: set[str] = set()
    schema_statuses: set[str] = set()

    def execution(model, body, **kw):
        strict(model, body, **kw)
        items = body["data"] if isinstance(body["data"], list) else [body["data"]]
        for item in items:
            execs = [item] if "schemas" in item and "id" in item else [
                item.get("current_execution"), item.get("last_execution")]
            for ex in execs:
                if ex:
                    exec_statuses.add(ex["status"])
                    for s in ex["schemas"]:
                        assert s["schema"], "schema entries carry the schema id under `schema`"
                        schema_statuses.add(s["status"])

    sid = fake.add_sync("Postgres to Snowflake", ["public.orders", WEIRD, "Account",
                                                  {"id": "Off", "output_name": "off", "enabled": False}])
    others = [fake.add_sync(f"Other {i}", ["x"], active=i != 2) for i in range(4)]

    strict(pt.GetIdentityResponseEnvelope, ok(client.get("/api/me")))

    # list syncs, paginated (page_size=3, five syncs)
    first = ok(client.get("/api/bulk/syncs"))
    strict(pt.BulkSyncListEnvelope, first, extra={"pagination": pt.PaginationDetails})
    token = first["pagination"]["next_page_token"]
    second = ok(client.get("/api/bulk/syncs", params={"page_token": token}))
    strict(pt.BulkSyncListEnvelope, second)
    assert "pagination" not in second
    assert [s["id"] for s in first["data"] + second["data"]] == [sid, *others]
    paused = ok(client.get("/api/bulk/syncs", params={"active": "false"}))
    assert [s["id"] for s in paused["data"]] == [others[2]]

    strict(pt.BulkSyncResponseEnvelope, ok(client.get(f"/api/bulk/syncs/{sid}")))

    idle = ok(client.get(f"/api/bulk/syncs/{sid}/status"))
    strict(pt.BulkSyncStatusEnvelope, idle)
    assert idle["data"]["current_execution"] is None and idle["data"]["last_execution"] is None

    schemas = ok(client.get(f"/api/bulk/syncs/{sid}/schemas", params={"filters[enabled]": "true"}))
    strict(pt.ListBulkSchemaEnvelope, schemas)
    assert [s["id"] for s in schemas["data"]] == ["public.orders", WEIRD, "Account"]
    disabled = ok(client.get(f"/api/bulk/syncs/{sid}/schemas", params={"filters[enabled]": "false"}))
    assert [s["id"] for s in disabled["data"]] == ["Off"]
    one = ok(client.get(f"/api/bulk/syncs/{sid}/schemas/{enc(WEIRD)}"))
    strict(pt.BulkSchemaEnvelope, one)
    assert one["data"]["id"] == WEIRD

    # a run that fails one schema -> failed
    fake.start_run(sid, durations=5, fail=["Account"])
    fake.advance(6)
    execution(pt.BulkSyncStatusEnvelope, ok(client.get(f"/api/bulk/syncs/{sid}/status")))

    # a run started over HTTP, still "created" when scheduled later: use start_run for that
    fake.start_run(sid, start_after=10, durations={"Account": 11, "public.orders": 100, WEIRD: 100})
    execution(pt.BulkSyncStatusEnvelope, ok(client.get(f"/api/bulk/syncs/{sid}/status")))  # created
    fake.advance(20)  # Account completed, the others running
    running = ok(client.get(f"/api/bulk/syncs/{sid}/status"))
    execution(pt.BulkSyncStatusEnvelope, running)
    assert running["data"]["current_execution"]["status"] == "running"
    execution(pt.ListBulkSyncExecutionsStatusEnvelope,
              ok(client.get("/api/bulk/syncs/status", params={"sync_id": [sid, others[0]]})))
    listed = ok(client.get("/api/bulk/syncs/status", params={"sync_id": sid}))
    assert "nextExecutionTime" in listed["data"][0] and "next_execution_time" not in listed["data"][0]
    assert {s["execution_id"] for s in listed["data"][0]["schemas"]} == {
        running["data"]["current_execution"]["id"]}

    cancel = ok(client.post(f"/api/bulk/syncs/{sid}/schemas/{enc(WEIRD)}/cancel",
                            headers={"Idempotency-Key": "contract-schema-cancel"}))
    strict(pt.CancelBulkSyncResponseEnvelope, cancel)
    assert cancel == {"data": {"message": "Cancellation requested"}}
    fake.advance(3)
    execution(pt.BulkSyncStatusEnvelope, ok(client.get(f"/api/bulk/syncs/{sid}/status")))  # schema canceled

    strict(pt.CancelBulkSyncResponseEnvelope, ok(client.post(f"/api/bulk/syncs/{sid}/cancel")))
    canceling = ok(client.get(f"/api/bulk/syncs/{sid}/status"))
    execution(pt.BulkSyncStatusEnvelope, canceling)
    assert canceling["data"]["current_execution"]["status"] == "canceling"
    fake.advance(3)
    after = ok(client.get(f"/api/bulk/syncs/{sid}/status"))
    execution(pt.BulkSyncStatusEnvelope, after)
    assert after["data"]["current_execution"] is None
    assert after["data"]["last_execution"]["status"] == "canceled"

    # start over HTTP
    started = ok(client.post(f"/api/bulk/syncs/{sid}/executions", json={"schemas": ["public.orders"]}))
    execution(pt.BulkSyncExecutionEnvelope, started)
    assert started["data"]["is_partial"] is True
    exec_id = started["data"]["id"]
    execution(pt.BulkSyncExecutionEnvelope, ok(client.get(f"/api/bulk/syncs/{sid}/executions/{exec_id}")))
    api_error(client.post(f"/api/bulk/syncs/{sid}/executions", json={}), 409, "sync_running")
    strict(pt.CancelBulkSyncResponseEnvelope,
           ok(client.post(f"/api/bulk/syncs/{sid}/executions/{exec_id}/cancel")))
    fake.advance(3)
    ok(client.post(f"/api/bulk/syncs/{sid}/executions", json={"test": True}))
    fake.advance(61)  # completed

    # executions list: 4 runs, limit 3 -> two pages
    page1 = ok(client.get(f"/api/bulk/syncs/{sid}/executions", params={"limit": 3}))
    execution(pt.ListBulkSyncExecutionsEnvelope, page1)
    assert len(page1["data"]) == 3 and page1["pagination"]["next_page_token"]
    page2 = ok(client.get(f"/api/bulk/syncs/{sid}/executions",
                          params={"limit": 3, "page_token": page1["pagination"]["next_page_token"]}))
    execution(pt.ListBulkSyncExecutionsEnvelope, page2)
    assert len(page2["data"]) == 1 and page2["pagination"] == {"next_page_token": ""}
    assert page1["data"][0]["id"] != exec_id and page1["data"][1]["id"] == exec_id  # newest first

    # every error kind is an ApiError
    api_error(client.get("/api/me", headers={"Authorization": ""}), 401, "unauthorized")
    api_error(client.post(f"/api/bulk/syncs/{sid}/cancel", headers={"Authorization": "Bearer ro-key-1"}), 403)
    api_error(client.get("/api/bulk/syncs/5b1c0d1e-0000-4000-8000-000000000000"), 404, "not_found")
    api_error(client.get("/api/bulk/syncs/not-a-uuid/status"), 404, "not_found")
    api_error(client.get(f"/api/bulk/syncs/{sid}/schemas/nope"), 404, "not_found")
    api_error(client.post(f"/api/bulk/syncs/{sid}/schemas/nope/cancel"), 404, "not_found")
    api_error(client.get(f"/api/bulk/syncs/{sid}/executions/{'0' * 8}"), 404, "not_found")
    api_error(client.get("/api/nothing/here"), 404, "not_found")
    api_error(client.post(f"/api/bulk/syncs/{sid}/executions", json={"test": True, "resync_mode": "rebuild"}),
              400, "invalid_request")
    api_error(client.post(f"/api/bulk/syncs/{sid}/cancel", headers={"Idempotency-Key": "short"}), 400)
    api_error(client.get(f"/api/bulk/syncs/{sid}/executions", params={"page_token": "garbage"}), 400)
    fake.add_fault("GET", "/api/me", status=500, times=1)
    api_error(client.get("/api/me"), 500, "internal")

    assert exec_statuses >= {"created", "running", "canceling", "canceled", "completed", "failed"}
    assert schema_statuses >= {"scheduled", "running", "canceled", "completed", "failed"}


def test_the_strict_check_catches_a_wrong_key_or_status(fake, client):
    sid = fake.add_sync("S", ["a"])
    fake.start_run(sid)
    body = ok(client.get(f"/api/bulk/syncs/{sid}/status"))
    strict(pt.BulkSyncStatusEnvelope, body)
    wrong_key = {"data": {**body["data"], "current_execution": {
        **body["data"]["current_execution"],
        "schemas": [{("schema_id" if k == "schema" else k): v
                     for k, v in body["data"]["current_execution"]["schemas"][0].items()}]}}}
    with pytest.raises(AssertionError, match="schema_id"):
        strict(pt.BulkSyncStatusEnvelope, wrong_key)
    wrong_status = {"data": {**body["data"], "current_execution": {
        **body["data"]["current_execution"], "status": "cancelling"}}}
    with pytest.raises(AssertionError, match="cancelling"):
        strict(pt.BulkSyncStatusEnvelope, wrong_status)
    canceling_schema = {"data": {**body["data"], "current_execution": {
        **body["data"]["current_execution"],
        "schemas": [{**body["data"]["current_execution"]["schemas"][0], "status": "canceling"}]}}}
    with pytest.raises(AssertionError, match="canceling"):  # no `canceling` at schema level
        strict(pt.BulkSyncStatusEnvelope, canceling_schema)


# --------------------------------------------------------------------------------------------
# run life cycle (manual clock)


def test_schema_cancel_lands_after_the_delay(fake, client):
    sid = fake.add_sync("S", ["a", "b"])
    fake.start_run(sid, durations=100)
    fake.advance(10)
    ok(client.post(f"/api/bulk/syncs/{sid}/schemas/a/cancel"))
    fake.advance(1.9)
    assert fake.schema_status(sid, "a") == "running"
    fake.advance(0.2)
    data = status_of(client, sid)
    a = entry(data["current_execution"], "a")
    assert a["status"] == "canceled" and a["completed_at"] and a["status_message"]
    assert entry(data["current_execution"], "b")["status"] == "running"
    assert data["current_execution"]["status"] == "running"
    assert fake.status_json(sid) == {"data": data}
    fake.advance(100)
    last = status_of(client, sid)["last_execution"]
    assert last["status"] == "completed"  # schema cancels do not make the run canceled
    assert [s["status"] for s in last["schemas"]] == ["canceled", "completed"]


def test_schema_that_completes_before_the_cancel_lands_is_completed(fake, client):
    sid = fake.add_sync("S", ["a"])
    fake.start_run(sid, durations=11)
    fake.advance(10)
    ok(client.post(f"/api/bulk/syncs/{sid}/schemas/a/cancel"))  # lands at 12, run ends at 11
    fake.advance(1.5)
    data = status_of(client, sid)
    assert data["current_execution"] is None
    assert data["last_execution"]["status"] == "completed"
    assert entry(data["last_execution"], "a")["status"] == "completed"


def test_schema_cancel_when_not_running_is_a_no_op_and_unknown_schema_404(fake, client):
    sid = fake.add_sync("S", ["a", "b"])
    ok(client.post(f"/api/bulk/syncs/{sid}/schemas/a/cancel"))  # nothing ran yet
    fake.start_run(sid, start_after=5, durations=10)
    ok(client.post(f"/api/bulk/syncs/{sid}/schemas/a/cancel"))  # scheduled, not running
    assert fake.schema_status(sid, "a") == "scheduled"
    fake.advance(20)
    assert fake.schema_status(sid, "a") == "completed"
    api_error(client.post(f"/api/bulk/syncs/{sid}/schemas/zzz/cancel"), 404)


def test_sync_cancel_goes_canceling_then_canceled_and_moves_to_last(fake, client):
    sid = fake.add_sync("S", ["fast", "slow1", "slow2"])
    ok(client.post(f"/api/bulk/syncs/{sid}/cancel"))  # nothing running: no-op
    assert status_of(client, sid)["current_execution"] is None
    first = fake.start_run(sid, durations=5)
    fake.advance(6)
    exec_id = fake.start_run(sid, durations={"fast": 1, "slow1": 50, "slow2": 50})
    with pytest.raises(RuntimeError):
        fake.start_run(sid)
    fake.advance(2)
    ok(client.post(f"/api/bulk/syncs/{sid}/cancel"))
    data = status_of(client, sid)
    assert data["current_execution"]["status"] == "canceling"
    assert data["last_execution"]["id"] == first
    fake.advance(1)
    ok(client.post(f"/api/bulk/syncs/{sid}/cancel"))  # a second cancel does not push the deadline
    fake.advance(1.1)
    data = status_of(client, sid)
    assert data["current_execution"] is None
    last = data["last_execution"]
    assert last["id"] == exec_id and last["status"] == "canceled" and last["completed_at"]
    assert [s["status"] for s in last["schemas"]] == ["completed", "canceled", "canceled"]
    listed = ok(client.get("/api/bulk/syncs/status", params={"sync_id": sid}))["data"][0]
    assert listed["status"] == "canceled"
    got = ok(client.get(f"/api/bulk/syncs/{sid}/executions/{exec_id}"))["data"]
    assert got["status"] == "canceled"


def test_execution_cancel_and_http_start(fake, client):
    fake.sync_cancel_delay_s = 1.0
    sid = fake.add_sync("S", ["a"])
    exec_id = ok(client.post(f"/api/bulk/syncs/{sid}/executions"))["data"]["id"]
    assert status_of(client, sid)["current_execution"]["id"] == exec_id
    ok(client.post(f"/api/bulk/syncs/{sid}/executions/{exec_id}/cancel"))
    assert ok(client.get(f"/api/bulk/syncs/{sid}/executions/{exec_id}"))["data"]["status"] == "canceling"
    fake.advance(1)
    assert ok(client.get(f"/api/bulk/syncs/{sid}/executions/{exec_id}"))["data"]["status"] == "canceled"
    ok(client.post(f"/api/bulk/syncs/{sid}/executions/{exec_id}/cancel"))  # finished: no-op
    api_error(client.post(f"/api/bulk/syncs/{sid}/executions", json={"schemas": ["nope"]}), 400)
    api_error(client.post(f"/api/bulk/syncs/{sid}/executions", content=b"{"), 400)


def test_drop_schema_and_drop_execution(fake, client):
    sid = fake.add_sync("S", ["a", "b"])
    first = fake.start_run(sid, durations=1)
    fake.advance(2)
    fake.start_run(sid, durations=100)
    fake.drop_schema_from_status(sid, "a")
    cur = status_of(client, sid)["current_execution"]
    assert entry(cur, "a") is None and entry(cur, "b") is not None
    listed = ok(client.get("/api/bulk/syncs/status", params={"sync_id": sid}))["data"][0]
    assert [s["schema"] for s in listed["schemas"]] == ["b"]
    assert fake.schema_status(sid, "a") is None
    cur_id = cur["id"]
    fake.drop_execution(sid)
    data = status_of(client, sid)
    assert data["current_execution"] is None and data["last_execution"]["id"] == first
    api_error(client.get(f"/api/bulk/syncs/{sid}/executions/{cur_id}"), 404)
    fake.remove_sync(sid)
    api_error(client.get(f"/api/bulk/syncs/{sid}/status"), 404)


def test_awkward_schema_ids_reach_the_right_schema(fake, client):
    for n, schema_id in enumerate([WEIRD, "what?ever", "tag#1", "100% done", "a%2Fb", "dot.ted/x y"]):
        fake.reset_log()
        sid = fake.add_sync("S", [schema_id, "a%2Fb" if schema_id != "a%2Fb" else "other", "plain"])
        fake.start_run(sid, durations=100)
        fake.advance(1)
        key = f"awkward-key-{n}"
        path = f"/api/bulk/syncs/{sid}/schemas/{enc(schema_id)}/cancel"
        ok(client.post(path, headers={"Idempotency-Key": key}))
        assert fake.requests[-1].raw_path.endswith("/" + enc(schema_id) + "/cancel")
        assert fake.cancel_requests() == [(sid, schema_id, key)]
        assert ok(client.get(f"/api/bulk/syncs/{sid}/schemas/{enc(schema_id)}"))["data"]["id"] == schema_id
        fake.advance(2)
        statuses = {s["schema"]: s["status"] for s in status_of(client, sid)["current_execution"]["schemas"]}
        assert statuses.pop(schema_id) == "canceled", schema_id
        assert set(statuses.values()) == {"running"}


def test_status_fault_matches_the_decoded_path(fake, client):
    sid = fake.add_sync("S", [WEIRD])
    fake.add_fault("GET", f"/api/bulk/syncs/*/schemas/{WEIRD}", status=503, times=1)
    api_error(client.get(f"/api/bulk/syncs/{sid}/schemas/{enc(WEIRD)}"), 503)
    ok(client.get(f"/api/bulk/syncs/{sid}/schemas/{enc(WEIRD)}"))
    assert [r.status for r in fake.requests_to("GET", "/api/bulk/syncs/*/schemas/*")] == [503, 200]


# --------------------------------------------------------------------------------------------
# pagination, auth, idempotency


def test_pagination_limits_and_filters(fake, client):
    sid = fake.add_sync("S", ["a"])
    ids = []
    for _ in range(5):
        ids.append(fake.start_run(sid, durations=1))
        fake.advance(2)
    seen, token = [], None
    while True:
        params = {"limit": 2, **({"page_token": token} if token else {})}
        body = ok(client.get(f"/api/bulk/syncs/{sid}/executions", params=params))
        seen += [e["id"] for e in body["data"]]
        token = body["pagination"]["next_page_token"]
        if not token:
            break
    assert seen == ids[::-1]
    asc = ok(client.get(f"/api/bulk/syncs/{sid}/executions", params={"ascending": "true", "limit": 500}))
    assert [e["id"] for e in asc["data"]] == ids
    many = [fake.add_sync(f"n{i}", ["x"]) for i in range(6)]
    got, token = [], None
    while True:
        body = ok(client.get("/api/bulk/syncs", params={"page_token": token} if token else {}))
        assert len(body["data"]) <= 3
        got += [s["id"] for s in body["data"]]
        token = (body.get("pagination") or {}).get("next_page_token")
        if not token:
            break
    assert got == [sid, *many]


def test_auth_forms():
    basic = base64.b64encode(f"{ORG}:{KEY}".encode()).decode()
    with FakePolytomic(org_id=ORG, read_only_keys=["ro-key-1"], manual_clock=True) as fake, \
            http_client(fake) as c:
        sid = fake.add_sync("S", ["a"])
        fake.start_run(sid)
        me = ok(c.get("/api/me", headers={"Authorization": f"Basic {basic}"}))["data"]
        assert me["organization_id"] == ORG and me["is_organization"] is True
        ok(c.get("/api/me", headers={"Authorization": f"Bearer {KEY}"}))
        for bad in (
            base64.b64encode(f"{ORG}:wrong".encode()).decode(),
            base64.b64encode(f"other-org:{KEY}".encode()).decode(),
            base64.b64encode(KEY.encode()).decode(),
            "!!not-base64!!",
        ):
            api_error(c.get("/api/me", headers={"Authorization": f"Basic {bad}"}), 401)
        api_error(c.get("/api/me", headers={"Authorization": "Bearer wrong"}), 401)
        api_error(c.get("/api/me", headers={"Authorization": KEY}), 401)
        api_error(c.get("/api/me"), 401)
        ro = {"Authorization": "Bearer ro-key-1"}
        assert ok(c.get("/api/me", headers=ro))["data"]["credential"]["mode"] == "read_only"
        ok(c.get(f"/api/bulk/syncs/{sid}/status", headers=ro))
        api_error(c.post(f"/api/bulk/syncs/{sid}/cancel", headers=ro), 403, "forbidden")
        api_error(c.post(f"/api/bulk/syncs/{sid}/schemas/a/cancel", headers=ro), 403)
        api_error(c.post(f"/api/bulk/syncs/{sid}/executions", headers=ro), 403)
        fake.advance(10)
        assert fake.schema_status(sid, "a") == "running"
        assert fake.cancel_requests() == []

    with FakePolytomic() as fake, http_client(fake) as c:  # without an org id, Basic is refused
        api_error(c.get("/api/me", headers={"Authorization": f"Basic {basic}"}), 401)
        ok(c.get("/api/me", headers={"Authorization": f"Bearer {KEY}"}))


def test_idempotent_replay_changes_state_once(fake, client):
    sid = fake.add_sync("S", ["a"])
    h = {"Idempotency-Key": "start-key-0001"}
    r1 = client.post(f"/api/bulk/syncs/{sid}/executions", json={}, headers=h)
    r2 = client.post(f"/api/bulk/syncs/{sid}/executions", json={}, headers=h)
    assert r1.status_code == r2.status_code == 200 and r1.content == r2.content
    assert r2.headers["idempotent-replayed"] == "true"
    assert len(ok(client.get(f"/api/bulk/syncs/{sid}/executions"))["data"]) == 1

    # the first outcome is replayed even when it was an error
    h409 = {"Idempotency-Key": "start-key-0002"}
    api_error(client.post(f"/api/bulk/syncs/{sid}/executions", headers=h409), 409, "sync_running")
    fake.advance(100)
    api_error(client.post(f"/api/bulk/syncs/{sid}/executions", headers=h409), 409, "sync_running")

    # a schema cancel replayed later does not push the cancel back
    fake.start_run(sid, durations=100)
    fake.advance(1)
    hc = {"Idempotency-Key": "cancel-key-0001"}
    ok(client.post(f"/api/bulk/syncs/{sid}/schemas/a/cancel", headers=hc))
    fake.advance(1.5)
    ok(client.post(f"/api/bulk/syncs/{sid}/schemas/a/cancel", headers=hc))
    fake.advance(0.6)
    assert fake.schema_status(sid, "a") == "canceled"
    assert fake.cancel_requests() == [(sid, "a", "cancel-key-0001")] * 2

    for bad in ("short", "has space in it", "x" * 256, "dotted.key.value"):
        api_error(client.post(f"/api/bulk/syncs/{sid}/cancel", headers={"Idempotency-Key": bad}), 400)


async def test_concurrent_duplicate_key_gets_409_while_in_flight(fake):
    sid = fake.add_sync("S", ["a"])
    fake.start_run(sid, durations=100)
    fault = fake.add_fault("POST", "/api/bulk/syncs/*/cancel", delay=0.6, times=1)
    h = {**AUTH, "Idempotency-Key": "dup-key-00001"}
    async with httpx.AsyncClient(base_url=fake.url, headers=h, timeout=5, verify=False) as c:
        first = asyncio.create_task(c.post(f"/api/bulk/syncs/{sid}/cancel"))
        await asyncio.sleep(0.2)
        second = await c.post(f"/api/bulk/syncs/{sid}/cancel")
        api_error(second, 409, "idempotency_conflict")
        r1 = await first
        third = await c.post(f"/api/bulk/syncs/{sid}/cancel")
    assert r1.status_code == third.status_code == 200 and r1.content == third.content
    assert fault.hits == 1
    assert fake.cancel_requests() == [(sid, None, "dup-key-00001")] * 2
    assert [r.status for r in fake.requests_to("POST", "/api/bulk/syncs/*/cancel")] == [200, 409, 200]


# --------------------------------------------------------------------------------------------
# faults


def test_status_fault_with_retry_after_is_not_recorded_for_idempotency(fake, client):
    sid = fake.add_sync("S", ["a"])
    fake.start_run(sid, durations=100)
    fake.add_fault("GET", "/api/bulk/syncs/*/status", status=429, retry_after=2, times=1)
    r = client.get(f"/api/bulk/syncs/{sid}/status")
    api_error(r, 429, "rate_limited")
    assert r.headers["retry-after"] == "2"
    ok(client.get(f"/api/bulk/syncs/{sid}/status"))

    fake.add_fault("POST", "*", status=503, body={"error": "upstream"}, times=1)
    h = {"Idempotency-Key": "gateway-key-01"}
    r = client.post(f"/api/bulk/syncs/{sid}/cancel", headers=h)
    assert r.status_code == 503 and r.json() == {"error": "upstream"}
    ok(client.post(f"/api/bulk/syncs/{sid}/cancel", headers=h))  # the 503 was not recorded
    assert fake.cancel_requests() == [(sid, None, "gateway-key-01")]
    assert [r.status for r in fake.requests_to("POST", "*")] == [503, 200]


def test_hang_times_out_the_client_and_does_not_block_stop():
    fake = FakePolytomic().start()
    try:
        fake.add_fault("GET", "/api/me", hang=True)
        with pytest.raises(httpx.ReadTimeout):
            httpx.get(f"{fake.url}/api/me", headers=AUTH, timeout=0.3, verify=False)
        outcome: list = []

        def call():
            try:
                outcome.append(httpx.get(f"{fake.url}/api/me", headers=AUTH, timeout=30, verify=False))
            except httpx.TransportError as e:
                outcome.append(e)

        th = threading.Thread(target=call)
        th.start()
        time.sleep(0.3)
    finally:
        t0 = time.monotonic()
        fake.stop()
        took = time.monotonic() - t0
    th.join(5)
    assert took < 3
    assert len(outcome) == 1 and isinstance(outcome[0], httpx.TransportError)
    assert [r.status for r in fake.requests] == [None, None]


def test_reset_and_malformed(fake, client):
    fake.add_fault("GET", "/api/me", reset=True, times=1)
    with pytest.raises(httpx.TransportError):
        client.get("/api/me")
    assert fake.requests[-1].status is None
    ok(client.get("/api/me"))

    fake.add_fault("*", "/api/bulk/syncs", malformed=True, times=2)
    for _ in range(2):
        r = client.get("/api/bulk/syncs")
        assert r.status_code == 200
        with pytest.raises(ValueError):
            r.json()
    ok(client.get("/api/bulk/syncs"))
    fake.clear_faults()


def test_real_clock_with_speed_advances_runs():
    with FakePolytomic(speed=200) as fake, http_client(fake, headers=AUTH) as c:
        with pytest.raises(ValueError):
            fake.advance(1)
        sid = fake.add_sync("S", ["a"])
        t0 = fake.now()
        fake.start_run(sid, durations=60)  # 0.3 s of real time
        assert status_of(c, sid)["current_execution"]["status"] == "running"
        deadline = time.monotonic() + 5
        while status_of(c, sid)["current_execution"] is not None:
            assert time.monotonic() < deadline, "run never finished"
            time.sleep(0.05)
        assert status_of(c, sid)["last_execution"]["status"] == "completed"
        assert (fake.now() - t0).total_seconds() >= 60
        assert fake.now().tzinfo is not None


def test_request_log_records_everything(fake, client):
    fake.add_sync("S", ["a"], sync_id="3f6c2a9e-8b1d-4c57-9e2a-0d4b7f1c6a53")
    client.get("/api/bulk/syncs/status", params=[("sync_id", "3f6c2a9e-8b1d-4c57-9e2a-0d4b7f1c6a53"),
                                                 ("all", "false")])
    req = fake.requests[-1]
    assert req.method == "GET" and req.path == "/api/bulk/syncs/status" and req.status == 200
    assert req.query == [("sync_id", "3f6c2a9e-8b1d-4c57-9e2a-0d4b7f1c6a53"), ("all", "false")]
    assert req.headers["authorization"] == f"Bearer {KEY}"
    assert req.headers["x-polytomic-version"] == "2025-09-18"
    client.post("/api/bulk/syncs/3f6c2a9e-8b1d-4c57-9e2a-0d4b7f1c6a53/executions", json={"test": True})
    assert fake.requests[-1].json() == {"test": True}
    fake.reset_log()
    assert fake.requests == [] and fake.cancel_requests() == []
