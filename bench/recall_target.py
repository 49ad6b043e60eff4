"""Target recall: what `search.target_recall` chooses and what it gets, unfiltered and filtered, next to fixed settings.

    python bench/recall_target.py [--rows 50000] [--dims 768] [--settings none halfvec] [--targets 0.9 0.95 0.98]
                                  [--plot docs/recall_target.png] [--json FILE]

For each quantization it builds a store with the server's own code (as bench/large_stores.py does: clustered
unit vectors, binary COPY, then CREATE INDEX), with attributes at known selectivity: `ten` (10% of rows a
value), `hundred` (1%), `thousand` (0.1%). Then:

- fixed settings: the default (ef_search 100, max_scan_tuples 20,000) and an ef_search sweep, the curve an
  operator could pick from by hand;
- for each target: `vectorstore.calibration.measure.calibrate` (what the server runs in the background, fed
  `--traffic` recent queries, as a server that has seen traffic), timed; then every evaluation query searched
  the way the server does (the planner's selectivity estimate picks the plan: calibration/plans.py).

Evaluation queries are fresh points from the same clusters, none of them in the calibration's sample. Recall@10
is against exact search with the same filter, computed in numpy over the stored precision (halfvec: the
vectors rounded to float16). `short` counts searches that returned fewer than 10 rows although 10 match.
Filters: `eq` and `in` at 10%, 1% and 0.1%. p50 is of one search at a time (its planner estimate included);
QPS is unfiltered at concurrency 16 through a psycopg pool.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import psycopg
from _db import bench_server, finish_report, fresh_database, new_unindexed_store
from pgvector.psycopg import register_vector_async
from psycopg import sql
from psycopg_pool import AsyncConnectionPool

from vectorstore.calibration import measure, plans
from vectorstore.search import statistics as store_statistics
from vectorstore.search import vector
from vectorstore.search.filters import compile_filters
from vectorstore.storage import stores, tables
from vectorstore.storage.migrations import migrate

Pool = AsyncConnectionPool[psycopg.AsyncConnection[Any]]
K = 10


def make_vectors(rows: int, dims: int, clusters: int, queries: int, spread: float, seed: int = 7) -> tuple[Any, Any]:
    """bench/large_stores.py's clustered unit vectors, with the noise around each centre a parameter: the
    larger `spread`, the less the nearest neighbours stand out, the harder for HNSW (0.6 there)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dims), dtype=np.float32)
    data = np.empty((rows, dims), dtype=np.float32)
    for start in range(0, rows, 50000):
        stop = min(rows, start + 50000)
        picks = rng.integers(0, clusters, stop - start)
        data[start:stop] = centres[picks] + spread * rng.standard_normal((stop - start, dims), dtype=np.float32)
    data /= np.linalg.norm(data, axis=1, keepdims=True)
    query = centres[rng.integers(0, clusters, queries)]
    query = query + spread * rng.standard_normal((queries, dims), dtype=np.float32)
    query /= np.linalg.norm(query, axis=1, keepdims=True)
    return data, query


def attributes_of(index: int) -> dict[str, str]:
    return {"ten": f"t{index % 10}", "hundred": f"h{index % 100}", "thousand": f"k{index % 1000}"}


# (name, selectivity label, filter, numpy mask of the rows it keeps)
def filters_for(rows: int) -> list[tuple[str, str, dict[str, Any], Any]]:
    index = np.arange(rows)
    return [
        ("eq 10%", "10%", {"type": "eq", "key": "ten", "value": "t3"}, index % 10 == 3),
        ("in 10%", "10%", {"type": "in", "key": "hundred", "value": [f"h{i}" for i in range(10)]}, index % 100 < 10),
        ("eq 1%", "1%", {"type": "eq", "key": "hundred", "value": "h7"}, index % 100 == 7),
        ("in 1%", "1%", {"type": "in", "key": "thousand", "value": [f"k{i}" for i in range(10)]}, index % 1000 < 10),
        ("eq 0.1%", "0.1%", {"type": "eq", "key": "thousand", "value": "k42"}, index % 1000 == 42),
        ("in 0.1%", "0.1%", {"type": "in", "key": "thousand", "value": ["k42"]}, index % 1000 == 42),
    ]


