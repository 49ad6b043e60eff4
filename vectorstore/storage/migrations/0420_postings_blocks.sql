-- Keyword postings, third layout (docs/design.md, "Keyword search"; vectorstore/search/postings.py): a few
-- rows a lexeme, each a packed run of postings that a search reads whole and scores in the server.
--
-- 0400 and 0410 kept one row per (lexeme, chunk) and scored candidates in SQL: a posting cost 4 to 9.5 us to
-- write and a search 5 to 10 ms of PostgreSQL CPU, because SQL spends microseconds a row. Here:
-- * each chunk has `ord`, a bigint from the sequence `<t>_ord_seq` (below 2^32), unique: a posting's key.
-- * `<t>_blocks (lexeme text COLLATE "C", seg bigint, n integer, postings bytea)`: `postings` is `n` postings
--   of one lexeme, each 8 bytes big-endian: ord << 32 | tf << 16 | dl (tf the lexeme's positions in the
--   chunk, dl the chunk's distinct lexemes, both capped at 65535). With tf and dl stored, a search computes
--   exact BM25 at the store's current mean length; nothing is re-normalised when the mean drifts.
-- * `seg`: each writing statement adds one row per lexeme it holds (seg = its smallest ord + 2); a background
--   compaction (vectorstore/search/postings_compaction.py) merges them into seg 1 (recent) and seg 0 (base),
--   so a lexeme has a few rows, which a search reads through the primary key.
-- * a delete leaves the postings and records the chunk in `<t>_gone (ord, lexemes)`; searches drop those ords,
--   and compaction rewrites the lexemes' rows without them, then forgets the chunk.
-- * `<t>_totals (chunks, lengths)`: each writing statement adds its chunks' count and summed lengths (a delete
--   subtracts them), so a search's N and mean length are exact, not ANALYZE's; compaction sums the rows up.
-- * the row ('', 0) marks the table's postings complete (an old table being backfilled lacks it).

CREATE FUNCTION vectorstore_posting(ord bigint, tf integer, dl integer) RETURNS bytea
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$ SELECT int8send((ord << 32) | (least(tf, 65535)::bigint << 16) | least(dl, 65535)::bigint) $$;

