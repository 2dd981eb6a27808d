-- Rules and the rule id sequence. One file for SQLite and PostgreSQL alike, so it keeps to
-- the SQL both understand: TEXT and BIGINT columns, no engine-specific types or defaults.

-- A rule is kept as the JSON document the API returns, so new optional fields in the rule
-- model need no migration. The other columns exist to be queried: `version` for
-- compare-and-swap updates, `domain` for authorization filters, `updated_at` (ms since the
-- epoch) for operators.
CREATE TABLE rules (
    id TEXT NOT NULL PRIMARY KEY,
    domain TEXT NOT NULL,
    doc TEXT NOT NULL,
    version BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

CREATE INDEX rules_domain_idx ON rules (domain);

-- A counter row instead of SQLite AUTOINCREMENT or a PostgreSQL SEQUENCE: an
-- `UPDATE .. RETURNING` on one row is atomic on both engines and its value survives restarts.
CREATE TABLE id_sequences (
    name TEXT NOT NULL PRIMARY KEY,
    value BIGINT NOT NULL
);

INSERT INTO id_sequences (name, value) VALUES ('rule', 0);
