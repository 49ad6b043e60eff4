"""The archive format, version 1: a magic, then framed records, then an end record with the SHA-256 of all
that came before it.

    magic    b"VSARCHIV" + u16 format version (big-endian)
    record   type (1 ASCII byte) + payload length (u32) + CRC-32 of the payload (u32) + payload
    H        header: JSON, the store (id, name, metadata, settings) and the exporter's version
    F        a file: JSON (the File object and its attachment: filename, bytes, sha256, status, attributes...)
    D        the previous file's bytes (several D records for a file above MAX_RECORD bytes)
    C        a batch of chunks: u32 count + u32 JSON length + JSON [[id, file_id, chunk_index, filename, content,
             attributes], ...] (attributes as a string: the JSON text PostgreSQL holds, exact whatever its
             numbers) + the count's vectors, each `dimensions` big-endian IEEE 754 floats, 4 bytes each
             (2 for a `halfvec` store): pgvector's own binary element encoding, so they round-trip bit for bit
    S        the store's source paths (JSON list): what spares a sync from re-reading unchanged documents
    E        end: JSON counts and `sha256`, the hex SHA-256 of every byte before this record

Streaming both ways: a writer never needs a count before it has written the rows, a reader verifies each
record as it arrives (CRC-32: a corrupted byte is named by its offset) and the whole at the end (SHA-256:
what a CRC can't promise). Nothing is compressed: the vectors, most of the bytes, don't compress.
"""

from __future__ import annotations

import hashlib
import json
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

import orjson

from vectorstore.storage.database import loads_json

MAGIC = b"VSARCHIV"
VERSION = 1
FORMAT_NAME = "vectorstore-archive"
MAX_RECORD = 64 * 1024 * 1024
"""A record's largest payload: a reader refuses more (a corrupted length must not make it allocate 4 GiB)."""
CHUNK_BATCH = 1024
RECORD_TYPES = frozenset(b"HFDCSE")
_FRAME = struct.Struct(">cII")
_VERSION = struct.Struct(">H")
_BATCH = struct.Struct(">II")


class ArchiveError(Exception):
    """The archive can't be read: truncated, corrupted, another version, inconsistent. The message says where."""


@dataclass(frozen=True)
class Record:
    kind: str
    payload: bytes
    offset: int


class Writer:
    """Frames records onto `out`, hashing every byte written."""

    def __init__(self, out: BinaryIO) -> None:
        self.out = out
        self.digest = hashlib.sha256()
        self.bytes_written = 0
        self._write(MAGIC + _VERSION.pack(VERSION))

    def _write(self, data: bytes) -> None:
        self.digest.update(data)
        self.out.write(data)
        self.bytes_written += len(data)

    def record(self, kind: str, payload: bytes) -> None:
        if len(payload) > MAX_RECORD:
            raise ValueError(f"a {kind} record of {len(payload)} bytes is over {MAX_RECORD}")
        self._write(_FRAME.pack(kind.encode(), len(payload), zlib.crc32(payload)) + payload)

    def json(self, kind: str, value: Any) -> None:
        try:
            payload = orjson.dumps(value)
        except TypeError:  # an integer beyond 64 bits in a file's attributes: the standard library is exact
            payload = json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()
        self.record(kind, payload)

    def data(self, content: bytes) -> None:
        """A file's bytes, in as many D records as they need (at least one, for an empty file)."""
        view = memoryview(content)
        for start in range(0, max(len(view), 1), MAX_RECORD):
            self.record("D", bytes(view[start : start + MAX_RECORD]))

    def end(self, counts: dict[str, int]) -> None:
        """The end record: not part of its own hash."""
        payload = orjson.dumps({**counts, "sha256": self.digest.hexdigest()})
        frame = _FRAME.pack(b"E", len(payload), zlib.crc32(payload)) + payload
        self.out.write(frame)
        self.bytes_written += len(frame)


def encode_chunks(rows: list[tuple[Any, ...]], vectors: bytes) -> bytes:
    meta = orjson.dumps(rows)
    return _BATCH.pack(len(rows), len(meta)) + meta + vectors


