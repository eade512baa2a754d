-- The audit log: every event Drawbridge records, append-only and hash-chained.
-- The PostgreSQL twin of migrations/sqlite/0001_audit_log.sql: the same
-- tables, columns and guards (a test compares the two schemas).
--
-- hash = SHA-256(prev_hash || canonical(event as number seq)), see
-- src/domain/audit.rs. `drawbridge audit verify` recomputes every hash from
-- these columns, so an edited, deleted or reordered row is detected.
CREATE TABLE audit_log (
    -- Position in the chain: 1, 2, 3, ... without gaps (assigned by the store
    -- from audit_head, never by a sequence, so a deleted row leaves a gap).
    seq BIGINT PRIMARY KEY CHECK (seq > 0),
    -- When it happened (audit::format_time; hashed exactly as stored). Times
    -- are text in one fixed-width format; "C" collation makes text order byte
    -- order, and so time order, whatever the server's locale.
    at TEXT COLLATE "C" NOT NULL,
    -- Who: discord:<user id>, admin:<user id>, cli or system.
    actor TEXT NOT NULL,
    -- What: AuditAction in snake_case.
    action TEXT NOT NULL,
    -- On what: a VM, a mapping name, a request id.
    target TEXT NOT NULL,
    -- success, denied, failed or info.
    outcome TEXT NOT NULL,
    -- Anything else, as JSON text (hashed in canonical form; text, not jsonb,
    -- so it reads back byte for byte).
    detail TEXT NOT NULL,
    -- The hash of row seq - 1 (the genesis hash for row 1).
    prev_hash TEXT NOT NULL,
    -- This row's chained hash.
    hash TEXT NOT NULL
);

CREATE INDEX audit_log_at ON audit_log (at);
CREATE INDEX audit_log_actor ON audit_log (actor, seq);

-- The head of the chain: the last row's seq and hash, updated in the same
-- transaction as every append. Appends read it FOR UPDATE: it is the lock
-- row they serialize on, across replicas. It also lets verification notice a
-- deleted last row, which the chain alone cannot.
CREATE TABLE audit_head (
    id BIGINT PRIMARY KEY CHECK (id = 1),
    -- The last appended seq (0 before the first event).
    seq BIGINT NOT NULL,
    -- The last appended hash (the genesis hash before the first event).
    hash TEXT NOT NULL
);

INSERT INTO audit_head (id, seq, hash)
VALUES (1, 0, '0000000000000000000000000000000000000000000000000000000000000000');

-- Append-only, enforced by the database. A superuser can still drop these
-- triggers; the hash chain and audit_head are what detect what they do next.
CREATE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' THEN
        RAISE EXCEPTION 'audit_log is append-only: rows cannot be updated';
    END IF;
    RAISE EXCEPTION 'audit_log is append-only: rows cannot be deleted';
END;
$$;

CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
FOR EACH ROW EXECUTE FUNCTION audit_log_append_only();

CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
FOR EACH ROW EXECUTE FUNCTION audit_log_append_only();

-- TRUNCATE skips row triggers: refused as a statement.
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
FOR EACH STATEMENT EXECUTE FUNCTION audit_log_append_only();

-- The head only moves forward, one row at a time, to a row that exists.
CREATE FUNCTION audit_head_forward_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP <> 'UPDATE' THEN
        RAISE EXCEPTION 'audit_head cannot be deleted';
    END IF;
    IF NEW.id <> OLD.id
       OR NEW.seq <> OLD.seq + 1
       OR NOT EXISTS (SELECT 1 FROM audit_log WHERE seq = NEW.seq AND hash = NEW.hash) THEN
        RAISE EXCEPTION 'audit_head only moves to the next appended row';
    END IF;
    RETURN NEW;
END;
$$;

CREATE TRIGGER audit_head_forward_only BEFORE UPDATE ON audit_head
FOR EACH ROW EXECUTE FUNCTION audit_head_forward_only();

CREATE TRIGGER audit_head_no_delete BEFORE DELETE ON audit_head
FOR EACH ROW EXECUTE FUNCTION audit_head_forward_only();

CREATE TRIGGER audit_head_no_truncate BEFORE TRUNCATE ON audit_head
FOR EACH STATEMENT EXECUTE FUNCTION audit_head_forward_only();
