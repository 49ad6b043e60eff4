"""Per-store storage: one table per store, sized to its dimensions, with an HNSW index for its distance and a
GIN index over the full-text representation of its content.

Why a table per store rather than one shared table: see docs/design.md (measured in bench/layout.py).

Every chunk row carries: id, file_id (NULL for rows added through the prototype's /embeddings routes),
chunk_index, filename, content, attributes (JSONB, what filters read), the embedding, created_at, and `fts`,
the content as a tsvector in the store's text search configuration (what keyword search reads). In a table
created by this version `fts` is a stored generated column, so COPY fills it with no extra write; a table
created before keyword search existed gets a plain `fts` column, a trigger and a background backfill instead
(vectorstore/search/text_upgrade.py), because adding a stored generated column rewrites the table (and its
HNSW index) under an exclusive lock.
Ingestion writes rows with `copy_chunks` (binary COPY) inside its own transaction, one per file.

Beside each chunk table `<t>` live keyword search's postings (migration 0420, vectorstore/search/postings.py):
`<t>_blocks`, a few packed rows a lexeme keyed by each chunk's `ord`, and `<t>_gone`, the chunks deleted since
the last compaction. Statement-level triggers keep them in step with `<t>` in the writer's own transaction, so
every write path (COPY, attribute or content updates, deletes) and every table made here has them. A table
from before them (bare, or with 0400's `<t>_postings` or 0410's `<t>_impacts`) gets them in the background
(vectorstore/search/postings_upgrade.py).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from pgvector import HalfVector, Vector
from psycopg import sql
from psycopg.types.json import Jsonb

from config.model import Distance, Quantization, VectorType

# pgvector operator per distance; the same operator must appear in the index opclass and in ORDER BY.
OPERATORS: dict[str, str] = {"cosine": "<=>", "l2": "<->", "inner_product": "<#>"}
_OPCLASS_SUFFIX: dict[str, str] = {"cosine": "cosine_ops", "l2": "l2_ops", "inner_product": "ip_ops"}

CHUNK_COLUMNS = ("id", "file_id", "chunk_index", "filename", "content", "attributes", "embedding")


def table_name(store_id: str) -> str:
    """A fixed, safe identifier for a store's table: store ids may hold any characters the spec allows."""
    return "vs_" + hashlib.sha256(store_id.encode()).hexdigest()[:24]


@dataclass(frozen=True)
class Layout:
    """What a store's table looks like; enough to create it, search it and write to it."""

    store_id: str
    table: str
    dimensions: int
    distance: Distance
    vector_type: VectorType
    hnsw_m: int = 16
    hnsw_ef_construction: int = 64
    language: str = "english"
    """The PostgreSQL text search configuration `fts` is made with."""
    quantization: Quantization = "none"
    """`binary`: the HNSW index is over `binary_quantize(embedding)` and searches rescore (see search/vector.py)."""

    @property
    def ident(self) -> sql.Identifier:
        return sql.Identifier(self.table)

    @property
    def operator(self) -> sql.SQL:
        return sql.SQL(OPERATORS[self.distance])

    @property
    def opclass(self) -> sql.SQL:
        return sql.SQL(f"{self.vector_type}_{_OPCLASS_SUFFIX[self.distance]}")

    @property
    def quantized(self) -> sql.Composed:
        """The indexed expression of a binary-quantized store: one bit a dimension, compared by Hamming distance."""
        return sql.SQL("(binary_quantize(embedding)::bit({dims}))").format(dims=sql.Literal(self.dimensions))

    def to_db(self, embedding: Sequence[float]) -> Vector | HalfVector:
        """The parameter type psycopg dumps in binary for this table's column."""
        values = list(embedding)
        return Vector(values) if self.vector_type == "vector" else HalfVector(values)


# Lexeme frequencies for BM25's idf come from ANALYZE's most-common-elements statistics of `fts` (see
# vectorstore/search/statistics.py); a target of 300 keeps up to 3,000 lexemes and samples 90,000 rows.
FTS_STATISTICS_TARGET = 300


