"""What a calibration chose, how it is stored, and which plan a search uses.

Searches are grouped by how much of the store their filter lets through, as the *planner* estimates it
(`EXPLAIN` of the filter alone; `estimate_selectivity`): the calibration groups its sample filters the same way,
so the group a search lands in is the group whose settings were measured for filters the planner sees alike,
even where its estimate is off. An `in` filter is estimated as its values' `eq` filters together
(`estimable_filter`): its compiled form has no statistics.
"""

from __future__ import annotations

import itertools
import json
import math
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from vectorstore.search.vector import MAX_SCAN_TUPLES, NO_FILTER
from vectorstore.storage.database import autocommit
from vectorstore.storage.tables import Layout

UNFILTERED = "unfiltered"
# Selectivity buckets (fraction of rows a filter keeps), as group names; a filter goes to the nearest one in
# log scale, and one keeping 30% or more is searched like an unfiltered search.
BUCKETS: tuple[tuple[str, float], ...] = (("0.1", 0.1), ("0.01", 0.01), ("0.001", 0.001))
UNFILTERED_ABOVE = 0.3


@dataclass(frozen=True)
class Plan:
    """How one search runs: HNSW with these settings, or an exact scan."""

    ef_search: int
    max_scan_tuples: int = MAX_SCAN_TUPLES
    binary_depth: int | None = None
    """Candidates a binary store rescores (None: the fixed rule in search/vector.py)."""
    exact: bool = False

    def describe(self) -> dict[str, Any]:
        if self.exact:
            return {"exact": True}
        out: dict[str, Any] = {"ef_search": self.ef_search, "max_scan_tuples": self.max_scan_tuples}
        if self.binary_depth is not None:
            out["binary_depth"] = self.binary_depth
        return out


@dataclass(frozen=True)
class Measured:
    """The recall@k one group's chosen plan measured on the calibration's sample."""

    plan: Plan
    recall: float
    low: float
    high: float
    """95% confidence interval of the mean per-query recall."""
    queries: int
    reached: bool
    p50_ms: float
    filters: int = 0
    """Sample filters in the group (0 for unfiltered)."""
    selectivities: tuple[float, ...] = ()
    """The true fraction of rows each sample filter keeps (counted on the data)."""

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["selectivities"] = list(self.selectivities)
        return data

    @staticmethod
    def from_json(data: Mapping[str, Any]) -> Measured:
        return Measured(
            plan=Plan(**data["plan"]),
            recall=float(data["recall"]),
            low=float(data["low"]),
            high=float(data["high"]),
            queries=int(data["queries"]),
            reached=bool(data["reached"]),
            p50_ms=float(data["p50_ms"]),
            filters=int(data.get("filters", 0)),
            selectivities=tuple(float(value) for value in data.get("selectivities", ())),
        )


@dataclass(frozen=True)
class Calibration:
    store_id: str
    table_name: str
    target: float
    declared_ef_search: int | None
    rows_at: float
    index_node: int | None
    groups: dict[str, Measured]
    sample_source: str
    """`traffic` (recent real queries), `perturbed` (stored vectors, no traffic yet) or `mixed`."""
    duration_seconds: float
    db_seconds: float
    """Time the database spent on the calibration's statements: its cost, bounded by the budget."""
    calibrated_at: float = field(default_factory=time.time)
    runs: int = 1
    calibrated_by: str = ""

    @property
    def reached(self) -> bool:
        return all(measured.reached for measured in self.groups.values())

    def plan_for(self, selectivity: float | None) -> Plan | None:
        """The plan of the group a search falls in (None: not calibrated for it, keep the fixed settings).
        A bucket the data gave no sample filter for borrows the next more selective one's plan (safe: it was
        measured against harder filters), else the unfiltered plan with pgvector's scan limit."""
        unfiltered = self.groups.get(UNFILTERED)
        if selectivity is None or selectivity >= UNFILTERED_ABOVE:
            return unfiltered.plan if unfiltered else None
        name = bucket_of(selectivity)
        names = [bucket for bucket, _ in BUCKETS]
        for candidate in names[names.index(name) :]:
            if candidate in self.groups:
                return self.groups[candidate].plan
        return unfiltered.plan if unfiltered else None


