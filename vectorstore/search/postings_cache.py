"""Decoded keyword postings of common terms, kept in the server process between searches.

At 501,115 chunks a keyword search read 1.35 million postings (10.8 MB) a query, nearly all of them in the
lists of the query's few common words, and spent about 25 ms of the database's and the server's CPU fetching
and decoding them before any scoring (docs/benchmarks.md, issue 20's fourth and fifth rounds). Those lists are
the same few hundred for every query: Zipf's law puts most of a text's words among a store's most frequent
ones.

So a block row of at least MIN_POSTINGS postings is decoded once and kept here, in a least-recently-used cache
bounded by `server.postings_cache_bytes` (per process). A search sends the keys of the rows it holds
(`keys_literal`), and the fetch statement (search/postings.py) leaves the postings of those rows out, so the
database neither reads nor sends them.

A key is a 64-bit hash the database computes of `lexeme:seg:xmin`. A block row is never changed in place: a
write adds rows, compaction deletes rows and inserts new ones, and any new row version has a new `xmin`. So a
key names one immutable row, and a cached row can't be stale: once compaction replaces it, the statement no
longer returns its key, and it ages out of the cache unused. The fetch also returns each row's lexeme, seg and
xmin, which the search checks against the cached entry, so a hash collision can't give a wrong answer either
(postings.py then reads the rows again without the cache).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

MIN_POSTINGS = 4096
"""Rows smaller than this (32 KB packed) are read every time: cheap to read, and not worth a key a search."""
ENTRY_OVERHEAD = 400
"""Bytes an entry costs beyond its arrays (the objects and dictionary slots), counted against the budget."""


@dataclass(frozen=True, eq=False)
class DecodedRow:
    """One block row's postings, decoded: chunk ords, term frequencies and chunk lengths, in ord order.

    `tf` and `dl` are float32, exact for their 16-bit integers and half the memory of float64; scoring computes
    in float64 (postings.py)."""

    lexeme: str
    seg: int
    xmin: int
    ords: npt.NDArray[np.int64]
    tf: npt.NDArray[np.float32]
    dl: npt.NDArray[np.float32]
    nbytes: int = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "nbytes", self.ords.nbytes + self.tf.nbytes + self.dl.nbytes + ENTRY_OVERHEAD)


class PostingsCache:
    """Decoded block rows by (table, key), least recently used first out, within `max_bytes` in all."""

    def __init__(self, max_bytes: int, min_postings: int = MIN_POSTINGS) -> None:
        self.max_bytes = max_bytes
        self.min_postings = min_postings
        """Rows of fewer postings are read every time (tests lower it to cache the rows of a small store)."""
        self.bytes = 0
        self._lru: OrderedDict[tuple[str, int], DecodedRow] = OrderedDict()
        self._by_table: dict[str, dict[int, DecodedRow]] = {}
        self._literals: dict[str, str] = {}
        """Each table's keys as one int8[] literal, rebuilt only after that table's entries change."""

    @property
    def enabled(self) -> bool:
        return self.max_bytes > 0

    def __len__(self) -> int:
        return len(self._lru)

    def rows(self, table: str) -> dict[int, DecodedRow]:
        """The table's entries now: a copy, so entries evicted while a search runs stay usable by it."""
        return dict(self._by_table.get(table, {}))

    def keys_literal(self, table: str) -> str:
        """`{k1,k2,...}`: the keys the fetch statement leaves out (`{}` when none)."""
        literal = self._literals.get(table)
        if literal is None:
            literal = self._literals[table] = "{" + ",".join(map(str, self._by_table.get(table, ()))) + "}"
        return literal

    def touch(self, table: str, key: int) -> None:
        if (table, key) in self._lru:
            self._lru.move_to_end((table, key))

    def put(self, table: str, key: int, row: DecodedRow) -> None:
        """Keep `row` under `key`, in place of any entry the key had (one read again after a hash collision)."""
        if not self.enabled or row.nbytes > self.max_bytes:
            return
        previous = self._lru.pop((table, key), None)
        if previous is not None:
            self._drop(table, key, previous)
        self._lru[(table, key)] = row
        self._by_table.setdefault(table, {})[key] = row
        self._literals.pop(table, None)
        self.bytes += row.nbytes
        while self.bytes > self.max_bytes:
            (old_table, old_key), old = self._lru.popitem(last=False)
            self._drop(old_table, old_key, old)

    def forget(self, table: str) -> None:
        """Drop a table's entries (a store dropped, or tests)."""
        for key, row in list(self._by_table.get(table, {}).items()):
            del self._lru[(table, key)]
            self._drop(table, key, row)

    def _drop(self, table: str, key: int, row: DecodedRow) -> None:
        self.bytes -= row.nbytes
        entries = self._by_table[table]
        del entries[key]
        if not entries:
            del self._by_table[table]
        self._literals.pop(table, None)
