"""Which filter shape a search body's `filters` is read as: OpenAI's typed filter, or the prototype's flat dict."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from psycopg.types.json import Jsonb

from search.conftest import add_rows, new_store
from vectorstore.errors import BadRequest
from vectorstore.search import hybrid, text
from vectorstore.search.filters import compile_filters
from vectorstore.storage import stores


@pytest.mark.parametrize(
    ("filters", "param"),
    [
        # A misspelt comparison is a 400 naming `type`, not three attribute equalities that match nothing.
        ({"type": "near", "key": "a", "value": 1}, "filters.type"),
        ({"type": "EQ", "key": "a", "value": 1}, "filters.type"),
        ({"type": "equals", "key": "a"}, "filters.type"),
        ({"type": 5, "key": "a", "value": 1}, "filters.type"),
        ({"type": None, "key": "a", "value": 1}, "filters.type"),
        ({"type": "an", "filters": [{"type": "eq", "key": "a", "value": 1}]}, "filters.type"),
        ({"type": "eq", "filters": []}, "filters.key"),  # a comparison given a compound's field
        # Siblings that were already right stay right.
        ({"type": "eq", "key": "a"}, "filters.value"),
        ({"type": "and", "filters": [{"type": "near", "key": "a", "value": 1}]}, "filters.filters[0].type"),
    ],
)
def test_a_misspelt_filter_type_is_a_400_naming_it(filters: dict[str, Any], param: str) -> None:
    with pytest.raises(BadRequest) as info:
        compile_filters(filters)
    assert info.value.param == param
    if param == "filters.type":
        assert "eq" in str(info.value) and "and" in str(info.value)  # the message lists what is accepted


@pytest.mark.parametrize(
    "flat",
    [
        {"type": "pdf"},
        {"type": "pdf", "lang": "en"},
        {"type": "pdf", "key": "k1", "lang": "en"},  # a flat dict may hold a `key` attribute among others
        {"grp": "g", "n": 3},
    ],
)
def test_the_prototypes_flat_dicts_stay_equalities(flat: dict[str, Any]) -> None:
    _, params = compile_filters(flat)
    assert [p.obj for p in params if isinstance(p, Jsonb)] == [{k: v} for k, v in flat.items()]


async def test_a_flat_type_attribute_still_matches(db: psycopg.AsyncConnection[Any]) -> None:
    record = await new_store(db)
    ids = await add_rows(db, record, ["turbine blade one", "turbine blade two"], [{"type": "pdf"}, {"type": "html"}])
    fresh = await stores.get(db, record.id)  # re-read: the statistics add_rows refreshed
    assert fresh is not None
    record = fresh
    where, params = compile_filters({"type": "pdf"})
    stats = text.TextStats(record.id, record.analyzed_rows, record.text_avg_length, record.text_min_freq)
    result = await hybrid.run_keyword(db, record.layout, stats, "turbine", limit=10, where=where, where_params=params)
    assert [hit.id for hit in result.hits] == [ids[0]]
