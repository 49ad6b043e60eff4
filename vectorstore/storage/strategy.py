"""A file's chunking strategy: the value stored with every vector store file, and the request shapes it is read from.

It lives in the storage core because a stored file carries one (`vector_store_files.max_chunk_size_tokens`,
`.chunk_overlap_tokens`); the HTTP edge, the ingestion worker and the sources engine all read it from here.

Two request shapes are accepted:

- OpenAI's: `{"type": "auto"}` (800 tokens, 400 overlap) or
  `{"type": "static", "static": {"max_chunk_size_tokens": N, "chunk_overlap_tokens": M}}` (REFERENCE §4);
- LiteLLM's: `{"chunk_size": N, "chunk_overlap": M}`, which LiteLLM's `/v1/rag/ingest` forwards as given
  (REFERENCE §2). It means OpenAI's `static` in tokens, with the same limits.

LiteLLM turns a 400 from us into its own 200 with `status: failed`, so the message of a refused strategy is what
an operator reads in LiteLLM's log: it names both shapes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from vectorstore.values import shown

AUTO_MAX_TOKENS: Final = 800
AUTO_OVERLAP_TOKENS: Final = 400
MIN_CHUNK_TOKENS: Final = 100
MAX_CHUNK_TOKENS: Final = 4096

ACCEPTED_SHAPES: Final = (
    'chunking_strategy must be OpenAI\'s {"type": "auto"} or '
    '{"type": "static", "static": {"max_chunk_size_tokens": N, "chunk_overlap_tokens": M}}, '
    'or LiteLLM\'s {"chunk_size": N, "chunk_overlap": M} (tokens)'
)
_LITELLM_FIELDS: Final = ("chunk_size", "chunk_overlap")
LITELLM_CHUNK_SIZE: Final = 1000
LITELLM_CHUNK_OVERLAP: Final = 200
"""LiteLLM's defaults for its own splitter (`litellm.constants.DEFAULT_CHUNK_SIZE`/`_OVERLAP`, 1.108.7)."""


class ChunkingError(ValueError):
    """A `chunking_strategy` OpenAI would refuse; `param` is the JSON path of the offending field."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


@dataclass(frozen=True)
class Strategy:
    max_chunk_size_tokens: int
    chunk_overlap_tokens: int

    def to_api(self) -> dict[str, Any]:
        """Responses always report `static`, even for `auto` or LiteLLM's shape (REFERENCE §4)."""
        return {
            "type": "static",
            "static": {
                "max_chunk_size_tokens": self.max_chunk_size_tokens,
                "chunk_overlap_tokens": self.chunk_overlap_tokens,
            },
        }


AUTO: Final = Strategy(AUTO_MAX_TOKENS, AUTO_OVERLAP_TOKENS)


def validate_static(
    max_tokens: int,
    overlap: int,
    param: str = "chunking_strategy.static",
    names: tuple[str, str] = ("max_chunk_size_tokens", "chunk_overlap_tokens"),
) -> Strategy:
    """OpenAI's limits on a static strategy; `names` are the fields as the caller spelt them."""
    size_name, overlap_name = names
    if not MIN_CHUNK_TOKENS <= max_tokens <= MAX_CHUNK_TOKENS:
        raise ChunkingError(
            f"{size_name} must be between {MIN_CHUNK_TOKENS} and {MAX_CHUNK_TOKENS}, got {shown(max_tokens)}",
            f"{param}.{size_name}",
        )
    if overlap < 0 or overlap > max_tokens // 2:
        raise ChunkingError(
            f"{overlap_name} must be between 0 and half of {size_name} ({max_tokens // 2}), got {shown(overlap)}",
            f"{param}.{overlap_name}",
        )
    return Strategy(max_tokens, overlap)


def _integers(value: Mapping[str, Any], fields: tuple[str, str], param: str) -> tuple[int, int]:
    numbers: list[int] = []
    for field in fields:
        number = value.get(field)
        if isinstance(number, bool) or not isinstance(number, int):
            raise ChunkingError(f"{field} must be an integer, got {shown(number)}", f"{param}.{field}")
        numbers.append(number)
    return numbers[0], numbers[1]


def parse_strategy(value: object, default: Strategy = AUTO, param: str = "chunking_strategy") -> Strategy:
    """A request's `chunking_strategy`, validated as OpenAI does; None (or absent) means `default`."""
    if value is None:
        return default
    if not isinstance(value, Mapping):
        raise ChunkingError(f"{ACCEPTED_SHAPES}; got {shown(value)}", param)
    if "type" not in value and any(field in value for field in _LITELLM_FIELDS):
        extra = sorted(set(value) - set(_LITELLM_FIELDS))
        if extra:
            raise ChunkingError(f"unexpected field {extra[0]!r}: {ACCEPTED_SHAPES}", f"{param}.{extra[0]}")
        # A field left out takes LiteLLM's own default (its splitter's 1000 and 200), the overlap capped at half
        # the size so that `{"chunk_size": 300}` alone is valid.
        size = value.get("chunk_size", LITELLM_CHUNK_SIZE)
        filled = {"chunk_overlap": min(LITELLM_CHUNK_OVERLAP, size // 2) if isinstance(size, int) else 0, **value}
        size, overlap = _integers({"chunk_size": size, **filled}, _LITELLM_FIELDS, param)
        return validate_static(size, overlap, param, _LITELLM_FIELDS)
    kind = value.get("type")
    if kind == "auto":
        extra = sorted(set(value) - {"type"})
        if extra:
            raise ChunkingError(f"unexpected field {extra[0]!r} for type 'auto'", f"{param}.{extra[0]}")
        return AUTO
    if kind == "static":
        static = value.get("static")
        if not isinstance(static, Mapping):
            raise ChunkingError("a 'static' chunking_strategy needs a 'static' object", f"{param}.static")
        size, overlap = _integers(static, ("max_chunk_size_tokens", "chunk_overlap_tokens"), f"{param}.static")
        return validate_static(size, overlap, f"{param}.static")
    raise ChunkingError(f"{ACCEPTED_SHAPES}; got type {shown(kind)}", f"{param}.type")
