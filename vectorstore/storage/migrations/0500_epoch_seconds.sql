-- Every timestamp the API returns is whole seconds since the epoch, truncated: `extract(epoch FROM now())::bigint`
-- rounds, which put an object created at .5-.999 s up to half a second in the future, and disagreed with the
-- modify path (which truncated), so a modification a second after creation could leave last_active_at unchanged.
-- One function, used by every default and every update that stamps a time (storage/stores.py, sources).
CREATE FUNCTION epoch_seconds() RETURNS bigint
    LANGUAGE sql STABLE PARALLEL SAFE
    AS 'SELECT floor(extract(epoch FROM now()))::bigint';

ALTER TABLE vector_stores ALTER COLUMN created_at SET DEFAULT epoch_seconds();
ALTER TABLE vector_stores ALTER COLUMN last_active_at SET DEFAULT epoch_seconds();
ALTER TABLE files ALTER COLUMN created_at SET DEFAULT epoch_seconds();
ALTER TABLE file_batches ALTER COLUMN created_at SET DEFAULT epoch_seconds();
ALTER TABLE vector_store_files ALTER COLUMN created_at SET DEFAULT epoch_seconds();
ALTER TABLE source_files ALTER COLUMN synced_at SET DEFAULT epoch_seconds();

-- Each store's own table stamps its rows the same way (a catalog change, no rewrite).
DO $$
DECLARE
    t text;
BEGIN
    FOR t IN SELECT table_name FROM vector_stores LOOP
        IF to_regclass(quote_ident(t)) IS NOT NULL THEN
            EXECUTE format('ALTER TABLE %I ALTER COLUMN created_at SET DEFAULT epoch_seconds()', t);
        END IF;
    END LOOP;
END
$$;
