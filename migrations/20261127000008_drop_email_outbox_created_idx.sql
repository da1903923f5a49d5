-- no-transaction
-- Only the clean-up's old single DELETE read this index; the clean-up now
-- walks the table in block ranges, and the backlog query reads pending mail
-- through the partial due index. One index fewer to write per queued mail.
DROP INDEX CONCURRENTLY IF EXISTS email_outbox_created_idx;
