-- XEP-0054 vCards (with the XEP-0153 photo hash) and XEP-0049 private XML storage.
-- Keep in step with ../sqlite/0004_vcard_private.sql: same tables, same columns.

-- One vCard per account, replaced whole at each update.
CREATE TABLE vcards (
    host TEXT NOT NULL,
    username TEXT NOT NULL,
    -- The <vCard xmlns='vcard-temp'/> element, serialised.
    vcard TEXT NOT NULL,
    -- Lowercase hex SHA-1 of the decoded PHOTO/BINVAL; NULL without a photo.
    photo_hash TEXT,
    -- Microseconds since the Unix epoch, UTC.
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (host, username)
);

-- One row per account and namespace: every element the client stored in that namespace.
CREATE TABLE private_storage (
    host TEXT NOT NULL,
    username TEXT NOT NULL,
    namespace TEXT NOT NULL,
    data TEXT NOT NULL,
    -- Microseconds since the Unix epoch, UTC.
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (host, username, namespace)
);
