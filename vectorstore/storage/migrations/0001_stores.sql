-- The registry of stores. Each store's rows live in their own table (see vectorstore/storage.py and
-- docs/design.md); this table says which, and with what dimensions, distance and index parameters.
CREATE TABLE vector_stores (
    id text PRIMARY KEY,
    -- Creation order for cursor pagination: created_at has one-second resolution and ties.
    seq bigserial NOT NULL UNIQUE,
    name text,
    description text,
    metadata jsonb NOT NULL DEFAULT '{}'::jsonb,
    declared boolean NOT NULL DEFAULT false,
    model text NOT NULL,
    dimensions integer NOT NULL CHECK (dimensions > 0),
    distance text NOT NULL CHECK (distance IN ('cosine', 'l2', 'inner_product')),
    vector_type text NOT NULL CHECK (vector_type IN ('vector', 'halfvec')),
    hnsw_m integer NOT NULL,
    hnsw_ef_construction integer NOT NULL,
    ef_search integer NOT NULL,
    table_name text NOT NULL UNIQUE,
    expires_after jsonb,
    created_at bigint NOT NULL DEFAULT extract(epoch FROM now())::bigint,
    last_active_at bigint NOT NULL DEFAULT extract(epoch FROM now())::bigint
);
