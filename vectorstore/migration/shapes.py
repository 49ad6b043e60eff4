"""What one generation of a store is: the model that made its vectors and the layout of its table.

A change between two shapes costs one of three things (docs/operations.md): nothing beyond copying rows
(distance, quantization, HNSW parameters, language: the stored vectors stay valid, only the table, its index
or its `fts` column differ), or a new embedding of every chunk (model or dimensions).
"""

from __future__ import annotations

import dataclasses
import secrets
from dataclasses import dataclass
from typing import Any, Literal

from config import Store
from config.model import Distance, Quantization, VectorType, vector_type_for
from vectorstore.storage import stores, tables

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
        )

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Shape:
        return cls(**{name: data[name] for name in cls.__dataclass_fields__})

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

    def registry_values(self) -> dict[str, Any]:
        """The `vector_stores` columns that describe the active generation."""
        return self.to_json()


def generation_table(store_id: str) -> str:
    """A new generation's table: the store's fixed name plus a random suffix (kept under 63 bytes with the
    longest index name derived from it, `<table>_attributes`)."""
    return f"{tables.table_name(store_id)}_g{secrets.token_hex(3)}"
