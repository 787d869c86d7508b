-- cluster.discovery: sql — the members as the shared database knows them.
-- Keep in step with the other backend's 0008_cluster_nodes.sql: same table, same columns.

-- One row per node: its cluster listener and when it last announced itself.
CREATE TABLE cluster_nodes (
    node TEXT NOT NULL PRIMARY KEY,
    address TEXT NOT NULL,
    -- Seconds since the Unix epoch, UTC.
    seen_at BIGINT NOT NULL
);
