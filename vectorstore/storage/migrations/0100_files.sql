-- Files, their attachment to stores, batches, and the ingestion queue (docs/ingestion.md).
-- Numbered 0100 so the server core keeps 0002..0099 for its own steps.

-- Uploaded files keep their original bytes: `GET /files/{id}/content` returns them, and a file attached
-- to a second store is extracted again from them.
CREATE TABLE files (
    id text PRIMARY KEY,
    seq bigserial NOT NULL UNIQUE,
    filename text NOT NULL,
    purpose text NOT NULL,
    bytes bigint NOT NULL,
    content_type text,
    sha256 text NOT NULL,
    content bytea NOT NULL,
    -- The auth key that uploaded it: a key limited to some stores sees only its own files.
    owner text NOT NULL,
    created_at bigint NOT NULL DEFAULT extract(epoch FROM now())::bigint
);
CREATE INDEX files_purpose_seq ON files (purpose, seq);

CREATE TABLE file_batches (
    id text PRIMARY KEY,
    seq bigserial NOT NULL UNIQUE,
    vector_store_id text NOT NULL REFERENCES vector_stores (id) ON DELETE CASCADE,
    cancelled boolean NOT NULL DEFAULT false,
    created_at bigint NOT NULL DEFAULT extract(epoch FROM now())::bigint
);
CREATE INDEX file_batches_store ON file_batches (vector_store_id);

-- A file attached to a store. `generation` names the ingestion job that may complete it, so a worker
-- still busy with a detached-then-reattached file can't mark the new attachment done.
CREATE TABLE vector_store_files (
    vector_store_id text NOT NULL REFERENCES vector_stores (id) ON DELETE CASCADE,
    file_id text NOT NULL REFERENCES files (id) ON DELETE CASCADE,
    seq bigserial NOT NULL UNIQUE,
    batch_id text REFERENCES file_batches (id) ON DELETE SET NULL,
    status text NOT NULL CHECK (status IN ('in_progress', 'completed', 'failed', 'cancelled')),
    last_error jsonb,
    usage_bytes bigint NOT NULL DEFAULT 0,
    chunk_count integer NOT NULL DEFAULT 0,
    max_chunk_size_tokens integer NOT NULL,
    chunk_overlap_tokens integer NOT NULL,
    attributes jsonb NOT NULL DEFAULT '{}'::jsonb,
    generation bigint NOT NULL,
    created_at bigint NOT NULL DEFAULT extract(epoch FROM now())::bigint,
    PRIMARY KEY (vector_store_id, file_id)
);
CREATE INDEX vector_store_files_file ON vector_store_files (file_id);
CREATE INDEX vector_store_files_batch ON vector_store_files (batch_id) WHERE batch_id IS NOT NULL;
CREATE INDEX vector_store_files_status ON vector_store_files (vector_store_id, status);

-- The queue. A worker holds its job's row lock (FOR UPDATE SKIP LOCKED) in the same transaction that
-- writes the file's chunks, so a crashed worker's lock vanishes with its connection and another replica
-- (or the restarted one) picks the job up; nothing needs a lease clock. No foreign keys on purpose: a
-- cascade from a detach would wait for the worker's lock; workers drop jobs whose file is gone instead.
CREATE TABLE ingest_jobs (
    id bigserial PRIMARY KEY,
    vector_store_id text NOT NULL,
    file_id text NOT NULL,
    -- Claims so far, counted in their own committed statement: a file that kills its worker every
    -- time fails after a few tries instead of looping forever.
    attempts integer NOT NULL DEFAULT 0,
    run_after timestamptz NOT NULL DEFAULT now(),
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX ingest_jobs_ready ON ingest_jobs (run_after, id);
CREATE INDEX ingest_jobs_file ON ingest_jobs (vector_store_id, file_id);
