-- Outbox claims: with several replicas, a row is sent by the replica that
-- claimed it. A claim lasts until claimed_until; a replica that dies while
-- sending leaves the row to the others once the claim runs out. The nonce
-- (idempotency_key) still stops a send repeated in that case from posting
-- twice. Audit-channel rows are not claimed one by one: whoever holds the
-- outbox_audit lease sends them, in order.
ALTER TABLE outbox ADD COLUMN claimed_by TEXT;
-- Until when the claim holds (NULL when unclaimed).
ALTER TABLE outbox ADD COLUMN claimed_until TEXT;
