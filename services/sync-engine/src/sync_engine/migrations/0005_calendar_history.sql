-- Incremental calendar lists (SyncService.ListEvents `incremental`, docs/bridge-protocol.md §6.2 "Changes since a
-- sequence"): what changed for a user since a seq is read from `shown` (each row's seq) and from the outbox's
-- calendar_delete rows (the removals). The daily roll prunes old outbox rows: per user, the highest seq of a
-- pruned calendar_delete row, below which the removals are no longer all known (answers fall back to the whole
-- list). Users pushed to before this table existed start at their current seq: their older history is unknown.
CREATE TABLE calendar_history_floor (
    user_email text PRIMARY KEY,
    seq        bigint NOT NULL
);
INSERT INTO calendar_history_floor (user_email, seq) SELECT user_email, seq FROM user_seq;

-- A user's removals: the calendar_delete rows whose target (`calendar:<user>:<occurrence id>`) starts with the
-- user's prefix (a byte-wise range, whatever the database's collation).
CREATE INDEX outbox_calendar_deletes ON outbox (target text_pattern_ops) WHERE kind = 'calendar_delete';
