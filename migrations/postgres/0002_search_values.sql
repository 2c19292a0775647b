-- Index rows for date, number and quantity search parameters.
-- Dates are half-open ranges [low, high) in microseconds since the Unix epoch (UTC); open ends
-- use the smallest and largest 64-bit integers.
CREATE TABLE search_date (
    resource_type TEXT NOT NULL,
    resource_id   TEXT NOT NULL,
    param         TEXT NOT NULL,
    low           BIGINT NOT NULL,
    high          BIGINT NOT NULL
);
CREATE INDEX search_date_lookup ON search_date (resource_type, param, low, high);
CREATE INDEX search_date_owner ON search_date (resource_type, resource_id);

CREATE TABLE search_number (
    resource_type TEXT NOT NULL,
    resource_id   TEXT NOT NULL,
    param         TEXT NOT NULL,
    value         DOUBLE PRECISION NOT NULL
);
CREATE INDEX search_number_lookup ON search_number (resource_type, param, value);
CREATE INDEX search_number_owner ON search_number (resource_type, resource_id);

CREATE TABLE search_quantity (
    resource_type TEXT NOT NULL,
    resource_id   TEXT NOT NULL,
    param         TEXT NOT NULL,
    value         DOUBLE PRECISION NOT NULL,
    system        TEXT,
    code          TEXT,
    unit          TEXT
);
CREATE INDEX search_quantity_lookup ON search_quantity (resource_type, param, code, value);
CREATE INDEX search_quantity_owner ON search_quantity (resource_type, resource_id);
