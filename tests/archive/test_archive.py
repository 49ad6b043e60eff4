"""Export and import against a real PostgreSQL: the round trip is exact, and every bad archive or refused
import is refused clearly with nothing left behind (one transaction)."""

from __future__ import annotations

import hashlib
import io
import json
import struct
import zlib
from pathlib import Path
from typing import Any

import psycopg
import pytest

from archive.conftest import CHUNKS, DIMS, STORE_ID, Built, footprint, spec_for
from vectorstore.archive import format as fmt
from vectorstore.archive.dump import Counts, export_store
from vectorstore.archive.load import ImportRefused, import_archive

FRAME = struct.Struct(">cII")


def records(archive: bytes) -> list[tuple[str, int, bytes]]:
    """(type, offset, payload) of every record."""
    out, offset = [], len(fmt.MAGIC) + 2
    while offset < len(archive):
        kind, length, _ = FRAME.unpack_from(archive, offset)
        out.append((kind.decode(), offset, archive[offset + FRAME.size : offset + FRAME.size + length]))
        offset += FRAME.size + length
    return out


def rebuild(archive: bytes, edit: dict[int, bytes], *, rehash: bool = True) -> bytes:
    """The archive with the payloads of some records replaced, CRCs fixed, and the end's SHA-256 too when
    `rehash` (so only the checks that read what the payload says can catch it)."""
    writer_out = io.BytesIO()
    writer = fmt.Writer(writer_out)
    end: dict[str, Any] = {}
    for index, (kind, _, payload) in enumerate(records(archive)):
        payload = edit.get(index, payload)
        if kind == "E":
            end = json.loads(payload)
            continue
        writer.record(kind, payload)
    counts = {key: value for key, value in end.items() if key != "sha256"}
    if rehash:
        writer.end(counts)
        return writer_out.getvalue()
    payload = json.dumps(end).encode()
    return writer_out.getvalue() + FRAME.pack(b"E", len(payload), zlib.crc32(payload)) + payload


async def run_import(dsn: str, archive: bytes, tmp_path: Path, **kwargs: Any) -> Any:
    spec = kwargs.pop("spec", None) or spec_for(tmp_path)
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        return await import_archive(conn, fmt.Reader(io.BytesIO(archive)), spec, **kwargs)


async def table_rows(dsn: str, store_id: str) -> list[tuple[Any, ...]]:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        cur = await conn.execute("SELECT table_name FROM vector_stores WHERE id = %s", [store_id])
        row = await cur.fetchone()
        assert row is not None
        cur = await conn.execute(
            f"SELECT id, file_id, chunk_index, filename, content, attributes::text, embedding::text, fts::text"
            f" FROM {row[0]} ORDER BY id"
        )
        return list(await cur.fetchall())


async def neighbours(dsn: str, store_id: str, probe: str) -> list[tuple[str, float]]:
    """The 10 nearest rows to one row's vector through the HNSW index (the path searches take)."""
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        cur = await conn.execute("SELECT table_name FROM vector_stores WHERE id = %s", [store_id])
        row = await cur.fetchone()
        assert row is not None
        table = row[0]
        cur = await conn.execute(
            f"SELECT id, embedding <=> (SELECT embedding FROM {table} WHERE id = %s) AS d"
            f" FROM {table} ORDER BY embedding <=> (SELECT embedding FROM {table} WHERE id = %s) LIMIT 10",
            [probe, probe],
        )
        return [(str(r[0]), float(r[1])) for r in await cur.fetchall()]