def decode_chunks(record: Record, vector_bytes: int) -> tuple[list[list[Any]], memoryview]:
    """(rows, their vectors concatenated), each vector `vector_bytes` long."""
    payload = memoryview(record.payload)
    if len(payload) < _BATCH.size:
        raise ArchiveError(f"chunk record at byte {record.offset} is too short")
    count, meta_length = _BATCH.unpack_from(payload)
    meta_end = _BATCH.size + meta_length
    if meta_end > len(payload) or len(payload) - meta_end != count * vector_bytes:
        raise ArchiveError(
            f"chunk record at byte {record.offset} holds {len(payload) - meta_end} bytes of vectors, not "
            f"{count} x {vector_bytes}: its vectors don't have the header's dimensions"
        )
    rows = loads(payload[_BATCH.size : meta_end], record)
    if not isinstance(rows, list) or len(rows) != count:
        raise ArchiveError(f"chunk record at byte {record.offset} lists another number of rows than it says")
    return rows, payload[meta_end:]


def loads(data: bytes | memoryview, record: Record) -> Any:
    try:
        return loads_json(bytes(data))
    except ValueError as exc:
        raise ArchiveError(f"{record.kind} record at byte {record.offset} is not valid JSON: {exc}") from None


class Reader:
    """Records from `source`, each checked as it comes; `verify_end` checks the whole."""

    def __init__(self, source: BinaryIO) -> None:
        self.source = source
        self.digest = hashlib.sha256()
        self.offset = 0
        head = self._read(len(MAGIC) + _VERSION.size, "the archive's header")
        self.digest.update(head)
        if head[: len(MAGIC)] != MAGIC:
            raise ArchiveError("not a vectorstore archive (no VSARCHIV magic at its start)")
        (version,) = _VERSION.unpack(head[len(MAGIC) :])
        if version != VERSION:
            raise ArchiveError(
                f"archive format version {version}: this vectorstore reads version {VERSION} only"
                + (
                    " (the archive is newer: use the vectorstore that wrote it, or a newer one)"
                    if version > VERSION
                    else ""
                )
            )

    def _read(self, size: int, what: str) -> bytes:
        data = self.source.read(size)
        if len(data) != size:
            raise ArchiveError(
                f"truncated archive: it ends at byte {self.offset + len(data)}, inside {what} "
                "(the end record never came)"
            )
        self.offset += size
        return data

    def records(self) -> Iterator[Record]:
        """Every record up to and including E (whose hash is then verified); nothing may follow it."""
        while True:
            start = self.offset
            frame = self._read(_FRAME.size, f"the record header at byte {start}")
            kind_byte, length, crc = _FRAME.unpack(frame)
            kind = kind_byte.decode("latin-1")
            if kind_byte[0] not in RECORD_TYPES:
                raise ArchiveError(f"corrupted archive: unknown record type {kind!r} at byte {start}")
            if length > MAX_RECORD:
                raise ArchiveError(f"corrupted archive: record at byte {start} claims {length} bytes")
            payload = self._read(length, f"the {kind} record at byte {start}")
            if zlib.crc32(payload) != crc:
                raise ArchiveError(f"corrupted archive: the {kind} record at byte {start} fails its CRC-32 check")
            record = Record(kind, payload, start)
            if kind == "E":
                self._verify_end(record)
                yield record
                return
            self.digest.update(frame)
            self.digest.update(payload)
            yield record

    def _verify_end(self, record: Record) -> None:
        end = loads(record.payload, record)
        if not isinstance(end, dict) or not isinstance(end.get("sha256"), str):
            raise ArchiveError(f"the end record at byte {record.offset} carries no sha256")
        if end["sha256"] != self.digest.hexdigest():
            raise ArchiveError(
                f"checksum mismatch: the archive's records hash to {self.digest.hexdigest()}, its end record says "
                f"{end['sha256']}; the archive was altered or damaged"
            )
        if self.source.read(1):
            raise ArchiveError(f"unexpected bytes after the end record (at byte {self.offset})")
