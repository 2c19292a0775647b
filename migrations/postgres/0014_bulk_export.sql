-- Bulk export (ADR 22).
-- The transaction that wrote each version: an export's snapshot is a `pg_snapshot` taken when it
-- starts (its mark), and `pg_visible_in_snapshot(xact, mark)` tells, on any node and after any
-- restart, whether the export sees a version. Existing rows get this migration's transaction,
-- which every later snapshot sees (the volatile default rewrites the table once).
ALTER TABLE resource_history ADD COLUMN xact xid8 NOT NULL DEFAULT pg_current_xact_id();
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
