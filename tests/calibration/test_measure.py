"""The calibration itself on the real database: it meets the target it reports, within the cost it is given."""

from __future__ import annotations

import math
import statistics
import time
from typing import Any

import psycopg
import pytest
from search.conftest import new_store

from calibration.conftest import DIMS, clustered, fill
from vectorstore.calibration import measure, plans
from vectorstore.search import vector
from vectorstore.storage import stores


async def _store(conn: psycopg.AsyncConnection[Any], **kwargs: Any) -> stores.StoreRecord:
    record = await new_store(conn, dims=DIMS, **kwargs)
    await fill(conn, record)
    found = await stores.get(conn, record.id)
    assert found is not None and found.analyzed_rows > vector.EXACT_MAX_ROWS
    return found


def _traffic(seed: int = 5) -> list[list[float]]:
    """Real-looking queries: fresh points from the data's clusters."""
    return [[float(x) for x in query] for query in clustered(measure.QUERIES, DIMS, seed=seed)]


async def _recall(
    conn: psycopg.AsyncConnection[Any], record: stores.StoreRecord, queries: Any, plan: plans.Plan
) -> float:
    """Mean recall@10 of `plan` on the queries, against the exact search: measured here, not by the calibration."""
    return statistics.fmean(await _recalls(conn, record, queries, plan))


async def _recalls(
    conn: psycopg.AsyncConnection[Any], record: stores.StoreRecord, queries: Any, plan: plans.Plan
) -> list[float]:
    out: list[float] = []
    for query in queries:
        values = [float(x) for x in query]
        exact = await vector.find_nearest(conn, record.layout, values, limit=10, ef_search=10, exact=True)
        found = await vector.find_nearest(
            conn,
            record.layout,
            values,
            limit=10,
            ef_search=plan.ef_search,
            exact=plan.exact,
            max_scan_tuples=plan.max_scan_tuples,
            binary_depth=plan.binary_depth,
        )
        out.append(len({hit.id for hit in found} & {hit.id for hit in exact}) / len(exact))
    return out


async def test_chooses_the_smallest_ef_search_that_meets_the_target(db: psycopg.AsyncConnection[Any]) -> None:
    record = await _store(db)
    traffic = [[float(x) for x in query] for query in clustered(measure.QUERIES, DIMS, seed=5)]
    result = await measure.calibrate(
        db,
        record.layout,
        store_id=record.id,
        target=0.9,
        rows=record.analyzed_rows,
        declared_ef_search=None,
        recent_queries=traffic,
        floor_ef_search=100,
        allow_exact=False,  # at 2,000 rows an exact scan may measure faster, and would (rightly) be chosen
        budget=measure.Budget(db_share=1.0),
    )
    unfiltered = result.groups[plans.UNFILTERED]
    assert result.sample_source == "traffic"
    assert unfiltered.reached and unfiltered.recall >= 0.9 and unfiltered.queries == measure.QUERIES
    assert unfiltered.low <= unfiltered.recall <= unfiltered.high
    # Real queries set the setting, below the fixed 100 when that is enough ...
    assert 10 < unfiltered.plan.ef_search < 100, unfiltered
    # ... and the rung below it misses the target on the same queries (by the lower bound the calibration
    # uses, measure.CONFIDENCE_Z): the cheapest, not a safe over-shoot.
    lower = max(ef for ef in measure.EF_LADDER if ef < unfiltered.plan.ef_search)
    recalls = await _recalls(db, record, traffic, plans.Plan(lower))
    bound = statistics.fmean(recalls) - measure.CONFIDENCE_Z * statistics.stdev(recalls) / math.sqrt(len(recalls))
    assert bound < 0.9
    # The estimate agrees with recall measured on other queries from the same data.
    fresh = clustered(60, DIMS, seed=11)
    measured = await _recall(db, record, fresh, unfiltered.plan)
    assert abs(measured - unfiltered.recall) <= 0.06, (measured, unfiltered)
    # Filtered groups were made from the store's own attributes, each with its true selectivity.
    filtered = {name: item for name, item in result.groups.items() if name != plans.UNFILTERED}
    assert filtered and all(item.filters > 0 and item.selectivities for item in filtered.values())
    assert all(not item.plan.exact for item in filtered.values())


async def test_without_traffic_it_never_goes_below_the_fixed_setting(db: psycopg.AsyncConnection[Any]) -> None:
    """Perturbed stored vectors are easy for HNSW (measure.py): alone, they may only raise the settings."""
    record = await _store(db)
    result = await measure.calibrate(
        db,
        record.layout,
        store_id=record.id,
        target=0.9,
        rows=record.analyzed_rows,
        declared_ef_search=None,
        floor_ef_search=64,
        budget=measure.Budget(db_share=1.0),
    )
    unfiltered = result.groups[plans.UNFILTERED]
    assert result.sample_source == "perturbed" and unfiltered.queries == measure.QUERIES
    assert unfiltered.plan.exact or unfiltered.plan.ef_search >= 64


async def test_cost_is_bounded_by_the_budget(db: psycopg.AsyncConnection[Any]) -> None:
    record = await _store(db)
    budget = measure.Budget(db_seconds=1.0, db_share=0.5)
    started = time.perf_counter()
    result = await measure.calibrate(
        db,
        record.layout,
        store_id=record.id,
        target=0.999,
        rows=record.analyzed_rows,
        declared_ef_search=None,
        budget=budget,
    )
    wall = time.perf_counter() - started
    # It stops at the budget (plus the one statement running when it ran out) ...
    assert result.db_seconds == round(budget.spent, 3) and budget.spent - budget.longest <= 1.0, budget
    # ... and kept to half a core meanwhile: it slept at least as long as the database worked.
    assert wall >= 2 * result.db_seconds * 0.9
    # What it measured before running out stands, reported as such.
    assert plans.UNFILTERED in result.groups


async def test_a_declared_ef_search_is_measured_not_changed(db: psycopg.AsyncConnection[Any]) -> None:
    record = await _store(db)
    result = await measure.calibrate(
        db,
        record.layout,
        store_id=record.id,
        target=1.0,
        rows=record.analyzed_rows,
        declared_ef_search=10,
        recent_queries=_traffic(),
        budget=measure.Budget(db_share=1.0),
    )
    unfiltered = result.groups[plans.UNFILTERED]
    assert unfiltered.plan == plans.Plan(ef_search=10)
    assert not unfiltered.reached and unfiltered.recall < 1.0 and not result.reached


@pytest.mark.parametrize("quantization", ["binary"])
async def test_quantized_stores(db: psycopg.AsyncConnection[Any], quantization: Any) -> None:
    record = await _store(db, quantization=quantization)
    result = await measure.calibrate(
        db,
        record.layout,
        store_id=record.id,
        target=0.9,
        rows=record.analyzed_rows,
        declared_ef_search=None,
        recent_queries=_traffic(),
        allow_exact=False,
        budget=measure.Budget(db_share=1.0),
    )
    unfiltered = result.groups[plans.UNFILTERED]
    assert unfiltered.reached and not unfiltered.plan.exact
    fresh = [[float(x) for x in query] for query in clustered(40, DIMS, seed=13)]
    assert abs(await _recall(db, record, fresh, unfiltered.plan) - unfiltered.recall) <= 0.08
    if quantization == "binary":
        # Binary stores tune the rescoring depth (the index walk returns that many candidates).
        assert unfiltered.plan.binary_depth == unfiltered.plan.ef_search
