-- The question before ending another member's window (issue 11) is stored
-- as a `confirming` grant. A member who never answers must not leave it so
-- forever: this timer cancels it (nothing reaches Azure) and edits the
-- reply, while the interaction token still works.
INSERT INTO schedule_kinds (name) VALUES ('question_timeout');
