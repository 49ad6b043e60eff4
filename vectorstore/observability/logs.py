"""Structured JSON logs: one object per line, one access line per request, a request id on every line.

The request id comes from the client's `x-request-id` when it is sane (so LiteLLM's or an ingress's id can be
followed through), otherwise it is made here; it is echoed in the response's `x-request-id` header and set in a
context variable, so every line logged while serving the request carries it.

Secrets never reach the output: the `Authorization` header is not logged at all, and a `Redactor` replaces any
configured secret value (API keys, the embedding key, the database password), anything that looks like a
bearer token and the password of any URL, in every field of every record, whichever logger wrote it and
wherever the field came from (the message, its arguments, `extra=` fields of any type, the traceback, the
request id taken from the client). It runs as a filter on the handler (a formatter can also take one, to
redact its finished entries). It is the backstop for a future log line that interpolates something it should
not. A client's `x-request-id` equal to a secret is not taken as the request id at all, so it is neither
logged nor echoed.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import os
import re
import sys
import time
from collections.abc import Awaitable, Callable, Iterable
from datetime import UTC, datetime
from typing import IO, Any, Final

from aiohttp import web

REQUEST_ID_HEADER: Final = "x-request-id"
REDACTED: Final = "[REDACTED]"
ACCESS_LOGGER: Final = "vectorstore.access"

request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("vectorstore_request_id", default=None)

# Printable, no spaces or quotes, bounded: an incoming id is copied into logs and a header, so it must not be
# able to forge log lines or headers, or grow them without bound.
_SANE_REQUEST_ID: Final = re.compile(r"[A-Za-z0-9._:/+=@-]{1,128}")
_BEARER_PATTERN: Final = r"\b(bearer)\s+[^\s\"',;]+"
# The password of a URL's userinfo (`scheme://user:password@host`, a DSN too).
# validate refuses credentials in every URL of the spec; this catches one that arrives any other way (an
# environment variable, a library's exception quoting the URL it was given).
_URL_PASSWORD_PATTERN: Final = r"\b([a-zA-Z][a-zA-Z0-9+.-]*://[^\s/?#@:\"']*):[^\s/?#@\"']+@"  # noqa: S105 - a pattern
_BEARER: Final = re.compile(f"(?i:{_BEARER_PATTERN})")
_URL_PASSWORD: Final = re.compile(_URL_PASSWORD_PATTERN)

# Attributes every LogRecord has; anything else on a record came from `extra=` and is logged as a field.
_STANDARD_ATTRS: Final = frozenset(
    vars(logging.LogRecord("x", logging.INFO, "x", 0, "x", None, None)).keys() | {"message", "asctime", "taskName"}
)


def new_request_id() -> str:
    # 128 random bits as 32 hex digits, like uuid4().hex, for a quarter of the cost (one per request).
    return os.urandom(16).hex()


def accept_request_id(value: str | None) -> str:
    """The client's request id if it is sane and no secret we know, else a new one."""
    if (
        value is not None
        and _SANE_REQUEST_ID.fullmatch(value)
        and (_redactor is None or _redactor.redact(value) == value)
    ):
        return value
    return new_request_id()


def _replacement(match: re.Match[str]) -> str:
    # Group 1 is the word "bearer" (in the client's case) of a bearer token; anything else is a secret value.
    return f"{match.group(1)} {REDACTED}" if match.group(1) else REDACTED


def _url_replacement(match: re.Match[str]) -> str:
    # Group 1 is the URL up to its userinfo's password: the scheme and the user stay, to say which one it was.
    return f"{match.group(1)}:{REDACTED}@"