-- The statement that writes `<t>_blocks` rows for the chunks `source` (a relation with ord and fts), one per
-- lexeme, as one statement's segment. The triggers EXECUTE it themselves: transition tables are visible only
-- in the trigger's own function. Arguments of the triggers below: the blocks table, the gone table, the ord
-- sequence, the totals table.
CREATE FUNCTION vectorstore_blocks_write_statement(blocks text, source text) RETURNS text LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    -- `source` is read once (MATERIALIZED): for the update trigger it is a join of the transition tables.
    RETURN format(
        'WITH c AS MATERIALIZED (SELECT ord, fts, length(fts) AS dl FROM %s WHERE fts IS NOT NULL AND ord IS NOT NULL)'
        ' INSERT INTO %I (lexeme, seg, n, postings)'
        ' SELECT u.lexeme, s.seg, count(*), string_agg(vectorstore_posting(c.ord, u.tf, c.dl), ''''::bytea)'
        ' FROM c CROSS JOIN (SELECT min(ord) + 2 AS seg FROM c) AS s,'
        ' LATERAL (SELECT lexeme, coalesce(array_length(positions, 1), 1) AS tf FROM unnest(c.fts)) AS u'
        ' GROUP BY u.lexeme, s.seg ORDER BY 1',
        source, blocks);
END
$$;

-- The statement that adds (or with sign -1 subtracts) the chunks `source` to `<t>_totals`.
CREATE FUNCTION vectorstore_totals_statement(totals text, source text, sign integer) RETURNS text
LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    RETURN format(
        'INSERT INTO %I (chunks, lengths) SELECT %s * count(*), %s * sum(length(fts)) FROM %s'
        ' WHERE fts IS NOT NULL AND ord IS NOT NULL HAVING count(*) > 0', totals, sign, sign, source);
END
$$;

-- AFTER INSERT ... FOR EACH STATEMENT, REFERENCING NEW TABLE AS new_rows.
CREATE FUNCTION vectorstore_blocks_insert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE vectorstore_blocks_write_statement(TG_ARGV[0], 'new_rows');
    EXECUTE vectorstore_totals_statement(TG_ARGV[3], 'new_rows', 1);
    RETURN NULL;
END
$$;

-- AFTER DELETE ... FOR EACH STATEMENT, REFERENCING OLD TABLE AS old_rows.
CREATE FUNCTION vectorstore_blocks_delete() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE format(
        'INSERT INTO %I (ord, lexemes) SELECT ord, tsvector_to_array(fts) FROM old_rows'
        ' WHERE ord IS NOT NULL AND fts IS NOT NULL', TG_ARGV[1]);
    EXECUTE vectorstore_totals_statement(TG_ARGV[3], 'old_rows', -1);
    RETURN NULL;
END
$$;

-- AFTER UPDATE ... FOR EACH STATEMENT, REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows (transition
-- tables can't go with a column list, so this fires on attribute updates too and acts only on rows whose ord
-- or fts changed). A row that loses its postings (a new ord or fts) is recorded gone; one that gains an ord
-- (the upgrade's backfill) or an fts (text_upgrade's backfill) gets its postings. A row whose fts changes
-- under the same ord gets a new ord first (the nested UPDATE fires this again and writes its postings), since
-- postings are dropped by ord.
CREATE FUNCTION vectorstore_blocks_update() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE format(
        'INSERT INTO %I (ord, lexemes) SELECT o.ord, tsvector_to_array(o.fts)'
        ' FROM old_rows AS o JOIN new_rows AS n ON n.id = o.id'
        ' WHERE o.ord IS NOT NULL AND o.fts IS NOT NULL'
        ' AND (o.ord IS DISTINCT FROM n.ord OR o.fts IS DISTINCT FROM n.fts)',
        TG_ARGV[1]);
    -- Only when there is such a row: a statement trigger fires even for an UPDATE of no rows.
    IF EXISTS (SELECT 1 FROM old_rows AS o JOIN new_rows AS n ON n.id = o.id WHERE o.ord = n.ord AND o.fts <> n.fts)
    THEN
        EXECUTE format(
            'UPDATE %I SET ord = nextval(%L) WHERE id IN (SELECT n.id FROM old_rows AS o JOIN new_rows AS n'
            ' ON n.id = o.id WHERE o.ord = n.ord AND o.fts <> n.fts)', TG_TABLE_NAME, TG_ARGV[2]);
    END IF;
    EXECUTE vectorstore_totals_statement(TG_ARGV[3],
        '(SELECT o.ord, o.fts FROM old_rows AS o JOIN new_rows AS n ON n.id = o.id'
        ' WHERE o.ord IS DISTINCT FROM n.ord OR o.fts IS DISTINCT FROM n.fts) AS lost', -1);
    EXECUTE vectorstore_blocks_write_statement(TG_ARGV[0],
        '(SELECT n.ord, n.fts FROM old_rows AS o JOIN new_rows AS n ON n.id = o.id'
        ' WHERE o.ord IS DISTINCT FROM n.ord OR o.fts IS NULL AND n.fts IS NOT NULL)'
        ' AS changed');
    -- Every changed row counts at its new length here, a re-keyed one too (its nested update adds and
    -- subtracts it at that length), so the totals move by exactly the rows' change.
    EXECUTE vectorstore_totals_statement(TG_ARGV[3],
        '(SELECT n.ord, n.fts FROM old_rows AS o JOIN new_rows AS n ON n.id = o.id'
        ' WHERE o.ord IS DISTINCT FROM n.ord OR o.fts IS DISTINCT FROM n.fts) AS changed', 1);
    RETURN NULL;
END
$$;
