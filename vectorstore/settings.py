"""Runtime settings resolved once at startup: the database DSN, where to listen, and secret values from env.

The spec holds secret *references* only; their env var names come from config (SecretRef.env). Resolving them
here, before the app is built, lets `serve` fail with one clear message listing every missing variable.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field

import psycopg
from psycopg.conninfo import conninfo_to_dict

from config import Spec

log = logging.getLogger("vectorstore")


class StartupError(Exception):
    """A problem that stops the server before it serves; the message is shown to the operator as is."""


@dataclass(frozen=True)
class Settings:
    dsn: str
    api_keys: Mapping[str, str] = field(repr=False)
    """auth key name -> the bearer value, resolved from each key's env var."""
    embedding_api_key: str | None = field(default=None, repr=False)
    host: str = "127.0.0.1"
    port: int = 8000
    reconcile: bool = True
    """Reconcile the declared stores at startup; tests turn it off to exercise an unreconciled database."""
    pool_timeout: float = 3.0
    """Seconds a request waits for a pooled connection before 503 when all are busy."""
    extra_secrets: tuple[str, ...] = field(default=(), repr=False)
    """More values never to show (`PGPASSWORD`, which libpq reads from the environment, not the DSN)."""

    def secret_values(self) -> list[str]:
        """Every secret this server knows: API keys, the embedding key, the database password. Logs and every
        client-facing message are redacted of them."""
        values = [*self.api_keys.values(), *self.extra_secrets]
        if self.embedding_api_key:
            values.append(self.embedding_api_key)
        try:
            password = conninfo_to_dict(self.dsn).get("password")
        except psycopg.Error:
            password = None
        if password:
            values.append(str(password))
        return [value for value in values if value]


def resolve_secrets(spec: Spec, environ: Mapping[str, str]) -> tuple[dict[str, str], str | None]:
    """Return (api key values by key name, embedding key or None); raise StartupError if an auth key is unset."""
    missing = [key for key in spec.api_keys if not environ.get(key.api_key.env)]
    if missing:
        lines = [
            f"  {key.api_key.env} (auth.keys '{key.name}', secret {key.api_key.secret}/{key.api_key.key})"
            for key in missing
        ]
        raise StartupError(
            "missing API key environment variable(s); set each to the bearer key clients will send:\n"
            + "\n".join(lines)
        )
    keys = {key.name: environ[key.api_key.env] for key in spec.api_keys}
    embedding_key: str | None = None
    if spec.embedding.api_key is not None:
        embedding_key = environ.get(spec.embedding.api_key.env) or None
        if embedding_key is None:
            # Local upstreams (Ollama, a LiteLLM without a master key) need no key: warn and go on.
            log.warning(
                "%s is not set: embedding requests to %s carry no Authorization header",
                spec.embedding.api_key.env,
                spec.embedding.base_url,
            )
    return keys, embedding_key
