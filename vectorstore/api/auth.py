"""Bearer-key auth: who is calling, what they may do, which stores they can see.

Every route but /health, /ready, /metrics and the console's static files needs a key. Keys are compared in
constant time against *all* configured keys (no early exit), so timing tells nothing about which key or prefix
matched.
A `read` key may only use routes marked `@read_only`; a key limited to some stores sees 404 for the others,
exactly as if they did not exist.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from aiohttp import web

from config import Spec
from config.names import CONSOLE_ASSETS, CONSOLE_PATH, HEALTH_PATH, METRICS_PATH, READY_PATH
from vectorstore.errors import Forbidden, Unauthorized, store_not_found

# The console's static files are public too (served only with `server.console`): the data they show comes from
# API calls that carry the key the user types in.
PUBLIC_PATHS = frozenset({HEALTH_PATH, READY_PATH, METRICS_PATH, CONSOLE_PATH, *CONSOLE_ASSETS})
_READ_ONLY_ATTR = "_vectorstore_read_only"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
H = TypeVar("H", bound=Callable[..., Any])


@dataclass(frozen=True)
class Principal:
    name: str
    scope: str
    store_ids: frozenset[str] | None
    """Ids of the stores this key may see; None means all stores, declared or not."""

    def can_see(self, store_id: str) -> bool:
        return self.store_ids is None or store_id in self.store_ids


PRINCIPAL = web.RequestKey("principal", Principal)


def read_only(handler: H) -> H:
    """Mark a handler a `read` key may call (GET routes and search); everything else needs `write`."""
    setattr(handler, _READ_ONLY_ATTR, True)
    return handler


def is_read_only(handler: object) -> bool:
    return bool(getattr(handler, _READ_ONLY_ATTR, False))


class Authenticator:
    def __init__(self, spec: Spec, values: Mapping[str, str]) -> None:
        self._keys: list[tuple[bytes, Principal]] = []
        for key in spec.api_keys:
            ids = None
            if key.stores is not None:
                ids = frozenset(store.id for store in spec.stores if store.name in key.stores)
            self._keys.append((values[key.name].encode(), Principal(key.name, key.scope, ids)))

    def authenticate(self, header: str | None) -> Principal:
        if not header:
            raise Unauthorized("Missing API key: send 'Authorization: Bearer <key>'.")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthorized("Malformed Authorization header: expected 'Bearer <key>'.")
        candidate = token.strip().encode()
        found: Principal | None = None
        for value, principal in self._keys:
            # No break: every key is compared, whatever matched.
            if hmac.compare_digest(candidate, value) and found is None:
                found = principal
        if found is None:
            raise Unauthorized("Incorrect API key provided.")
        return found


AUTHENTICATOR = web.AppKey("authenticator", Authenticator)


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.path in PUBLIC_PATHS:
        return await handler(request)
    principal = request.app[AUTHENTICATOR].authenticate(request.headers.get("Authorization"))
    request[PRINCIPAL] = principal
    route_handler = request.match_info.handler
    if principal.scope != "write" and not is_read_only(route_handler) and request.match_info.http_exception is None:
        raise Forbidden(
            f"The API key '{principal.name}' has scope 'read' and may not call {request.method} {request.path}."
        )
    return await handler(request)


def principal(request: web.Request) -> Principal:
    return request[PRINCIPAL]


def check_store(request: web.Request, store_id: str) -> None:
    """404, not 403, for a store outside the key's list: its existence is not the caller's business."""
    if not request[PRINCIPAL].can_see(store_id):
        raise store_not_found(store_id)
