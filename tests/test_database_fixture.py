"""The database every DB test gets is real PostgreSQL with pgvector."""

from __future__ import annotations

import psycopg


def test_fresh_database_has_pgvector(fresh_dsn: str) -> None:
    with psycopg.connect(fresh_dsn, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
        row = conn.execute("SELECT '[1,2,3]'::vector <=> '[1,2,4]'::vector").fetchone()
        assert row is not None and 0 < row[0] < 0.05
        version = conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'").fetchone()
        assert version is not None
        major, minor = (int(part) for part in version[0].split(".")[:2])
        assert (major, minor) >= (0, 8), "iterative index scans need pgvector 0.8"
