"""Which group a filtered search lands in, and what a group no HNSW setting reaches falls back to."""

from __future__ import annotations

from typing import Any

import psycopg
from search.conftest import new_store

from calibration.conftest import DIMS, fill
from vectorstore.calibration import measure, plans
from vectorstore.search.filters import compile_filters
from vectorstore.storage import stores


async def _estimate(conn: psycopg.AsyncConnection[Any], record: stores.StoreRecord, spec: dict[str, Any]) -> float:
    where, params = compile_filters(spec)
    estimated = await plans.estimate_selectivity(conn, record.layout, where, params, record.analyzed_rows)
    assert estimated is not None
    return estimated


async def test_an_in_filter_is_estimated_by_what_its_values_keep(db: psycopg.AsyncConnection[Any]) -> None:
    """`in` filters keeping 0.2%, 3% and 50% of rows land in three different groups, like `eq` filters of the
    same sizes (the compiled `in` form alone has no statistics: the planner says 1% for all three)."""
    record = await new_store(db, dims=DIMS)
    await fill(db, record)
    found = await stores.get(db, record.id)
    assert found is not None
    rare = {"type": "in", "key": "thousand", "value": ["k1", "k2"]}
    some = {"type": "in", "key": "hundred", "value": ["h1", "h2", "h3"]}
    half = {"type": "in", "key": "ten", "value": ["t1", "t2", "t3", "t4", "t5"]}
    assert plans.bucket_of(await _estimate(db, found, rare)) == "0.001"
    assert plans.bucket_of(await _estimate(db, found, some)) == "0.01"
    assert await _estimate(db, found, half) >= plans.UNFILTERED_ABOVE
    # `nin` is the complement, and an `in` inside a compound filter is estimated too.
    assert await _estimate(db, found, {**rare, "type": "nin"}) >= plans.UNFILTERED_ABOVE
    both = {"type": "and", "filters": [{"type": "eq", "key": "ten", "value": "t1"}, some]}
    assert await _estimate(db, found, both) < 0.01
    # The search itself keeps the compiled filter: the rewrite only feeds the estimate.
    where, params = compile_filters(some)
    text, estimable = plans.estimable_filter(where.as_string(db), params)
    assert "ANY" in text and len(estimable) == 1 and len(estimable[0]) == 3
    assert "ANY" not in where.as_string(db)


def _trial(plan: plans.Plan, recall: float, ms: float) -> measure._Trial:
    return measure._Trial(plan, [recall] * 20, [ms / 1000] * 20, {0: recall})


def test_an_unreached_group_falls_back_to_an_exact_search_within_a_cap_that_follows_the_target() -> None:
    best = _trial(plans.Plan(1000, 500000), 0.84, 60.0)
    exact = _trial(plans.Plan(10, exact=True), 1.0, 130.0)
    # 130 ms is too dear for 0.9 (cap 50 ms) but what 0.95 asks for (cap 200 ms).
    assert measure._choose(None, best, exact, 0.9).plan == best.plan
    assert measure._choose(None, best, exact, 0.95).plan.exact
    assert measure.exact_cap_ms(0.9) < measure.exact_cap_ms(0.95) < measure.exact_cap_ms(0.98)
    assert measure.exact_cap_ms(1.0) == measure.EXACT_CAP_MAX_MS
    # A reached HNSW setting still wins when it is cheaper than the exact search.
    reached = _trial(plans.Plan(200, 200000), 0.96, 40.0)
    assert measure._choose(reached, reached, exact, 0.95).plan == reached.plan
