-- The kind checks of the second-factor migration, checked against the rows
-- that were there before it: VALIDATE lets writes go on while it reads.
ALTER TABLE email_outbox VALIDATE CONSTRAINT email_outbox_kind_check;
ALTER TABLE revocation_events VALIDATE CONSTRAINT revocation_events_kind_check;
