"""Import: an archive into a database, in one transaction, so a failed or interrupted import leaves nothing.

The store is created (its table without the HNSW index), files and their attachments inserted, chunks written
with binary COPY exactly as pgvector sends them, source paths recorded; the archive's SHA-256 is verified at
its end record, and only then is the HNSW index built, the table analyzed and the transaction committed. Any
error, a bad checksum included, rolls everything back: the database is as it was. No embedding call is made:
the vectors are in the archive. (A file that was still `in_progress` at export is queued for ingestion again.)
"""

from __future__ import annotations

import hashlib
import struct
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from config import Spec
from config.model import (
    HALFVEC_MAX_INDEXED_DIMENSIONS,
    VECTOR_MAX_DIMENSIONS,
    VECTOR_MAX_INDEXED_DIMENSIONS,
    vector_type_for,
)
from vectorstore.archive.dump import Counts
from vectorstore.archive.format import FORMAT_NAME, ArchiveError, Reader, Record, decode_chunks, loads
from vectorstore.search import statistics
from vectorstore.storage import stores, tables

_PGCOPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack(">ii", 0, 0)
_PGCOPY_TRAILER = struct.pack(">h", -1)
_FIELDS = struct.pack(">h", len(tables.CHUNK_COLUMNS))
_NULL = struct.pack(">i", -1)
_INT4 = struct.Struct(">ii")
_LENGTH = struct.Struct(">i")
STATUSES = ("in_progress", "completed", "failed", "cancelled")
# The index build after the load is the import's slowest step; PostgreSQL's 64MB default makes it spill.
INDEX_BUILD_MEMORY = "512MB"


class ImportRefused(Exception):
    """The archive is fine but can't go in here (the store exists, the spec declares other settings...)."""


@dataclass(frozen=True)
class Target:
    id: str
    name: str | None
    declared: bool


@dataclass
class _PendingFile:
    meta: dict[str, Any]
    offset: int
    content: bytearray = field(default_factory=bytearray)


Tick = Callable[[Counts], None]


def check_store_header(header: Any, record: Record) -> dict[str, Any]:
    """The header's store settings, or an ArchiveError saying which is wrong."""
    if not isinstance(header, dict) or header.get("format") != FORMAT_NAME or not isinstance(header.get("store"), dict):
        raise ArchiveError(f"the header at byte {record.offset} is not a {FORMAT_NAME} header")
    store: dict[str, Any] = header["store"]
    dimensions, vector_type, quantization = store.get("dimensions"), store.get("vector_type"), store.get("quantization")
    if not isinstance(dimensions, int) or isinstance(dimensions, bool) or dimensions < 1:
        raise ArchiveError(f"the header's dimensions ({dimensions!r}) are not a positive integer")
    if quantization not in ("none", "halfvec", "binary") or vector_type not in ("vector", "halfvec"):
        raise ArchiveError(f"the header's vector type {vector_type!r} / quantization {quantization!r} are unknown")
    if dimensions > VECTOR_MAX_DIMENSIONS:
        raise ArchiveError(
            f"the archive's {dimensions} dimensions are over pgvector's limit of {VECTOR_MAX_DIMENSIONS} per vector"
        )
    limit = {"halfvec": HALFVEC_MAX_INDEXED_DIMENSIONS, "vector": VECTOR_MAX_INDEXED_DIMENSIONS}[vector_type]
    if quantization != "binary" and dimensions > limit:
        raise ArchiveError(
            f"the archive's {dimensions} dimensions are over pgvector's HNSW limit of {limit} for {vector_type}"
        )
    if vector_type != vector_type_for(dimensions, quantization):
        raise ArchiveError(f"the header's vector type {vector_type!r} does not fit {dimensions} dimensions")
    for key, kind in (("id", str), ("model", str), ("distance", str), ("hnsw_m", int), ("ef_search", int)):
        if not isinstance(store.get(key), kind):
            raise ArchiveError(f"the header's store has no valid {key!r}")
    if store["distance"] not in tables.OPERATORS:
        raise ArchiveError(f"the header's distance {store['distance']!r} is unknown")
    return store


