"""One error type per kind of failure, mapped once to HTTP (REST) and to ``{"Err"}`` (Docker)."""

from __future__ import annotations


class QingluanError(Exception):
    """Base: ``str(err)`` is the message a user sees; ``status`` the HTTP status."""

    status = 500
    code = "internal"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidRequest(QingluanError):
    status = 400
    code = "invalid"


class Unauthorized(QingluanError):
    status = 401
    code = "unauthorized"


class NotFound(QingluanError):
    status = 404
    code = "not_found"


class Conflict(QingluanError):
    status = 409
    code = "conflict"


class Exhausted(QingluanError):
    status = 409
    code = "exhausted"


class Unavailable(QingluanError):
    """A dependency (a bridge, the controller, OVS) cannot be reached right now."""

    status = 503
    code = "unavailable"


class Timeout(QingluanError):
    status = 504
    code = "timeout"


BY_CODE: dict[str, type[QingluanError]] = {
    cls.code: cls
    for cls in (
        QingluanError,
        InvalidRequest,
        Unauthorized,
        NotFound,
        Conflict,
        Exhausted,
        Unavailable,
        Timeout,
    )
}
