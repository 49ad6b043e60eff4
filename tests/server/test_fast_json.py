"""orjson on the request path (JSONB values read, search pages written) gives exactly what the standard
library gives, integers beyond 64 bits included (those take the standard library's path)."""

from __future__ import annotations

import json

import pytest

from vectorstore.api.common import json_response
from vectorstore.storage.database import loads_json

BIG = 123456789012345678901234567890

CASES = [
    '{"n": 3, "topic": "space"}',
    '{"a": [1, 2.5, -0.0, 1e300, true, null], "é": "ü😀"}',
    f'{{"big": {BIG}, "neg": -{BIG}}}',
    '{"edge": 9223372036854775807, "over": 18446744073709551616}',
    '"just a string of 12345678901234567890 digits"',
]


@pytest.mark.parametrize("text", CASES)
def test_jsonb_values_load_as_the_standard_library_loads_them(text: str) -> None:
    expected = json.loads(text)
    for data in (text.encode(), memoryview(text.encode()), text):
        loaded = loads_json(data)
        assert loaded == expected and json.dumps(loaded) == json.dumps(expected)


@pytest.mark.parametrize("text", CASES)
def test_responses_carry_the_same_values(text: str) -> None:
    value = {"data": json.loads(text)}
    response = json_response(value, status=201, headers={"x-a": "b"})
    assert response.status == 201 and response.headers["x-a"] == "b"
    assert response.content_type == "application/json"
    assert isinstance(response.body, bytes)
    assert json.loads(response.body) == value
