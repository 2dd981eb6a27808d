-- Incremental rule reloads: each replica reads only what changed since the generation its index
-- was built from, instead of every rule on every write.
--
-- `generation` is the rules_generation value of the write that last touched the row (0 for rows
-- written before this migration: a replica loads those with its first full load).
ALTER TABLE rules ADD COLUMN generation BIGINT NOT NULL DEFAULT 0;

CREATE INDEX rules_generation_idx ON rules (generation);

-- One row per removed rule id, with the generation of its removal, so that a removal shows up
-- among the changes too. Re-creating the id deletes its row. Rows older than an hour are pruned;
-- the horizon row below then holds the highest generation pruned, and a replica whose index is
-- older than the horizon reloads every rule instead.
CREATE TABLE rule_removals (
    id TEXT NOT NULL PRIMARY KEY,
    generation BIGINT NOT NULL,
    removed_at BIGINT NOT NULL
);

CREATE INDEX rule_removals_generation_idx ON rule_removals (generation);

INSERT INTO id_sequences (name, value) VALUES ('rule_removals_horizon', 0);
