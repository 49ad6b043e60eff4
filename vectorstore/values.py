"""Checks on JSON values from clients that every layer shares: nesting depth, and numbers a float can hold.

Python's `json` parses numbers of any size (`1` followed by 400 zeros is an int) and recurses once per
nesting level, so both need a bound before anything else touches the value: a huge int overflows
`float()` and `math.isfinite()`, and a body nested a few thousand levels deep exhausts the recursion limit.
"""

from __future__ import annotations

import math
import re
import time
from itertools import accumulate
from typing import Any, Final

MAX_JSON_DEPTH: Final = 64
"""Arrays and objects nested in a request body, the body itself included. A search filter nested to its
own limit (16 compound levels) needs 34; nothing in the API needs more."""

_JSON_STRING: Final = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKETS: Final = bytes(byte for byte in range(256) if byte not in b"[]{}")
# `{` and `}` become `[` and `]`: for depth, an object is an array.
_SAME_BRACKETS: Final = bytes.maketrans(b"{}", b"[]")
_BRACKET_STEP: Final = [1 if byte == ord("[") else -1 if byte == ord("]") else 0 for byte in range(256)]


def too_deep(raw: bytes, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether arrays and objects nest more than `limit` levels deep in a JSON text, found without parsing
    it (brackets inside strings don't count).

    Linear, and in C almost entirely. A text with few brackets is done after two counts. Otherwise strings are
    cut out by one regex and every other byte but the brackets by `bytes.translate`; then each pass removes
    every innermost `[]` pair (one level, everywhere at once) until nothing is left, or a run of openers
    longer than the levels left to spend proves the text too deep. A wide, shallow body is gone in a pass or
    two, a deep one is caught by the run check at once.
    """
    if raw.count(b"[") + raw.count(b"{") <= limit:
        return False
    brackets = _JSON_STRING.sub(b"", raw).translate(_SAME_BRACKETS, _NOT_BRACKETS)
    removed = 0
    while brackets:
        if b"[" * (limit + 1 - removed) in brackets:
            return True
        shorter = brackets.replace(b"[]", b"")
        if len(shorter) == len(brackets):
            break  # unbalanced leftovers: not JSON, measured exactly below (the parser will refuse it anyway)
        brackets = shorter
        removed += 1
    if not brackets:
        return removed > limit
    return removed + max(accumulate(map(_BRACKET_STEP.__getitem__, brackets)), default=0) > limit


def as_float(value: Any) -> float | None:
    """The value as a finite float, or None when it is not a number (booleans aren't) or no float can hold it
    (NaN, an infinity, or an integer of hundreds of digits)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def is_number(value: Any) -> bool:
    """An int or float (not a boolean), whatever its size."""
    return not isinstance(value, bool) and isinstance(value, (int, float))


def shown(value: Any, limit: int = 40) -> str:
    """A value as it may appear in an error message: short, whatever the client sent."""
    if isinstance(value, float) and math.isnan(value):
        return "NaN"
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 3 * limit:
        # str() of a huge int is slow (and refused past 4,300 digits): estimate its length instead.
        return f"an integer of about {int(value.bit_length() * math.log10(2)) + 1} digits"
    text = repr(value) if isinstance(value, str) else str(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def epoch_seconds() -> int:
    """Now, in the whole seconds every API timestamp uses: truncated, never rounded, so no timestamp is ever
    ahead of the clock. The database stamps its rows with the SQL function of the same name (migration 0500);
    this is for the few timestamps made outside it."""
    return math.floor(time.time())
