"""Recent real queries, kept in memory only (never written anywhere), bounded per store and in stores.

Each server keeps its own: the calibration that runs on it uses the queries it saw. A query embedding is what
a user searched for, so it never leaves the process: not in logs, metrics, the database or the status route.
"""

from __future__ import annotations

from array import array
from collections import OrderedDict, deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from psycopg import sql

from vectorstore.search.vector import NO_FILTER

QUERIES_PER_STORE = 128
FILTERS_PER_STORE = 16
MAX_STORES = 64
"""Stores with recent queries kept (the least recently searched is forgotten first). As float32 arrays: at 768
dimensions 128 queries take 0.4 MB a store, 25 MB for 64 stores."""


@dataclass(frozen=True)
class Filter:
    """A compiled search filter (search/filters.py) as a search sent it."""

    where: sql.Composable
    params: tuple[Any, ...]


@dataclass
class _Recent:
    queries: deque[array[float]]
    filters: deque[Filter]


class QuerySamples:
    def __init__(self, per_store: int = QUERIES_PER_STORE, max_stores: int = MAX_STORES) -> None:
        self._per_store = per_store
        self._max_stores = max_stores
        self._stores: OrderedDict[str, _Recent] = OrderedDict()

    def record(
        self, store_id: str, embedding: Sequence[float], where: sql.Composable = NO_FILTER, params: Sequence[Any] = ()
    ) -> None:
        recent = self._stores.get(store_id)
        if recent is None:
            recent = self._stores[store_id] = _Recent(deque(maxlen=self._per_store), deque(maxlen=FILTERS_PER_STORE))
            if len(self._stores) > self._max_stores:
                self._stores.popitem(last=False)
        else:
            self._stores.move_to_end(store_id)
        recent.queries.append(array("f", embedding))
        if where is not NO_FILTER:
            recent.filters.append(Filter(where, tuple(params)))

    def queries(self, store_id: str) -> list[list[float]]:
        recent = self._stores.get(store_id)
        return [query.tolist() for query in recent.queries] if recent else []

    def filters(self, store_id: str) -> list[Filter]:
        recent = self._stores.get(store_id)
        return list(recent.filters) if recent else []