def create_table_statements(layout: Layout) -> list[sql.Composed]:
    t = layout.ident
    return [
        sql.SQL(
            "CREATE TABLE {t} ("
            " id text PRIMARY KEY,"
            " file_id text,"
            " chunk_index integer NOT NULL DEFAULT 0,"
            " filename text,"
            " content text NOT NULL,"
            " attributes jsonb NOT NULL DEFAULT '{{}}'::jsonb,"
            " embedding {vtype}({dims}) NOT NULL,"
            " created_at bigint NOT NULL DEFAULT epoch_seconds(),"
            " fts tsvector GENERATED ALWAYS AS (to_tsvector({language}::regconfig, content)) STORED)"
        ).format(
            t=t,
            vtype=sql.SQL(layout.vector_type),
            dims=sql.Literal(layout.dimensions),
            language=sql.Literal(layout.language),
        ),
        sql.SQL("ALTER TABLE {t} ALTER COLUMN fts SET STATISTICS {n}").format(
            t=t, n=sql.Literal(FTS_STATISTICS_TARGET)
        ),
        embedding_storage_statement(t),
        *index_statements(layout),
        fts_index_statement(layout),
        sql.SQL("CREATE INDEX {name} ON {t} (file_id, chunk_index)").format(
            name=sql.Identifier(f"{layout.table}_file"), t=t
        ),
        *postings_statements(layout, ready=True),
        # jsonb_path_ops serves `attributes @> ...`, which is how equality filters compile: the planner can
        # pick it over HNSW when a filter is very selective.
        sql.SQL("CREATE INDEX {name} ON {t} USING gin (attributes jsonb_path_ops)").format(
            name=sql.Identifier(f"{layout.table}_attributes"), t=t
        ),
    ]


def embedding_storage_statement(table: sql.Identifier) -> sql.Composed:
    """Keep the vector in the row (STORAGE MAIN) rather than in TOAST, pgvector's default (EXTERNAL).

    Every row a search returns computes its distance from the row's vector, and an exact scan (stores of up to
    vector.EXACT_MAX_ROWS rows) reads them all: out of line, each is a TOAST index probe and a second heap
    read. On a 921-chunk bench store (384 dimensions, searched by exact scan), a vector search cost 1.0-1.1 ms
    of CPU against 3.4-4.2, and a hybrid search 1.8-1.9 against 4.2-5.0; at 6,308 chunks (HNSW) no difference
    showed. The text and lexemes go out of line more often instead: a filtered keyword search, which reads
    `fts` row by row, cost PostgreSQL 4.3-4.5 ms against 3.9 (docs/benchmarks.md, "Vectors in the row"). MAIN,
    not PLAIN: a row that can't fit a page any other way still goes out of line rather than failing."""
    return sql.SQL("ALTER TABLE {t} ALTER COLUMN embedding SET STORAGE MAIN").format(t=table)


def index_statements(layout: Layout) -> list[sql.Composed]:
    if layout.quantization == "binary":
        indexed: sql.Composable = sql.SQL("{expr} bit_hamming_ops").format(expr=layout.quantized)
    else:
        indexed = sql.SQL("embedding {opclass}").format(opclass=layout.opclass)
    return [
        sql.SQL("CREATE INDEX {name} ON {t} USING hnsw ({indexed}) WITH (m = {m}, ef_construction = {ef})").format(
            name=sql.Identifier(f"{layout.table}_hnsw"),
            t=layout.ident,
            indexed=indexed,
            m=sql.Literal(layout.hnsw_m),
            ef=sql.Literal(layout.hnsw_ef_construction),
        )
    ]


def fts_index_name(table: str) -> str:
    return f"{table}_fts"


def fts_index_statement(layout: Layout, *, concurrently: bool = False) -> sql.Composed:
    return sql.SQL("CREATE INDEX {how} IF NOT EXISTS {name} ON {t} USING gin (fts)").format(
        how=sql.SQL("CONCURRENTLY" if concurrently else ""),
        name=sql.Identifier(fts_index_name(layout.table)),
        t=layout.ident,
    )


def drop_index_statement(layout: Layout) -> sql.Composed:
    return sql.SQL("DROP INDEX IF EXISTS {name}").format(name=sql.Identifier(f"{layout.table}_hnsw"))


def drop_table_statement(table: str) -> sql.Composed:
    return sql.SQL("DROP TABLE IF EXISTS {}").format(
        sql.SQL(", ").join(sql.Identifier(name) for name in side_tables(table))
    )


ORD_MAX = 2**32 - 1
"""A chunk's `ord` is 32 bits of each of its postings (migration 0420)."""


def ord_sequence(table: str) -> str:
    return f"{table}_ord_seq"


def blocks_table(table: str) -> str:
    """Keyword postings in the layout of migration 0420: packed runs of postings, a few rows a lexeme."""
    return f"{table}_blocks"


def gone_table(table: str) -> str:
    """Chunks deleted since their postings were last compacted (migration 0420)."""
    return f"{table}_gone"


