"""Runtime settings resolved once at startup: the database DSN, where to listen, and secret values from env.

The spec holds secret *references* only; their env var names come from config (SecretRef.env). Resolving them
here, before the app is built, lets `serve` fail with one clear message listing every missing variable.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
from psycopg.conninfo import conninfo_to_dict

from config import Spec, names
from config.model import shown_url

log = logging.getLogger("vectorstore")


class StartupError(Exception):
    """A problem that stops the server before it serves; the message is shown to the operator as is."""


@dataclass(frozen=True)
class Settings:
    dsn: str
    api_keys: Mapping[str, str] = field(repr=False)
    """auth key name -> the bearer value, resolved from each key's env var."""
    embedding_api_key: str | None = field(default=None, repr=False)
    rerank_api_key: str | None = field(default=None, repr=False)
    host: str = "127.0.0.1"
    port: int = 8000
    reconcile: bool = True
    """Reconcile the declared stores at startup; tests turn it off to exercise an unreconciled database."""
    pool_timeout: float = 3.0
    """Seconds a request waits for a pooled connection before 503 when all are busy."""
    spec_dir: Path | None = None
    """Relative source `path`s start here (the spec file's directory); the working directory when None."""
    sources_dir: Path | None = None
    """Where the server clones git sources itself (outside Kubernetes); `.vectorstore/sources` when None."""
    git_checkouts: str | None = None
    """Set (from names.GIT_CHECKOUTS_ENV) when git-sync sidecars keep the checkouts: the server runs no git."""
    git_sync_wait_seconds: float = 60.0
    """How long a sync waits for git-sync's first checkout before calling the source unreadable."""
    source_env: Mapping[str, str] = field(default_factory=dict, repr=False)
    """Values of the sources' secret env vars (S3 and git credentials) found at startup; a missing one fails
    its source."""
    extra_secrets: tuple[str, ...] = field(default=(), repr=False)
    """More values never to show (`PGPASSWORD`, which libpq reads from the environment, not the DSN)."""
    read_dsn: str | None = None
    """The read replicas (database.read_replicas with DATABASE_READ_URL set): searches go there."""
    replica_wait_seconds: float = 0.05
    """How long a search waits for a replica to replay the writes it must see before it goes to the primary."""
    workers_ready_dir: Path | None = None
    """Under `serve --workers N` (vectorstore.workers): where each worker marks itself ready, so that /ready,
    whichever worker answers it, says ready only once all `worker_count` of them are."""
    worker_count: int = 1
    worker_index: int = 0
    calibration_poll_seconds: float = 30.0
    """How often each server reloads the stores' recall calibrations and starts the ones that are due."""
    calibration_interval_seconds: float = 3600.0
    """A store with `search.target_recall` is measured again at least this often (vectorstore/calibration)."""
    calibration_budget_seconds: float = 120.0
    """Database time one calibration may use in all."""
    calibration_db_share: float = 0.5
    """Share of one database core a calibration keeps to while it runs (it sleeps between its statements)."""

    def secret_values(self) -> list[str]:
        """Every secret this server knows: API keys, the embedding and rerank keys, the sources' credentials,
        the database password. Logs and every client-facing message are redacted of them."""
        values = [*self.api_keys.values(), *self.extra_secrets, *self.source_env.values()]
        values += [key for key in (self.embedding_api_key, self.rerank_api_key) if key]
        for dsn in (self.dsn, self.read_dsn):
            try:
                password = conninfo_to_dict(dsn).get("password") if dsn else None
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
                shown_url(spec.embedding.base_url or ""),
            )
    return keys, embedding_key


def resolve_rerank_key(spec: Spec, environ: Mapping[str, str]) -> str | None:
    """The rerank endpoint's key, or None (with a warning when the spec references one that is unset)."""
    if spec.rerank is None or spec.rerank.api_key is None:
        return None
    value = environ.get(spec.rerank.api_key.env) or None
    if value is None:
        log.warning(
            "%s is not set: rerank requests to %s carry no Authorization header",
            spec.rerank.api_key.env,
            shown_url(spec.rerank.base_url),
        )
    return value


def resolve_read_dsn(spec: Spec, primary_dsn: str, environ: Mapping[str, str]) -> str | None:
    """The replicas' DSN: DATABASE_READ_URL's settings over the primary's, so `host=<cluster>-ro` alone means
    the same port, database and credentials. None (with a warning when spec and environment disagree) when
    searches stay on the primary."""
    read_url = environ.get(names.DATABASE_READ_URL_ENV, "").strip()
    if not spec.database.read_replicas:
        if read_url:
            log.warning(
                "%s is set but the spec has database.read_replicas off: searches use the primary",
                names.DATABASE_READ_URL_ENV,
            )
        return None
    if not read_url:
        log.warning(
            "database.read_replicas is on but %s is not set: searches use the primary "
            "(the rendered Deployment sets it to host=%s)",
            names.DATABASE_READ_URL_ENV,
            spec.database.cluster.ro_host,
        )
        return None
    try:
        overrides = psycopg.conninfo.conninfo_to_dict(read_url)
        return psycopg.conninfo.make_conninfo(primary_dsn, **{k: v for k, v in overrides.items() if v is not None})
    except psycopg.ProgrammingError:
        # Not echoed: the value may hold a password.
        raise StartupError(
            f"{names.DATABASE_READ_URL_ENV} is not a libpq connection string or URI "
            "(for example host=mycluster-ro, or postgresql://host:5432/db)"
        ) from None
