-- Grant states and schedule kinds move from CHECK lists into tables of their
-- own, referenced by grants.state and schedule.kind, so a new state or kind
-- is one INSERT in a later migration. Twin of
-- migrations/sqlite/0008_state_and_kind_tables.sql, which has to rebuild the
-- two tables; PostgreSQL changes the constraints in place.

-- Every value of GrantState::as_str. A state the code does not know is
-- refused by the database.
CREATE TABLE grant_states (
    name TEXT PRIMARY KEY
);

INSERT INTO grant_states (name) VALUES
    ('requested'), ('active'), ('extended'), ('closing'), ('closed_early'), ('expired'),
    ('failed');

-- Every value of ScheduleKind::as_str.
CREATE TABLE schedule_kinds (
    name TEXT PRIMARY KEY
);

INSERT INTO schedule_kinds (name) VALUES ('reminder'), ('expiry');

ALTER TABLE grants DROP CONSTRAINT grants_state_check;
ALTER TABLE grants ADD FOREIGN KEY (state) REFERENCES grant_states (name);

ALTER TABLE schedule DROP CONSTRAINT schedule_kind_check;
ALTER TABLE schedule ADD FOREIGN KEY (kind) REFERENCES schedule_kinds (name);
