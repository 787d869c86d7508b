-- XEP-0313 message archives and archiving preferences (mod_mam).
-- Keep in step with ../sqlite/0003_mam.sql: same tables, same columns, same indexes.

-- One row per archived message. The id is a per-node monotonic timestamp in µs, unique per
-- archive: it is the archive time, the XEP-0359 stanza-id and the XEP-0059 RSM key.
CREATE TABLE mam_messages (
    host TEXT NOT NULL,
    username TEXT NOT NULL,
    id BIGINT NOT NULL,
    -- The other party: bare JID, and resource ('' when addressed by bare JID).
    with_bare TEXT NOT NULL,
    with_resource TEXT NOT NULL,
    -- True when the archive's owner sent the message.
    outgoing BOOLEAN NOT NULL,
    -- The <message/> serialised, jabber:client namespace.
    stanza TEXT NOT NULL,
    -- Also the index of every unfiltered query: (host, username) then id ranges.
    PRIMARY KEY (host, username, id)
);

-- Queries filtered by `with` (XEP-0313 §4.1.1) seek the conversation, then page by id.
CREATE INDEX mam_messages_with ON mam_messages (host, username, with_bare, id);

-- XEP-0313 §7 default policy: 'always', 'never' or 'roster'.
CREATE TABLE mam_prefs (
    host TEXT NOT NULL,
    username TEXT NOT NULL,
    default_policy TEXT NOT NULL,
    PRIMARY KEY (host, username)
);

-- XEP-0313 §7 <always/> and <never/> JIDs (bare or full).
CREATE TABLE mam_prefs_jids (
    host TEXT NOT NULL,
    username TEXT NOT NULL,
    jid TEXT NOT NULL,
    -- True for <always/>, false for <never/>.
    always BOOLEAN NOT NULL,
    PRIMARY KEY (host, username, jid)
);
