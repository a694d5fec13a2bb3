"""Typed views of Polytomic API responses.

Every field is optional (the API omits keys freely), unknown fields are ignored, and status values
stay plain strings so that a status the API adds tomorrow does not break parsing. The one place
that decides what is terminal is :func:`is_terminal`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

# Bulk execution status (BulkExecutionStatus in the SDK).
EXECUTION_STATUSES = (
    "created",
    "scheduled",
    "running",
    "exporting",
    "canceling",
    "canceled",
    "completed",
    "failed",
    "processing",
    "errors",
    "interrupted",
)
# Bulk schema execution status (BulkSchemaExecutionStatus): no `canceling`, no `errors`.
SCHEMA_STATUSES = (
    "created",
    "scheduled",
    "running",
    "exporting",
    "canceled",
    "completed",
    "failed",
    "interrupted",
    "processing",
)
# Documented terminal set is completed/canceled/failed; `errors` (completed with errors) and
# `interrupted` are treated as terminal too (reference §3.3).
TERMINAL_STATUSES = frozenset({"completed", "canceled", "failed", "errors", "interrupted"})
IN_FLIGHT_STATUSES = frozenset({"created", "scheduled", "running", "exporting", "processing", "canceling"})


def is_terminal(status: str | None) -> bool:
    """True when a status (execution or schema level) means the work has ended.

    Unknown strings are not terminal: the watcher keeps watching (bounded by its deadline) rather
    than declaring an end it cannot be sure of.
    """
    return status is not None and status.lower() in TERMINAL_STATUSES


def is_running(status: str | None) -> bool:
    """True when there is work a cancel could still stop."""
    return status is not None and not is_terminal(status)


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)


class BulkSync(_Model):
    id: str | None = None
    name: str | None = None
    active: bool | None = None
    mode: str | None = None
    organization_id: str | None = None
    source_connection_id: str | None = None
    destination_connection_id: str | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None


class BulkSchema(_Model):
    id: str | None = None
    enabled: bool | None = None
    output_name: str | None = None
    user_output_name: str | None = None


class SchemaExecution(_Model):
    """An entry of `execution.schemas[]`; the API names the schema id `schema`."""

    schema_id: str | None = Field(default=None, alias="schema")
    output_name: str | None = None
    execution_id: str | None = None  # only in the list-status form
    status: str | None = None
    status_message: str | None = None
    created_at: datetime | None = None
    started_at: datetime | None = None
    completed_at: datetime | None = None
    updated_at: datetime | None = None
    record_count: int | None = None
    error_count: int | None = None
    warning_count: int | None = None


class Execution(_Model):
    id: str | None = None
    status: str | None = None
    status_message: str | None = None
    type: str | None = None
    created_at: datetime | None = None
    started_at: datetime | None = None
    completed_at: datetime | None = None
    updated_at: datetime | None = None
    record_count: int | None = None
    error_count: int | None = None
    warning_count: int | None = None
    schemas: list[SchemaExecution] = Field(default_factory=list)

    def schema_entry(self, schema_id: str) -> SchemaExecution | None:
        for entry in self.schemas:
            if entry.schema_id == schema_id:
                return entry
        return None


class SyncStatus(_Model):
    """`GET /api/bulk/syncs/{id}/status`."""

    current_execution: Execution | None = None
    last_execution: Execution | None = None
    next_execution_time: datetime | None = None


class SyncExecutionStatus(_Model):
    """One item of `GET /api/bulk/syncs/status` (list-status)."""

    sync_id: str | None = None
    status: str | None = None
    next_execution_time: datetime | None = Field(default=None, alias="nextExecutionTime")
    schemas: list[SchemaExecution] = Field(default_factory=list)


class Identity(_Model):
    """`GET /api/me`."""

    id: str | None = None
    email: str | None = None
    organization_id: str | None = None
    organization_name: str | None = None
    is_user: bool | None = None
    is_organization: bool | None = None
    is_partner: bool | None = None
    is_system: bool | None = None
    role: str | None = None
    credential: dict[str, Any] | None = None
