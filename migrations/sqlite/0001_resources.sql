-- Current version of every resource, and every version ever written.
-- Bodies are the JSON bytes exactly as they are served; timestamps are microseconds since the
-- Unix epoch (UTC), so that both databases compare and sort them the same way.
CREATE TABLE resources (
    resource_type TEXT NOT NULL,
    id            TEXT NOT NULL,
    version       INTEGER NOT NULL,
    last_updated  INTEGER NOT NULL,
    deleted       BOOLEAN NOT NULL,
    method        TEXT NOT NULL,
    body          BLOB NOT NULL,
    PRIMARY KEY (resource_type, id)
) WITHOUT ROWID;

CREATE TABLE resource_history (
    seq           INTEGER PRIMARY KEY AUTOINCREMENT,
    resource_type TEXT NOT NULL,
    id            TEXT NOT NULL,
    version       INTEGER NOT NULL,
    last_updated  INTEGER NOT NULL,
    deleted       BOOLEAN NOT NULL,
    method        TEXT NOT NULL,
    body          BLOB NOT NULL,
    UNIQUE (resource_type, id, version)
);
CREATE INDEX resource_history_by_type ON resource_history (resource_type, seq);

-- Search index rows, one table per parameter kind, rewritten with every version.
CREATE TABLE search_token (
    resource_type TEXT NOT NULL,
    resource_id   TEXT NOT NULL,
    param         TEXT NOT NULL,
    system        TEXT,
    code          TEXT NOT NULL
);
CREATE INDEX search_token_lookup ON search_token (resource_type, param, code, system);
CREATE INDEX search_token_owner ON search_token (resource_type, resource_id);

CREATE TABLE search_string (
    resource_type TEXT NOT NULL,
    resource_id   TEXT NOT NULL,
    param         TEXT NOT NULL,
    normalized    TEXT NOT NULL,
    exact         TEXT NOT NULL
);
CREATE INDEX search_string_lookup ON search_string (resource_type, param, normalized);
CREATE INDEX search_string_owner ON search_string (resource_type, resource_id);

CREATE TABLE search_reference (
    resource_type TEXT NOT NULL,
    resource_id   TEXT NOT NULL,
    param         TEXT NOT NULL,
    target_type   TEXT,
    target_id     TEXT,
    target_url    TEXT
);
CREATE INDEX search_reference_lookup ON search_reference (resource_type, param, target_id, target_type);
CREATE INDEX search_reference_target ON search_reference (target_type, target_id);
CREATE INDEX search_reference_owner ON search_reference (resource_type, resource_id);

CREATE TABLE search_uri (
    resource_type TEXT NOT NULL,
    resource_id   TEXT NOT NULL,
    param         TEXT NOT NULL,
    value         TEXT NOT NULL
);
CREATE INDEX search_uri_lookup ON search_uri (resource_type, param, value);
CREATE INDEX search_uri_owner ON search_uri (resource_type, resource_id);
