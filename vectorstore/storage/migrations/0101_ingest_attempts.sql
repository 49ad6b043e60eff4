-- Claims of each ingestion job, counted on a connection of their own and committed at once: the job row
-- itself stays locked by the transaction that ingests the file, which a crash rolls back (see worker.py).
CREATE TABLE ingest_attempts (
    job_id bigint PRIMARY KEY,
    attempts integer NOT NULL
);
-- Counting in the job row itself (0100) raced: a claim committed before the lock let two workers take turns.
ALTER TABLE ingest_jobs DROP COLUMN attempts;
