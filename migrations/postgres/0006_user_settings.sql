-- Per-user settings: the source prefix saved with /jit-ip, used when a
-- request gives none. Twin of migrations/sqlite/0006_user_settings.sql.
CREATE TABLE user_settings (
    user_id TEXT PRIMARY KEY,
    source_prefix TEXT NOT NULL,
    updated_at TEXT COLLATE "C" NOT NULL
);
