-- The latest pass of each background maintenance task that replicas share
-- (the clean-up of ended sessions, stale counters and old mail). A replica
-- runs a pass only while it holds the task's advisory lock, and skips it
-- when this row says a pass finished less than an interval ago, so that ten
-- replicas run one pass per interval rather than ten in a row.
-- `finished_at` is NULL while a pass runs, and stays NULL when one was
-- interrupted (shutdown, a lost connection): the next replica runs it.
CREATE TABLE maintenance_runs (
    task        text        PRIMARY KEY,
    started_at  timestamptz NOT NULL,
    finished_at timestamptz,
    -- Which replica ran it: host, process and gRPC address.
    replica     text        NOT NULL,
    -- Rows the pass deleted, every table together.
    deleted     bigint      NOT NULL DEFAULT 0 CHECK (deleted >= 0)
);
