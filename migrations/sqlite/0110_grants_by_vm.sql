-- The open grants on one VM are listed twice a request (before Azure is
-- asked, and after the policy is read back), by `lower(vm_id)` because
-- Azure's resource ids are case-insensitive. Without this index each
-- listing walked every open grant through `grants_state` (issue 17: with
-- 100,000 open grants, 100,000 rows a listing).
CREATE INDEX grants_vm ON grants (lower(vm_id), state);
