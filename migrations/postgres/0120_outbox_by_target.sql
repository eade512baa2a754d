-- The edits of one message (a requester's reply, an approval card) are
-- rows of one kind with one target. The deliverer sends a target's edits
-- one at a time, oldest first, and never an edit that a later one of the
-- same message has made stale: it looks up the other rows of a row's
-- target, delivered or not, through this index. Audit-channel rows have no
-- target and are left out of it.
CREATE INDEX outbox_target ON outbox (target, id) WHERE target IS NOT NULL;