def bucket_of(selectivity: float) -> str:
    """The nearest bucket in log scale (selectivity below UNFILTERED_ABOVE)."""
    value = max(selectivity, 1e-9)
    return min(BUCKETS, key=lambda bucket: abs(math.log10(value) - math.log10(bucket[1])))[0]


# Planner estimates per (table, filter text, parameters); filters repeat (a tenant, a category), and the
# estimate only changes with ANALYZE.
_ESTIMATES: OrderedDict[tuple[str, str, str], tuple[float, float]] = OrderedDict()
_ESTIMATE_CACHE_SIZE = 1024
_ESTIMATE_SECONDS = 60.0


def _param_key(params: Sequence[Any]) -> str:
    return json.dumps([param.obj if isinstance(param, Jsonb) else param for param in params], default=str)


async def estimate_selectivity(
    conn: psycopg.AsyncConnection[Any], layout: Layout, where: sql.Composable, params: Sequence[Any], rows: float
) -> float | None:
    """The planner's estimate of the fraction of rows `where` keeps (None for no filter or an empty table)."""
    if where is NO_FILTER or rows <= 0:
        return None
    key = (layout.table, where.as_string(conn), _param_key(params))
    now = time.monotonic()
    hit = _ESTIMATES.get(key)
    if hit is not None and now - hit[0] < _ESTIMATE_SECONDS:
        _ESTIMATES.move_to_end(key)
        return hit[1]
    try:
        text, estimable = estimable_filter(where.as_string(conn), params)
    except (IndexError, TypeError, AttributeError):
        # A filter form the rewrite doesn't know: estimated as compiled. The estimate only picks a measured
        # plan; it must never fail the search it is for.
        text, estimable = where.as_string(conn), list(params)
    statement = sql.SQL("EXPLAIN (FORMAT JSON) SELECT 1 FROM {t} WHERE ").format(t=layout.ident) + sql.SQL(text)
    # In autocommit like the search that follows (search/vector.py `execute`): no transaction left open.
    async with autocommit(conn):
        cur = await conn.execute(statement, estimable)
        row = await cur.fetchone()
    plan = row[0] if row else None
    document = json.loads(plan) if isinstance(plan, str) else plan
    estimated = float(document[0]["Plan"]["Plan Rows"]) if document else rows
    selectivity = min(1.0, estimated / rows)
    _ESTIMATES[key] = (now, selectivity)
    if len(_ESTIMATES) > _ESTIMATE_CACHE_SIZE:
        _ESTIMATES.popitem(last=False)
    return selectivity


# search/filters.py's form of an `in` filter: the planner has no statistics for `const @> jsonb_build_array(
# attributes -> key)` and estimates every one of them at the same 1% (0.1% and 20% filters alike), so at
# 500,000 x 768 an `in` filter keeping 0.1% got the 1% group's plan and recall 0.68. Rewritten for the estimate
# only, as "contains any of the values' `eq` forms", the planner estimates each value as it does an `eq` filter
# (from the column's statistics) and sums them (scalararraysel): the `in` lands in the group of what it keeps.
_IN_FORM = "(%s::jsonb @> jsonb_build_array(attributes -> %s))"
_IN_ESTIMATE = "(attributes @> ANY(%s::jsonb[]))"


