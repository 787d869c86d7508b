-- XEP-0045 persistent rooms: configuration, subject and affiliations.
-- Keep in step with ../sqlite/0007_muc.sql: same tables, same columns.

-- One row per persistent room of a MUC service.
CREATE TABLE muc_rooms (
    service TEXT NOT NULL,
    name TEXT NOT NULL,
    -- The room configuration, encoded by the MUC module (one "key=value" per line).
    options TEXT NOT NULL,
    subject TEXT NOT NULL,
    subject_author TEXT NOT NULL,
    -- Microseconds since the Unix epoch, UTC.
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (service, name)
);

-- Affiliations other than none (owner, admin, member, outcast), per room.
CREATE TABLE muc_affiliations (
    service TEXT NOT NULL,
    name TEXT NOT NULL,
    jid TEXT NOT NULL,
    affiliation TEXT NOT NULL,
    reason TEXT NOT NULL,
    PRIMARY KEY (service, name, jid)
);