def log(**fields: Any) -> None:
    """A progress line on stderr (a long run is followed with `tail -f`)."""
    print(json.dumps({"at": time.strftime("%H:%M:%S"), **fields}), file=sys.stderr, flush=True)


async def existing(
    conn: psycopg.AsyncConnection[Any], setting: str, data: Any, signature: str
) -> stores.StoreRecord | None:
    """The store a kept earlier run built for `setting`, when it holds these rows (the same `signature`: size
    and generator arguments) with its HNSW index built."""
    found = await stores.get(conn, f"vs_recall_{setting}")
    if found is None or found.name != signature:
        return None
    cur = await conn.execute(
        "SELECT (SELECT count(*) FROM pg_indexes WHERE tablename = %s AND indexdef ILIKE '%%USING hnsw%%')",
        [found.table_name],
    )
    row = await cur.fetchone()
    count = await conn.execute(sql.SQL("SELECT count(*) FROM {t}").format(t=found.layout.ident))
    rows = await count.fetchone()
    if not row or not row[0] or not rows or rows[0] != len(data):
        return None
    return found


async def build(
    conn: psycopg.AsyncConnection[Any], setting: str, data: Any, *, reuse: bool, signature: str
) -> tuple[stores.StoreRecord, dict[str, float]]:
    if reuse and (kept := await existing(conn, setting, data, signature)) is not None:
        log(setting=setting, phase="reused the store built by an earlier run", table=kept.table_name)
        return kept, {}
    found = await stores.get(conn, f"vs_recall_{setting}")
    if found is not None:
        await conn.execute(sql.SQL("DROP TABLE IF EXISTS {t}").format(t=found.layout.ident))
        await conn.execute("DELETE FROM vector_stores WHERE id = %s", [found.id])
    record = await new_unindexed_store(conn, f"vs_recall_{setting}", setting, data.shape[1], name=signature)
    layout = record.layout
    rows = (
        tables.ChunkRow(id=f"r{i}", content=f"chunk {i}", embedding=data[i], attributes=attributes_of(i))
        for i in range(len(data))
    )
    started = time.perf_counter()
    async with conn.transaction():
        await tables.copy_chunks(conn, layout, rows)
    copied = time.perf_counter() - started
    log(setting=setting, phase="copied", seconds=round(copied, 1))
    # The graph must fit in maintenance_work_mem or pgvector builds it on disk, many times slower
    # (docs/benchmarks.md, large stores); one parallel worker on two cores.
    await conn.execute("SET maintenance_work_mem = '8GB'")
    await conn.execute("SET max_parallel_maintenance_workers = 1")
    started = time.perf_counter()
    for statement in tables.index_statements(layout):
        await conn.execute(statement)
    built = time.perf_counter() - started
    log(setting=setting, phase="index built", seconds=round(built, 1))
    # ANALYZE and the registry's row count, as the server's writers leave them (search/statistics.py).
    await store_statistics.keep_current(conn, record, force=True)
    found = await stores.get(conn, record.id)
    assert found is not None
    return found, {"copy_seconds": round(copied, 1), "index_build_seconds": round(built, 1)}


def truth(stored: Any, queries: Any, mask: Any | None) -> list[list[str]]:
    """Exact top-10 ids per query among the rows `mask` keeps (all when None), over the stored precision."""
    ids = np.arange(len(stored)) if mask is None else np.flatnonzero(mask)
    subset = stored if mask is None else stored[ids]
    out: list[list[str]] = []
    for start in range(0, len(queries), 50):
        scores = queries[start : start + 50] @ subset.T
        part = np.argpartition(-scores, K, axis=1)[:, :K]
        ordered = np.take_along_axis(part, np.argsort(-np.take_along_axis(scores, part, axis=1), axis=1), axis=1)
        out += [[f"r{ids[i]}" for i in row] for row in ordered]
    return out


