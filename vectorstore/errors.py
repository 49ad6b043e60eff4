"""Domain errors the API turns into OpenAI's envelope `{"error": {"message", "type", "param", "code"}}`.

Handlers raise these; `app.error_middleware` renders them. Nothing else reaches a client: unexpected exceptions
become a generic 500 and are logged, so no stack trace or SQL ever leaves the process.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class ApiError(Exception):
    """An error with an HTTP status and OpenAI's error fields."""

    status = 500
    type = "server_error"
    code: str | None = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        self.headers: dict[str, str] = dict(headers or {})

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class BadRequest(ApiError):
    status = 400
    type = "invalid_request_error"


class Unauthorized(ApiError):
    status = 401
    type = "invalid_request_error"
    code = "invalid_api_key"


class Forbidden(ApiError):
    status = 403
    type = "invalid_request_error"
    code = "insufficient_permissions"


class NotFound(ApiError):
    status = 404
    type = "invalid_request_error"
    code = "not_found"


class MethodNotAllowed(ApiError):
    status = 405
    type = "invalid_request_error"
    code = "method_not_allowed"


class Conflict(ApiError):
    """409. `retry=False` adds `x-should-retry: false` so the OpenAI client does not retry (it retries 409)."""

    status = 409
    type = "invalid_request_error"
    code = "conflict"

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None, retry: bool = True) -> None:
        super().__init__(message, param=param, code=code, headers=None if retry else {"x-should-retry": "false"})


class PayloadTooLarge(ApiError):
    status = 413
    type = "invalid_request_error"
    code = "payload_too_large"


class UnsupportedMediaType(ApiError):
    """415: a body in a format the route doesn't read (JSON routes want `application/json`)."""

    status = 415
    type = "invalid_request_error"
    code = "unsupported_media_type"


class UpstreamError(ApiError):
    """502: the embedding upstream failed; the message carries its status."""

    status = 502
    type = "upstream_error"
    code = "embedding_upstream_error"

    def __init__(self, message: str, *, upstream_status: int | None = None) -> None:
        super().__init__(message)
        self.upstream_status = upstream_status


class ServiceUnavailable(ApiError):
    """503: the database is unreachable or the server is not ready yet."""

    status = 503
    type = "server_error"
    code = "service_unavailable"


class InternalError(ApiError):
    status = 500
    type = "server_error"
    code = "internal_error"


def store_not_found(store_id: str) -> NotFound:
    return NotFound(f"No vector store found with id '{store_id}'.", param="vector_store_id")
