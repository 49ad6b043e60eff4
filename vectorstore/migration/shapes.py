"""What one generation of a store is: the model that made its vectors, the layout of its table, and the declared
chunking its files (those chunked by the store's default) were cut with.

A change between two shapes costs one of three things (docs/operations.md): nothing beyond copying rows
(distance, quantization, HNSW parameters, language: the stored vectors stay valid, only the table, its index
or its `fts` column differ), a new embedding of every chunk (model or dimensions), or new chunks for the
files the store's default chunked (chunking), cut from their stored bytes; a chunk whose text is unchanged
keeps its vector unless the model changes too.
"""

from __future__ import annotations

import dataclasses
import secrets
from dataclasses import dataclass
from typing import Any, Literal

from config import Store
from config.model import Distance, Quantization, VectorType, vector_type_for
from vectorstore.storage import stores, tables
from vectorstore.storage.strategy import Strategy

Work = Literal["reembed", "copy"]


@dataclass(frozen=True)
class Shape:
    model: str
    dimensions: int
    distance: Distance
    vector_type: VectorType
    hnsw_m: int
    hnsw_ef_construction: int
    language: str
    quantization: Quantization
    chunk_max_tokens: int | None = None
    chunk_overlap_tokens: int | None = None
    """The declared `chunking` (None: not declared, a store created through the API)."""

    @classmethod
    def of_record(cls, record: stores.StoreRecord) -> Shape:
        return cls(
            record.model,
            record.dimensions,
            record.distance,
            record.vector_type,
            record.hnsw_m,
            record.hnsw_ef_construction,
            record.language,
            record.quantization,
            record.chunk_max_tokens,
            record.chunk_overlap_tokens,
        )

    @classmethod
    def of_store(cls, store: Store) -> Shape:
        return cls(
            store.model,
            store.dimensions,
            store.distance,
            vector_type_for(store.dimensions, store.quantization),
            store.hnsw_m,
            store.hnsw_ef_construction,
            store.search.language,
            store.quantization,
            store.max_chunk_size_tokens,
            store.chunk_overlap_tokens,
        )

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Shape:
        # Rows written before re-chunking existed (migration 0310) have no chunking: None.
        values: dict[str, Any] = {name: data.get(name) for name in cls.__dataclass_fields__}
        return cls(**values)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def layout(self, store_id: str, table: str) -> tables.Layout:
        return tables.Layout(
            store_id=store_id,
            table=table,
            dimensions=self.dimensions,
            distance=self.distance,
            vector_type=self.vector_type,
            hnsw_m=self.hnsw_m,
            hnsw_ef_construction=self.hnsw_ef_construction,
            language=self.language,
            quantization=self.quantization,
        )

    def work_from(self, old: Shape) -> Work:
        """Vectors stay valid unless the model that makes them changes (its name or its output size)."""
        return "reembed" if (self.model, self.dimensions) != (old.model, old.dimensions) else "copy"

    @property
    def strategy(self) -> Strategy | None:
        if self.chunk_max_tokens is None or self.chunk_overlap_tokens is None:
            return None
        return Strategy(self.chunk_max_tokens, self.chunk_overlap_tokens)

    def rechunks_from(self, old: Shape) -> bool:
        """The declared chunking changed: files chunked by the store's default are cut again."""
        return self.strategy is not None and self.strategy != old.strategy

    def describe_work(self, old: Shape) -> str:
        vectors = "every chunk re-embedded" if self.work_from(old) == "reembed" else "vectors copied, no embedding"
        if not self.rechunks_from(old):
            return vectors
        if self.work_from(old) == "reembed":
            return "files chunked by the store's default re-chunked, every chunk re-embedded"
        return "files chunked by the store's default re-chunked, unchanged chunks keep their vectors"

    def registry_values(self) -> dict[str, Any]:
        """The `vector_stores` columns that describe the active generation."""
        return self.to_json()


def generation_table(store_id: str) -> str:
    """A new generation's table: the store's fixed name plus a random suffix (kept under 63 bytes with the
    longest index name derived from it, `<table>_attributes`)."""
    return f"{tables.table_name(store_id)}_g{secrets.token_hex(3)}"
