-- Keyword and hybrid search (docs/design.md, "Keyword search"). Each store's table gets `fts`, a tsvector of its
-- content in the store's language, with a GIN index; the registry gets what BM25 needs.
--
-- Tables created before this step have no `fts` yet: they are marked 'upgrading' here and upgraded in the
-- background after startup (vectorstore/search/text_upgrade.py), so no store is locked or unsearchable while
-- it happens; keyword and hybrid searches on such a store run as vector searches until it is 'ready'.
ALTER TABLE vector_stores
    ADD COLUMN language text NOT NULL DEFAULT 'english',
    ADD COLUMN text_search text NOT NULL DEFAULT 'upgrading' CHECK (text_search IN ('upgrading', 'ready')),
    -- From the last ANALYZE of the store's table (vectorstore/search/statistics.py): its row count, the mean
    -- number of distinct lexemes per row, and the smallest frequency among the lexemes listed in text_stats.
    ADD COLUMN analyzed_rows real NOT NULL DEFAULT 0,
    ADD COLUMN text_avg_length real NOT NULL DEFAULT 0,
    ADD COLUMN text_min_freq real NOT NULL DEFAULT 0;

-- The most common lexemes of each store and the fraction of rows holding each: BM25's document frequencies,
-- copied from pg_stats after each ANALYZE. A lexeme not listed is rarer than text_min_freq.
CREATE TABLE text_stats (
    vector_store_id text NOT NULL REFERENCES vector_stores (id) ON DELETE CASCADE,
    lexeme text NOT NULL,
    freq real NOT NULL,
    PRIMARY KEY (vector_store_id, lexeme)
);

-- Fills `fts` in tables upgraded from before this step (the trigger's argument is the store's language).
-- Tables created from now on compute `fts` as a stored generated column instead.
CREATE FUNCTION vectorstore_fill_fts() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.fts := to_tsvector(TG_ARGV[0]::regconfig, NEW.content);
    RETURN NEW;
END
$$;

-- Stores created through the API got pgvector's ef_search of 40, which the API can't change; the default is now
-- 100 (recall@10 0.95 instead of 0.89 on hard vectors, bench/recall.py). Declared stores follow the spec.
UPDATE vector_stores SET ef_search = 100 WHERE NOT declared AND ef_search = 40;
