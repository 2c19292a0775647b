-- Bulk export (ADR 22). On SQLite an export's snapshot (its mark) is the highest
-- `resource_history.seq` it sees: the one writer assigns `seq` in commit order, so nothing
-- needs adding to the versions.
-- The client that started a job: an export's status and files are that client's only, and the
-- number it runs at once is limited.
ALTER TABLE jobs ADD COLUMN client TEXT;
CREATE INDEX jobs_by_client ON jobs (client, kind, status) WHERE client IS NOT NULL;
-- The mark under each transactionTime an export gave (microseconds since the Unix epoch), so
-- that a later export `_since` that instant is exact whatever the versions' lastUpdated says.
CREATE TABLE export_marks (
    transaction_time BIGINT PRIMARY KEY,
    mark             TEXT NOT NULL
);
