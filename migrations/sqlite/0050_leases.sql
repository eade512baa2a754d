-- Leases: work that one replica at a time must do (reconciliation with
-- Azure, the VM index refresh, the audit channel's ordered stream) is done
-- by whoever holds its lease. A lease is taken when free or expired and
-- renewed by its holder before it expires; a replica that dies loses it when
-- it expires, and another takes over.
CREATE TABLE leases (
    -- What the lease is for, e.g. reconcile, index_refresh, outbox_audit.
    name TEXT PRIMARY KEY,
    -- The replica holding it (a random worker id per process).
    holder TEXT NOT NULL,
    -- Fencing token: grows by one each time the lease changes hands, so
    -- work stamped with an older token can be told from the current
    -- holder's.
    fence INTEGER NOT NULL CHECK (fence > 0),
    -- When the current holder took it.
    acquired_at TEXT NOT NULL,
    -- When it lapses unless renewed.
    expires_at TEXT NOT NULL
);
