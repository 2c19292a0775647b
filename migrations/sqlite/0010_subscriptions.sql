-- Topic-based subscriptions (ADR 16). A write that matches a subscription records the event in
-- the same transaction (the outbox); a worker of any node claims a subscription whose events
-- are not all delivered, under a lease, and sends them in order. Instants are microseconds
-- since the Unix epoch.
CREATE TABLE subscription_delivery (
    subscription_id TEXT PRIMARY KEY,
    -- requested (handshake due), active, error or off: what the Subscription resource says.
    status          TEXT NOT NULL,
    -- rest-hook, websocket or email (websocket subscriptions are sent by the node holding the socket).
    channel         TEXT NOT NULL,
    -- Who subscribed: the claims of the access token that created it (JSON, no credential);
    -- every notification passes that access again. NULL: created without authorization.
    owner           TEXT,
    -- The number of the newest event recorded, and of the newest delivered.
    events          BIGINT NOT NULL DEFAULT 0,
    delivered       BIGINT NOT NULL DEFAULT 0,
    -- Failed sends in a row, and the last reason.
    failures        BIGINT NOT NULL DEFAULT 0,
    last_error      TEXT,
    -- No worker tries before this instant (the back-off after a failure).
    not_before      BIGINT NOT NULL DEFAULT 0,
    -- Seconds between heartbeats (0: none), and when a notification was last sent.
    heartbeat       BIGINT NOT NULL DEFAULT 0,
    last_sent       BIGINT NOT NULL DEFAULT 0,
    lease_owner     TEXT,
    lease_until     BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX subscription_delivery_due ON subscription_delivery (not_before);

-- The events of each subscription, numbered from 1 in commit order.
CREATE TABLE subscription_events (
    subscription_id TEXT NOT NULL,
    number          BIGINT NOT NULL,
    focus_type      TEXT NOT NULL,
    focus_id        TEXT NOT NULL,
    focus_version   BIGINT NOT NULL,
    recorded        BIGINT NOT NULL,
    PRIMARY KEY (subscription_id, number)
);
