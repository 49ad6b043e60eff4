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

A key is a 64-bit hash the database computes of `lexeme:seg:xmin:ctid`. A block row is never changed in place:
a write adds rows, compaction deletes rows and inserts new ones, and any new row version has a new `xmin`. So a
key names one immutable row version: once compaction replaces a row, the statement no longer returns its key,
and the entry is dropped when the row that replaces it is kept (same lexeme and seg), or ages out. The fetch
also returns each row's lexeme, seg, xmin and count of postings, which the search checks against the entry, so
a hash collision can't give a wrong answer either (postings.py then reads the rows again without the cache).

The one way a transaction id names two versions is a database that hands out ids again: a failover to a
replica that had not received the last transactions, or a restore to an earlier point, while the server keeps
running. A row rewritten then with the same lexeme, seg, xmin, position and count of postings, yet other
postings, would be served from the cache. Entries are therefore used for at most MAX_AGE_SECONDS after they
were read, which bounds that window; common words' rows are read again that often at no real cost.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

MIN_POSTINGS = 4096
"""Rows smaller than this (32 KB packed) are read every time: cheap to read, and not worth a key a search."""
ENTRY_OVERHEAD = 400
"""Bytes an entry costs beyond its arrays (the objects and dictionary slots), counted against the budget."""
MAX_AGE_SECONDS = 600.0


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
        for array in (self.ords, self.tf, self.dl):
            array.setflags(write=False)  # shared by every search that holds the row: never changed in place

    def is_row(self, lexeme: str, seg: int, xmin: int, postings: int) -> bool:
        """Whether this is the block row the fetch describes (the key is a hash: it could name another)."""
        return (self.lexeme, self.seg, self.xmin, self.ords.size) == (lexeme, seg, xmin, postings)


class PostingsCache:
    """Decoded block rows by (table, key), least recently used first out, within `max_bytes` in all."""

    def __init__(
        self,
        max_bytes: int,
        min_postings: int = MIN_POSTINGS,
        *,
        max_age: float = MAX_AGE_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_bytes = max_bytes
        self.min_postings = min_postings
        """Rows of fewer postings are read every time (tests lower it to cache the rows of a small store)."""
        self.max_age = max_age
        self.clock = clock
        self.bytes = 0
        self._lru: OrderedDict[tuple[str, int], DecodedRow] = OrderedDict()
        self._by_table: dict[str, dict[int, DecodedRow]] = {}
        self._kept_at: dict[tuple[str, int], float] = {}
        self._slots: dict[tuple[str, str, int], int] = {}
        """The key held for each (table, lexeme, seg): a newer version of the row replaces the older one."""
        self._literals: dict[str, str] = {}
        """Each table's keys as one int8[] literal, rebuilt only after that table's entries change."""

    @property
    def enabled(self) -> bool:
        return self.max_bytes > 0

    def __len__(self) -> int:
        return len(self._lru)

    def rows(self, table: str) -> dict[int, DecodedRow]:
        """The table's entries now, without those read more than `max_age` ago (dropped): a copy, so entries
        evicted while a search runs stay usable by it."""
        entries = self._by_table.get(table, {})
        oldest = self.clock() - self.max_age
        for key in [key for key in entries if self._kept_at[(table, key)] < oldest]:
            self._remove(table, key)
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
        self._remove(table, key)
        older = self._slots.get((table, row.lexeme, row.seg))
        if older is not None:
            self._remove(table, older)  # the version of this row that compaction replaced
        self._lru[(table, key)] = row
        self._by_table.setdefault(table, {})[key] = row
        self._kept_at[(table, key)] = self.clock()
        self._slots[(table, row.lexeme, row.seg)] = key
        self._literals.pop(table, None)
        self.bytes += row.nbytes
        while self.bytes > self.max_bytes:
            (old_table, old_key), _ = next(iter(self._lru.items()))
            self._remove(old_table, old_key)

    def forget(self, table: str) -> None:
        """Drop a table's entries (a store dropped, or tests)."""
        for key in list(self._by_table.get(table, {})):
            self._remove(table, key)

    def _remove(self, table: str, key: int) -> None:
        row = self._lru.pop((table, key), None)
        if row is None:
            return
        self.bytes -= row.nbytes
        del self._kept_at[(table, key)]
        if self._slots.get((table, row.lexeme, row.seg)) == key:
            del self._slots[(table, row.lexeme, row.seg)]
        entries = self._by_table[table]
        del entries[key]
        if not entries:
            del self._by_table[table]
        self._literals.pop(table, None)
