-- `confirming`: another member holds the port the request is for, and the
-- member was asked whether to end their access (Azure keeps one window per
-- port); the pending question is this grant, so a restart keeps its Open
-- anyway and Cancel buttons working. `cancelled`: the member answered
-- Cancel, or the question lapsed; nothing reached Azure. See
-- GrantEvent::AskedFirst, Confirmed and Cancelled.
INSERT INTO grant_states (name) VALUES ('confirming'), ('cancelled');
