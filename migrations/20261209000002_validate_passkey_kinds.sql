-- The kind checks of the passkey migration, checked against the rows that
-- were there before it: VALIDATE lets writes go on while it reads.
ALTER TABLE factors VALIDATE CONSTRAINT factors_kind_check;
ALTER TABLE email_outbox VALIDATE CONSTRAINT email_outbox_kind_check;
