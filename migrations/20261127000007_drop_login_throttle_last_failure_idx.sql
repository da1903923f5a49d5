-- no-transaction
-- Only the clean-up's old single DELETE read this index; the clean-up now
-- walks the table in block ranges. Without it, a failed attempt's update of
-- `last_failure_at` touches no index and can be a HOT update. CONCURRENTLY
-- (outside a transaction, one statement in this file) so that logins are not
-- blocked while it goes.
DROP INDEX CONCURRENTLY IF EXISTS login_throttle_last_failure_idx;
