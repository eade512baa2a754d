-- Durable timers: reminders and expiries. Workers claim due rows with a
-- lease; a claim older than the lease is taken over after a crash. A row is
-- done at most once (done_at is set in the same transaction as what firing
-- it changed).
CREATE TABLE schedule (
    id INTEGER PRIMARY KEY,
    request_id TEXT NOT NULL REFERENCES grants (request_id),
    -- reminder or expiry.
    kind TEXT NOT NULL CHECK (kind IN ('reminder', 'expiry')),
    due_at TEXT NOT NULL,
    -- The current claim (NULL when unclaimed).
    claimed_at TEXT,
    claimed_by TEXT,
    -- Fired (NULL while pending).
    done_at TEXT,
    -- No longer wanted, e.g. the grant was extended or closed.
    cancelled_at TEXT,
    UNIQUE (request_id, kind, due_at)
);

-- The next due timers.
CREATE INDEX schedule_due ON schedule (due_at, id)
    WHERE done_at IS NULL AND cancelled_at IS NULL;
