"""The edge's error middleware: every failure becomes OpenAI's error envelope, and nothing internal leaves.

Handlers and the layers under them raise `vectorstore.errors` classes (or let psycopg's errors through); this
is the one place that turns them into responses.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import psycopg
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from psycopg_pool import PoolClosed, PoolTimeout

from vectorstore.api.protocol import framing_reason
from vectorstore.errors import (
    ApiError,
    BadRequest,
    InternalError,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    ServiceUnavailable,
)
from vectorstore.state import REDACTOR
from vectorstore.storage.database import DatabaseUnavailable

log = logging.getLogger("vectorstore")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def error_response(error: ApiError, request: web.Request) -> web.Response:
    """The envelope, with every secret the server knows redacted: a message can quote an upstream or a library,
    and no key or password may reach a client that way (the log filter's counterpart for responses)."""
    redactor = request.app.get(REDACTOR)
    body = error.body() if redactor is None else redactor.redact_value(error.body())
    return web.json_response(body, status=error.status, headers=error.headers)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every failure becomes OpenAI's envelope; nothing internal (trace, SQL) is ever sent."""
    try:
        return await handler(request)
    except ApiError as api_error:
        return error_response(api_error, request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        if exc.status == 404:
            return error_response(
                NotFound(f"Unknown route: {request.method} {request.path}.", code="unknown_route"), request
            )
        if exc.status == 405:
            allowed = ", ".join(sorted(getattr(exc, "allowed_methods", ()) or ()))
            error: ApiError = MethodNotAllowed(
                f"Method {request.method} is not allowed on {request.path}; use {allowed}."
            )
            error.headers["Allow"] = allowed
            return error_response(error, request)
        if exc.status == 413:
            return error_response(
                PayloadTooLarge(f"The request body is larger than the limit of {request.app._client_max_size} bytes."),
                request,
            )
        generic = ApiError(exc.reason)
        generic.status = exc.status
        generic.type = "invalid_request_error"
        return error_response(generic, request)
    except DatabaseUnavailable:
        # Known down: the pool logged it once when it found out, and logs again when the database is back.
        return error_response(ServiceUnavailable("The database is not available; retry later."), request)
    except (PoolTimeout, PoolClosed) as exc:
        log.warning("database pool unavailable: %s", exc)
        return error_response(ServiceUnavailable("The database is not available; retry later."), request)
    except psycopg.OperationalError as exc:
        log.warning("database error: %s", exc)
        return error_response(ServiceUnavailable("The database is not available; retry later."), request)
    except (psycopg.DataError, UnicodeEncodeError) as exc:
        # Input PostgreSQL can't store (a NUL character, an unpaired surrogate from a JSON escape, an
        # out-of-range value) is the client's mistake, found by schemathesis; never a 500.
        log.info("rejected a value the database can't store on %s %s: %s", request.method, request.path, exc)
        return error_response(
            BadRequest(
                "A parameter holds a value that can't be stored (a NUL character, an unpaired surrogate "
                "or an out-of-range number)."
            ),
            request,
        )
    except HttpProcessingError as exc:
        # A malformed body part (e.g. a multipart header with control characters) or chunk: aiohttp parses those
        # lazily, inside the handler, so its 400 arrives here as an exception. Its message quotes the bytes.
        return error_response(
            BadRequest(f"The request body is malformed: {framing_reason(exc)}.", param="body"), request
        )
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return error_response(InternalError("The server had an error while processing the request."), request)