async def search(
    conn: psycopg.AsyncConnection[Any],
    record: stores.StoreRecord,
    query: list[float],
    where: Any,
    params: Sequence[Any],
    calibration: plans.Calibration | None,
    fixed: plans.Plan,
) -> list[str]:
    """One search as the server makes it (api/search.py): the calibrated plan for its estimated selectivity."""
    plan = fixed
    if calibration is not None:
        selectivity = await plans.estimate_selectivity(conn, record.layout, where, params, record.analyzed_rows)
        plan = calibration.plan_for(selectivity) or fixed
    hits = await vector.find_nearest(
        conn,
        record.layout,
        query,
        limit=K,
        ef_search=plan.ef_search,
        where=where,
        where_params=params,
        exact=plan.exact,
        max_scan_tuples=plan.max_scan_tuples,
        binary_depth=plan.binary_depth,
    )
    return [hit.id for hit in hits]


async def evaluate(
    pool: Pool,
    record: stores.StoreRecord,
    queries: list[list[float]],
    truths: dict[str, list[list[str]]],
    filters: list[tuple[str, str, dict[str, Any], Any]],
    calibration: plans.Calibration | None,
    fixed: plans.Plan,
    *,
    qps: bool,
) -> dict[str, Any]:
    result: dict[str, Any] = {}
    compiled: dict[str, tuple[Any, list[Any]]] = {"unfiltered": (vector.NO_FILTER, [])}
    compiled |= {name: compile_filters(spec) for name, _, spec, _ in filters}
    async with pool.connection() as conn:
        for name, (where, params) in compiled.items():
            recalls, times, short = [], [], 0
            for query, expected in zip(queries, truths[name], strict=True):
                started = time.perf_counter()
                found = await search(conn, record, query, where, params, calibration, fixed)
                times.append(time.perf_counter() - started)
                recalls.append(len(set(found) & set(expected)) / len(expected))
                short += len(found) < min(K, len(expected))
            result[name] = {
                "recall": round(statistics.fmean(recalls), 4),
                "p50_ms": round(statistics.median(times) * 1000, 2),
                "short": short,
            }
    if qps:
        result["qps_c16"], result["p99_c16_ms"] = await concurrent(pool, record, queries, calibration, fixed)
    return result


async def concurrent(
    pool: Pool,
    record: stores.StoreRecord,
    queries: list[list[float]],
    calibration: plans.Calibration | None,
    fixed: plans.Plan,
    rounds: int = 1,
) -> tuple[float, float]:
    """(QPS, p99 ms) of unfiltered searches by 16 concurrent clients, `rounds` times over the queries."""
    position = 0
    times: list[float] = []
    work = queries * rounds

    async def worker() -> None:
        nonlocal position
        while position < len(work):
            index = position
            position += 1
            async with pool.connection() as conn:
                began = time.perf_counter()
                await search(conn, record, work[index], vector.NO_FILTER, [], calibration, fixed)
                times.append(time.perf_counter() - began)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(16)))
    elapsed = time.perf_counter() - started
    ordered = sorted(times)
    return round(len(work) / elapsed, 1), round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000, 2)


async def p99_during_calibration(
    pool: Pool,
    dsn: str,
    record: stores.StoreRecord,
    queries: list[list[float]],
    traffic: list[list[float]],
    target: float,
    ef_search: int,
) -> dict[str, Any]:
    """Search p99 (c=16, fixed `ef_search`) alone, then while a calibration runs as the server runs it (half a
    database core at most), on the same database."""
    fixed = plans.Plan(ef_search)
    _, alone = await concurrent(pool, record, queries, None, fixed, rounds=3)
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await register_vector_async(conn)
        task = asyncio.create_task(
            measure.calibrate(
                conn,
                record.layout,
                store_id=record.id,
                target=target,
                rows=record.analyzed_rows,
                declared_ef_search=None,
                recent_queries=traffic,
                floor_ef_search=record.ef_search,
                budget=measure.Budget(db_share=0.5),
            )
        )
        _, during = await concurrent(pool, record, queries, None, fixed, rounds=3)
        overlapped = not task.done()
        await task
    return {"p99_alone_ms": alone, "p99_during_ms": during, "ratio": round(during / alone, 3), "overlapped": overlapped}


