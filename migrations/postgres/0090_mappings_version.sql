-- A counter bumped in every transaction that changes the mappings, so a
-- replica's periodic reload reads one row instead of every mapping when
-- nothing changed (issue 17). No row reads as version 0.
CREATE TABLE mappings_version (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    version BIGINT NOT NULL
);
