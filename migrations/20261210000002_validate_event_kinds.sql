-- The kind check of the Shared Signals migration, checked against the rows
-- that were there before it: VALIDATE lets writes go on while it reads.
ALTER TABLE revocation_events VALIDATE CONSTRAINT revocation_events_kind_check;
