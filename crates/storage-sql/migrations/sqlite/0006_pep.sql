-- XEP-0163 personal eventing (PEP): each account's nodes and their items (XEP-0060).
-- Keep in step with ../postgres/0006_pep.sql: same tables, same columns.

-- One row per account and node: the node's configuration.
CREATE TABLE pep_nodes (
    host TEXT NOT NULL,
    username TEXT NOT NULL,
    node TEXT NOT NULL,
    -- pubsub#access_model: presence, open, roster or whitelist.
    access_model TEXT NOT NULL,
    -- pubsub#max_items.
    max_items BIGINT NOT NULL,
    -- pubsub#persist_items.
    persist_items BOOLEAN NOT NULL,
    -- pubsub#send_last_published_item: never, on_sub or on_sub_and_presence.
    send_last_published_item TEXT NOT NULL,
    -- pubsub#roster_groups_allowed, joined with U+001F (a character XML text cannot hold).
    roster_groups TEXT NOT NULL,
    -- Microseconds since the Unix epoch, UTC.
    created_at BIGINT NOT NULL,
    PRIMARY KEY (host, username, node)
);

-- One row per item; the newest has the largest published_at within its node.
CREATE TABLE pep_items (
    host TEXT NOT NULL,
    username TEXT NOT NULL,
    node TEXT NOT NULL,
    item_id TEXT NOT NULL,
    -- The payload element, serialised; empty for an item without payload.
    payload TEXT NOT NULL,
    -- The full JID that published the item.
    publisher TEXT NOT NULL,
    -- Microseconds since the Unix epoch, UTC; strictly increasing within a node.
    published_at BIGINT NOT NULL,
    PRIMARY KEY (host, username, node, item_id)
);

CREATE INDEX pep_items_newest ON pep_items (host, username, node, published_at);
