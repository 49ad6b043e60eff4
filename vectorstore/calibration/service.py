"""When and where calibrations run, what searches read from them, and what /metrics shows.

Every server reloads `search_calibration` every `Settings.calibration_poll_seconds` (so all of them search
with the same settings) and starts a calibration for each store with a target that is due:
- never measured, or measured on another table (the store's rows moved to a new table), for another target
  or another declared `ef_search`;
- rows grew or shrank by `CHANGE_FRACTION` since (rows as of the last ANALYZE, kept by search/statistics.py);
- the HNSW index changed (rebuilt or reindexed: its relfilenode moved);
- older than `Settings.calibration_interval_seconds`;
- measured without a full sample of real queries (measure.py says why that is optimistic), and this server
  has one now.
One server calibrates a store at a time: it holds the store's advisory lock (session level, on its own primary
connection, so a server killed mid-way frees it) and checks again under the lock that the store is still due.
The exact scans run on the read replica when `database.read_replicas` is on (`Settings.read_dsn`), else on the
primary; the result is written on the primary. Until a store is calibrated, its searches use the fixed
settings; a failed calibration is logged and tried again at the next poll.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import socket
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import psycopg
from aiohttp import web
from prometheus_client.core import GaugeMetricFamily, Metric

from config import Spec
from vectorstore import state
from vectorstore.calibration import measure, plans
from vectorstore.calibration.samples import QuerySamples
from vectorstore.observability import metrics
from vectorstore.search.vector import exact_is_cheap
from vectorstore.storage import stores
from vectorstore.storage.database import configure_connection

log = logging.getLogger("vectorstore")

CHANGE_FRACTION = 0.2
"""Rows added or removed, as a fraction of the rows measured, that make a store due again."""


@dataclass
class Calibrations:
    """This server's view: the persisted calibrations, what runs here now, and the last failure per store."""

    by_store: dict[str, plans.Calibration] = field(default_factory=dict)
    running: set[str] = field(default_factory=set)
    errors: dict[str, str] = field(default_factory=dict)
    samples: QuerySamples = field(default_factory=QuerySamples)
    identity: str = field(default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}:{id(object())}")


CALIBRATIONS = web.AppKey("calibrations", Calibrations)


def target_of(spec: Spec, record: stores.StoreRecord) -> tuple[float | None, int | None]:
    """(the store's target recall, the `ef_search` its spec writes, which wins) for a store."""
    declared = spec.store_by_id(record.id)
    ef = record.ef_search if declared is not None and declared.ef_search_declared else None
    return spec.search_for(record.id).target_recall, ef


def current(app: web.Application, record: stores.StoreRecord) -> plans.Calibration | None:
    """The calibration a search of this store uses, when its target is set and it measured this table."""
    target, declared_ef = target_of(app[state.SPEC], record)
    found = app[CALIBRATIONS].by_store.get(record.id)
    if target is None or found is None or found.table_name != record.table_name:
        return None
    if found.declared_ef_search != declared_ef:
        return None
    return found


def due(
    found: plans.Calibration | None,
    record: stores.StoreRecord,
    target: float,
    declared_ef: int | None,
    index_node: int | None,
    *,
    interval: float,
    now: float,
    real_queries: int = 0,
) -> str | None:
    """Why the store needs measuring now, or None."""
    if found is None:
        return "first"
    if found.table_name != record.table_name:
        return "table"
    if found.target != target or found.declared_ef_search != declared_ef:
        return "target"
    if abs(record.analyzed_rows - found.rows_at) > CHANGE_FRACTION * max(found.rows_at, 1.0):
        return "rows"
    if index_node is not None and found.index_node is not None and index_node != found.index_node:
        return "index"
    if now - found.calibrated_at >= interval:
        return "schedule"
    if found.sample_source != "traffic" and real_queries >= measure.QUERIES:
        return "traffic"
    return None


