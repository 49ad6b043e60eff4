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
from typing import Any

import numpy as np
import numpy.typing as npt

from vectorstore.search import text

MIN_POSTINGS = 4096
"""Rows smaller than this (32 KB packed) are read every time: cheap to read, and not worth a key a search."""
ENTRY_OVERHEAD = 1200
"""Bytes an entry costs beyond its arrays (the objects, array headers and dictionary slots: about 1,150
measured with tracemalloc), counted against the budget."""
MAX_AGE_SECONDS = 600.0


DENSE_FILL = 0.75
"""A row whose chunks fill at least this share of its span of ords is kept as one slot an ord (dense)."""


def bm25_weights(
    tf: Any, dl: Any, idf: float | npt.NDArray[np.float64], avgdl: float, *, empty_slots: bool = False
) -> npt.NDArray[np.float64]:
    """Each posting's BM25 term weight, `idf * tf * (k1 + 1) / (tf + k1 * (1 - b + b * dl / avgdl))`, in float64
    whatever `tf` and `dl` hold. Postings read and rows held both score through here, so a chunk gets the same
    float either way. `idf`: the term's, or each posting's (several terms' postings at once: the same floats).
    `empty_slots`: `tf` may be 0 (a dense row's slots of chunks without the term), and those weigh 0 whatever b
    is (with b = 1 their denominator would be 0 too)."""
    k1, b = text.K1, text.B
    # The constants folded, and the casts inside each operation rather than passes of their own.
    denominator = np.add(tf, k1 * (1 - b), dtype=np.float64)
    denominator += np.multiply(dl, k1 * b / avgdl, dtype=np.float64)
    weights: npt.NDArray[np.float64] = np.multiply(tf, idf * (k1 + 1), dtype=np.float64)
    np.divide(weights, denominator, out=weights, where=tf > 0 if empty_slots else True)
    return weights


class DecodedRow:
    """One block row's postings, decoded, and their BM25 weights for the statistics it was last scored with.

    Kept one of two ways, whichever is smaller:
    - sparse: `ords` (uint32, in the row's order, not sorted), and a chunk's `tf` and `dl` (uint16) a posting;
    - dense, when the row's chunks fill at least DENSE_FILL of the ords from `lo` to `hi`: `tf` and `dl` have a
      slot for each of those ords, 0 where the chunk doesn't hold the term (a posting's tf is at least 1), and
      `ords` is None. The rows of the words in most chunks are dense, and adding one to a search's sums is one
      pass, without an index.

    `weights(idf, avgdl)` is each slot's BM25 term weight, `idf * tf * (k1 + 1) / (tf + k1 * (1 - b + b * dl /
    avgdl))` in float64, and is kept until the statistics change: a store that isn't being written scores its
    common words by adding arrays already computed. A write of chunks changes the count or the mean length, so
    the next search computes the weights again, as it would without the cache. The arrays are shared by every
    search that holds the row, and never changed in place: the attributes are not to be set after `__init__`
    (`nbytes` is what the cache counted)."""

    __slots__ = ("_weights", "dl", "hi", "lexeme", "lo", "nbytes", "ords", "postings", "seg", "tf", "xmin")

    def __init__(self, lexeme: str, seg: int, xmin: int, ords: Any, tf: Any, dl: Any) -> None:
        self.lexeme, self.seg, self.xmin = lexeme, seg, xmin
        self.postings = int(ords.size)
        self.lo = int(ords.min()) if self.postings else 0
        self.hi = int(ords.max()) if self.postings else -1
        span = self.hi - self.lo + 1
        self.ords: npt.NDArray[np.uint32] | None
        if self.postings and self.postings >= DENSE_FILL * span:
            slots = np.asarray(ords, dtype=np.int64) - self.lo
            self.ords = None
            self.tf = np.zeros(span, dtype=np.uint16)
            self.dl = np.zeros(span, dtype=np.uint16)
            self.tf[slots], self.dl[slots] = tf, dl
        else:
            self.ords = np.asarray(ords, dtype=np.uint32)
            self.tf, self.dl = np.asarray(tf, dtype=np.uint16), np.asarray(dl, dtype=np.uint16)
        for array in (self.ords, self.tf, self.dl):
            if array is not None:
                array.setflags(write=False)
        # The weights are counted before they exist: 8 bytes a slot, once the row is first scored.
        arrays = self.tf.nbytes + self.dl.nbytes + (self.ords.nbytes if self.ords is not None else 0)
        self.nbytes = arrays + 8 * self.tf.size + ENTRY_OVERHEAD
        self._weights: tuple[float, float, npt.NDArray[np.float64]] | None = None

    @property
    def dense(self) -> bool:
        return self.ords is None

    def is_row(self, lexeme: str, seg: int, xmin: int, postings: int) -> bool:
        """Whether this is the block row the fetch describes (the key is a hash: it could name another)."""
        return (self.lexeme, self.seg, self.xmin, self.postings) == (lexeme, seg, xmin, postings)

    def weights(self, idf: float, avgdl: float) -> npt.NDArray[np.float64]:
        """Each slot's BM25 weight (0 for a dense row's empty slots), computed once for given statistics."""
        kept = self._weights
        if kept is not None and kept[0] == idf and kept[1] == avgdl:
            return kept[2]
        weights = bm25_weights(self.tf, self.dl, idf, avgdl, empty_slots=self.ords is None)
        weights.setflags(write=False)
        self._weights = (idf, avgdl, weights)  # one assignment: a reader sees the old triple or the new one
        return weights

    def add_to(self, sums: npt.NDArray[np.float64], idf: float, avgdl: float) -> None:
        """Add the row's weights to `sums`, a slot an ord from 0 to at least `hi`."""
        weights = self.weights(idf, avgdl)
        if self.ords is None:
            sums[self.lo : self.hi + 1] += weights
        else:
            sums[self.ords.astype(np.intp)] += weights  # a chunk is in a row once: no index repeats

    def mark(self, matched: npt.NDArray[np.bool_]) -> None:
        """Set the slots of the row's chunks in `matched`, a slot an ord from 0 to at least `hi`."""
        if self.ords is None:
            matched[self.lo : self.hi + 1] |= self.tf > 0
        else:
            matched[self.ords] = True

    def pairs(self, idf: float, avgdl: float) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]:
        """The row's chunks' ords and weights, a posting each."""
        weights = self.weights(idf, avgdl)
        if self.ords is None:
            slots = np.flatnonzero(self.tf)
            return slots + self.lo, weights[slots]
        return self.ords.astype(np.int64), weights

    def count_among(self, gone: npt.NDArray[np.int64]) -> int:
        """How many of the row's chunks are among `gone` (ords, unique)."""
        if not gone.size or not self.postings:
            return 0
        if self.ords is None:
            inside = gone[(gone >= self.lo) & (gone <= self.hi)]
            return int(np.count_nonzero(self.tf[inside - self.lo]))
        return int(np.count_nonzero(np.isin(gone, self.ords)))


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
        """The table's entries now, without those read more than `max_age` ago (dropped, whatever their table): a
        copy, so entries evicted while a search runs stay usable by it."""
        oldest = self.clock() - self.max_age
        # `_kept_at` is in the order entries were kept (a row kept again moves to the end): the expired ones
        # are first, so a search looks at no more than those and the first one still fresh.
        while self._kept_at:
            (kept_table, key), kept = next(iter(self._kept_at.items()))
            if kept >= oldest:
                break
            self._remove(kept_table, key)
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
