-- Role mappings: which Discord roles may open which ports on which VMs.
-- Managed with /jit-admin map|unmap and `drawbridge mappings import`; every
-- change is also an audit event. Twin of migrations/sqlite/0002_mappings.sql.
CREATE TABLE mappings (
    -- The mapping's unique name (MappingName: lowercase, digits, - and _).
    name TEXT PRIMARY KEY,
    -- The mapping as JSON (MappingSpec), validated again on every read so a
    -- row that no longer validates is reported rather than used.
    spec TEXT NOT NULL,
    -- When it was first added.
    created_at TEXT COLLATE "C" NOT NULL,
    -- When its spec last changed.
    updated_at TEXT COLLATE "C" NOT NULL
);