def totals_table(table: str) -> str:
    """Live chunks with postings and their summed lengths, as rows to add up (migration 0420)."""
    return f"{table}_totals"


def impacts_table(table: str) -> str:
    """Keyword postings in the layout of migration 0410 (lexeme hash, impact, id): replaced by `blocks_table` in
    the background (search/postings_upgrade.py), then dropped."""
    return f"{table}_impacts"


def legacy_postings_table(table: str) -> str:
    """Keyword postings in the layout of migration 0400 (text lexemes, two b-trees): replaced like 0410's."""
    return f"{table}_postings"


def side_tables(table: str) -> list[str]:
    """The chunk table and every table that lives and dies with it (what a store's size counts)."""
    return [
        table,
        blocks_table(table),
        gone_table(table),
        totals_table(table),
        impacts_table(table),
        legacy_postings_table(table),
    ]


POSTINGS_EVENTS = (
    ("INSERT", "NEW TABLE AS new_rows"),
    ("UPDATE", "OLD TABLE AS old_rows NEW TABLE AS new_rows"),
    ("DELETE", "OLD TABLE AS old_rows"),
)
"""The statement triggers of every postings layout: one function per event, `<prefix>_<event>`."""
_EVENTS = tuple(event for event, _ in POSTINGS_EVENTS)


def postings_trigger(table: str, event: str) -> str:
    return f"{table}_blocks_{event.lower()}"


def impacts_trigger(table: str, event: str) -> str:
    return f"{table}_impacts_{event.lower()}"


def legacy_postings_trigger(table: str, event: str) -> str:
    return f"{table}_postings_{event.lower()}"


def ord_index_name(table: str) -> str:
    return f"{table}_ord"


def ord_index_statement(table: str, *, concurrently: bool = False) -> sql.Composed:
    """The unique index a search finds its hits' rows by (an old table gets it after its ords are filled)."""
    return sql.SQL("CREATE UNIQUE INDEX {how} IF NOT EXISTS {name} ON {t} (ord)").format(
        how=sql.SQL("CONCURRENTLY" if concurrently else ""),
        name=sql.Identifier(ord_index_name(table)),
        t=sql.Identifier(table),
    )


def postings_ready_statement(table: str) -> sql.Composed:
    """Mark every chunk of `table` as having its postings (idempotent): the row ('', 0) of its blocks."""
    return sql.SQL(
        "INSERT INTO {b} (lexeme, seg, n, postings) VALUES ('', 0, 0, ''::bytea) ON CONFLICT DO NOTHING"
    ).format(b=sql.Identifier(blocks_table(table)))


def postings_statements(layout: Layout, *, ready: bool) -> list[sql.Composed]:
    """Give `<t>` its `ord` (an old table's rows keep NULL until the upgrade fills them), `<t>_blocks`, `<t>_gone`
    and the triggers that keep them current (idempotent). `ready`: the table is new (empty), so every chunk has
    its postings from the start; an old table is backfilled first and marked ready after."""
    t = layout.ident
    seq = sql.Identifier(ord_sequence(layout.table))
    b = sql.Identifier(blocks_table(layout.table))
    statements = [
        sql.SQL("CREATE SEQUENCE IF NOT EXISTS {seq} AS bigint MINVALUE 1 MAXVALUE {max}").format(
            seq=seq, max=sql.Literal(ORD_MAX)
        ),
        # No default while adding the column: a volatile default would rewrite an old table under its lock.
        sql.SQL("ALTER TABLE {t} ADD COLUMN IF NOT EXISTS ord bigint").format(t=t),
        sql.SQL("ALTER TABLE {t} ALTER COLUMN ord SET DEFAULT nextval({seq})").format(
            t=t, seq=sql.Literal(ord_sequence(layout.table))
        ),
        sql.SQL("ALTER SEQUENCE {seq} OWNED BY {t}.ord").format(seq=seq, t=t),
        # "C": lexemes compare as bytes, which is all a lookup needs. STORAGE EXTERNAL: a search reads whole
        # runs, and uncompressed TOAST is read without decompressing.
        sql.SQL(
            'CREATE TABLE IF NOT EXISTS {b} (lexeme text COLLATE "C" NOT NULL, seg bigint NOT NULL,'
            " n integer NOT NULL, postings bytea NOT NULL, PRIMARY KEY (lexeme, seg))"
        ).format(b=b),
        sql.SQL("ALTER TABLE {b} ALTER COLUMN postings SET STORAGE EXTERNAL").format(b=b),
        # What compaction looks for: the rows written since it last ran (seg >= 2).
        sql.SQL("CREATE INDEX IF NOT EXISTS {name} ON {b} (seg) WHERE seg >= 2").format(
            name=sql.Identifier(f"{layout.table}_blocks_recent"), b=b
        ),
        sql.SQL("CREATE TABLE IF NOT EXISTS {g} (ord bigint NOT NULL, lexemes text[] NOT NULL)").format(
            g=sql.Identifier(gone_table(layout.table))
        ),
        sql.SQL("CREATE TABLE IF NOT EXISTS {s} (chunks bigint NOT NULL, lengths bigint NOT NULL)").format(
            s=sql.Identifier(totals_table(layout.table))
        ),
    ]
    if ready:
        statements.append(ord_index_statement(layout.table))
        statements.append(postings_ready_statement(layout.table))
    args = sql.SQL(", ").join(
        sql.Literal(name)
        for name in (
            blocks_table(layout.table),
            gone_table(layout.table),
            ord_sequence(layout.table),
            totals_table(layout.table),
        )
    )
    return statements + _statement_triggers(layout, postings_trigger, "vectorstore_blocks", args)


