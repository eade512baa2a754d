-- JIT requests that reconciliation found in Azure but that Drawbridge did not
-- make (opened in the portal, with PowerShell, ...). Each is reported once as
-- an `opened_outside_drawbridge` audit event; the row is written in the same
-- transaction as that event, so a restart or a second replica never reports
-- it again. Twin of migrations/sqlite/0007_azure_requests_seen.sql.
CREATE TABLE azure_requests_seen (
    -- Azure gives a request no id: a SHA-256 (hex) of what identifies it
    -- (policy id, start time, requestor, VMs, ports and their end times).
    key TEXT PRIMARY KEY,
    -- The JIT policy whose history holds the request.
    policy_id TEXT NOT NULL,
    -- Azure's startTimeUtc (NULL if Azure gave none); old rows are pruned by it.
    started_at TEXT COLLATE "C",
    -- When reconciliation first saw it.
    seen_at TEXT COLLATE "C" NOT NULL,
    -- The audit event that reported it.
    audit_seq BIGINT NOT NULL
);

-- Pruning rows older than any request Azure could still show as open.
CREATE INDEX azure_requests_seen_started ON azure_requests_seen (started_at);
