-- Approvals in chat (issue 13). A request on a mapping that needs approvers
-- is stored as a grant in `pending_approval` before anything is asked of
-- Azure; the first of Approve (by enough approvers), Deny, Cancel and the
-- timeout to move it out of that state decides it.
-- `cancelled` (the requester cancelled it while it waited) came with 0040.
INSERT INTO grant_states (name) VALUES
    ('pending_approval'), ('denied'), ('approval_expired');

-- The timer that expires a pending request nobody decided.
INSERT INTO schedule_kinds (name) VALUES ('approval_timeout');

-- One row per request that waited for approval, or skipped it by break-glass.
-- What the request was judged against is kept here, so a restart loses
-- nothing and a late Approve is checked again against today's mapping.
CREATE TABLE approval_requests (
    request_id TEXT PRIMARY KEY REFERENCES grants (request_id),
    -- Distinct approvers needed (0 for break-glass).
    needed INTEGER NOT NULL CHECK (needed >= 0),
    -- The approver role ids at request time, as a JSON array of strings.
    approver_roles TEXT NOT NULL,
    -- The requester's role ids at request time (JSON array): a late approval
    -- decides the request again with them.
    requester_roles TEXT NOT NULL,
    -- When the request expires unapproved.
    expires_at TEXT NOT NULL,
    -- 1 when the requester skipped approval with break-glass.
    break_glass INTEGER NOT NULL DEFAULT 0 CHECK (break_glass IN (0, 1)),
    -- Where the approval (or review) card was posted, once Discord said so:
    -- the card is edited to its final state there.
    card_channel_id TEXT,
    card_message_id TEXT,
    -- Who ended it (Deny, Cancel) or acknowledged a break-glass request.
    decided_by TEXT,
    -- The reason an approver gave for a Deny.
    decision_reason TEXT
);

-- Each approver's approval, once: the same person clicking twice counts once.
CREATE TABLE approvals (
    request_id TEXT NOT NULL REFERENCES grants (request_id),
    -- The approver's Discord user id.
    approver_id TEXT NOT NULL,
    at TEXT NOT NULL,
    PRIMARY KEY (request_id, approver_id)
);
