-- What the recall calibration (vectorstore/calibration) last measured and chose for each store, so every server
-- searches with the same settings and shows the same estimate. Keyed by store id; `table_name` is the table it
-- measured, so a store whose rows move to a new table (a model change) is measured again.
CREATE TABLE search_calibration (
    vector_store_id text PRIMARY KEY REFERENCES vector_stores (id) ON DELETE CASCADE,
    table_name text NOT NULL,
    target double precision NOT NULL CHECK (target > 0 AND target <= 1),
    declared_ef_search integer,
    rows_at double precision NOT NULL,
    index_node bigint,
    -- Per group (`unfiltered`, and each selectivity bucket): the chosen settings and the recall they measured.
    groups jsonb NOT NULL,
    reached boolean NOT NULL,
    sample_source text NOT NULL,
    duration_seconds double precision NOT NULL,
    db_seconds double precision NOT NULL,
    calibrated_at timestamptz NOT NULL DEFAULT now(),
    -- How many calibrations were saved for this store, and by which server process: shows one ran at a time.
    runs integer NOT NULL DEFAULT 1,
    calibrated_by text NOT NULL
);
