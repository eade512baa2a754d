-- The weekly report's posts, one row per slot (the Monday 09:00 it was due,
-- RFC 3339 UTC). Inserting the row, in the transaction that queues the post,
-- is what claims it: a slot is posted once across restarts and replicas.
CREATE TABLE weekly_reports (
    slot TEXT PRIMARY KEY,
    posted_at TEXT NOT NULL
);
