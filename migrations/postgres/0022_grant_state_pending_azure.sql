-- `pending_azure`: an initiate was sent and its outcome is unclear (a
-- timeout, a 5xx or a 2xx body that does not parse). Azure may or may not
-- have opened the port; the policy is read back to settle the grant
-- `active` or `failed`, by the request and again by the reconciler until it
-- can be read. See GrantEvent::Unclear.
INSERT INTO grant_states (name) VALUES ('pending_azure');
