-- Keyword search through impact-ordered postings (docs/design.md, "Keyword search"; vectorstore/search/postings.py).
--
-- Each store's chunk table `<t>` gets a side table `<t>_postings (lexeme, impact, id, tf, dl)`: one row per
-- (lexeme, chunk) of the chunk's `fts`, with the lexeme's tf, the chunk's distinct-lexeme count dl, and its BM25
-- term weight at a reference mean length (the impact), indexed by (lexeme, impact DESC) so a search reads each
-- query term's best postings first. Statement-level triggers on `<t>` keep it in step with every write in the
-- writer's own transaction (COPY, INSERT, UPDATE of content, DELETE), whoever writes.
--
-- The reference mean length lives in the postings table itself, in one row with lexeme '' (a tsvector never
-- holds an empty lexeme) and id NULL: `impact` is the reference length, `tf` is 1 once every chunk of the table
-- has its postings (0 while an old table is being backfilled). Keeping it there ties it to the table's life: a
-- table dropped or replaced (a new generation of a store) takes its reference with it.

-- BM25's term weight tf * (k1 + 1) / (tf + k1 * (1 - b + b * dl / avgdl)) with k1 = 1.2, b = 0.75, the
-- constants of vectorstore/search/text.py (K1, B): change both together.
CREATE FUNCTION vectorstore_bm25_impact(tf integer, dl integer, avgdl real) RETURNS real
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$ SELECT (tf * 2.2 / (tf + 1.2 * (0.25 + 0.75 * dl / greatest(avgdl, 1))))::real $$;

-- AFTER INSERT ... FOR EACH STATEMENT, REFERENCING NEW TABLE AS new_rows; argument: the postings table.
CREATE FUNCTION vectorstore_postings_insert() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    reference real;
BEGIN
    EXECUTE format('SELECT impact FROM %I WHERE lexeme = '''' AND id IS NULL', TG_ARGV[0]) INTO reference;
    IF reference IS NULL THEN
        RETURN NULL;  -- no reference row: the table's postings are not set up (cannot happen through tables.py)
    END IF;
    EXECUTE format(
        'INSERT INTO %I (lexeme, impact, id, tf, dl)'
        ' SELECT u.lexeme, vectorstore_bm25_impact(u.tf, n.dl, $1), n.id, u.tf, n.dl'
        ' FROM (SELECT id, fts, length(fts) AS dl FROM new_rows WHERE fts IS NOT NULL) AS n,'
        ' LATERAL (SELECT lexeme, coalesce(array_length(positions, 1), 1) AS tf FROM unnest(n.fts)) AS u',
        TG_ARGV[0]) USING reference;
    RETURN NULL;
END
$$;

-- AFTER DELETE ... FOR EACH STATEMENT, REFERENCING OLD TABLE AS old_rows.
CREATE FUNCTION vectorstore_postings_delete() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- Through the (lexeme, id) index: one probe per posting of each deleted row.
    EXECUTE format(
        'DELETE FROM %I AS p USING (SELECT o.id, u.lexeme FROM old_rows AS o, unnest(o.fts) AS u) AS gone'
        ' WHERE p.lexeme = gone.lexeme AND p.id = gone.id', TG_ARGV[0]);
    RETURN NULL;
END
$$;

-- AFTER UPDATE ... FOR EACH STATEMENT, REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows (transition
-- tables can't go with a column list, so this fires on attribute updates too and only acts on rows whose fts
-- changed).
CREATE FUNCTION vectorstore_postings_update() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    reference real;
BEGIN
    EXECUTE format('SELECT impact FROM %I WHERE lexeme = '''' AND id IS NULL', TG_ARGV[0]) INTO reference;
    IF reference IS NULL THEN
        RETURN NULL;
    END IF;
    EXECUTE format(
        'WITH changed AS MATERIALIZED ('
        ' SELECT n.id, n.fts, o.fts AS old_fts FROM new_rows AS n JOIN old_rows AS o ON o.id = n.id'
        ' WHERE n.fts IS DISTINCT FROM o.fts),'
        ' gone AS (DELETE FROM %I AS p USING (SELECT c.id, u.lexeme FROM changed AS c, unnest(c.old_fts) AS u) AS g'
        ' WHERE p.lexeme = g.lexeme AND p.id = g.id)'
        ' INSERT INTO %I (lexeme, impact, id, tf, dl)'
        ' SELECT u.lexeme, vectorstore_bm25_impact(u.tf, length(c.fts), $1), c.id, u.tf, length(c.fts)'
        ' FROM changed AS c, LATERAL (SELECT lexeme, coalesce(array_length(positions, 1), 1) AS tf'
        ' FROM unnest(c.fts)) AS u WHERE c.fts IS NOT NULL',
        TG_ARGV[0], TG_ARGV[0]) USING reference;
    RETURN NULL;
END
$$;