async def bench(args: argparse.Namespace, dsn: str) -> dict[str, Any]:
    data, queries = make_vectors(args.rows, args.dims, args.clusters, args.queries + args.traffic, args.spread)
    traffic = queries[args.queries :].tolist()
    evaluation = queries[: args.queries]
    filters = filters_for(args.rows)
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as setup:
        await migrate(setup)
    report: dict[str, Any] = {}
    for setting in args.settings:
        stored = data.astype(np.float16).astype(np.float32) if setting == "halfvec" else data
        truths = {"unfiltered": truth(stored, evaluation, None)} | {
            name: truth(stored, evaluation, mask) for name, _, _, mask in filters
        }
        del stored
        log(setting=setting, phase="exact top-10 in numpy done")
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            await register_vector_async(conn)
            signature = f"{setting} {args.rows}x{args.dims} clusters {args.clusters} spread {args.spread}"
            record, built = await build(conn, setting, data, reuse=args.reuse, signature=signature)
        entry: dict[str, Any] = {**built, "fixed": {}, "targets": {}}
        query_list = evaluation.tolist()
        async with AsyncConnectionPool(
            dsn, min_size=16, max_size=16, configure=register_vector_async, open=False
        ) as pool:
            await pool.open(wait=True)
            await evaluate(
                pool,
                record,
                query_list[:20],
                {k: v[:20] for k, v in truths.items()},
                filters,
                None,
                plans.Plan(100),
                qps=False,
            )
            for ef in args.sweep:
                fixed = plans.Plan(ef)
                entry["fixed"][str(ef)] = await evaluate(
                    pool, record, query_list, truths, filters, None, fixed, qps=True
                )
                print(json.dumps({setting: {"fixed": ef, **entry["fixed"][str(ef)]}}), file=sys.stderr, flush=True)
            for target in args.targets:
                log(setting=setting, phase="calibrating", target=target)
                async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
                    await register_vector_async(conn)
                    started = time.perf_counter()
                    calibration = await measure.calibrate(
                        conn,
                        record.layout,
                        store_id=record.id,
                        target=target,
                        rows=record.analyzed_rows,
                        declared_ef_search=None,
                        recent_queries=traffic,
                        floor_ef_search=record.ef_search,
                        budget=measure.Budget(db_seconds=args.budget, db_share=1.0),
                    )
                    seconds = time.perf_counter() - started
                measured = await evaluate(
                    pool, record, query_list, truths, filters, calibration, plans.Plan(100), qps=True
                )
                entry["targets"][str(target)] = {
                    "calibration_seconds": round(seconds, 1),
                    "calibration_db_seconds": calibration.db_seconds,
                    "estimate": {name: item.recall for name, item in calibration.groups.items()},
                    "chosen": {name: item.plan.describe() for name, item in calibration.groups.items()},
                    "filter_selectivities": {
                        name: list(item.selectivities) for name, item in calibration.groups.items()
                    },
                    "reached": {name: item.reached for name, item in calibration.groups.items()},
                    **measured,
                }
                print(
                    json.dumps({setting: {"target": target, **entry["targets"][str(target)]}}),
                    file=sys.stderr,
                    flush=True,
                )
            if args.p99 and setting == args.settings[0]:
                entry["p99_during_calibration"] = await p99_during_calibration(
                    pool, dsn, record, query_list, traffic, args.targets[0], args.p99_ef_search
                )
                print(json.dumps({setting: entry["p99_during_calibration"]}), file=sys.stderr, flush=True)
        report[setting] = entry
        if args.drop:
            async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
                await conn.execute(sql.SQL("DROP TABLE {t}").format(t=sql.Identifier(record.table_name)))
    return report


