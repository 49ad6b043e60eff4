-- Expiring uploads that were never attached to any store (server.unattached_file_ttl_hours).
-- `attached_once` turns true in the transaction of a file's first attach and never back: a file that was
-- attached and then detached is someone's document, not an orphan, and is never expired.
-- Files uploaded before this step get true (added with that default): whether they were ever attached is
-- unknown, so none of them is expired. New files start false.
ALTER TABLE files ADD COLUMN attached_once boolean NOT NULL DEFAULT true;
ALTER TABLE files ALTER COLUMN attached_once SET DEFAULT false;
CREATE INDEX files_never_attached ON files (created_at) WHERE NOT attached_once;
