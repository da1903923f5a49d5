-- Every Refresh moves a session's idle expiry. While that column was indexed,
-- each Refresh wrote new entries into all three indexes of `sessions`; without
-- it PostgreSQL can update the row in place (a HOT update) and touch no index.
-- The index served no query: the clean-up compares LEAST() of three columns,
-- which it cannot use, and scans the table every ten minutes instead.
DROP INDEX sessions_expiry_idx;
-- Room on each page for the new row versions that HOT updates need.
ALTER TABLE sessions SET (fillfactor = 85);