def resolve_target(spec: Spec, store: dict[str, Any], as_: str | None) -> Target:
    """Where the archive goes: its own id and name, or `--as`: a declared store's name (its id), an id
    (`vs_...` or a declared id), or a new name (with a new id)."""
    if as_ is None:
        return Target(store["id"], store.get("name"), spec.store_by_id(store["id"]) is not None)
    declared = spec.store_by_name(as_)
    if declared is not None:
        return Target(declared.id, declared.name, True)
    by_id = spec.store_by_id(as_)
    if by_id is not None:
        return Target(by_id.id, by_id.name, True)
    if as_.startswith("vs_"):
        return Target(as_, store.get("name"), False)
    return Target("vs_" + uuid.uuid4().hex, as_, False)


def check_against_spec(spec: Spec, target: Target, store: dict[str, Any]) -> None:
    """A declared store keeps its model: another one would need every chunk embedded again, which an import
    does not do (it would no longer be a restore). Other settings reconcile applies at the next start."""
    declared = spec.store_by_id(target.id)
    if declared is None:
        return
    if (declared.model, declared.dimensions) != (store["model"], store["dimensions"]):
        raise ImportRefused(
            f"the spec declares store {declared.name!r} ({declared.id}) with model {declared.model!r} at "
            f"{declared.dimensions} dimensions, but the archive's vectors come from {store['model']!r} at "
            f"{store['dimensions']}: importing them would mix two models. Import it under another name "
            "(--as NAME), or change the spec back and migrate the store after"
        )


async def import_archive(
    conn: psycopg.AsyncConnection[Any],
    reader: Reader,
    spec: Spec,
    *,
    as_: str | None = None,
    replace: bool = False,
    tick: Tick | None = None,
    expect: Callable[[int], None] | None = None,
) -> tuple[stores.StoreRecord, Counts]:
    """Load the archive behind `reader` in one transaction; `conn` must be autocommit (no transaction open)."""
    records = reader.records()
    first = next(records)
    if first.kind != "H":
        raise ArchiveError(f"the archive starts with a {first.kind} record, not its header")
    header = loads(first.payload, first)
    store = check_store_header(header, first)
    target = resolve_target(spec, store, as_)
    check_against_spec(spec, target, store)
    expected = header.get("expected")
    if expect is not None and isinstance(expected, dict) and isinstance(expected.get("chunks"), int):
        expect(expected["chunks"])
    counts = Counts()
    async with conn.transaction():
        await conn.execute(sql.SQL("SET LOCAL maintenance_work_mem = {}").format(sql.Literal(INDEX_BUILD_MEMORY)))
        existing = await stores.get(conn, target.id, for_update=True)
        if existing is not None:
            if not replace:
                raise ImportRefused(
                    f"store {target.id} ({existing.name!r}) already exists: --replace drops it and imports the "
                    "archive in its place, in the same transaction (or import it --as another name)"
                )
            await stores.delete(conn, existing)
            # Queued ingestion of the old store has no foreign key to cascade from (see 0100_files.sql): a
            # worker must not ingest the replaced store's files into the imported one.
            await conn.execute("DELETE FROM ingest_jobs WHERE vector_store_id = %s", [existing.id])
        record = await stores.insert(conn, _new_store(store, target))
        # Built once after the load: inserting 100,000 rows into a live HNSW index is many times slower.
        await conn.execute(tables.drop_index_statement(record.layout))
        await _load_records(conn, record, records, counts, tick or (lambda _: None))
        for statement in tables.index_statements(record.layout):
            await conn.execute(statement)
        await conn.execute(sql.SQL("ANALYZE {t}").format(t=sql.Identifier(record.table_name)))
        await statistics.refresh_text_stats(conn, record)
    return record, counts


def _new_store(store: dict[str, Any], target: Target) -> stores.NewStore:
    metadata = store.get("metadata") or {}
    expires_after = store.get("expires_after")
    return stores.NewStore(
        id=target.id,
        name=target.name,
        description=store.get("description"),
        metadata=metadata if isinstance(metadata, dict) else {},
        declared=target.declared,
        model=store["model"],
        dimensions=store["dimensions"],
        distance=store["distance"],
        hnsw_m=store["hnsw_m"],
        hnsw_ef_construction=store.get("hnsw_ef_construction", 64),
        ef_search=store["ef_search"],
        language=store.get("language", "english"),
        quantization=store["quantization"],
        expires_after=expires_after if isinstance(expires_after, dict) else None,
    )


