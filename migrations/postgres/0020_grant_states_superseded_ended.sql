-- A grant Azure shows as ended before Drawbridge ended it: `superseded` when
-- a newer request replaced it (Azure's statusReason NewerRequestInitiated),
-- `ended` for any other reason Azure gives (the grant's failure column holds
-- it). Both are GrantState values; see GrantEvent::EndedInAzure.
INSERT INTO grant_states (name) VALUES ('superseded'), ('ended');