def estimable_filter(text: str, params: Sequence[Any]) -> tuple[str, list[Any]]:
    """`text` (a compiled filter rendered as SQL, `%s` placeholders) with each `in`/`nin` form rewritten so the
    planner can estimate it, and its parameters; the search itself keeps the compiled filter."""
    pieces = text.split(_IN_FORM)
    out_text = [pieces[0]]
    out_params: list[Any] = []
    used = 0
    for before, after in itertools.pairwise(pieces):
        count = before.count("%s")
        out_params += params[used : used + count]
        used += count
        values, key = params[used], params[used + 1]
        used += 2
        items = values.obj if isinstance(values, Jsonb) else values
        out_params.append([Jsonb({key: item}) for item in items])
        out_text += [_IN_ESTIMATE, after]
    out_params += params[used:]
    return "".join(out_text), out_params


_COLUMNS = (
    "vector_store_id, table_name, target, declared_ef_search, rows_at, index_node, groups, sample_source,"
    " duration_seconds, db_seconds, extract(epoch FROM calibrated_at)::float8 AS calibrated_at, runs, calibrated_by"
)


def _from_row(row: Mapping[str, Any]) -> Calibration:
    return Calibration(
        store_id=row["vector_store_id"],
        table_name=row["table_name"],
        target=float(row["target"]),
        declared_ef_search=row["declared_ef_search"],
        rows_at=float(row["rows_at"]),
        index_node=row["index_node"],
        groups={name: Measured.from_json(value) for name, value in row["groups"].items()},
        sample_source=row["sample_source"],
        duration_seconds=float(row["duration_seconds"]),
        db_seconds=float(row["db_seconds"]),
        calibrated_at=float(row["calibrated_at"]),
        runs=int(row["runs"]),
        calibrated_by=row["calibrated_by"],
    )


async def load_all(conn: psycopg.AsyncConnection[Any]) -> dict[str, Calibration]:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(f"SELECT {_COLUMNS} FROM search_calibration".encode())
        return {row["vector_store_id"]: _from_row(row) for row in await cur.fetchall()}


async def load(conn: psycopg.AsyncConnection[Any], store_id: str) -> Calibration | None:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(f"SELECT {_COLUMNS} FROM search_calibration WHERE vector_store_id = %s".encode(), [store_id])
        row = await cur.fetchone()
    return _from_row(row) if row else None


async def save(conn: psycopg.AsyncConnection[Any], calibration: Calibration) -> None:
    """Insert or replace the store's row (counting runs); a store deleted meanwhile is left alone."""
    await conn.execute(
        "INSERT INTO search_calibration (vector_store_id, table_name, target, declared_ef_search, rows_at,"
        " index_node, groups, reached, sample_source, duration_seconds, db_seconds, calibrated_at, calibrated_by)"
        " SELECT %(id)s, %(table)s, %(target)s, %(declared)s, %(rows)s, %(node)s, %(groups)s, %(reached)s,"
        " %(source)s, %(duration)s, %(db)s, now(), %(by)s WHERE EXISTS (SELECT 1 FROM vector_stores WHERE id = %(id)s)"
        " ON CONFLICT (vector_store_id) DO UPDATE SET table_name = excluded.table_name, target = excluded.target,"
        " declared_ef_search = excluded.declared_ef_search, rows_at = excluded.rows_at,"
        " index_node = excluded.index_node, groups = excluded.groups, reached = excluded.reached,"
        " sample_source = excluded.sample_source, duration_seconds = excluded.duration_seconds,"
        " db_seconds = excluded.db_seconds, calibrated_at = now(), calibrated_by = excluded.calibrated_by,"
        " runs = search_calibration.runs + 1",
        {
            "id": calibration.store_id,
            "table": calibration.table_name,
            "target": calibration.target,
            "declared": calibration.declared_ef_search,
            "rows": calibration.rows_at,
            "node": calibration.index_node,
            "groups": Jsonb({name: measured.to_json() for name, measured in calibration.groups.items()}),
            "reached": calibration.reached,
            "source": calibration.sample_source,
            "duration": calibration.duration_seconds,
            "db": calibration.db_seconds,
            "by": calibration.calibrated_by,
        },
    )