async def _load_records(
    conn: psycopg.AsyncConnection[Any],
    record: stores.StoreRecord,
    records: Iterator[Record],
    counts: Counts,
    tick: Tick,
) -> None:
    pending: _PendingFile | None = None
    width = 4 if record.vector_type == "vector" else 2
    vector_bytes = record.dimensions * width
    vector_header = struct.pack(">HH", record.dimensions, 0)
    end: Record | None = None
    for item in records:
        if item.kind != "D" and pending is not None:
            await _insert_file(conn, record, pending)
            counts.files += 1
            counts.file_bytes += len(pending.content)
            pending = None
            tick(counts)
        if item.kind == "F":
            meta = loads(item.payload, item)
            if not isinstance(meta, dict):
                raise ArchiveError(f"the file record at byte {item.offset} is not a JSON object")
            pending = _PendingFile(meta, item.offset)
        elif item.kind == "D":
            if pending is None:
                raise ArchiveError(f"file data at byte {item.offset} follows no file record")
            pending.content += item.payload
        elif item.kind == "C":
            rows, vectors = decode_chunks(item, vector_bytes)
            await _copy_chunks(conn, record, item, rows, vectors, vector_bytes, vector_header)
            counts.chunks += len(rows)
            tick(counts)
        elif item.kind == "S":
            counts.sources += await _insert_sources(conn, record, item)
        elif item.kind == "E":
            end = item
        else:
            raise ArchiveError(f"a second header at byte {item.offset}")
    assert end is not None  # Reader.records ends with E or raises
    said = loads(end.payload, end)
    for key in ("files", "chunks", "sources"):
        if said.get(key) != getattr(counts, key):
            raise ArchiveError(f"the end record counts {said.get(key)} {key}, the archive holds {getattr(counts, key)}")


def _text(value: Any, what: str, item: Record, *, nullable: bool = False) -> str | None:
    if value is None and nullable:
        return None
    if not isinstance(value, str):
        raise ArchiveError(f"{what} in the record at byte {item.offset} is not a string")
    return value


async def _insert_file(conn: psycopg.AsyncConnection[Any], record: stores.StoreRecord, pending: _PendingFile) -> None:
    meta, content = pending.meta, bytes(pending.content)
    where = f"the file record at byte {pending.offset}"
    file_id = meta.get("id")
    if not isinstance(file_id, str) or not isinstance(meta.get("filename"), str):
        raise ArchiveError(f"{where} has no id or filename")
    digest = hashlib.sha256(content).hexdigest()
    if meta.get("sha256") != digest or meta.get("bytes") != len(content):
        raise ArchiveError(f"{where}: file {file_id}'s bytes don't match its recorded size and SHA-256")
    if meta.get("status") not in STATUSES:
        raise ArchiveError(f"{where}: status {meta.get('status')!r} is not one of {', '.join(STATUSES)}")
    cur = await conn.execute(
        "INSERT INTO files (id, filename, purpose, bytes, content_type, sha256, content, owner, created_at)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT (id) DO NOTHING RETURNING id",
        [
            file_id,
            meta["filename"],
            meta.get("purpose") or "assistants",
            len(content),
            meta.get("content_type"),
            digest,
            content,
            meta.get("owner") or "import",
            meta.get("created_at"),
        ],
    )
    if await cur.fetchone() is None:
        # The File is here already (attached to another store, or the same database): the same bytes are
        # shared, other bytes under the same id are refused.
        cur = await conn.execute("SELECT sha256 FROM files WHERE id = %s", [file_id])
        row = await cur.fetchone()
        if row is None or row[0] != digest:
            raise ImportRefused(f"file {file_id} exists in the database with other content than the archive's")
    if meta["status"] == "in_progress":
        # Not finished at export: ingest it again (its chunks, if any, were not committed).
        cur = await conn.execute(
            "INSERT INTO ingest_jobs (vector_store_id, file_id) VALUES (%s, %s) RETURNING id", [record.id, file_id]
        )
    else:
        cur = await conn.execute("SELECT nextval(pg_get_serial_sequence('ingest_jobs', 'id'))")
    generation = await cur.fetchone()
    assert generation is not None
    attributes = meta.get("attributes")
    await conn.execute(
        "INSERT INTO vector_store_files (vector_store_id, file_id, status, last_error, usage_bytes, chunk_count,"
        " max_chunk_size_tokens, chunk_overlap_tokens, attributes, generation, created_at, chunking_default)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, coalesce(%s, extract(epoch FROM now())::bigint), %s)",
        [
            record.id,
            file_id,
            meta["status"],
            Jsonb(meta["last_error"]) if meta.get("last_error") is not None else None,
            int(meta.get("usage_bytes") or 0),
            int(meta.get("chunk_count") or 0),
            int(meta.get("max_chunk_size_tokens") or 800),
            int(meta.get("chunk_overlap_tokens") or 400),
            Jsonb(attributes if isinstance(attributes, dict) else {}),
            generation[0],
            meta.get("attached_at"),
            # Whether the store's default chunked it (a chunking change moves only those); absent from archives
            # made before, NULL: reconcile decides as for files attached before migration 0310.
            meta.get("chunking_default") if isinstance(meta.get("chunking_default"), bool) else None,
        ],
    )


