"""Typed errors of the Polytomic client. Messages carry the API's `message`, never a credential."""

from __future__ import annotations


class PolytomicError(Exception):
    """Base class. `status` is the HTTP status when there was a response."""

    status: int | None = None

    def __init__(self, message: str, *, status: int | None = None, key: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status
        self.key = key


class BadRequest(PolytomicError):
    """400/422: the request was refused as invalid."""


class Unauthorized(PolytomicError):
    status = 401


class Forbidden(PolytomicError):
    status = 403


class NotFound(PolytomicError):
    status = 404


class Conflict(PolytomicError):
    status = 409


class RateLimited(PolytomicError):
    status = 429

    def __init__(self, message: str, *, retry_after: float | None = None, **kw) -> None:
        super().__init__(message, **kw)
        self.retry_after = retry_after


class ServerError(PolytomicError):
    """5xx."""


class PolytomicTimeout(PolytomicError):
    """No answer within the client's timeout."""


class Unreachable(PolytomicError):
    """Connection refused, reset, DNS failure: no HTTP response at all."""


class BadResponse(PolytomicError):
    """A response that is not JSON or not of the expected shape."""


# Errors worth retrying for idempotent requests (and for cancels with the same Idempotency-Key).
TRANSIENT = (RateLimited, ServerError, PolytomicTimeout, Unreachable)
