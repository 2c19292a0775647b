-- Jobs that must wait (a held appointment expires after ten minutes): no worker claims a
-- queued job before `not_before` (microseconds since the Unix epoch; 0 = at once).
ALTER TABLE jobs ADD COLUMN not_before BIGINT NOT NULL DEFAULT 0;
