-- The outbox: every message Drawbridge sends to Discord is written here, in
-- the same transaction as the change it reports, and delivered afterwards,
-- retried until Discord accepts it. Audit-channel rows are delivered strictly
-- in id order (which is audit log order).
CREATE TABLE outbox (
    id INTEGER PRIMARY KEY,
    -- audit_channel, dm, channel_message, interaction_edit.
    kind TEXT NOT NULL,
    -- A channel id, user id or request id, depending on kind; NULL for
    -- audit_channel (the configured audit channel at delivery time).
    target TEXT,
    -- What to send, as JSON. Never a token: interaction edits look the
    -- token up from the grant when they are delivered.
    payload TEXT NOT NULL,
    -- At most 25 characters, sent as Discord's message nonce so a resend
    -- after a crash cannot post twice; enqueueing an existing key is a no-op.
    idempotency_key TEXT NOT NULL UNIQUE CHECK (length(idempotency_key) BETWEEN 1 AND 25),
    created_at TEXT NOT NULL,
    -- Failed delivery attempts so far.
    attempts INTEGER NOT NULL DEFAULT 0,
    -- Not before this time (pushed back after each failure).
    next_attempt_at TEXT NOT NULL,
    -- When Discord accepted it (NULL while pending).
    delivered_at TEXT,
    -- The last delivery error, without secrets.
    last_error TEXT
);

-- Pending rows, oldest first.
CREATE INDEX outbox_pending ON outbox (delivered_at, id);
