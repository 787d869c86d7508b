-- mod_offline: messages kept for accounts with no available resource (XEP-0160), read
-- per message by XEP-0013. Same tables and columns in ../postgres/0002_offline.sql.

-- One row per stored message. `seq` is the per-user id: it only grows, so it gives the
-- arrival order and names the message for XEP-0013 (its node).
CREATE TABLE offline_messages (
    host TEXT NOT NULL,
    username TEXT NOT NULL,
    seq BIGINT NOT NULL,
    -- Microseconds since the Unix epoch, UTC.
    stored_at BIGINT NOT NULL,
    -- The sender's JID as stamped by the server.
    sender TEXT NOT NULL,
    -- The message element with its <delay/>, serialized.
    xml TEXT NOT NULL,
    PRIMARY KEY (host, username, seq)
);

-- The last id handed out per user. Bumping it is the first write of an insert, so it also
-- serialises inserts for one user and the quota check cannot race (a row lock on PostgreSQL,
-- the write lock on SQLite). Kept when messages are deleted, so ids are never reused while
-- the account lives.
CREATE TABLE offline_sequences (
    host TEXT NOT NULL,
    username TEXT NOT NULL,
    seq BIGINT NOT NULL,
    PRIMARY KEY (host, username)
);
