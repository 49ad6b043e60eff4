-- Re-chunking on a change of a declared store's `chunking` (issue 15; docs/design.md, "Changing a store that
-- holds data"). Numbered 0310: the online migrations' range (0300).

-- The declared chunking of a store's active generation (NULL: a store created through the API, or one declared
-- before this step, until reconcile records its chunking).
ALTER TABLE vector_stores ADD COLUMN chunk_max_tokens integer, ADD COLUMN chunk_overlap_tokens integer;

-- Whether a file was chunked by the store's default (true) or by a `chunking_strategy` given with it through the
-- API (false), which it keeps, as OpenAI's files do. NULL: attached before this step; reconcile decides once
-- (a file whose strategy equals the store's declared chunking at that moment counts as the default's).
ALTER TABLE vector_store_files ADD COLUMN chunking_default boolean;

-- Files re-chunked into a generation (`table_name`): written in the transaction that writes the file's new
-- chunks, so a restarted build knows which files are done. `generation` is the attachment's (a file detached and
-- attached again is another one). Kept for the previous generation after a swap too (its rows are the files'
-- old chunks), so a swap back re-chunks nothing.
CREATE TABLE store_migration_files (
    table_name text NOT NULL,
    file_id text NOT NULL,
    vector_store_id text NOT NULL REFERENCES vector_stores (id) ON DELETE CASCADE,
    generation bigint NOT NULL,
    max_chunk_size_tokens integer NOT NULL,
    chunk_overlap_tokens integer NOT NULL,
    chunks integer NOT NULL,
    usage_bytes bigint NOT NULL,
    PRIMARY KEY (table_name, file_id)
);
CREATE INDEX store_migration_files_store ON store_migration_files (vector_store_id);

ALTER TABLE store_migrations ADD COLUMN rechunk boolean NOT NULL DEFAULT false,
    ADD COLUMN files_total bigint NOT NULL DEFAULT 0, ADD COLUMN files_done bigint NOT NULL DEFAULT 0;
