-- A whole-mailbox re-read framed by CHANGE_TYPE_MAILBOX_RESYNC_BEGIN ... END (changes.py): the open BEGIN
-- (token and sequence; 0 = none open) and the sequence of the last marker applied (an older marker is stale).
ALTER TABLE mailboxes
    ADD COLUMN resync_token  text   NOT NULL DEFAULT '',
    ADD COLUMN resync_begin  bigint NOT NULL DEFAULT 0,
    ADD COLUMN resync_marker bigint NOT NULL DEFAULT 0;
