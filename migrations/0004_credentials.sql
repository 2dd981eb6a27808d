-- Static access keys for api.auth = "sigv4" (`ccstream credentials create|list|revoke`). The
-- secret is stored sealed under api.sigv4.master_key (AES-256-GCM, the access key id as
-- associated data), in base64. A revoked key keeps its row, so `list` shows when it was revoked.
CREATE TABLE credentials (
    access_key_id TEXT NOT NULL PRIMARY KEY,
    user_name TEXT NOT NULL,
    role TEXT NOT NULL,
    domain TEXT NOT NULL,
    sealed_secret TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    revoked_at BIGINT
);
