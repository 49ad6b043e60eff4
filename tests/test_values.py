"""vectorstore.values: the depth check agrees with a parse on random JSON, and numbers of any size are safe."""

from __future__ import annotations

import json
import math
import random
from typing import Any

import pytest

from vectorstore.values import MAX_JSON_DEPTH, as_float, shown, too_deep


def _depth(value: Any) -> int:
    if isinstance(value, list):
        return 1 + max((_depth(item) for item in value), default=0)
    if isinstance(value, dict):
        return 1 + max((_depth(item) for item in value.values()), default=0)
    return 0


def _random_json(rng: random.Random, depth: int, most: int, budget: list[int]) -> Any:
    if depth >= most or budget[0] <= 0 or rng.random() < 0.15:
        # Strings full of brackets and escaped quotes: they must not count.
        return rng.choice([1, 2.5, None, True, "x[{", "]]}", 'a"b[', "\\[", ""])
    budget[0] -= 1
    count = rng.choices([0, 1, 2, 3], [1, 6, 2, 1])[0]
    if rng.random() < 0.5:
        return [_random_json(rng, depth + 1, most, budget) for _ in range(count)]
    return {f"k{i}[": _random_json(rng, depth + 1, most, budget) for i in range(count)}


def test_too_deep_agrees_with_the_parsed_depth_on_random_json() -> None:
    rng = random.Random(11)
    for _ in range(1500):
        value = _random_json(rng, 0, rng.randint(1, 90), [300])
        text = json.dumps(value).encode()
        for limit in (3, 10, 30, MAX_JSON_DEPTH):
            assert too_deep(text, limit) == (_depth(value) > limit), (limit, _depth(value), text[:200])


@pytest.mark.parametrize(
    ("text", "deep"),
    [
        (b"[" * 64 + b"]" * 64, False),
        (b"[" * 65 + b"]" * 65, True),
        (b"[" * 100_000, True),  # unclosed: not JSON either way
        (b"]" * 1000, False),  # the parser says what is wrong with that
        (b'["' + b"[" * 1000 + b'"]', False),
        (b'{"k": "\\"' + b"[" * 1000 + b'"}', False),
        (b"[[1]," * 1000 + b"1" + b"]" * 1000, True),
    ],
)
def test_too_deep_edge_cases(text: bytes, deep: bool) -> None:
    assert too_deep(text) is deep


def test_numbers_of_any_size() -> None:
    assert as_float(10**400) is None and as_float(-(10**400)) is None
    assert as_float(math.inf) is None and as_float(math.nan) is None and as_float(True) is None
    assert as_float(10**300) == 1e300 and as_float(3) == 3.0
    assert shown(10**400) == "an integer of about 401 digits"
    assert shown(math.nan) == "NaN" and shown("x" * 100).endswith("...") and shown(0.5) == "0.5"
