-- `extending`: Extend's claim on a grant while it asks Azure, as `closing`
-- is Close early's. A grant in either state is held by that action alone;
-- see GrantState::is_claimed.
INSERT INTO grant_states (name) VALUES ('extending');
