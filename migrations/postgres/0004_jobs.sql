-- Background jobs ($reindex, later bulk export): a queue in the database that any node claims
-- from, never state held in one process. Instants are microseconds since the Unix epoch.
CREATE TABLE jobs (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind        TEXT NOT NULL,
    parameters  TEXT NOT NULL,
    status      TEXT NOT NULL,
    -- Where a resumed job carries on (JSON, owned by the job's kind).
    progress    TEXT,
    processed   BIGINT NOT NULL DEFAULT 0,
    message     TEXT,
    owner       TEXT,
    lease_until BIGINT,
    created     BIGINT NOT NULL,
    updated     BIGINT NOT NULL
);
CREATE INDEX jobs_by_status ON jobs (status, id);
