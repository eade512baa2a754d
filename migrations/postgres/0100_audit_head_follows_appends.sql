-- The head of the audit chain moves inside each row's INSERT, so an append
-- is one statement instead of two (issue 17: each statement is a round trip
-- to the database).
--
-- A row goes in only at the head: its seq the head's + 1 and its prev_hash
-- the head's hash (the store reads the head FOR UPDATE first on this
-- backend; the check is the same as on SQLite).
CREATE FUNCTION audit_log_follows_head() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM audit_head
                   WHERE id = 1 AND seq + 1 = NEW.seq AND hash = NEW.prev_hash) THEN
        RAISE EXCEPTION 'audit_log rows go in only at audit_head: seq + 1, after its hash';
    END IF;
    RETURN NEW;
END;
$$;

CREATE TRIGGER audit_log_follows_head BEFORE INSERT ON audit_log
FOR EACH ROW EXECUTE FUNCTION audit_log_follows_head();

CREATE FUNCTION audit_log_moves_head() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE audit_head SET seq = NEW.seq, hash = NEW.hash WHERE id = 1;
    RETURN NULL;
END;
$$;

CREATE TRIGGER audit_log_moves_head AFTER INSERT ON audit_log
FOR EACH ROW EXECUTE FUNCTION audit_log_moves_head();

-- The head's guard, as in 0001, but an update that changes nothing passes:
-- the previous release still sets the head after its INSERT, to the values
-- this trigger already set (rolling upgrades).
CREATE OR REPLACE FUNCTION audit_head_forward_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP <> 'UPDATE' THEN
        RAISE EXCEPTION 'audit_head cannot be deleted';
    END IF;
    IF NEW.id = OLD.id AND NEW.seq = OLD.seq AND NEW.hash = OLD.hash THEN
        RETURN NEW;
    END IF;
    IF NEW.id <> OLD.id
       OR NEW.seq <> OLD.seq + 1
       OR NOT EXISTS (SELECT 1 FROM audit_log WHERE seq = NEW.seq AND hash = NEW.hash) THEN
        RAISE EXCEPTION 'audit_head only moves to the next appended row';
    END IF;
    RETURN NEW;
END;
$$;
