-- Grant states and schedule kinds move from CHECK lists into tables of their
-- own, referenced by grants.state and schedule.kind. The states and kinds
-- still to come (approvals, Azure's view of a port, approval timeouts) are
-- then one INSERT each in a later migration, never another rebuild of grants
-- or schedule. Both tables are rebuilt here, once, for that.
--
-- SQLite cannot change a CHECK constraint in place: each table is copied
-- aside, dropped, created anew and refilled. sqlx runs a migration inside a
-- transaction, where foreign keys cannot be switched off, so they are
-- deferred: grants can be dropped while grant_transitions and schedule still
-- point at it, refilling it settles those references again, and the commit
-- fails, changing nothing, if any reference is left dangling.
PRAGMA defer_foreign_keys = ON;

-- Every value of GrantState::as_str. A state the code does not know is
-- refused by the database.
CREATE TABLE grant_states (
    name TEXT PRIMARY KEY
);

INSERT INTO grant_states (name) VALUES
    ('requested'), ('active'), ('extended'), ('closing'), ('closed_early'), ('expired'),
    ('failed');

-- Every value of ScheduleKind::as_str.
CREATE TABLE schedule_kinds (
    name TEXT PRIMARY KEY
);

INSERT INTO schedule_kinds (name) VALUES ('reminder'), ('expiry');

-- grants: the columns of 0003, with state a reference instead of a CHECK.
CREATE TEMP TABLE grants_before AS SELECT * FROM grants;

DROP TABLE grants;

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
    -- GrantState::as_str, one of grant_states.
    state TEXT NOT NULL REFERENCES grant_states (name),
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

INSERT INTO grants (request_id, user_id, guild_id, channel_id, vm_id, vm_name, policy_id,
                    ports, source, duration_minutes, reason, mapping, state, requested_at,
                    end_time, state_changed_at, failure, azure_detail, interaction_token)
SELECT request_id, user_id, guild_id, channel_id, vm_id, vm_name, policy_id,
       ports, source, duration_minutes, reason, mapping, state, requested_at,
       end_time, state_changed_at, failure, azure_detail, interaction_token
FROM temp.grants_before;

DROP TABLE temp.grants_before;

-- /jit-status: a user's grants, newest first.
CREATE INDEX grants_user ON grants (user_id, requested_at);
-- Reconciliation and metrics: the open grants.
CREATE INDEX grants_state ON grants (state);

-- schedule: the columns of 0005, with kind a reference instead of a CHECK.
-- Ids are kept: outbox keys and logs name timers by id.
CREATE TEMP TABLE schedule_before AS SELECT * FROM schedule;

DROP TABLE schedule;

CREATE TABLE schedule (
    id INTEGER PRIMARY KEY,
    request_id TEXT NOT NULL REFERENCES grants (request_id),
    -- ScheduleKind::as_str, one of schedule_kinds.
    kind TEXT NOT NULL REFERENCES schedule_kinds (name),
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

INSERT INTO schedule (id, request_id, kind, due_at, claimed_at, claimed_by, done_at,
                      cancelled_at)
SELECT id, request_id, kind, due_at, claimed_at, claimed_by, done_at, cancelled_at
FROM temp.schedule_before;

DROP TABLE temp.schedule_before;

-- The next due timers.
CREATE INDEX schedule_due ON schedule (due_at, id)
    WHERE done_at IS NULL AND cancelled_at IS NULL;
