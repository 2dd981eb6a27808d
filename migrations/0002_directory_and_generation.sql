-- The directory of things and domains (fed by life cycle events, the start-up import file and
-- the HTTP import endpoint), so that a restart keeps it. `root` is implicit and never stored.
CREATE TABLE domains (
    id TEXT NOT NULL PRIMARY KEY,
    parent TEXT NOT NULL
);

CREATE TABLE things (
    thing_name TEXT NOT NULL PRIMARY KEY,
    thing_type TEXT NOT NULL,
    domain TEXT NOT NULL
);

-- Bumped in the same transaction as every rule write, so that each replica can tell with one
-- cheap read whether its rule index is stale (rules written through another replica).
INSERT INTO id_sequences (name, value) VALUES ('rules_generation', 0);
