-- Interactions taken by the HTTP interactions endpoint, by id. A signed
-- body stays valid for the 5 minutes its timestamp is accepted, so Discord's
-- retry or an attacker replaying a captured POST could deliver it again; the
-- first delivery claims the id here (one row, shared by every replica) and
-- any later one is answered with the first response, never run again.
-- Twin of migrations/sqlite/0035_interactions_seen.sql.
CREATE TABLE interactions_seen (
    -- The interaction id (a Discord snowflake).
    id TEXT PRIMARY KEY,
    -- When the first delivery claimed it; rows past the replay window are pruned by it.
    received_at TEXT COLLATE "C" NOT NULL,
    -- The first response (JSON), once the first delivery produced it.
    response TEXT
);

CREATE INDEX interactions_seen_received ON interactions_seen (received_at);
