-- Local threshold state (engine.state = "local"), saved periodically and at shutdown and
-- loaded at start, so that a single replica's restart keeps runs and intervals. One row per
-- owner (the MQTT client id): replicas sharing a database keep their own.
CREATE TABLE threshold_state (
    owner TEXT NOT NULL PRIMARY KEY,
    doc TEXT NOT NULL,
    saved_at BIGINT NOT NULL
);
