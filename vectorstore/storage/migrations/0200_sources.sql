-- Declared documents (stores[].sources, docs/sources.md). Numbered 0200: the sources' own range.

-- The version of a file an attachment replaces once it is ingested: the worker detaches them in the same
-- transaction that commits the new chunks, so searches see the old chunks or the new ones, never both or neither.
ALTER TABLE vector_store_files ADD COLUMN replaces text[] NOT NULL DEFAULT '{}';

-- Which File represents each path of each source, with the content hash that decides whether it changed and
-- the listing's fingerprint (size and mtime, or the S3 ETag) that spares reading an unchanged file at all.
-- A File deleted through the API takes its row with it, so the next sync adds the path again.
CREATE TABLE source_files (
    vector_store_id text NOT NULL REFERENCES vector_stores (id) ON DELETE CASCADE,
    source text NOT NULL,
    path text NOT NULL,
    file_id text NOT NULL REFERENCES files (id) ON DELETE CASCADE,
    sha256 text NOT NULL,
    fingerprint text NOT NULL,
    synced_at bigint NOT NULL DEFAULT extract(epoch FROM now())::bigint,
    PRIMARY KEY (vector_store_id, source, path)
);
CREATE INDEX source_files_file ON source_files (file_id);
-- Every version of one path in a store is found by its File's owner (`source:<name>`) and filename (the path).
CREATE INDEX files_owner_filename ON files (owner, filename);

-- The last sync of each source, as the status endpoint and every replica see it.
CREATE TABLE source_status (
    vector_store_id text NOT NULL REFERENCES vector_stores (id) ON DELETE CASCADE,
    source text NOT NULL,
    syncing boolean NOT NULL DEFAULT false,
    -- The running sync's start; the last finished sync's own start is started_at.
    syncing_since double precision,
    started_at double precision,
    finished_at double precision,
    duration_seconds double precision,
    last_success_at double precision,
    outcome text CHECK (outcome IN ('ok', 'failed')),
    added integer NOT NULL DEFAULT 0,
    updated integer NOT NULL DEFAULT 0,
    deleted integer NOT NULL DEFAULT 0,
    unchanged integer NOT NULL DEFAULT 0,
    failed integer NOT NULL DEFAULT 0,
    last_error text,
    failures jsonb NOT NULL DEFAULT '[]'::jsonb,
    PRIMARY KEY (vector_store_id, source)
);
