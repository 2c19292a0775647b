-- The SMART authorization server's state, as small JSON records by kind and key: registered
-- clients and users, signing keys, pending authorization requests, login sessions,
-- authorization codes, refresh tokens, revocations, used client-assertion ids and launch
-- contexts. Nodes share it through the database, so any node can serve any step of a flow.
-- `expires` is microseconds since the Unix epoch; records past it count as absent.
CREATE TABLE auth_objects (
    kind    TEXT NOT NULL,
    key     TEXT NOT NULL,
    data    TEXT NOT NULL,
    expires BIGINT NOT NULL,
    PRIMARY KEY (kind, key)
);
CREATE INDEX auth_objects_by_expiry ON auth_objects (expires);
