-- Per-user settings: the source prefix saved with /jit-ip, used when a
-- request gives none.
CREATE TABLE user_settings (
    user_id TEXT PRIMARY KEY,
    source_prefix TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