async def test_round_trip_is_exact(built: Built, target_dsn: str, tmp_path: Path) -> None:
    record, counts = await run_import(target_dsn, built.archive, tmp_path)
    assert (record.id, record.name, record.model, record.dimensions) == (STORE_ID, "handbook", "fake-model", DIMS)
    assert counts.as_dict() == {"files": 2, "file_bytes": 400, "chunks": CHUNKS + 1, "sources": 1}
    assert await table_rows(target_dsn, STORE_ID) == await table_rows(built.dsn, STORE_ID)
    for probe in ("chunk-00007", "emb_proto"):
        assert await neighbours(target_dsn, STORE_ID, probe) == await neighbours(built.dsn, STORE_ID, probe)
    async with await psycopg.AsyncConnection.connect(target_dsn, autocommit=True) as conn:
        cur = await conn.execute(
            "SELECT f.id, f.filename, f.sha256, f.content, v.status, v.attributes, v.chunk_count, v.chunking_default"
            " FROM vector_store_files v JOIN files f ON f.id = v.file_id ORDER BY f.id"
        )
        imported = await cur.fetchall()
        cur = await conn.execute("SELECT hnsw_m, ef_search, metadata, description FROM vector_stores")
        settings = await cur.fetchall()
        cur = await conn.execute("SELECT count(*) FROM pg_indexes WHERE indexname LIKE '%\\_hnsw'")
        hnsw = await cur.fetchone()
    async with await psycopg.AsyncConnection.connect(built.dsn, autocommit=True) as conn:
        cur = await conn.execute(
            "SELECT f.id, f.filename, f.sha256, f.content, v.status, v.attributes, v.chunk_count, v.chunking_default"
            " FROM vector_store_files v JOIN files f ON f.id = v.file_id ORDER BY f.id"
        )
        assert imported == await cur.fetchall()
    assert settings == [(16, 100, {"team": "docs"}, "for the archive tests")]
    assert hnsw == (1,)
    # The archive's format is stable: exporting the import gives the same records (bar the export time).
    out = io.BytesIO()
    async with await psycopg.AsyncConnection.connect(target_dsn, autocommit=True) as conn:
        await export_store(conn, "handbook", out)
    again = records(out.getvalue())
    assert [kind for kind, _, _ in again] == [kind for kind, _, _ in records(built.archive)]
    assert [p for k, _, p in again if k == "C"] != []
    assert sorted(p for k, _, p in again if k == "C") == sorted(p for k, _, p in records(built.archive) if k == "C")


async def test_the_archive_streams_in_bounded_records(built: Built) -> None:
    kinds = [kind for kind, _, _ in records(built.archive)]
    assert kinds[0] == "H" and kinds[-1] == "E"
    assert kinds.count("C") == 3  # 2,501 chunks in batches of 1,024
    assert max(len(payload) for _, _, payload in records(built.archive)) < 1_000_000
    end = json.loads(records(built.archive)[-1][2])
    assert end["sha256"] == hashlib.sha256(built.archive[: records(built.archive)[-1][1]]).hexdigest()


@pytest.mark.parametrize("cut", [0, 5, 11, 40, -700, -1])
async def test_a_truncated_archive_is_refused(built: Built, target_dsn: str, tmp_path: Path, cut: int) -> None:
    before = await footprint(target_dsn)
    with pytest.raises(fmt.ArchiveError, match=r"truncated archive|not a vectorstore archive"):
        await run_import(target_dsn, built.archive[:cut], tmp_path)
    assert await footprint(target_dsn) == before


async def test_a_corrupted_byte_is_refused_where_it_is(built: Built, target_dsn: str, tmp_path: Path) -> None:
    before = await footprint(target_dsn)
    _, offset, payload = [r for r in records(built.archive) if r[0] == "C"][1]
    damaged = bytearray(built.archive)
    damaged[offset + FRAME.size + len(payload) // 2] ^= 0x40
    with pytest.raises(fmt.ArchiveError, match=f"corrupted archive: the C record at byte {offset} fails its CRC-32"):
        await run_import(target_dsn, bytes(damaged), tmp_path)
    assert await footprint(target_dsn) == before


async def test_a_checksum_mismatch_is_refused(built: Built, target_dsn: str, tmp_path: Path) -> None:
    """A vector changed and its record's CRC fixed up: only the SHA-256 at the end can tell, after every row
    was written, so the whole import rolls back."""
    before = await footprint(target_dsn)
    index = next(i for i, r in enumerate(records(built.archive)) if r[0] == "C")
    payload = bytearray(records(built.archive)[index][2])
    payload[-3] ^= 0x01
    with pytest.raises(fmt.ArchiveError, match="checksum mismatch"):
        await run_import(target_dsn, rebuild(built.archive, {index: bytes(payload)}, rehash=False), tmp_path)
    assert await footprint(target_dsn) == before


async def test_another_format_version_is_refused(built: Built, target_dsn: str, tmp_path: Path) -> None:
    newer = fmt.MAGIC + struct.pack(">H", 2) + built.archive[len(fmt.MAGIC) + 2 :]
    with pytest.raises(fmt.ArchiveError, match="archive format version 2: this vectorstore reads version 1 only"):
        await run_import(target_dsn, newer, tmp_path)
    with pytest.raises(fmt.ArchiveError, match="not a vectorstore archive"):
        await run_import(target_dsn, b"PK\x03\x04" + built.archive, tmp_path)
    assert (await footprint(target_dsn))["vector_stores"] == 0


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"dimensions": 16001, "vector_type": "halfvec"}, "over pgvector's limit of 16000"),
        ({"dimensions": 4001, "vector_type": "halfvec"}, "over pgvector's HNSW limit of 4000 for halfvec"),
        ({"dimensions": 2001, "vector_type": "vector", "quantization": "halfvec"}, "HNSW limit of 2000 for vector"),
        ({"dimensions": 0}, "not a positive integer"),
        ({"dimensions": 16}, "not 2501|holds"),
    ],
)
async def test_bad_dimensions_are_refused(
    built: Built, target_dsn: str, tmp_path: Path, settings: dict[str, Any], message: str
) -> None:
    header = json.loads(records(built.archive)[0][2])
    header["store"].update(settings)
    before = await footprint(target_dsn)
    with pytest.raises(fmt.ArchiveError, match=message):
        await run_import(target_dsn, rebuild(built.archive, {0: json.dumps(header).encode()}), tmp_path)
    assert await footprint(target_dsn) == before


