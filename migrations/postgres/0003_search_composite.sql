-- Composite search parameters (e.g. Observation code-value-quantity): one row per combination
-- of component values. Component n uses the columns that fit its kind:
--   token: s<n> (system), c<n> (code); reference: s<n> (type), c<n> (id); string: c<n> (normalised);
--   quantity: v<n> (value), s<n> (system), c<n> (code); number: v<n>; date: lo<n>, hi<n>.
CREATE TABLE search_composite (
    resource_type TEXT NOT NULL,
    resource_id   TEXT NOT NULL,
    param         TEXT NOT NULL,
    s0 TEXT, c0 TEXT, v0 DOUBLE PRECISION, lo0 BIGINT, hi0 BIGINT,
    s1 TEXT, c1 TEXT, v1 DOUBLE PRECISION, lo1 BIGINT, hi1 BIGINT,
    s2 TEXT, c2 TEXT, v2 DOUBLE PRECISION, lo2 BIGINT, hi2 BIGINT
);
CREATE INDEX search_composite_lookup ON search_composite (resource_type, param, c0, c1);
CREATE INDEX search_composite_owner ON search_composite (resource_type, resource_id);
