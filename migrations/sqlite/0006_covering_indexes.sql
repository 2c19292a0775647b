-- Covering search indexes: every lookup index ends with the owner's resource_id, and every
-- owner index carries the parameter and its values, so that a search finds its candidates
-- and probes their other criteria in the indexes alone, without a table row per index entry
-- (a page of free slots of one schedule: 0.64 ms -> 0.14 ms in SQLite).
DROP INDEX search_token_lookup;
DROP INDEX search_token_owner;
CREATE INDEX search_token_lookup ON search_token (resource_type, param, code, system, resource_id);
CREATE INDEX search_token_owner ON search_token (resource_type, resource_id, param, code, system);

DROP INDEX search_string_lookup;
DROP INDEX search_string_owner;
CREATE INDEX search_string_lookup ON search_string (resource_type, param, normalized, resource_id);
CREATE INDEX search_string_owner ON search_string (resource_type, resource_id, param, normalized);

DROP INDEX search_reference_lookup;
DROP INDEX search_reference_target;
DROP INDEX search_reference_owner;
CREATE INDEX search_reference_lookup ON search_reference (resource_type, param, target_id, target_type, resource_id);
CREATE INDEX search_reference_target ON search_reference (target_type, target_id, resource_type, param, resource_id);
CREATE INDEX search_reference_owner ON search_reference (resource_type, resource_id, param, target_type, target_id);

DROP INDEX search_uri_lookup;
DROP INDEX search_uri_owner;
CREATE INDEX search_uri_lookup ON search_uri (resource_type, param, value, resource_id);
CREATE INDEX search_uri_owner ON search_uri (resource_type, resource_id, param, value);

DROP INDEX search_date_lookup;
DROP INDEX search_date_owner;
CREATE INDEX search_date_lookup ON search_date (resource_type, param, low, high, resource_id);
CREATE INDEX search_date_owner ON search_date (resource_type, resource_id, param, low, high);

DROP INDEX search_number_lookup;
DROP INDEX search_number_owner;
CREATE INDEX search_number_lookup ON search_number (resource_type, param, value, resource_id);
CREATE INDEX search_number_owner ON search_number (resource_type, resource_id, param, value);

DROP INDEX search_quantity_lookup;
DROP INDEX search_quantity_owner;
CREATE INDEX search_quantity_lookup ON search_quantity (resource_type, param, code, value, system, resource_id);
CREATE INDEX search_quantity_owner ON search_quantity (resource_type, resource_id, param, code, value, system);

DROP INDEX search_composite_lookup;
CREATE INDEX search_composite_lookup ON search_composite (resource_type, param, c0, c1, resource_id);
