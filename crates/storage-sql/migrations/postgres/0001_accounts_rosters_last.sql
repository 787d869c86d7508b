-- Accounts, SCRAM keys, rosters and last activity (DESIGN §6).
-- Keep in step with ../sqlite/0001_accounts_rosters_last.sql: same tables, same columns,
-- only the type names differ (BYTEA here, BLOB there; BIGINT here where SQLite says INTEGER,
-- which is 64-bit there: the driver decodes PostgreSQL integers only at their exact width).
-- Every per-user key starts (host, username), as in ejabberd's multi-host schema; JIDs are
-- stored PRECIS-normalised as the server hands them over, and compared byte for byte.

CREATE TABLE accounts (
    host TEXT NOT NULL,
    username TEXT NOT NULL,
    -- Microseconds since the Unix epoch, UTC.
    created_at BIGINT NOT NULL,
    PRIMARY KEY (host, username)
);

-- One row per SCRAM hash (RFC 5802 §3, RFC 7677); never a password.
CREATE TABLE scram_keys (
    host TEXT NOT NULL,
    username TEXT NOT NULL,
    -- 'SHA-1', 'SHA-256' or 'SHA-512', as in the SCRAM mechanism names.
    hash TEXT NOT NULL,
    salt BYTEA NOT NULL,
    iterations BIGINT NOT NULL,
    stored_key BYTEA NOT NULL,
    server_key BYTEA NOT NULL,
    PRIMARY KEY (host, username, hash)
);

-- RFC 6121 §2.1.2 roster items plus the server-side pending and pre-approval state.
CREATE TABLE roster_items (
    host TEXT NOT NULL,
    username TEXT NOT NULL,
    contact TEXT NOT NULL,
    name TEXT,
    -- 'none', 'to', 'from' or 'both'.
    subscription TEXT NOT NULL,
    ask_out BOOLEAN NOT NULL,
    -- The contact's subscribe stanza, redelivered at login (RFC 6121 §3.1.3).
    pending_in TEXT,
    approved BOOLEAN NOT NULL,
    PRIMARY KEY (host, username, contact)
);

CREATE TABLE roster_groups (
    host TEXT NOT NULL,
    username TEXT NOT NULL,
    contact TEXT NOT NULL,
    group_name TEXT NOT NULL,
    -- The group's index in the item, so groups come back in the order they were given.
    position BIGINT NOT NULL,
    PRIMARY KEY (host, username, contact, group_name)
);

-- RFC 6121 §2.6 roster version: a per-user counter, bumped by every roster change.
CREATE TABLE roster_versions (
    host TEXT NOT NULL,
    username TEXT NOT NULL,
    version BIGINT NOT NULL,
    PRIMARY KEY (host, username)
);

-- XEP-0012: time (unix seconds) and status of the last logout.
CREATE TABLE last_activity (
    host TEXT NOT NULL,
    username TEXT NOT NULL,
    seconds BIGINT NOT NULL,
    status TEXT NOT NULL,
    PRIMARY KEY (host, username)
);
