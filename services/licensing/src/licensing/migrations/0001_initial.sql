-- licensing schema, version 1: the installation, the licenses installed, online checks, seat leases.

CREATE TABLE licensing.installation (
    singleton  boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    install_id uuid NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

-- Every license ever installed; exactly one is active. `envelope` is the signed document as received,
-- re-verified each time it is read.
CREATE TABLE licensing.licenses (
    id           bigserial PRIMARY KEY,
    license_id   text NOT NULL,
    tier         text NOT NULL,
    registration text NOT NULL CHECK (registration IN ('online', 'offline')),
    envelope     text NOT NULL,
    installed_at timestamptz NOT NULL,
    active       boolean NOT NULL DEFAULT true
);
CREATE UNIQUE INDEX licenses_one_active ON licensing.licenses (active) WHERE active;

-- Online checks of the active license (Free tier).
CREATE TABLE licensing.online_check (
    singleton     boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    license_id    text NOT NULL,
    last_success  timestamptz,
    last_attempt  timestamptz,
    failing_since timestamptz,
    last_error    text,
    refusal       text
);

-- Seat leases (see seats.py).
CREATE TABLE licensing.seats (
    mailbox    text PRIMARY KEY,
    configured boolean NOT NULL,
    granted_at timestamptz NOT NULL,
    expires_at timestamptz NOT NULL
);
