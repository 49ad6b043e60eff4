-- The deletion brake (docs/sources.md, "The deletion brake"): a sync whose deletions were held says so, with
-- the counts: {"would_delete": n, "files": total, "max_delete": "50%"}.
ALTER TABLE source_status DROP CONSTRAINT IF EXISTS source_status_outcome_check;
ALTER TABLE source_status ADD CONSTRAINT source_status_outcome_check CHECK (outcome IN ('ok', 'failed', 'held'));
ALTER TABLE source_status ADD COLUMN held jsonb;
