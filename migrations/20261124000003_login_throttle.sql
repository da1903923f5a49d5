-- Failed-attempt counters for throttling, shared by every replica. The key
-- names what is throttled: an account ('user:<id>'), a login string that
-- names no account ('login:<lowercased>'), or a peer guessing reset tokens
-- ('reset:<address>').
CREATE TABLE login_throttle (
    key             text        PRIMARY KEY,
    failures        integer     NOT NULL DEFAULT 0 CHECK (failures >= 0),
    locked_until    timestamptz,
    last_failure_at timestamptz NOT NULL
);
CREATE INDEX login_throttle_last_failure_idx ON login_throttle (last_failure_at);
