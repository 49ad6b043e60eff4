-- Keyword postings, second layout (docs/design.md, "Keyword search"; vectorstore/search/postings.py): cheaper to
-- write than 0400's.
--
-- Each chunk table `<t>` gets `<t>_impacts (lexeme bigint, impact real, id text)` with ONE b-tree,
-- (lexeme, impact DESC, id): 0400's `<t>_postings` had text lexemes, tf and dl in every entry and a second
-- b-tree on (lexeme, id), and its writes made ingestion 44% slower (docs/benchmarks.md). Here:
-- * `lexeme` is the lexeme's 64-bit hash, hashtextextended(lexeme, 0): an 8-byte integer key instead of a
--   collated text comparison. Two lexemes of one store share a hash with a probability of about n^2 / 2^65
--   (5e-8 for a million distinct lexemes); a search scores its final candidates from `fts` (the text), so a
--   collision could only cost time, never a wrong score.
-- * no tf, no dl: the impact (the BM25 term weight at the reference mean length) is all a search reads from
--   a posting; exact scores come from the chunk's `fts`.
-- * no (lexeme, id) index: a delete finds a chunk's postings through the one index, by recomputing each
--   posting's key (lexeme hash, impact at the reference length, id) from the deleted row's `fts`.
-- * each statement writes its postings sorted by the index key, so consecutive inserts hit the same pages.
-- * ids compare as bytes (COLLATE "C"): a join with a chunk table's id names the collation it compares in,
--   or the planner can use neither side's index.
--
-- Two rows with lexeme 0 and no chunk hold the table's state: (0, reference mean length, NULL) and, once every
-- chunk of the table has its postings, (0, 1, '') (an old table being backfilled lacks it).
-- A table from before (0400's `<t>_postings`) is rebuilt in this layout in the background
-- (vectorstore/search/postings_upgrade.py) and its old table and triggers dropped after.

CREATE FUNCTION vectorstore_lexeme_key(lexeme text) RETURNS bigint
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$ SELECT hashtextextended(lexeme, 0) $$;

-- AFTER INSERT ... FOR EACH STATEMENT, REFERENCING NEW TABLE AS new_rows; argument: the impacts table.
CREATE FUNCTION vectorstore_impacts_insert() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    reference real;
BEGIN
    EXECUTE format('SELECT impact FROM %I WHERE lexeme = 0 AND id IS NULL', TG_ARGV[0]) INTO reference;
    IF reference IS NULL THEN
        RETURN NULL;  -- no reference row: the table's postings are not set up (cannot happen through tables.py)
    END IF;
    EXECUTE format(
        'INSERT INTO %I (lexeme, impact, id)'
        ' SELECT vectorstore_lexeme_key(u.lexeme), vectorstore_bm25_impact(u.tf, n.dl, $1), n.id'
        ' FROM (SELECT id, fts, length(fts) AS dl FROM new_rows WHERE fts IS NOT NULL) AS n,'
        ' LATERAL (SELECT lexeme, coalesce(array_length(positions, 1), 1) AS tf FROM unnest(n.fts)) AS u'
        ' ORDER BY 1, 2 DESC, 3',
        TG_ARGV[0]) USING reference;
    RETURN NULL;
END
$$;

-- AFTER DELETE ... FOR EACH STATEMENT, REFERENCING OLD TABLE AS old_rows.
CREATE FUNCTION vectorstore_impacts_delete() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    reference real;
BEGIN
    EXECUTE format('SELECT impact FROM %I WHERE lexeme = 0 AND id IS NULL', TG_ARGV[0]) INTO reference;
    -- One probe of the index per posting: its whole key is known from the row's fts and the reference.
    EXECUTE format(
        'DELETE FROM %I AS p USING (SELECT vectorstore_lexeme_key(u.lexeme) AS lexeme,'
        ' vectorstore_bm25_impact(u.tf, n.dl, $1) AS impact, n.id'
        ' FROM (SELECT id, fts, length(fts) AS dl FROM old_rows WHERE fts IS NOT NULL) AS n,'
        ' LATERAL (SELECT lexeme, coalesce(array_length(positions, 1), 1) AS tf FROM unnest(n.fts)) AS u) AS gone'
        ' WHERE p.lexeme = gone.lexeme AND p.impact = gone.impact AND p.id = gone.id COLLATE "C"', TG_ARGV[0])
        USING reference;
    RETURN NULL;
END
$$;

-- AFTER UPDATE ... FOR EACH STATEMENT, REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows (transition
-- tables can't go with a column list, so this fires on attribute updates too and only acts on rows whose fts
-- changed).
CREATE FUNCTION vectorstore_impacts_update() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    reference real;
BEGIN
    EXECUTE format('SELECT impact FROM %I WHERE lexeme = 0 AND id IS NULL', TG_ARGV[0]) INTO reference;
    IF reference IS NULL THEN
        RETURN NULL;
    END IF;
    EXECUTE format(
        'WITH changed AS MATERIALIZED ('
        ' SELECT n.id, n.fts, o.fts AS old_fts FROM new_rows AS n JOIN old_rows AS o ON o.id = n.id'
        ' WHERE n.fts IS DISTINCT FROM o.fts),'
        ' gone AS (DELETE FROM %I AS p USING (SELECT vectorstore_lexeme_key(u.lexeme) AS lexeme,'
        ' vectorstore_bm25_impact(u.tf, length(c.old_fts), $1) AS impact, c.id'
        ' FROM changed AS c, LATERAL (SELECT lexeme, coalesce(array_length(positions, 1), 1) AS tf'
        ' FROM unnest(c.old_fts)) AS u WHERE c.old_fts IS NOT NULL) AS g'
        ' WHERE p.lexeme = g.lexeme AND p.impact = g.impact AND p.id = g.id COLLATE "C")'
        ' INSERT INTO %I (lexeme, impact, id)'
        ' SELECT vectorstore_lexeme_key(u.lexeme), vectorstore_bm25_impact(u.tf, length(c.fts), $1), c.id'
        ' FROM changed AS c, LATERAL (SELECT lexeme, coalesce(array_length(positions, 1), 1) AS tf'
        ' FROM unnest(c.fts)) AS u WHERE c.fts IS NOT NULL ORDER BY 1, 2 DESC, 3',
        TG_ARGV[0], TG_ARGV[0]) USING reference;
    RETURN NULL;
END
$$;
