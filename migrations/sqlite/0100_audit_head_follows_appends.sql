-- The head of the audit chain moves inside each row's INSERT, so an append
-- is one statement instead of two (issue 17: each statement is a hand-off
-- to the database's thread).
--
-- A row goes in only at the head: its seq the head's + 1 and its prev_hash
-- the head's hash. The database checks it, so the store may append after
-- the head it last wrote without reading it first; when another process
-- (a CLI command) appended meanwhile, the INSERT is refused and the store
-- reads the head and appends again.
CREATE TRIGGER audit_log_follows_head BEFORE INSERT ON audit_log
WHEN NOT EXISTS (SELECT 1 FROM audit_head
                 WHERE id = 1 AND seq + 1 = NEW.seq AND hash = NEW.prev_hash)
BEGIN
    SELECT RAISE(ABORT, 'audit_log rows go in only at audit_head: seq + 1, after its hash');
END;

CREATE TRIGGER audit_log_moves_head AFTER INSERT ON audit_log
BEGIN
    UPDATE audit_head SET seq = NEW.seq, hash = NEW.hash WHERE id = 1;
END;

-- The head's guard, as in 0001, but an update that changes nothing passes:
-- the previous release still sets the head after its INSERT, to the values
-- this trigger already set (rolling upgrades).
DROP TRIGGER audit_head_forward_only;

CREATE TRIGGER audit_head_forward_only BEFORE UPDATE ON audit_head
WHEN NOT (NEW.id = OLD.id AND NEW.seq = OLD.seq AND NEW.hash = OLD.hash)
 AND (NEW.id <> OLD.id
  OR NEW.seq <> OLD.seq + 1
  OR NOT EXISTS (SELECT 1 FROM audit_log WHERE seq = NEW.seq AND hash = NEW.hash))
BEGIN
    SELECT RAISE(ABORT, 'audit_head only moves to the next appended row');
END;