async def test_an_existing_store_needs_replace(built: Built, target_dsn: str, tmp_path: Path) -> None:
    await run_import(target_dsn, built.archive, tmp_path)
    before = await footprint(target_dsn)
    with pytest.raises(ImportRefused, match=f"store {STORE_ID} \\('handbook'\\) already exists: --replace"):
        await run_import(target_dsn, built.archive, tmp_path)
    assert await footprint(target_dsn) == before
    # --replace: the same store again, in place, nothing doubled (the shared Files are the same bytes), and
    # the old store's queued ingestion gone with it.
    async with await psycopg.AsyncConnection.connect(target_dsn, autocommit=True) as conn:
        await conn.execute(
            "INSERT INTO ingest_jobs (vector_store_id, file_id) VALUES (%s, %s)", [STORE_ID, built.file_ids[0]]
        )
    await run_import(target_dsn, built.archive, tmp_path, replace=True)
    assert await footprint(target_dsn) == before
    # --as a new name: a second store with its own id, sharing the Files.
    record, _ = await run_import(target_dsn, built.archive, tmp_path, as_="handbook-copy")
    assert record.id != STORE_ID and record.name == "handbook-copy"
    assert len(await table_rows(target_dsn, record.id)) == CHUNKS + 1
    after = await footprint(target_dsn)
    assert after["vector_stores"] == 2 and after["files"] == before["files"]


async def test_a_failure_half_way_leaves_nothing(built: Built, target_dsn: str, tmp_path: Path) -> None:
    """Interrupted after the files and the first chunk batch are written: the transaction takes them back."""
    before = await footprint(target_dsn)

    class Interrupted(Exception):
        pass

    def tick(counts: Counts) -> None:
        if counts.chunks:
            raise Interrupted

    with pytest.raises(Interrupted):
        await run_import(target_dsn, built.archive, tmp_path, tick=tick)
    assert await footprint(target_dsn) == before


async def test_data_postgresql_refuses_rolls_back(built: Built, target_dsn: str, tmp_path: Path) -> None:
    """A chunk whose attributes are not JSON, in an archive whose checksums are all right."""
    index = next(i for i, r in enumerate(records(built.archive)) if r[0] == "C")
    payload = records(built.archive)[index][2]
    count, meta_length = struct.unpack_from(">II", payload)
    rows = json.loads(payload[8 : 8 + meta_length])
    rows[3][5] = "{not json"
    meta = json.dumps(rows).encode()
    edited = struct.pack(">II", count, len(meta)) + meta + payload[8 + meta_length :]
    before = await footprint(target_dsn)
    with pytest.raises(psycopg.errors.InvalidTextRepresentation):
        await run_import(target_dsn, rebuild(built.archive, {index: edited}), tmp_path)
    assert await footprint(target_dsn) == before


async def test_a_declared_store_keeps_its_model(built: Built, target_dsn: str, tmp_path: Path) -> None:
    other = spec_for(
        tmp_path, [{"name": "handbook", "id": STORE_ID, "embedding": {"model": "other-model", "dimensions": 16}}]
    )
    with pytest.raises(ImportRefused, match=r"declares store 'handbook'.*'other-model' at 16 dimensions.*mix two"):
        await run_import(target_dsn, built.archive, tmp_path, spec=other)
    assert (await footprint(target_dsn))["vector_stores"] == 0
    same = spec_for(tmp_path, [{"name": "handbook", "id": STORE_ID, "embedding": {"model": "fake-model"}}])
    record, _ = await run_import(target_dsn, built.archive, tmp_path, spec=same)
    assert record.declared
