-- The audit log (ADR 19): one row per AuditEvent, its JSON as served in `body`. `seq` orders
-- the events as they were recorded; `chain_pos` and `hash` are set when the sealing job links
-- the event into the hash chain (NULL until then).
CREATE TABLE audit_events (
    seq        BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id         TEXT NOT NULL UNIQUE,
    recorded   BIGINT NOT NULL,
    action     TEXT NOT NULL,
    outcome    TEXT NOT NULL,
    agent      TEXT,
    client_id  TEXT,
    request_id TEXT,
    body       BYTEA NOT NULL,
    chain_pos  BIGINT UNIQUE,
    hash       TEXT
);

CREATE INDEX audit_events_recorded ON audit_events (recorded);
-- The sealing job takes the unsealed events in order.
CREATE INDEX audit_events_unsealed ON audit_events (seq) WHERE chain_pos IS NULL;

-- The patients whose data each event disclosed or changed: the patient's access log.
CREATE TABLE audit_patients (
    patient_id TEXT NOT NULL,
    seq        BIGINT NOT NULL,
    PRIMARY KEY (patient_id, seq)
);
CREATE INDEX audit_patients_seq ON audit_patients (seq);

-- The head of the hash chain (one row): the last position sealed and its hash, and the
-- anchor retention left (the position and hash of the last event it removed). Sealers lock
-- this row, so one seals at a time whatever the number of nodes.
CREATE TABLE audit_chain (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    head_pos    BIGINT NOT NULL,
    head_hash   TEXT NOT NULL,
    anchor_pos  BIGINT NOT NULL,
    anchor_hash TEXT NOT NULL
);
INSERT INTO audit_chain (id, head_pos, head_hash, anchor_pos, anchor_hash) VALUES (1, 0, '', 0, '');
