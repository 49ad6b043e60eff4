-- Each store's vectors are kept in the row (STORAGE MAIN) instead of TOAST (pgvector's EXTERNAL):
-- vectorstore/storage/tables.py, embedding_storage_statement, says why. A catalog change, no rewrite: rows
-- written from now on keep their vector inline, and rows already written keep theirs where it is until the
-- table is rewritten (a store migration's new generation, or VACUUM FULL, which locks the table).
DO $$
DECLARE
    t text;
BEGIN
    FOR t IN
        SELECT table_name FROM vector_stores
        UNION SELECT build_table FROM store_migrations WHERE build_table IS NOT NULL
    LOOP
        IF to_regclass(quote_ident(t)) IS NOT NULL THEN
            EXECUTE format('ALTER TABLE %I ALTER COLUMN embedding SET STORAGE MAIN', t);
        END IF;
    END LOOP;
END
$$;
