-- sync-engine state (DESIGN.md §4.3). Every value here is derived from the CALENDAR stream, the TCS_RESULTS
-- stream and the engine's clock, never from the database's own now(): replaying the streams reproduces it.

-- Mailboxes we have seen a change for ("synced"): their users are shown the meetings they take part in.
CREATE TABLE mailboxes (
    mailbox          text PRIMARY KEY,
    provider         text NOT NULL,
    -- Highest CalendarChange.sequence seen for the mailbox.
    last_sequence    bigint NOT NULL,
    -- Changes at or below this sequence are ignored (set by ResyncMailbox: older changes still in flight
    -- must not resurrect items the resync rebuilds).
    resync_floor     bigint NOT NULL DEFAULT 0,
    last_observed_at timestamptz
);

-- One Exchange item of one mailbox: a single item, a series master, or an exception/occurrence item.
-- A deleted item stays as a tombstone (deleted = true, event NULL) holding the sequence of its deletion,
-- so that an older change arriving late is recognised as stale, and so that "this attendee deleted their
-- copy" (hidden for them only) and "the organizer deleted the meeting" (cancelled for everyone) are known.
CREATE TABLE items (
    mailbox        text NOT NULL,
    item_id        text NOT NULL,
    uid            text NOT NULL,
    meeting_id     text NOT NULL,
    kind           smallint NOT NULL,
    recurrence_id  timestamptz,
    sequence       bigint NOT NULL,
    change_key     text NOT NULL,
    deleted        boolean NOT NULL,
    was_organizer  boolean NOT NULL,
    observed_at    timestamptz,
    event          bytea,
    PRIMARY KEY (mailbox, item_id)
);
CREATE INDEX items_meeting ON items (meeting_id);

-- One meeting per iCalendar UID; `snapshot` is the Meeting message the API returns (without occurrences).
CREATE TABLE meetings (
    meeting_id   text PRIMARY KEY,
    uid          text NOT NULL UNIQUE,
    cancelled    boolean NOT NULL DEFAULT false,
    recurring    boolean NOT NULL DEFAULT false,
    snapshot     bytea,
    updated_at   timestamptz
);

-- Organizer, attendees and copy holders of a meeting (to find a user's meetings when their mailbox appears).
CREATE TABLE meeting_people (
    meeting_id text NOT NULL,
    email      text NOT NULL,
    PRIMARY KEY (meeting_id, email)
);
CREATE INDEX meeting_people_email ON meeting_people (email);

-- Occurrences of a meeting inside the cache window, as the organizer sees them.
CREATE TABLE occurrences (
    occurrence_id  text PRIMARY KEY,
    meeting_id     text NOT NULL,
    original_start timestamptz NOT NULL,
    start_at       timestamptz NOT NULL,
    end_at         timestamptz NOT NULL,
    cancelled      boolean NOT NULL,
    occurrence     bytea NOT NULL
);
CREATE INDEX occurrences_meeting ON occurrences (meeting_id);

-- What each TrueConf user's calendar shows: the last Occurrence pushed per (user, occurrence).
CREATE TABLE shown (
    user_email     text NOT NULL,
    occurrence_id  text NOT NULL,
    meeting_id     text NOT NULL,
    start_at       timestamptz NOT NULL,
    end_at         timestamptz NOT NULL,
    cancelled      boolean NOT NULL,
    seq            bigint NOT NULL,
    occurrence     bytea NOT NULL,
    PRIMARY KEY (user_email, occurrence_id)
);
CREATE INDEX shown_meeting ON shown (meeting_id);
CREATE INDEX shown_user_start ON shown (user_email, start_at);

-- Per-user push sequence (CalendarUpsert/Cancel/Delete.seq): strictly increasing.
CREATE TABLE user_seq (
    user_email text PRIMARY KEY,
    seq        bigint NOT NULL
);

-- The conference of a meeting on TrueConf Server.
CREATE TABLE conferences (
    meeting_id      text PRIMARY KEY,
    server_id       text NOT NULL,
    -- pending (create sent, no id yet) | created | deleted | failed
    state           text NOT NULL,
    -- true: the meeting links an existing conference (join link); never created, updated or deleted by us.
    linked          boolean NOT NULL DEFAULT false,
    conference_id   text NOT NULL DEFAULT '',
    url             text NOT NULL DEFAULT '',
    topic           text NOT NULL DEFAULT '',
    owner           text NOT NULL DEFAULT '',
    -- Last ConferenceUpsert sent (create or update), serialized deterministically.
    sent            bytea,
    -- Last invitation list sent (InvitationsSync, or inside `sent`), for syncConferenceParticipants.
    sent_invitations bytea,
    -- Invitations for conference_run (temporalConfParticipantsMode).
    run_invitations bytea,
    -- End of the occurrence the schedule points at (series): re-point the schedule once it has passed.
    repoint_at      timestamptz,
    -- Counter for deterministic command ids.
    commands        integer NOT NULL DEFAULT 0,
    last_error      text NOT NULL DEFAULT '',
    last_launch     timestamptz
);
CREATE INDEX conferences_repoint ON conferences (repoint_at) WHERE repoint_at IS NOT NULL;

-- Due launches (launchConference): one row per occurrence of a meeting with a conference.
CREATE TABLE launches (
    occurrence_id  text PRIMARY KEY,
    meeting_id     text NOT NULL,
    start_at       timestamptz NOT NULL,
    end_at         timestamptz NOT NULL,
    -- planned | launched | missed (finished before it could be launched)
    state          text NOT NULL,
    launched_at    timestamptz,
    command_id     text
);
CREATE INDEX launches_due ON launches (start_at) WHERE state = 'planned';
CREATE INDEX launches_meeting ON launches (meeting_id);

-- Commands for TrueConf Server, written in the transaction that decided them; the relay publishes them to
-- TCS_COMMANDS in id order with command_id as Nats-Msg-Id, and marks them published after the ack.
CREATE TABLE outbox (
    id            bigserial PRIMARY KEY,
    command_id    text NOT NULL UNIQUE,
    server_id     text NOT NULL,
    kind          text NOT NULL,
    -- What the command acts on (a user's occurrence, a meeting's conference, an occurrence's launch): a
    -- retry is superseded by any later command for the same target and server.
    target        text NOT NULL,
    meeting_id    text NOT NULL,
    payload       bytea NOT NULL,
    traceparent   text NOT NULL DEFAULT '',
    tracestate    text NOT NULL DEFAULT '',
    attempt       integer NOT NULL,
    -- command_id of the first attempt.
    chain_id      text NOT NULL,
    -- pending | published | ok | retrying | recovered | superseded | failed
    status        text NOT NULL,
    available_at  timestamptz NOT NULL,
    created_at    timestamptz NOT NULL,
    result_status smallint NOT NULL DEFAULT 0,
    last_error    text NOT NULL DEFAULT '',
    result_at     timestamptz
);
CREATE INDEX outbox_pending ON outbox (id) WHERE status = 'pending';
CREATE INDEX outbox_target ON outbox (target, server_id, id);
CREATE INDEX outbox_chain ON outbox (chain_id);
CREATE INDEX outbox_failed ON outbox (id) WHERE status IN ('retrying', 'failed');

-- Small engine-wide facts (the cache window last applied by the daily roll).
CREATE TABLE engine_state (
    key   text PRIMARY KEY,
    value text NOT NULL
);