class Redactor:
    """Replaces known secret values, anything shaped like `Bearer <token>` and the password of a URL
    (`https://user:<password>@host`), in text and nested values."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self.secrets: set[str] = set()
        self._pattern = _BEARER
        self.add(secrets)

    def add(self, secrets: Iterable[str]) -> None:
        # Very short values would redact ordinary words; real keys and passwords are longer than this.
        self.secrets.update(secret for secret in secrets if len(secret) >= 6)
        # One pattern, one scan per string (an access line went from 30 to 17 us): the secrets, longest first
        # (so one that contains another is replaced whole), then bearer tokens, matched case-insensitively.
        alternatives = [re.escape(secret) for secret in sorted(self.secrets, key=len, reverse=True)]
        self._pattern = re.compile("|".join([*alternatives, f"(?i:{_BEARER_PATTERN})"]))

    def redact(self, text: str) -> str:
        # URLs with a userinfo are rare: two substring tests keep their pattern off every other string (it
        # would double the cost of an access line).
        if "@" in text and "://" in text:
            text = _URL_PASSWORD.sub(_url_replacement, text)
        if self._pattern.search(text) is None:
            return text
        return self._pattern.sub(_replacement, text)

    def redact_value(self, value: Any) -> Any:
        """Strings redacted wherever they sit in dicts, lists and tuples (keys included); others as they are."""
        if isinstance(value, str):
            return self.redact(value)
        if isinstance(value, dict):
            return {self.redact_value(key): self.redact_value(item) for key, item in value.items()}
        if isinstance(value, (list, tuple, set, frozenset)):
            return [self.redact_value(item) for item in value]
        if isinstance(value, (int, float, bool)) or value is None:
            return value
        # Anything else is written with str() by the formatter: redact that text.
        return self.redact(str(value))


class JsonFormatter(logging.Formatter):
    """`{"ts", "level", "logger", "msg", "request_id"?, ...extra fields, "exc"?}` on one line.

    With a `redactor`, every field of the finished entry goes through it last, whatever added the field.
    """

    def __init__(self, redactor: Redactor | None = None) -> None:
        super().__init__()
        self.redactor = redactor

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        request_id = getattr(record, "request_id", None) or request_id_var.get()
        if request_id is not None:
            entry["request_id"] = request_id
        for key, value in vars(record).items():
            if key not in _STANDARD_ATTRS and key not in entry:
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            # Left by RedactingFilter, which renders the traceback early so it can redact it.
            entry["exc"] = record.exc_text
        if self.redactor is not None:
            entry = {key: self.redactor.redact_value(value) for key, value in entry.items()}
        # json.dumps, not orjson: the `"key": "value"` spacing is the documented format that log queries match.
        return json.dumps(entry, default=str, ensure_ascii=False)


class RedactingFilter(logging.Filter):
    """Replaces secret values and bearer tokens in a record's message, arguments, traceback, request id and
    extra fields (strings anywhere inside them), so any formatter sees clean values."""

    def __init__(self, secrets: Iterable[str] | Redactor = ()) -> None:
        super().__init__()
        self.redactor = secrets if isinstance(secrets, Redactor) else Redactor(secrets)

    @property
    def secrets(self) -> set[str]:
        return self.redactor.secrets

    def add(self, secrets: Iterable[str]) -> None:
        self.redactor.add(secrets)

    def redact(self, text: str) -> str:
        return self.redactor.redact(text)

    def filter(self, record: logging.LogRecord) -> bool:
        # Format once, redact the result, and drop the args: the formatter then sees only clean text.
        record.msg = self.redact(record.getMessage())
        record.args = None
        if record.exc_info:
            # Exception text can quote a connection string or a header: render it now so it is redacted too.
            record.exc_text = self.redact(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        if record.exc_text:
            record.exc_text = self.redact(record.exc_text)
        if getattr(record, "request_id", None) is None and request_id_var.get() is not None:
            # The formatter would read the id from the context; pin it on the record so it is redacted here.
            record.request_id = request_id_var.get()
        for key, value in list(vars(record).items()):
            if key not in _STANDARD_ATTRS and not isinstance(value, (int, float, bool)) and value is not None:
                setattr(record, key, self.redactor.redact_value(value))
        return True


_redactor: Redactor | None = None


def configure(level: int | str = logging.INFO, secrets: Iterable[str] = (), stream: IO[str] | None = None) -> None:
    """Send every log record to `stream` (stderr) as JSON lines, secrets redacted. Safe to call again."""
    global _redactor
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_vectorstore", False):
            root.removeHandler(handler)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler._vectorstore = True  # type: ignore[attr-defined]
    _redactor = Redactor(secrets)
    # The filter alone: it redacts every field the formatter writes (the request id included). Redacting the
    # formatted entry again would double the cost of every line (measured: ~100 µs per access line here).
    handler.setFormatter(JsonFormatter())
    handler.addFilter(RedactingFilter(_redactor))
    root.addHandler(handler)
    root.setLevel(level)
    # Our access line replaces aiohttp's (which is not JSON and would double every request).
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    # Python warnings (aiohttp's multipart reader warns about a bad Content-Disposition) become JSON lines
    # through the same handler, instead of free text on stderr.
    logging.captureWarnings(True)


def skip_unused_record_fields() -> None:
    """For a server process: the JSON lines carry no caller, thread or process fields, so spare every record
    finding them (the access line is written once per request). Process-wide, hence not part of `configure`,
    which tests call too. The logging docs' "Optimization" section lists these switches."""
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False


def add_secrets(secrets: Iterable[str]) -> None:
    """Redact more values (keys resolved after `configure`) on the configured handler."""
    if _redactor is not None:
        _redactor.add(secrets)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_REQUEST_ID_KEY: Final = web.RequestKey("vectorstore_request_id", str)

_access_log = logging.getLogger(ACCESS_LOGGER)


def request_id(request: web.Request) -> str | None:
    return request.get(_REQUEST_ID_KEY)


@web.middleware
async def access_log_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Assigns the request id and writes one access line when the request ends, however it ends."""
    rid = accept_request_id(request.headers.get(REQUEST_ID_HEADER))
    request[_REQUEST_ID_KEY] = rid
    token = request_id_var.set(rid)
    started = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    except asyncio.CancelledError:
        status = 499
        raise
    finally:
        match_info = request.match_info
        route = None
        if match_info.http_exception is None and match_info.route.resource is not None:
            route = match_info.route.resource.canonical
        _access_log.log(
            logging.WARNING if status >= 500 else logging.INFO,
            "%s %s %d",
            request.method,
            request.path,
            status,
            extra={
                "method": request.method,
                "path": request.path,
                "route": route,
                "status": status,
                "duration_ms": round((time.perf_counter() - started) * 1000, 3),
                "remote": request.remote,
                "user_agent": request.headers.get("User-Agent"),
                "request_id": rid,
            },
        )
        request_id_var.reset(token)


async def echo_request_id(request: web.Request, response: web.StreamResponse) -> None:
    """`on_response_prepare` hook: every response, streamed ones included, carries the request id."""
    rid = request_id(request)
    if rid is not None and REQUEST_ID_HEADER not in response.headers:
        response.headers[REQUEST_ID_HEADER] = rid
