"""What one keyword posting costs to write, part by part: PostgreSQL CPU of the writing backend.

    python bench/postings_write_cost.py [--docs 3000] [--repeats 2]

A chunk table like a store's (text id, content, generated `fts`, GIN on it; no vectors, which cost the same
in every variant) is filled by INSERT ... SELECT of 100 pseudo-word chunks a statement (bench/keyword_search.py's
corpus), once per variant, each time fresh, with a statement trigger on it that does a growing part of the
postings' work: compute the postings (and throw them away), the same sorted, write them to a heap table
without index, then with migration 0410's one b-tree, and last 0400's layout (text lexemes, two b-trees). The
CPU of the backend (from /proc) less the base variant's, divided by the postings written, is the cost of each
part. Run on the machine's own embedded PostgreSQL.
"""

from __future__ import annotations

import argparse
import os
import random
import time
from pathlib import Path

import psycopg
from _db import bench_server, fresh_database
from keyword_search import corpus

SELECT = (
    "SELECT {cols} FROM (SELECT id, fts, length(fts) AS dl FROM new_rows) AS n,"
    " LATERAL (SELECT lexeme, coalesce(array_length(positions, 1), 1) AS tf FROM unnest(n.fts)) AS u {order}"
)
KEYED = "hashtextextended(u.lexeme, 0), (u.tf * 2.2 / (u.tf + 1.2 * (0.25 + 0.75 * n.dl / 100.0)))::real, n.id"
TEXT = "u.lexeme, (u.tf * 2.2 / (u.tf + 1.2 * (0.25 + 0.75 * n.dl / 100.0)))::real, n.id, u.tf, n.dl"
SORTED = "ORDER BY 1, 2 DESC, 3"
KEYED_TABLE = 'CREATE TABLE p (lexeme bigint, impact real, id text COLLATE "C")'

VARIANTS: dict[str, list[str]] = {
    "base (no trigger)": [],
    "compute postings": [KEYED_TABLE, "PERFORM count(*) FROM (" + SELECT.format(cols=KEYED, order="") + ") AS x"],
    "compute + sort": [KEYED_TABLE, "PERFORM count(*) FROM (" + SELECT.format(cols=KEYED, order=SORTED) + ") AS x"],
    "heap rows, sorted": [KEYED_TABLE, "INSERT INTO p " + SELECT.format(cols=KEYED, order=SORTED)],
    "0410: heap + one b-tree": [
        KEYED_TABLE,
        "CREATE INDEX ON p (lexeme, impact DESC, id)",
        "INSERT INTO p " + SELECT.format(cols=KEYED, order=SORTED),
    ],
    "0400: text lexemes, two b-trees": [
        "CREATE TABLE p (lexeme text, impact real, id text, tf integer, dl integer)",
        "CREATE INDEX ON p (lexeme, impact DESC) INCLUDE (id, tf, dl)",
        "CREATE INDEX ON p (lexeme, id) INCLUDE (tf, dl)",
        "INSERT INTO p " + SELECT.format(cols=TEXT, order=""),
    ],
}


def backend_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run(conn: psycopg.Connection[tuple[object, ...]], statements: list[str], rows: int) -> float:
    conn.execute("DROP TABLE IF EXISTS c, p CASCADE")
    conn.execute(
        "CREATE TABLE c (id text PRIMARY KEY, content text,"
        " fts tsvector GENERATED ALWAYS AS (to_tsvector('english', content)) STORED)"
    )
    conn.execute("CREATE INDEX ON c USING gin (fts)")
    *setup, body = statements or [""]
    for statement in setup:
        conn.execute(statement)
    if body:
        conn.execute(
            f"CREATE FUNCTION pg_temp.trg() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN {body}; RETURN NULL; END $$"
        )
        conn.execute(
            "CREATE TRIGGER t AFTER INSERT ON c REFERENCING NEW TABLE AS new_rows"
            " FOR EACH STATEMENT EXECUTE FUNCTION pg_temp.trg()"
        )
    row = conn.execute("SELECT pg_backend_pid()").fetchone()
    assert row is not None
    pid = int(str(row[0]))
    before = backend_cpu(pid)
    for offset in range(0, rows, 100):
        conn.execute(
            f"INSERT INTO c (id, content) SELECT id, content FROM staging ORDER BY id OFFSET {offset} LIMIT 100"
        )
    spent = backend_cpu(pid) - before
    if body:
        conn.execute("DROP TRIGGER t ON c")
        conn.execute("DROP FUNCTION pg_temp.trg()")
    return spent


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--docs", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    chunks, _ = corpus(args.docs, random.Random(1))
    with (
        bench_server() as server,
        psycopg.connect(fresh_database(server, "postings_write_cost"), autocommit=True) as conn,
    ):
        conn.execute("CREATE TABLE staging (id text, content text)")
        with conn.cursor().copy("COPY staging FROM STDIN") as copy:
            for i, text in enumerate(chunks):
                copy.write_row((f"file-{i // 20:024x}-chunk-{i}", text))
        row = conn.execute("SELECT count(*) FROM staging, unnest(to_tsvector('english', content))").fetchone()
        assert row is not None
        postings = int(str(row[0]))
        print(
            f"{len(chunks)} chunks, {postings} postings ({postings / len(chunks):.0f} a chunk), load {os.getloadavg()}"
        )
        spent: dict[str, list[float]] = {name: [] for name in VARIANTS}
        started = time.perf_counter()
        for _ in range(args.repeats):
            for name, statements in VARIANTS.items():
                spent[name].append(run(conn, statements, len(chunks)))
        base = min(spent["base (no trigger)"])
        for name, values in spent.items():
            best = min(values)
            print(
                f"{name:34s} CPU {best:6.2f} s (best of {args.repeats}),"
                f" over base {1e6 * (best - base) / postings:5.2f} us a posting,"
                f" {1e3 * (best - base) / len(chunks):5.2f} ms a chunk"
            )
        print(f"took {time.perf_counter() - started:.0f} s; load at the end {os.getloadavg()}")


if __name__ == "__main__":
    main()