def _drop_triggers(table: str, name: Any) -> list[sql.Composed]:
    t = sql.Identifier(table)
    return [
        sql.SQL("DROP TRIGGER IF EXISTS {name} ON {t}").format(name=sql.Identifier(name(table, event)), t=t)
        for event in _EVENTS
    ]


def drop_older_postings_statements(table: str) -> list[sql.Composed]:
    """Drop a table's 0400 and 0410 postings and their triggers (after its 0420 postings are complete)."""
    return [
        *_drop_triggers(table, legacy_postings_trigger),
        *_drop_triggers(table, impacts_trigger),
        sql.SQL("DROP TABLE IF EXISTS {p}, {i}").format(
            p=sql.Identifier(legacy_postings_table(table)), i=sql.Identifier(impacts_table(table))
        ),
    ]


def drop_postings_statements(table: str) -> list[sql.Composed]:
    """Drop a table's postings (0420's) and their triggers, and its ords: the table as before any postings."""
    t = sql.Identifier(table)
    return [
        *_drop_triggers(table, postings_trigger),
        sql.SQL("DROP TABLE IF EXISTS {b}, {g}, {s}").format(
            b=sql.Identifier(blocks_table(table)),
            g=sql.Identifier(gone_table(table)),
            s=sql.Identifier(totals_table(table)),
        ),
        sql.SQL("ALTER TABLE {t} DROP COLUMN IF EXISTS ord").format(t=t),
        sql.SQL("DROP SEQUENCE IF EXISTS {seq}").format(seq=sql.Identifier(ord_sequence(table))),
    ]


def impacts_statements(layout: Layout, avgdl: float = 100.0) -> list[sql.Composed]:
    """A table's postings as migration 0410 made them (lexeme hash, impact, id; one b-tree), with their triggers:
    what a store made before 0420 has. Only tests and benches make them now, to upgrade or compare."""
    p = sql.Identifier(impacts_table(layout.table))
    statements = [
        sql.SQL('CREATE TABLE {p} (lexeme bigint NOT NULL, impact real NOT NULL, id text COLLATE "C")').format(p=p),
        sql.SQL("CREATE INDEX ON {p} (lexeme, impact DESC, id)").format(p=p),
        sql.SQL("INSERT INTO {p} (lexeme, impact, id) VALUES (0, {avgdl}, NULL), (0, 1, '')").format(
            p=p, avgdl=sql.Literal(avgdl)
        ),
    ]
    return statements + _statement_triggers(
        layout, impacts_trigger, "vectorstore_impacts", sql.Literal(impacts_table(layout.table))
    )


def legacy_postings_statements(layout: Layout, avgdl: float = 100.0) -> list[sql.Composed]:
    """A table's postings as migration 0400 made them (text lexemes, tf, dl, two b-trees), with their triggers:
    what a store made before 0410 has. Only tests and benches make them now, to upgrade or compare."""
    p = sql.Identifier(legacy_postings_table(layout.table))
    statements = [
        sql.SQL(
            "CREATE TABLE {p} (lexeme text NOT NULL, impact real NOT NULL, id text, tf integer NOT NULL,"
            " dl integer NOT NULL)"
        ).format(p=p),
        sql.SQL("CREATE INDEX ON {p} (lexeme, impact DESC) INCLUDE (id, tf, dl)").format(p=p),
        sql.SQL("CREATE INDEX ON {p} (lexeme, id) INCLUDE (tf, dl)").format(p=p),
        sql.SQL("INSERT INTO {p} (lexeme, impact, id, tf, dl) VALUES ('', {avgdl}, NULL, 1, 0)").format(
            p=p, avgdl=sql.Literal(avgdl)
        ),
    ]
    return statements + _statement_triggers(
        layout, legacy_postings_trigger, "vectorstore_postings", sql.Literal(legacy_postings_table(layout.table))
    )


