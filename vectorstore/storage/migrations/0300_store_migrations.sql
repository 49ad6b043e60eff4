-- Online migrations of declared stores (docs/design.md, "Changing a store that holds data"). Numbered 0300: the
-- migrations' own range.
--
-- One row per store that has ever been migrated. While `phase` is pending/building/swapping/paused, a new
-- generation of the store is built in `build_table` beside the active one (vector_stores.table_name), shaped as
-- `target` says (model, dimensions, distance, vector_type, hnsw_m, hnsw_ef_construction, language, quantization).
-- The swap updates vector_stores and this row in one transaction. The generation it replaced is kept in
-- `previous_table` (shaped as `previous`) until `previous_until`, so changing the spec back swaps back at once.
CREATE TABLE store_migrations (
    vector_store_id text PRIMARY KEY REFERENCES vector_stores (id) ON DELETE CASCADE,
    phase text NOT NULL CHECK (phase IN ('pending', 'building', 'swapping', 'done', 'paused', 'cancelled')),
    target jsonb NOT NULL,
    source jsonb NOT NULL,
    build_table text,
    reembed boolean NOT NULL,
    chunks_done bigint NOT NULL DEFAULT 0,
    chunks_total bigint NOT NULL DEFAULT 0,
    embedding_calls bigint NOT NULL DEFAULT 0,
    embedding_tokens bigint NOT NULL DEFAULT 0,
    last_error text,
    reason text NOT NULL DEFAULT '',
    requested_at double precision NOT NULL DEFAULT extract(epoch FROM now()),
    started_at double precision,
    updated_at double precision NOT NULL DEFAULT extract(epoch FROM now()),
    finished_at double precision,
    swap_seconds double precision,
    previous jsonb,
    previous_table text,
    previous_until double precision
);