async def _copy_chunks(
    conn: psycopg.AsyncConnection[Any],
    record: stores.StoreRecord,
    item: Record,
    rows: list[list[Any]],
    vectors: memoryview,
    vector_bytes: int,
    vector_header: bytes,
) -> None:
    """One binary COPY of the batch, built here: the vectors go in as the bytes they came out as."""
    out = bytearray(_PGCOPY_HEADER)
    vector_field = _LENGTH.pack(len(vector_header) + vector_bytes) + vector_header
    for index, row in enumerate(rows):
        if not isinstance(row, list) or len(row) != 6:
            raise ArchiveError(f"a chunk in the record at byte {item.offset} does not have six fields")
        chunk_id, file_id, chunk_index, filename, content, attributes = row
        if not isinstance(chunk_index, int) or not isinstance(attributes, str):
            raise ArchiveError(f"a chunk in the record at byte {item.offset} has a bad chunk_index or attributes")
        out += _FIELDS
        for value in (
            _text(chunk_id, "a chunk id", item),
            _text(file_id, "a chunk's file id", item, nullable=True),
        ):
            _put_text(out, value)
        out += _INT4.pack(4, chunk_index)
        _put_text(out, _text(filename, "a chunk's filename", item, nullable=True))
        _put_text(out, _text(content, "a chunk's content", item))
        attributes_json = b"\x01" + attributes.encode()  # PostgreSQL parses it: bad JSON fails the import
        out += _LENGTH.pack(len(attributes_json)) + attributes_json
        out += vector_field
        out += vectors[index * vector_bytes : (index + 1) * vector_bytes]
    out += _PGCOPY_TRAILER
    statement = sql.SQL("COPY {t} ({cols}) FROM STDIN (FORMAT BINARY)").format(
        t=record.layout.ident, cols=sql.SQL(", ").join(sql.Identifier(c) for c in tables.CHUNK_COLUMNS)
    )
    async with conn.cursor() as cur, cur.copy(statement) as copy:
        await copy.write(bytes(out))


def _put_text(out: bytearray, value: str | None) -> None:
    if value is None:
        out += _NULL
        return
    data = value.encode()
    out += _LENGTH.pack(len(data)) + data


async def _insert_sources(conn: psycopg.AsyncConnection[Any], record: stores.StoreRecord, item: Record) -> int:
    rows = loads(item.payload, item)
    if not isinstance(rows, list) or not all(isinstance(row, list) and len(row) == 6 for row in rows):
        raise ArchiveError(f"the source record at byte {item.offset} is not a list of six-field rows")
    async with conn.cursor() as cur:
        await cur.executemany(
            "INSERT INTO source_files (vector_store_id, source, path, file_id, sha256, fingerprint, synced_at)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s)",
            [[record.id, *row] for row in rows],
        )
    return len(rows)
