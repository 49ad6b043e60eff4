"""Requests aiohttp's HTTP parser refuses before any middleware runs: answered in OpenAI's envelope too.

Duplicate Content-Length, Content-Length with Transfer-Encoding, a bad chunk size, a NUL in a header, an
oversized header line: aiohttp answers 400 from `RequestHandler.handle_error`, below the app, so the error
middleware never sees them. Its own answer is plain text that quotes the offending bytes (which can be the
sender's Authorization header), and it logs an ERROR traceback that anyone can trigger without a key.

aiohttp has no hook for this (aio-libs/aiohttp#3287 is open), so `EdgeAppRunner` gives each connection a
`RequestHandler` whose `handle_error` answers `{"error": {...}}` with a fixed reason that quotes nothing,
logs one warning line and counts it in /metrics (route `malformed`). Everything else about the protocol is
aiohttp's own. tests/robustness/test_framing.py sends each malformed request over a raw socket to a real
`vectorstore serve`.
"""

from __future__ import annotations

import logging

from aiohttp import web
from aiohttp.http_exceptions import (
    BadHttpMethod,
    BadStatusLine,
    HttpProcessingError,
    InvalidHeader,
    LineTooLong,
)
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

from vectorstore.errors import ApiError, BadRequest, InternalError
from vectorstore.observability import metrics

log = logging.getLogger("vectorstore")

_QUOTES = ("'", '"')


def framing_reason(exc: BaseException | None) -> str:
    """What was wrong with a request aiohttp could not parse, in words that quote none of its bytes.

    aiohttp's messages put the offending bytes after the first colon (`Duplicate Content-Length:\\n  b'...'`),
    so only what comes before it is kept, and only when it holds no quoted text.
    """
    if isinstance(exc, LineTooLong):
        return "a request line or header is longer than the server accepts"
    if isinstance(exc, (BadStatusLine, BadHttpMethod)):
        return "the request line is not valid"
    if isinstance(exc, InvalidHeader):
        return "a header is not valid"
    if isinstance(exc, HttpProcessingError) and exc.message:
        first = str(exc.message).strip().splitlines()[0].split(":", 1)[0].strip()
        if first and len(first) <= 100 and sum(first.count(quote) for quote in _QUOTES) < 2 and first.isprintable():
            return first
    return "it can't be parsed"


class EdgeRequestHandler(RequestHandler):
    """aiohttp's connection handler with `handle_error` answering in OpenAI's envelope."""

    __slots__ = ()
    # No new attributes: `_EdgeServer` swaps the class of the handler aiohttp builds, which needs the same layout.

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        error: ApiError
        if status < 500:
            reason = framing_reason(exc)
            log.warning("refused a malformed HTTP request from %s: %s (%s)", request.remote, reason, type(exc).__name__)
            error = BadRequest(f"The request is not valid HTTP/1.1: {reason}.", code="malformed_request")
            error.status = status
            # No route and no method can be trusted: one series for all of them.
            metrics.observe_request("other", metrics.MALFORMED_ROUTE, status, 0.0)
        elif status == 504:
            log.warning("a request handler timed out")
            error = InternalError("The server timed out while processing the request.", code="timeout")
            error.status = 504
        else:
            # Only a bug outside the error middleware lands here (that middleware answers everything else).
            log.error("unhandled error outside the middlewares", exc_info=exc)
            error = InternalError("The server had an error while processing the request.")
        if request.writer.output_size > 0:
            # Part of a response was already sent: the connection can only be dropped (as aiohttp does).
            raise ConnectionError("Response is sent already, cannot send another response with the error message")
        response = web.json_response(error.body(), status=error.status)
        response.force_close()
        return response


class _EdgeServer(web.Server):
    def __call__(self) -> RequestHandler:
        handler = super().__call__()
        handler.__class__ = EdgeRequestHandler
        return handler


class EdgeAppRunner(web.AppRunner):
    """`web.AppRunner` whose connections answer parser errors with `EdgeRequestHandler.handle_error`."""

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        # aiohttp builds the Server inside the app; only its protocol factory changes.
        server.__class__ = _EdgeServer
        return server
