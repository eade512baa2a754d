-- Grants: one row per access request, keyed by its request id, so one
-- request id can never initiate twice. The state changes only through the
-- domain's state machine (GrantState::apply), and each change is recorded in
-- grant_transitions.
CREATE TABLE grants (
    -- The request id (the Discord interaction id or a generated one).
    request_id TEXT PRIMARY KEY,
    -- Who asked (Discord user id).
    user_id TEXT NOT NULL,
    -- Where they asked (NULL from the console and CLI).
    guild_id TEXT,
    channel_id TEXT,
    -- The VM's full Azure resource id, taken from the VM index.
    vm_id TEXT NOT NULL,
    -- The VM's qualified name, resource-group/name, for messages.
    vm_name TEXT NOT NULL,
    -- The JIT policy's resource id used for initiate.
    policy_id TEXT NOT NULL,
    -- The ports, ascending, comma-separated, e.g. 22,8443.
    ports TEXT NOT NULL,
    -- The source prefix: an address, a CIDR or *.
    source TEXT NOT NULL,
    -- The requested window.
    duration_minutes INTEGER NOT NULL CHECK (duration_minutes > 0),
    -- The engineer's reason, if given.
    reason TEXT,
    -- The mapping that allowed the request (kept even if it is removed later).
    mapping TEXT NOT NULL,
    -- GrantState::as_str.
    state TEXT NOT NULL CHECK (state IN
        ('requested', 'active', 'extended', 'closing', 'closed_early', 'expired', 'failed')),
    -- When the request arrived.
    requested_at TEXT NOT NULL,
    -- When the port closes, per Azure (NULL until initiated).
    end_time TEXT,
    -- When the state last changed.
    state_changed_at TEXT NOT NULL,
    -- Why it failed, in words fit for the engineer (NULL unless it failed).
    failure TEXT,
    -- What Azure answered, as JSON (NULL until it answered).
    azure_detail TEXT,
    -- The interaction token for follow-up edits: a 15-minute credential.
    -- Never logged, never printed.
    interaction_token TEXT
);

-- /jit-status: a user's grants, newest first.
CREATE INDEX grants_user ON grants (user_id, requested_at);
-- Reconciliation and metrics: the open grants.
CREATE INDEX grants_state ON grants (state);

-- Every state change of a grant, in order.
CREATE TABLE grant_transitions (
    id INTEGER PRIMARY KEY,
    request_id TEXT NOT NULL REFERENCES grants (request_id),
    from_state TEXT NOT NULL,
    to_state TEXT NOT NULL,
    -- What happened, e.g. initiated, extended, window ended.
    event TEXT NOT NULL,
    -- The end time the event carried, if any.
    end_time TEXT,
    at TEXT NOT NULL
);

CREATE INDEX grant_transitions_request ON grant_transitions (request_id, id);