def plot(report: dict[str, Any], path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7.5, 4.8))
    for color, (setting, entry) in zip(("tab:blue", "tab:orange", "tab:green"), report.items(), strict=False):
        sweep = sorted(entry["fixed"].items(), key=lambda item: int(item[0]))
        axes.plot(
            [item["unfiltered"]["recall"] for _, item in sweep],
            [item["qps_c16"] for _, item in sweep],
            "o-",
            color=color,
            label=f"{setting}: fixed ef_search {', '.join(ef for ef, _ in sweep)}",
        )
        for target, item in entry["targets"].items():
            axes.plot(item["unfiltered"]["recall"], item["qps_c16"], "*", color=color, markersize=14)
            axes.annotate(
                f"target {target}",
                (item["unfiltered"]["recall"], item["qps_c16"]),
                fontsize=8,
                xytext=(4, 4),
                textcoords="offset points",
            )
    axes.set_xlabel("recall@10 against exact search (unfiltered)")
    axes.set_ylabel("searches per second, 16 concurrent")
    axes.set_title(title, fontsize=10)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def from_logs(paths: Sequence[str]) -> dict[str, Any]:
    """The report's `settings` rebuilt from the progress lines runs wrote on stderr (a run stopped early, or
    settings measured by separate processes at the same time)."""
    settings: dict[str, Any] = {}
    for path in paths:
        with open(path) as handle:
            for line in handle:
                if not line.startswith("{"):
                    continue
                item = json.loads(line)
                if "at" in item:
                    continue
                ((setting, value),) = item.items()
                entry = settings.setdefault(setting, {"fixed": {}, "targets": {}})
                if "fixed" in value:
                    entry["fixed"][str(value.pop("fixed"))] = value
                elif "target" in value:
                    entry["targets"][str(value.pop("target"))] = value
                elif "p99_alone_ms" in value:
                    entry["p99_during_calibration"] = value
    return settings


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=50000)
    parser.add_argument("--dims", type=int, default=768)
    parser.add_argument("--clusters", type=int, default=200)
    parser.add_argument("--spread", type=float, default=1.0, help="noise around each cluster centre")
    parser.add_argument("--queries", type=int, default=200, help="evaluation queries")
    parser.add_argument("--traffic", type=int, default=measure.QUERIES, help="queries the calibration samples")
    parser.add_argument("--settings", nargs="+", default=["none", "halfvec"])
    parser.add_argument("--targets", type=float, nargs="*", default=[0.9, 0.95, 0.98])
    parser.add_argument("--sweep", type=int, nargs="*", default=[20, 40, 100, 200, 400])
    parser.add_argument("--budget", type=float, default=120.0, help="database seconds per calibration")
    parser.add_argument(
        "--p99", action="store_true", help="also measure search p99 during a calibration (first setting)"
    )
    parser.add_argument(
        "--p99-ef-search", type=int, default=64, help="the fixed ef_search of that measurement's searches"
    )
    parser.add_argument(
        "--merge", nargs="*", default=[], help="reports (--json) of earlier runs to plot with this one's settings"
    )
    parser.add_argument("--plot", help="write the recall/QPS plot here (PNG)")
    parser.add_argument("--drop", action="store_true")
    parser.add_argument("--keep", help="a data directory for the embedded server that outlives the run")
    parser.add_argument(
        "--reuse", action="store_true", help="use the stores an earlier run left in --keep when they hold these rows"
    )
    parser.add_argument("--json")
    parser.add_argument(
        "--from-logs", nargs="*", default=[], help="no run: plot and report from earlier runs' stderr progress lines"
    )
    args = parser.parse_args()
    if args.from_logs:
        settings = from_logs(args.from_logs)
        if args.plot:
            plot(
                settings,
                args.plot,
                f"{args.rows:,} x {args.dims}, clustered; recall vs QPS (busy shared 2-core machine)",
            )
        finish_report({"settings": settings, "from_logs": args.from_logs}, args.json)
        return 0
    started = time.perf_counter()
    with bench_server(args.keep) as server_dsn:
        dsn = fresh_database(server_dsn, "recall_target_bench", reuse=args.reuse)
        report: dict[str, Any] = {"settings": asyncio.run(bench(args, dsn))}
    report["args"] = {key: value for key, value in vars(args).items() if key not in ("json", "plot")}
    report["wall_seconds"] = round(time.perf_counter() - started)
    for path in args.merge:
        with open(path) as handle:
            report["settings"] = json.load(handle)["settings"] | report["settings"]
    if args.plot:
        plot(
            report["settings"],
            args.plot,
            f"{args.rows:,} x {args.dims}, clustered; recall vs QPS (busy shared 2-core machine)",
        )
    finish_report(report, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
