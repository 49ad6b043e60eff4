"""One calibration of one store: measure recall@k of candidate settings against exact search, keep the cheapest
that meets the target.

Queries: the store's recent real query embeddings (samples.py); when there are fewer than `QUERIES`, stored
vectors moved by noise scaled to the data make up the rest (each dimension gets Gaussian noise of `NOISE` times
its standard deviation over a sample of rows), each searched with its own row left out of both result lists.
A stored point is easier to search than a real query (its HNSW neighbour list *is* its nearest neighbours),
and the noise is what makes it a query. Measured at 40,000 x 768 clustered (bench/recall_target.py's data, 100
queries each), recall@10 at ef_search 10 / 20 / 40 / 64: fresh points from the clusters 0.781 / 0.933 / 0.987 /
1.000; stored vectors with noise 0.1 of their length (the rule before) 0.898 / 0.949 / 0.970 / 1.000 (too
easy where it matters); with `NOISE` 0.5 of the data's spread 0.825 / 0.916 / 0.990 / 1.000; 1.0: 0.755 / 0.864 /
0.979 / 1.000. Still, a calibration without a full sample of real queries only ever *raises* the settings
above the store's fixed ones (`floor_ef_search`); the service calibrates again once enough real queries arrived.

Truth: the exact top-k of each query, by the server's own exact statement (`ORDER BY (embedding <op> q) + 0`,
which no HNSW index can serve: a sequential scan, or for a filter the GIN index on `attributes` then a sort).
It runs with `max_parallel_workers_per_gather = 0`, no JIT and a statement timeout, and the whole calibration
is paced to use at most `Budget.db_share` of one database core and stops at `Budget.db_seconds`.

Unfiltered: `ef_search` (binary stores: the rescoring depth) climbs `EF_LADDER` until the mean recall@k reaches
the target. Filtered: sample filters are the recent real ones plus `eq` and `in` filters made from the store's
own attribute values at about 10%, 1% and 0.1% of rows; they are grouped by the planner's estimate of their
selectivity (plans.py says why), and per group `max_scan_tuples`, then `ef_search`, climb until every filter
of the group reaches the target. An exact search is chosen instead when it measured faster than the HNSW
setting that reaches the target, or when none does and it takes at most `exact_cap_ms(target)`. A target nothing
reaches keeps the setting with the best recall found and is reported as not reached; search never fails on it.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import math
import random
import statistics
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import psycopg
from psycopg import sql

from vectorstore.calibration.plans import (
    BUCKETS,
    UNFILTERED,
    UNFILTERED_ABOVE,
    Calibration,
    Measured,
    Plan,
    bucket_of,
    estimate_selectivity,
)
from vectorstore.calibration.samples import Filter
from vectorstore.search import vector
from vectorstore.search.filters import compile_filters
from vectorstore.storage.tables import Layout

K = 10
QUERIES = 100
MIN_QUERIES = 20
"""Below this many queries a calibration gives up (its budget is too small for the store): the estimate's
interval would be too wide to choose by."""
TRUTH_SHARE = 0.4
"""Of the budget, what the unfiltered exact top-k may use: the rest is for trying settings and the filters. A
store too big for the budget is measured on fewer queries (a wider interval), not left uncalibrated."""
FILTER_QUERIES = 20
"""Queries per sample filter."""
FILTERS_PER_GROUP = 4
"""Sample filters kept per group (the others are only counted), spread over the fractions of rows they keep."""
EF_LADDER = (10, 16, 24, 32, 40, 48, 64, 80, 100, 128, 160, 200, 256, 320, 400, 500, 640, 800, 1000)
SCAN_TUPLES_LADDER = (20000, 50000, 100000, 200000, 500000, 1000000, 2000000)
CONFIDENCE_Z = 1.28
"""A setting meets the target when the lower end of the one-sided 90% interval of its mean recall does. The
mean alone was optimistic: taking the first rung whose noisy estimate crosses the target picks the lucky ones
(bench/recall_target.py, 40,000 x 768, 50 queries: estimate 0.954, independent measurement 0.922)."""
EXACT_MAX_MS = 50.0
"""When no HNSW setting reaches the target, an exact search (which does) is chosen when its p50 is at most
`exact_cap_ms(target)`: this for a target of 0.9 or below, more as the target rises."""
EXACT_CAP_MAX_MS = 2000.0


def exact_cap_ms(target: float) -> float:
    """What an exact search may cost when it is the only way to the target: `EXACT_MAX_MS` times the square of
    how many times fewer misses than 10% the target allows, so 50 ms at 0.9, 200 ms at 0.95, 1,250 ms at 0.98
    (at most `EXACT_CAP_MAX_MS`). A fixed
    50 ms kept a 1% filter at 500,000 x 768 on HNSW at recall 0.82-0.86 for a target of 0.95, when the exact
    search through the filter's GIN index scored 1.000 in ~130 ms on a busy machine: a declared target is a
    request for recall, and the cost it is worth grows with it."""
    allowed = max(1.0 - target, 1e-6)
    return min(EXACT_CAP_MAX_MS, EXACT_MAX_MS * (0.1 / allowed) ** 2)


NOISE = 0.5
"""The noise added to a stored vector to make a query of it, in standard deviations of each dimension over the
sampled rows (see the module's measurements)."""
ATTRIBUTE_SAMPLE_ROWS = 50000

T = TypeVar("T")


class BudgetExhausted(Exception):
    pass


@dataclass
class Budget:
    """What a calibration may cost the database: `db_seconds` in all, at most `db_share` of one core while it
    runs (it sleeps between statements), each statement at most `statement_seconds`."""

    db_seconds: float = 120.0
    db_share: float = 0.5
    statement_seconds: float = 30.0
    spent: float = 0.0
    longest: float = 0.0
    started: float = field(default_factory=time.monotonic)

    async def run(self, work: Callable[[], Awaitable[T]]) -> tuple[T, float]:
        if self.spent >= self.db_seconds:
            raise BudgetExhausted
        began = time.perf_counter()
        result = await work()
        took = time.perf_counter() - began
        self.spent += took
        self.longest = max(self.longest, took)
        if self.db_share < 1.0:
            await asyncio.sleep(took * (1.0 / self.db_share - 1.0))
        return result, took


@dataclass(frozen=True)
class Query:
    vector: list[float]
    exclude: str | None = None
    """The row a perturbed query was made from: left out of both result lists."""


@dataclass
class _Case:
    """One query (with or without a filter) and its exact top-k."""

    query: Query
    where: sql.Composable
    params: tuple[Any, ...]
    truth: list[str]
    exact_seconds: float
    filter_index: int = -1


def mean_interval(values: Sequence[float]) -> tuple[float, float, float]:
    """Mean and its 95% confidence interval (normal approximation over per-query values), clipped to 0..1."""
    if not values:
        return 0.0, 0.0, 0.0
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, 0.0, 1.0
    half = 1.96 * statistics.stdev(values) / math.sqrt(len(values))
    return mean, max(0.0, mean - half), min(1.0, mean + half)


async def prepare(conn: psycopg.AsyncConnection[Any], budget: Budget) -> None:
    """Session settings that keep the calibration's scans small: one core, no JIT, bounded statements."""
    await conn.execute(
        "SELECT set_config('max_parallel_workers_per_gather', '0', false), set_config('jit', 'off', false),"
        " set_config('statement_timeout', %s, false)",
        [str(int(budget.statement_seconds * 1000))],
    )


async def perturbed_queries(
    conn: psycopg.AsyncConnection[Any], layout: Layout, count: int, rows: float, seed: int, noise: float = NOISE
) -> list[Query]:
    """`count` stored vectors, each moved by Gaussian noise scaled to the data, remembering its row.

    The noise of each dimension has `noise` times that dimension's standard deviation over the sampled rows
    (the sample is four times `count`), so it is as large as the data's own spread there, whatever the
    vectors' length, scale or dimensions."""
    if count <= 0:
        return []
    percent = min(100.0, max(0.01, count * 20 * 100.0 / max(rows, 1.0)))
    cur = await conn.execute(
        sql.SQL("SELECT id, embedding::text FROM {t} TABLESAMPLE SYSTEM (%s) REPEATABLE (%s) LIMIT %s").format(
            t=layout.ident
        ),
        [percent, seed, count * 4],
    )
    found = [
        (str(row_id), [float(item) for item in str(text).strip("[]").split(",")])
        for row_id, text in await cur.fetchall()
    ]
    if not found:
        return []
    spread = [statistics.pstdev(column) for column in zip(*(values for _, values in found), strict=True)]
    rng = random.Random(seed)  # noqa: S311 - sampling, not secrecy
    rng.shuffle(found)
    queries: list[Query] = []
    for row_id, values in found[:count]:
        moved = [value + noise * rng.gauss(0.0, deviation) for value, deviation in zip(values, spread, strict=True)]
        queries.append(Query(moved, row_id))
    return queries


async def _nearest(
    conn: psycopg.AsyncConnection[Any],
    layout: Layout,
    query: Query,
    where: sql.Composable,
    params: Sequence[Any],
    plan: Plan,
) -> list[str]:
    limit = K + (1 if query.exclude is not None else 0)
    hits = await vector.find_nearest(
        conn,
        layout,
        query.vector,
        limit=limit,
        ef_search=plan.ef_search,
        where=where,
        where_params=params,
        exact=plan.exact,
        max_scan_tuples=plan.max_scan_tuples,
        binary_depth=plan.binary_depth,
    )
    return [hit.id for hit in hits if hit.id != query.exclude][:K]


async def _cases(
    conn: psycopg.AsyncConnection[Any],
    layout: Layout,
    queries: Sequence[Query],
    where: sql.Composable,
    params: Sequence[Any],
    budget: Budget,
    filter_index: int = -1,
    share: float = 1.0,
) -> list[_Case]:
    """The queries with their exact top-k, as many as fit in `share` of the budget (at least `MIN_QUERIES`)."""
    cases: list[_Case] = []
    exact = Plan(ef_search=K, exact=True)
    for query in queries:
        if len(cases) >= MIN_QUERIES and budget.spent >= share * budget.db_seconds:
            break
        try:
            truth, took = await budget.run(functools.partial(_nearest, conn, layout, query, where, params, exact))
        except BudgetExhausted:
            break  # what was measured stands; the caller decides whether it is enough
        if truth:
            cases.append(_Case(query, where, tuple(params), truth, took, filter_index))
    return cases


@dataclass(frozen=True)
class _Trial:
    plan: Plan
    recalls: list[float]
    seconds: list[float]
    per_filter: dict[int, float]

    @property
    def recall(self) -> float:
        return statistics.fmean(self.recalls) if self.recalls else 0.0

    @property
    def worst(self) -> float:
        """The group's recall for the target: its worst sample filter, else the lower bound of the mean (see
        CONFIDENCE_Z); filtered groups have few queries per filter, so the worst filter's mean is their bound."""
        if self.per_filter:
            return min(self.per_filter.values())
        if len(self.recalls) < 2:
            return self.recall
        return self.recall - CONFIDENCE_Z * statistics.stdev(self.recalls) / math.sqrt(len(self.recalls))

    @property
    def p50_ms(self) -> float:
        return statistics.median(self.seconds) * 1000 if self.seconds else 0.0


async def _trial(
    conn: psycopg.AsyncConnection[Any], layout: Layout, cases: Sequence[_Case], plan: Plan, budget: Budget
) -> _Trial:
    recalls: list[float] = []
    seconds: list[float] = []
    by_filter: dict[int, list[float]] = {}
    for case in cases:
        found, took = await budget.run(
            functools.partial(_nearest, conn, layout, case.query, case.where, case.params, plan)
        )
        recall = len(set(found) & set(case.truth)) / len(case.truth)
        recalls.append(recall)
        seconds.append(took)
        if case.filter_index >= 0:
            by_filter.setdefault(case.filter_index, []).append(recall)
    return _Trial(plan, recalls, seconds, {index: statistics.fmean(values) for index, values in by_filter.items()})


def _measured(
    trial: _Trial, target: float, cases: Sequence[_Case], filters: int, selectivities: list[float]
) -> Measured:
    mean, low, high = mean_interval(trial.recalls)
    if trial.plan.exact:
        mean, low, high = 1.0, 1.0, 1.0
    return Measured(
        plan=trial.plan,
        recall=round(mean, 4),
        low=round(low, 4),
        high=round(high, 4),
        queries=len(cases),
        reached=trial.plan.exact or trial.worst >= target,
        p50_ms=round(trial.p50_ms, 3),
        filters=filters,
        selectivities=tuple(round(value, 6) for value in selectivities),
    )


async def _climb(
    conn: psycopg.AsyncConnection[Any],
    layout: Layout,
    cases: Sequence[_Case],
    plans: Sequence[Plan],
    target: float,
    budget: Budget,
) -> tuple[_Trial | None, _Trial | None]:
    """(the first plan that reaches the target, the best one tried); plans go from cheap to dear.

    The first is the cheapest: an approximate search is always planned on the index (search/vector.py), so
    its cost grows with `ef_search`. (Before that guard the planner scanned the table at some rungs, 300-800 ms
    at ef_search 100 on 40,000 x 768, and the climb tried two rungs more to dodge them.)"""
    best: _Trial | None = None
    for plan in plans:
        try:
            trial = await _trial(conn, layout, cases, plan, budget)
        except BudgetExhausted:
            break
        if best is None or trial.worst > best.worst:
            best = trial
        if trial.worst >= target:
            return trial, best
    return None, best


def _exact_trial(cases: Sequence[_Case]) -> _Trial:
    return _Trial(Plan(ef_search=K, exact=True), [1.0] * len(cases), [case.exact_seconds for case in cases], {})


def _choose(reached: _Trial | None, best: _Trial | None, exact: _Trial | None, target: float) -> _Trial:
    if exact is None:
        return reached or best or _Trial(Plan(ef_search=vector.MAX_EF_SEARCH), [], [], {})
    if reached is not None:
        return exact if exact.p50_ms < reached.p50_ms else reached
    if exact.p50_ms <= exact_cap_ms(target) or best is None:
        return exact
    return best


def _unfiltered_plans(layout: Layout, declared_ef_search: int | None, floor: int) -> list[Plan]:
    """Cheap to dear. `floor`: the lowest ef_search (binary: rescoring depth) allowed."""
    if declared_ef_search is not None:
        return [Plan(ef_search=declared_ef_search)]
    if layout.quantization == "binary":
        depths = [depth for depth in EF_LADDER if depth >= max(K, floor)]
        return [Plan(ef_search=depth, binary_depth=depth) for depth in depths or [vector.MAX_EF_SEARCH]]
    return [Plan(ef_search=ef) for ef in [ef for ef in EF_LADDER if ef >= max(K, floor)] or [vector.MAX_EF_SEARCH]]


def _filtered_plans(base: Plan, rows: float) -> list[Plan]:
    scan = [tuples for tuples in SCAN_TUPLES_LADDER if tuples < rows * 2] or [SCAN_TUPLES_LADDER[0]]
    plans = [Plan(base.ef_search, tuples, base.binary_depth) for tuples in scan]
    for ef in (200, 400, 1000):
        if ef > base.ef_search:
            plans.append(Plan(ef, scan[-1], ef if base.binary_depth is not None else None))
    return plans


def spread_out(items: Sequence[T], count: int) -> list[T]:
    """`count` of `items` (in their order) from first to last, evenly spaced; all of them when few."""
    if len(items) <= count:
        return list(items)
    if count <= 1:
        return list(items[:count])
    return [items[round(index * (len(items) - 1) / (count - 1))] for index in range(count)]


async def attribute_filters(
    conn: psycopg.AsyncConnection[Any], layout: Layout, rows: float, budget: Budget
) -> list[tuple[dict[str, Any], float]]:
    """`eq` and `in` filters over the store's own attribute values keeping about 10%, 1% and 0.1% of rows, with
    the fraction they keep in a sample of `ATTRIBUTE_SAMPLE_ROWS` rows."""
    percent = min(100.0, ATTRIBUTE_SAMPLE_ROWS * 100.0 / max(rows, 1.0))
    statement = sql.SQL(
        "SELECT a.key, a.value, count(*) FROM (SELECT attributes FROM {t} TABLESAMPLE SYSTEM (%s) REPEATABLE (7))"
        " AS s, jsonb_each(s.attributes) AS a WHERE jsonb_typeof(a.value) IN ('string', 'number', 'boolean')"
        " GROUP BY 1, 2 HAVING count(*) > 1 ORDER BY 3 DESC LIMIT 5000"
    ).format(t=layout.ident)

    async def read() -> tuple[list[Any], float]:
        cur = await conn.execute(statement, [percent])
        found = await cur.fetchall()
        total = await conn.execute(
            sql.SQL("SELECT count(*) FROM {t} TABLESAMPLE SYSTEM (%s) REPEATABLE (7)").format(t=layout.ident), [percent]
        )
        row = await total.fetchone()
        return found, float(row[0]) if row else 0.0

    (found, sampled), _ = await budget.run(read)
    if sampled <= 0:
        return []
    by_key: dict[str, list[tuple[Any, float]]] = {}
    for key, value, count in found:
        by_key.setdefault(str(key), []).append((value, count / sampled))
    made: list[tuple[dict[str, Any], float]] = []
    for _, fraction in BUCKETS:
        low, high = fraction / math.sqrt(10), fraction * math.sqrt(10)
        singles = sorted(
            (
                (abs(math.log10(share / fraction)), key, value, share)
                for key, items in by_key.items()
                for value, share in items
                if low <= share < high
            ),
            key=lambda item: item[0],
        )
        for _, key, value, share in singles[:2]:
            made.append(({"type": "eq", "key": key, "value": value}, share))
        pairs = []
        for key, items in by_key.items():
            ordered = sorted(items, key=lambda item: item[1])
            for first, second in itertools.pairwise(ordered):
                share = first[1] + second[1]
                if low <= share < high:
                    pairs.append((abs(math.log10(share / fraction)), key, [first[0], second[0]], share))
        if pairs:
            _, key, values, share = min(pairs, key=lambda item: item[0])
            made.append(({"type": "in", "key": key, "value": values}, share))
    return made


async def true_selectivity(
    conn: psycopg.AsyncConnection[Any],
    layout: Layout,
    where: sql.Composable,
    params: Sequence[Any],
    rows: float,
    budget: Budget,
) -> float:
    async def count() -> float:
        cur = await conn.execute(
            sql.SQL("SELECT count(*) FROM {t} WHERE {where}").format(t=layout.ident, where=where), list(params)
        )
        row = await cur.fetchone()
        return float(row[0]) if row else 0.0

    matched, _ = await budget.run(count)
    return matched / max(rows, 1.0)


async def calibrate(
    conn: psycopg.AsyncConnection[Any],
    layout: Layout,
    *,
    store_id: str,
    target: float,
    rows: float,
    declared_ef_search: int | None,
    recent_queries: Sequence[Sequence[float]] = (),
    recent_filters: Sequence[Filter] = (),
    floor_ef_search: int = 0,
    allow_exact: bool = True,
    budget: Budget | None = None,
    seed: int = 1,
    calibrated_by: str = "",
    index_node: int | None = None,
) -> Calibration:
    """Measure and choose; `conn` is an idle autocommit connection (to a read replica when there is one).
    `floor_ef_search`: the store's fixed ef_search, the least a calibration without real queries may use.
    `allow_exact`: whether an exact search may be chosen (the benchmark measures HNSW alone too)."""
    budget = budget or Budget()
    started = time.perf_counter()
    await prepare(conn, budget)
    queries = [Query(list(query)) for query in recent_queries[-QUERIES:]]
    if len(queries) < QUERIES:
        queries += await perturbed_queries(conn, layout, QUERIES - len(queries), rows, seed)
    source = (
        "traffic" if all(q.exclude is None for q in queries) else "perturbed" if len(recent_queries) == 0 else "mixed"
    )
    groups: dict[str, Measured] = {}
    floor = 0
    if source != "traffic":
        fixed = Plan(floor_ef_search) if layout.quantization != "binary" else None
        floor = fixed.ef_search if fixed else vector.binary_candidates(K, floor_ef_search)

    cases = await _cases(conn, layout, queries, vector.NO_FILTER, (), budget, share=TRUTH_SHARE)
    if len(cases) < MIN_QUERIES:
        # The budget can't pay for even MIN_QUERIES exact scans of this store: give up (the service logs it
        # and keeps the settings in use) rather than choose from an interval too wide.
        raise BudgetExhausted
    reached, best = await _climb(
        conn, layout, cases, _unfiltered_plans(layout, declared_ef_search, floor), target, budget
    )
    if best is None:
        raise BudgetExhausted  # not one setting measured: nothing to choose from (an exact scan by default)
    exact = _exact_trial(cases) if allow_exact else None
    # A declared ef_search is kept as is: measured, never swapped for another setting or an exact scan.
    chosen = _choose(reached, best, exact if declared_ef_search is None else None, target)
    groups[UNFILTERED] = _measured(chosen, target, cases, 0, [])
    base = chosen.plan if not chosen.plan.exact else (best.plan if best else Plan(max(floor_ef_search, K)))

    filters: list[tuple[sql.Composable, tuple[Any, ...]]] = [(item.where, item.params) for item in recent_filters]
    try:
        for spec, _ in await attribute_filters(conn, layout, rows, budget):
            compiled, compiled_params = compile_filters(spec)
            filters.append((compiled, tuple(compiled_params)))
        grouped: dict[str, list[tuple[sql.Composable, tuple[Any, ...], float]]] = {}
        for where, params in filters:
            estimated = await estimate_selectivity(conn, layout, where, params, rows)
            if estimated is None or estimated >= UNFILTERED_ABOVE:
                continue
            share = await true_selectivity(conn, layout, where, params, rows, budget)
            grouped.setdefault(bucket_of(estimated), []).append((where, params, share))
        # The group is met when its worst filter is, and which one that is depends on the store: a group spans a
        # factor of ~10 in what its filters keep (and the planner's estimates are rough), and the fewer rows a
        # filter keeps the longer the index walk, until the iterative scan covers all of them and is exact. At
        # 20,000 x 768 an `in` filter of 1% measured 0.896 with the plan chosen for its group by its 0.2% member
        # alone (1.0). So keep filters across the group's range: the most and the least
        # selective, and evenly between.
        for name in grouped:
            grouped[name] = spread_out(sorted(grouped[name], key=lambda member: member[2]), FILTERS_PER_GROUP)
        rng = random.Random(seed)  # noqa: S311 - sampling, not secrecy
        for name, _ in BUCKETS:
            members = grouped.get(name)
            if not members:
                continue
            group_cases: list[_Case] = []
            for index, (member_where, member_params, _) in enumerate(members):
                picked = rng.sample(queries, min(FILTER_QUERIES, len(queries)))
                group_cases += await _cases(conn, layout, picked, member_where, member_params, budget, index)
            if not group_cases:
                continue
            reached, best = await _climb(conn, layout, group_cases, _filtered_plans(base, rows), target, budget)
            chosen = _choose(reached, best, _exact_trial(group_cases) if allow_exact else None, target)
            groups[name] = _measured(chosen, target, group_cases, len(members), [share for _, _, share in members])
    except BudgetExhausted:
        pass  # what was measured stands; groups not reached keep the fixed settings
    return Calibration(
        store_id=store_id,
        table_name=layout.table,
        target=target,
        declared_ef_search=declared_ef_search,
        rows_at=rows,
        index_node=index_node,
        groups=groups,
        sample_source=source,
        duration_seconds=round(time.perf_counter() - started, 3),
        db_seconds=round(budget.spent, 3),
        calibrated_by=calibrated_by,
    )