def lock_key(store_id: str) -> int:
    digest = hashlib.sha256(b"vectorstore-calibration\0" + store_id.encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


async def index_node(conn: psycopg.AsyncConnection[Any], record: stores.StoreRecord) -> int | None:
    cur = await conn.execute("SELECT pg_relation_filenode(to_regclass(%s))", [f"{record.table_name}_hnsw"])
    row = await cur.fetchone()
    return int(row[0]) if row and row[0] is not None else None


async def tick(app: web.Application) -> list[str]:
    """Reload, then calibrate each store that is due (one after the other). Returns the stores calibrated."""
    spec, settings, view = app[state.SPEC], app[state.SETTINGS], app[CALIBRATIONS]
    async with app[state.POOL].connection() as conn:
        view.by_store = await plans.load_all(conn)
        records = await stores.all_stores(conn)
        nodes = {record.id: await index_node(conn, record) for record in records}
    done: list[str] = []
    for record in records:
        target, declared_ef = target_of(spec, record)
        if target is None or record.analyzed_rows <= 0:
            continue
        if exact_is_cheap(record.analyzed_rows):
            continue  # searched exactly (search/vector.py): recall 1 by construction, nothing to choose
        reason = due(
            view.by_store.get(record.id),
            record,
            target,
            declared_ef,
            nodes.get(record.id),
            interval=settings.calibration_interval_seconds,
            now=time.time(),
            real_queries=len(view.samples.queries(record.id)),
        )
        if reason is not None and await calibrate_store(app, record, target, declared_ef, reason):
            done.append(record.id)
    return done


async def calibrate_store(
    app: web.Application, record: stores.StoreRecord, target: float, declared_ef: int | None, reason: str
) -> bool:
    """Calibrate under the store's advisory lock; False when another server holds it or it is no longer due."""
    settings, view = app[state.SETTINGS], app[CALIBRATIONS]
    async with await psycopg.AsyncConnection.connect(settings.dsn, autocommit=True) as lock_conn:
        cur = await lock_conn.execute("SELECT pg_try_advisory_lock(%s)", [lock_key(record.id)])
        row = await cur.fetchone()
        if not row or not row[0]:
            return False
        try:
            fresh = await stores.get(lock_conn, record.id)
            found = await plans.load(lock_conn, record.id)
            node = await index_node(lock_conn, record)
            now = time.time()
            real = len(view.samples.queries(record.id))
            interval = settings.calibration_interval_seconds
            if (
                fresh is None
                or due(found, fresh, target, declared_ef, node, interval=interval, now=now, real_queries=real) is None
            ):
                if found is not None:
                    view.by_store[record.id] = found
                return False
            view.running.add(record.id)
            log.info("calibration of store %s started (%s)", record.id, reason)
            try:
                result = await _measure(app, fresh, target, declared_ef, node)
            except (psycopg.Error, measure.BudgetExhausted) as exc:
                # Shown in the status route: redacted, though PostgreSQL's messages hold no secret of ours.
                message = app[state.REDACTOR].redact(str(exc).strip()[:300] or "the budget ran out before any result")
                view.errors[record.id] = message
                metrics.CALIBRATIONS.labels("failed").inc()
                log.warning("calibration of store %s failed: %s", record.id, message)
                return False
            await plans.save(lock_conn, result)
            saved = await plans.load(lock_conn, record.id)
            if saved is not None:
                view.by_store[record.id] = saved
            view.errors.pop(record.id, None)
            metrics.CALIBRATIONS.labels("reached" if result.reached else "not_reached").inc()
            log.info(
                "calibration of store %s: %s in %.1fs (%.1fs of database time)",
                record.id,
                ", ".join(
                    f"{name} recall {item.recall:.3f} with {item.plan.describe()}"
                    for name, item in result.groups.items()
                ),
                result.duration_seconds,
                result.db_seconds,
            )
            return True
        finally:
            view.running.discard(record.id)
            with contextlib.suppress(psycopg.Error):
                await lock_conn.execute("SELECT pg_advisory_unlock(%s)", [lock_key(record.id)])


async def _measure(
    app: web.Application, record: stores.StoreRecord, target: float, declared_ef: int | None, node: int | None
) -> plans.Calibration:
    settings, view = app[state.SETTINGS], app[CALIBRATIONS]
    kwargs: dict[str, Any] = {
        "store_id": record.id,
        "target": target,
        "rows": record.analyzed_rows,
        "declared_ef_search": declared_ef,
        "recent_queries": view.samples.queries(record.id),
        "recent_filters": view.samples.filters(record.id),
        "floor_ef_search": record.ef_search,
        "budget": measure.Budget(
            db_seconds=settings.calibration_budget_seconds, db_share=settings.calibration_db_share
        ),
        "calibrated_by": view.identity,
        "index_node": node,
    }
    if settings.read_dsn is not None:
        try:
            # The replica pays for the exact scans: `vectorstore_calibration_runs_total` and the status route
            # don't say where it ran, the replica's own pg_stat_user_tables does (tests/replicas).
            async with await psycopg.AsyncConnection.connect(settings.read_dsn, autocommit=True) as conn:
                await configure_connection(conn)
                return await measure.calibrate(conn, record.layout, **kwargs)
        except psycopg.OperationalError as exc:
            log.warning(
                "calibration of store %s: replica unreachable (%s); using the primary", record.id, str(exc)[:200]
            )
    async with await psycopg.AsyncConnection.connect(settings.dsn, autocommit=True) as conn:
        await configure_connection(conn)
        return await measure.calibrate(conn, record.layout, **kwargs)


async def _loop(app: web.Application) -> None:
    readiness = app[state.READINESS]
    await readiness.done.wait()
    if not readiness.ready:
        return
    settings = app[state.SETTINGS]
    while True:
        try:
            await tick(app)
        except (psycopg.Error, OSError) as exc:
            message = app[state.REDACTOR].redact(str(exc).strip()[:200])
            log.warning("calibration: %s; trying again in %.0fs", message, settings.calibration_poll_seconds)
        except Exception:
            # Never let the loop die: searches keep the last settings, and the next poll tries again.
            log.exception("calibration: unexpected error; trying again in %.0fs", settings.calibration_poll_seconds)
        await asyncio.sleep(settings.calibration_poll_seconds)


async def _calibration_ctx(app: web.Application) -> AsyncIterator[None]:
    task = asyncio.create_task(_loop(app))
    metrics.add_gauge_source("calibration", gauges(app))
    yield
    metrics.remove_gauge_source("calibration")
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def gauges(app: web.Application) -> metrics.GaugeSource:
    """Per calibrated store, read at scrape time from what this server loaded (the same on every server)."""

    def collect() -> Iterator[Metric]:
        view = app[CALIBRATIONS]
        estimate = GaugeMetricFamily(
            "vectorstore_search_recall_estimate",
            "Recall@10 of the store's searches against exact search, as the last calibration measured it with the "
            "settings in use; `filtered` is `false`, or the estimated selectivity bucket (0.1, 0.01, 0.001).",
            labels=["store", "filtered"],
        )
        low = GaugeMetricFamily(
            "vectorstore_search_recall_estimate_low",
            "Lower end of the 95% confidence interval of vectorstore_search_recall_estimate.",
            labels=["store", "filtered"],
        )
        sample = GaugeMetricFamily(
            "vectorstore_search_recall_sample_size",
            "Queries the recall estimate was measured on.",
            labels=["store", "filtered"],
        )
        target = GaugeMetricFamily(
            "vectorstore_search_recall_target", "The store's declared target_recall.", labels=["store"]
        )
        reached = GaugeMetricFamily(
            "vectorstore_search_recall_target_reached",
            "1 when every group reached the target, 0 when the best setting found is in use below it.",
            labels=["store"],
        )
        setting = GaugeMetricFamily(
            "vectorstore_search_calibrated_setting",
            "The settings searches use, by group: ef_search, max_scan_tuples, binary_depth, exact (1 or 0).",
            labels=["store", "filtered", "setting"],
        )
        duration = GaugeMetricFamily(
            "vectorstore_calibration_duration_seconds", "Wall time of the last calibration.", labels=["store"]
        )
        db_time = GaugeMetricFamily(
            "vectorstore_calibration_db_seconds",
            "Database time the last calibration's statements took (its cost).",
            labels=["store"],
        )
        age = GaugeMetricFamily(
            "vectorstore_calibration_age_seconds", "Seconds since the last calibration ended.", labels=["store"]
        )
        now = time.time()
        for store_id, found in sorted(view.by_store.items()):
            target.add_metric([store_id], found.target)
            reached.add_metric([store_id], 1.0 if found.reached else 0.0)
            duration.add_metric([store_id], found.duration_seconds)
            db_time.add_metric([store_id], found.db_seconds)
            age.add_metric([store_id], max(0.0, now - found.calibrated_at))
            for name, measured in found.groups.items():
                label = "false" if name == plans.UNFILTERED else name
                estimate.add_metric([store_id, label], measured.recall)
                low.add_metric([store_id, label], measured.low)
                sample.add_metric([store_id, label], measured.queries)
                plan = measured.plan
                setting.add_metric([store_id, label, "exact"], 1.0 if plan.exact else 0.0)
                if not plan.exact:
                    setting.add_metric([store_id, label, "ef_search"], plan.ef_search)
                    setting.add_metric([store_id, label, "max_scan_tuples"], plan.max_scan_tuples)
                    if plan.binary_depth is not None:
                        setting.add_metric([store_id, label, "binary_depth"], plan.binary_depth)
        yield from (estimate, low, sample, target, reached, setting, duration, db_time, age)

    return collect


def setup(app: web.Application) -> None:
    app[CALIBRATIONS] = Calibrations()
    app.cleanup_ctx.append(_calibration_ctx)