def _statement_triggers(layout: Layout, name: Any, function_prefix: str, args: sql.Composable) -> list[sql.Composed]:
    """A postings layout's statement triggers on the chunk table: `<function_prefix>_<event>(args)` after each
    event, with its transition tables."""
    return [
        sql.SQL(
            "CREATE OR REPLACE TRIGGER {name} AFTER {event} ON {t} REFERENCING {transitions}"
            " FOR EACH STATEMENT EXECUTE FUNCTION {function}({args})"
        ).format(
            name=sql.Identifier(name(layout.table, event)),
            event=sql.SQL(event),
            t=layout.ident,
            transitions=sql.SQL(transitions),
            function=sql.Identifier(f"{function_prefix}_{event.lower()}"),
            args=args,
        )
        for event, transitions in POSTINGS_EVENTS
    ]


@dataclass(frozen=True)
class ChunkRow:
    id: str
    content: str
    embedding: Sequence[float]
    file_id: str | None = None
    chunk_index: int = 0
    filename: str | None = None
    attributes: Mapping[str, Any] | None = None


async def build_index_concurrently(conn: psycopg.AsyncConnection[Any], name: str, statement: sql.Composed) -> None:
    """`statement` (a CREATE INDEX CONCURRENTLY IF NOT EXISTS of index `name`) on `conn`, outside any transaction.
    A leftover invalid index of that name, from an interrupted concurrent build, is maintained but never used, and
    IF NOT EXISTS would keep it: it is dropped first."""
    cur = await conn.execute("SELECT i.indisvalid FROM pg_index AS i WHERE i.indexrelid = to_regclass(%s)", [name])
    row = await cur.fetchone()
    if row is not None and not row[0]:
        await conn.execute(sql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {}").format(sql.Identifier(name)))
    await conn.execute(statement)


async def copy_chunks(conn: psycopg.AsyncConnection[Any], layout: Layout, rows: Iterable[ChunkRow]) -> int:
    """Write rows with binary COPY on `conn` (the caller owns the transaction). Returns the row count.

    The connection must have pgvector registered (every pool connection has). Embeddings must already have
    the layout's dimensions; PostgreSQL rejects others and the whole COPY fails with the transaction.
    """
    statement = sql.SQL("COPY {t} ({cols}) FROM STDIN (FORMAT BINARY)").format(
        t=layout.ident, cols=sql.SQL(", ").join(sql.Identifier(c) for c in CHUNK_COLUMNS)
    )
    count = 0
    async with conn.cursor() as cur, cur.copy(statement) as copy:
        copy.set_types(["text", "text", "int4", "text", "text", "jsonb", layout.vector_type])
        for row in rows:
            await copy.write_row(
                (
                    row.id,
                    row.file_id,
                    row.chunk_index,
                    row.filename,
                    row.content,
                    Jsonb(dict(row.attributes or {})),
                    layout.to_db(row.embedding),
                )
            )
            count += 1
    return count


async def delete_file_chunks(conn: psycopg.AsyncConnection[Any], layout: Layout, file_id: str) -> int:
    cur = await conn.execute(sql.SQL("DELETE FROM {t} WHERE file_id = %s").format(t=layout.ident), [file_id])
    return cur.rowcount


async def delete_rows_without_file(conn: psycopg.AsyncConnection[Any], layout: Layout, ids: Sequence[str]) -> int:
    """Remove the file-less rows (prototype /embeddings, OGX's chunks) with these ids, so a chunk inserted again
    under its id replaces the old one. File chunks are never touched here."""
    cur = await conn.execute(
        sql.SQL("DELETE FROM {t} WHERE id = ANY(%s) AND file_id IS NULL").format(t=layout.ident), [list(ids)]
    )
    return cur.rowcount


async def row_count_at_least_one(conn: psycopg.AsyncConnection[Any], table: str) -> bool:
    cur = await conn.execute(sql.SQL("SELECT EXISTS (SELECT 1 FROM {t})").format(t=sql.Identifier(table)))
    row = await cur.fetchone()
    return bool(row and row[0])
