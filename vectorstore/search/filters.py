"""OpenAI search filters compiled to parameterized SQL over the JSONB `attributes` column.

Comparison `{type: eq|ne|gt|gte|lt|lte|in|nin, key, value}` and compound `{type: and|or, filters: [...]}`,
nestable. Typing is kept: numbers compare as numbers and booleans as booleans because values are compared as
JSONB, and ordering comparisons are guarded by `jsonb_typeof` so `5 > "abc"` never matches by JSONB's cross-type
order. Keys and values only ever travel as parameters.
The prototype's flat dict (`{"k": "v", ...}`, all equal) compiles to an `and` of `eq`s.
"""

from __future__ import annotations

import json
from typing import Any

from psycopg import sql
from psycopg.types.json import Jsonb

from vectorstore.errors import BadRequest
from vectorstore.values import as_float, shown

COMPARISONS = ("eq", "ne", "gt", "gte", "lt", "lte", "in", "nin")
COMPOUNDS = ("and", "or")
_ORDER_OPS = {"gt": ">", "gte": ">=", "lt": "<", "lte": "<="}
MAX_DEPTH = 16
MAX_IN_VALUES = 1000

Compiled = tuple[sql.Composable, list[Any]]


def _scalar_type(value: Any, path: str) -> str | None:
    """The JSONB type of a filter value; None when it is no scalar. A number no 64-bit float can hold
    (an integer of hundreds of digits, an infinity) is refused here: attributes never hold one."""
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        if as_float(value) is None:
            raise BadRequest(
                f"'{path}' must be a finite number a 64-bit float can hold; got {shown(value)}.", param=path
            )
        return "number"
    if isinstance(value, str):
        return "string"
    return None


_FILTER_FIELDS = frozenset({"type", "key", "value", "filters"})


def is_openai_filter(value: dict[str, Any]) -> bool:
    """Whether `value` is meant as an OpenAI filter rather than the prototype's flat dict. A dict with `type` plus
    `key` or `filters`, and no other fields, is one even when its `type` is misspelt: reading
    `{"type": "near", "key": "a", "value": 1}` as three attribute equalities would silently match nothing, where
    the caller needs a 400 naming `filters.type`. A flat dict that merely has a `type` attribute
    (`{"type": "pdf"}`, `{"type": "pdf", "lang": "en"}`) stays a flat dict."""
    if "type" not in value:
        return False
    kind = value["type"]
    if (kind in COMPARISONS and "key" in value) or (kind in COMPOUNDS and "filters" in value):
        return True
    return ("key" in value or "filters" in value) and value.keys() <= _FILTER_FIELDS


def compile_filters(value: Any, *, param: str = "filters") -> Compiled:
    """SQL boolean expression and its parameters; raise BadRequest naming the JSON path on bad input."""
    if not isinstance(value, dict):
        raise BadRequest(f"'{param}' must be an object.", param=param)
    if not is_openai_filter(value):
        return _flat(value, param)
    return _compile(value, param, 0)


def _flat(value: dict[str, Any], param: str) -> Compiled:
    if not value:
        return sql.SQL("TRUE"), []
    parts: list[sql.Composable] = []
    params: list[Any] = []
    for key, item in value.items():
        if _scalar_type(item, f"{param}.{key}") is None:
            raise BadRequest(f"'{param}.{key}' must be a string, number or boolean.", param=f"{param}.{key}")
        parts.append(sql.SQL("attributes @> %s"))
        params.append(Jsonb({key: item}))
    return sql.SQL("(") + sql.SQL(" AND ").join(parts) + sql.SQL(")"), params


def _compile(value: Any, path: str, depth: int) -> Compiled:
    if depth > MAX_DEPTH:
        raise BadRequest(f"'{path}' nests filters more than {MAX_DEPTH} levels deep.", param=path)
    if not isinstance(value, dict):
        raise BadRequest(f"'{path}' must be a filter object.", param=path)
    kind = value.get("type")
    if kind in COMPOUNDS:
        items = value.get("filters")
        if not isinstance(items, list) or not items:
            raise BadRequest(f"'{path}.filters' must be a non-empty array of filters.", param=f"{path}.filters")
        compiled = [_compile(item, f"{path}.filters[{i}]", depth + 1) for i, item in enumerate(items)]
        joiner = sql.SQL(" AND " if kind == "and" else " OR ")
        params = [p for _, ps in compiled for p in ps]
        return sql.SQL("(") + joiner.join(expr for expr, _ in compiled) + sql.SQL(")"), params
    if kind not in COMPARISONS:
        raise BadRequest(
            f"'{path}.type' must be one of {', '.join(COMPARISONS + COMPOUNDS)}; got {json.dumps(kind)[:40]}.",
            param=f"{path}.type",
        )
    key = value.get("key")
    if not isinstance(key, str) or not key:
        raise BadRequest(f"'{path}.key' must be a non-empty string.", param=f"{path}.key")
    if "value" not in value:
        raise BadRequest(f"Missing required parameter: '{path}.value'.", param=f"{path}.value")
    item = value["value"]
    vpath = f"{path}.value"
    if kind in ("in", "nin"):
        if not isinstance(item, list) or not item or len(item) > MAX_IN_VALUES:
            raise BadRequest(
                f"'{vpath}' must be a non-empty array (at most {MAX_IN_VALUES}) for '{kind}'.", param=vpath
            )
        for i, element in enumerate(item):
            if _scalar_type(element, f"{vpath}[{i}]") is None:
                raise BadRequest(f"'{vpath}[{i}]' must be a string, number or boolean.", param=f"{vpath}[{i}]")
        # The attribute (as a one-element array) is contained in the list: JSONB containment compares typed.
        expr: sql.Composable = sql.SQL("(%s::jsonb @> jsonb_build_array(attributes -> %s))")
        if kind == "nin":
            expr = sql.SQL("NOT ") + expr
        return expr, [Jsonb(item), key]
    scalar = _scalar_type(item, vpath)
    if scalar is None:
        raise BadRequest(f"'{vpath}' must be a string, number or boolean for '{kind}'.", param=vpath)
    if kind == "eq":
        return sql.SQL("attributes @> %s"), [Jsonb({key: item})]
    if kind == "ne":
        return sql.SQL("NOT (attributes @> %s)"), [Jsonb({key: item})]
    if scalar == "boolean":
        raise BadRequest(f"'{vpath}' can't be a boolean for '{kind}': booleans have no order.", param=vpath)
    op = sql.SQL(_ORDER_OPS[kind])
    compare = sql.SQL("(jsonb_typeof(attributes -> %s) = %s AND (attributes -> %s) {op} %s::jsonb)").format(op=op)
    return compare, [key, scalar, key, Jsonb(item)]
