-- The seats licensing granted (LicensingService/ListSeats, sync_engine/seats.py): a mailbox is seated while
-- lease_until is ahead of the clock; only seated mailboxes' copies and users count when deciding what TrueConf
-- shows. `applied`: whether the shown state was last brought in line with this mailbox seated (a mailbox whose
-- seated state differs has its meetings recomputed, then `applied` follows).
CREATE TABLE seats (
    mailbox     text PRIMARY KEY,
    lease_until timestamptz NOT NULL,
    applied     boolean NOT NULL DEFAULT false
);
