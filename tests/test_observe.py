"""The watcher's pure decision: what one status snapshot means for one watch."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from bot.polytomic.models import Execution, SyncStatus
from bot.store import Watch
from bot.watcher import observe


def _watch(schema_id="accounts", execution_id="e1"):
    now = datetime.now(UTC)
    return Watch(
        dedupe_key="k",
        team_id="T",
        channel_id="C",
        sync_id="s",
        sync_name="S",
        schema_id=schema_id,
        execution_id=execution_id,
        requested_by="U1",
        deadline_at=now + timedelta(hours=1),
        request_id="r",
    )


def _ex(status, schemas=(), exec_id="e1"):
    return Execution.model_validate(
        {"id": exec_id, "status": status, "schemas": [{"schema": s, "status": st} for s, st in schemas]}
    )


def test_schema_running_then_canceled():
    w = _watch()
    assert observe(w, SyncStatus(current_execution=_ex("running", [("accounts", "running")]))).outcome is None
    obs = observe(w, SyncStatus(current_execution=_ex("running", [("accounts", "canceled")])))
    assert (obs.state, obs.outcome) == ("canceled", "canceled")


def test_schema_completed_first_and_execution_moved_to_last():
    w = _watch()
    obs = observe(w, SyncStatus(last_execution=_ex("completed", [("accounts", "completed")])))
    assert obs.outcome == "completed"


def test_schema_vanished_or_execution_ended_around_it():
    w = _watch()
    # the schema is no longer listed in a running execution: say that, not that the run ended
    assert observe(w, SyncStatus(current_execution=_ex("running", []))).outcome == "vanished"
    assert (
        observe(w, SyncStatus(last_execution=_ex("canceled", [("accounts", "running")]))).outcome
        == "execution_ended"
    )
    # neither current nor last, and not found by id: the execution is gone
    assert observe(w, SyncStatus(current_execution=_ex("running", exec_id="e2"))).outcome == "not_found"


def test_whole_execution_states():
    w = _watch(schema_id=None)
    assert observe(w, SyncStatus(current_execution=_ex("canceling"))).state == "canceling"
    assert observe(w, SyncStatus(last_execution=_ex("canceled"))).outcome == "canceled"
    assert observe(w, SyncStatus()).outcome == "not_found"
    # found by id after a newer run started
    assert (
        observe(w, SyncStatus(current_execution=_ex("running", exec_id="e2")), _ex("failed")).outcome
        == "failed"
    )


def test_unknown_status_strings_keep_watching():
    w = _watch()
    obs = observe(w, SyncStatus(current_execution=_ex("running", [("accounts", "defrosting")])))
    assert (obs.state, obs.outcome) == ("defrosting", None)
