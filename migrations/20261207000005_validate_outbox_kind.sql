-- The outbox's kind check of the security-stamp migration, checked against
-- the rows that were there before it: VALIDATE takes a lock that lets
-- writes go on while it reads.
ALTER TABLE email_outbox VALIDATE CONSTRAINT email_outbox_kind_check;
