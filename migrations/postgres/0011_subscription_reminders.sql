-- Time-based events (appointment reminders, care due) already recorded, one row per
-- subscription and reminder key (what, and for which start or due date): a scan of any node
-- records a reminder's event only with the row it inserts, so none is sent twice, and a
-- rescheduled appointment (a new start) is reminded again.
CREATE TABLE subscription_reminders (
    subscription_id TEXT NOT NULL,
    reminder        TEXT NOT NULL,
    recorded        BIGINT NOT NULL,
    PRIMARY KEY (subscription_id, reminder)
);

-- Keys are forgotten after 30 days (longer than any reminder can be due again).
CREATE INDEX subscription_reminders_recorded ON subscription_reminders (recorded);

-- Events are kept for --subscription-event-days (30 by default), delivered or not: each node's
-- time scan forgets older ones by this index.
CREATE INDEX subscription_events_recorded ON subscription_events (recorded);
