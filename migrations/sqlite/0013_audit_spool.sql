-- The database's own name for node-local audit spools (ADR 21): a spool file carries it, so a
-- node takes over only the spools of its own database from a directory several share.
ALTER TABLE audit_chain ADD COLUMN database_id TEXT NOT NULL DEFAULT '';
UPDATE audit_chain SET database_id = lower(hex(randomblob(16)));
