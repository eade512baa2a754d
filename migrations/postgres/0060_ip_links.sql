-- One-time links that save the address a member opens them from
-- (/jit-ip without an address, or /jit with no source to use). Only the
-- SHA-256 of the link's token is kept. A link may carry the request that
-- was waiting for an address: the invocation (member, roles, ids) and the
-- canonical /jit line, so the visit can finish it; and the interaction
-- token of the member's reply, so the reply can be edited into the grant
-- (it dies with the interaction, after 15 minutes).
CREATE TABLE ip_links (
    token_hash TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    member_name TEXT NOT NULL,
    created_at TEXT COLLATE "C" NOT NULL,
    expires_at TEXT COLLATE "C" NOT NULL,
    used_at TEXT COLLATE "C",
    invocation TEXT NOT NULL,
    pending_request TEXT,
    reply_token TEXT
);
