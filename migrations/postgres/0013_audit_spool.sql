-- The database's own name for node-local audit spools (ADR 21): a spool file carries it, so a
-- node takes over only the spools of its own database from a directory several share.
ALTER TABLE audit_chain ADD COLUMN database_id TEXT NOT NULL DEFAULT '';
UPDATE audit_chain SET database_id = md5(random()::text || clock_timestamp()::text);
-- From this version on, `audit_events.body` holds an event's record (its facts as JSON), which
-- the server renders as the BALP AuditEvent when it is read; bodies stored before stay
-- AuditEvent JSON and are served as they are.
