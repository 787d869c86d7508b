-- Privacy lists (XEP-0016), which also hold the blocklist (XEP-0191): the blocklist is the
-- "deny all" JID items of the default list, as in ejabberd. Keep in step with the other
-- backend's 0005_privacy.sql: same tables, same columns.
-- Every per-user key starts (host, username).

-- One row per list; a list always has at least one item (an empty list is removed).
CREATE TABLE privacy_lists (
    host TEXT NOT NULL,
    username TEXT NOT NULL,
    name TEXT NOT NULL,
    PRIMARY KEY (host, username, name)
);

-- The user's default list (XEP-0016 §2.4); absent when the user declined one.
CREATE TABLE privacy_default_lists (
    host TEXT NOT NULL,
    username TEXT NOT NULL,
    name TEXT NOT NULL,
    PRIMARY KEY (host, username)
);

-- XEP-0016 §2.1 items. item_type is 'jid', 'group', 'subscription', or NULL for the
-- fall-through item (then value is NULL too). The four match_ columns are the child
-- elements; all false means the item applies to every stanza.
CREATE TABLE privacy_items (
    host TEXT NOT NULL,
    username TEXT NOT NULL,
    list_name TEXT NOT NULL,
    item_order BIGINT NOT NULL,
    item_type TEXT,
    item_value TEXT,
    -- 'allow' or 'deny'.
    action TEXT NOT NULL,
    match_message BOOLEAN NOT NULL,
    match_iq BOOLEAN NOT NULL,
    match_presence_in BOOLEAN NOT NULL,
    match_presence_out BOOLEAN NOT NULL,
    PRIMARY KEY (host, username, list_name, item_order)
);
