-- ForgotPassword only records the request; a background task resolves it
-- (finds the account, applies the hourly cap, issues the token, queues the
-- mail). The request path then does the same work, one insert, whether or
-- not the address has an account, so its timing tells nothing. A request
-- lives for the second it takes to resolve; its address is personal data
-- and is deleted with it.
CREATE TABLE password_reset_requests (
    id           uuid        PRIMARY KEY,
    email        text        NOT NULL CHECK (length(email) BETWEEN 3 AND 254),
    requested_at timestamptz NOT NULL
);
CREATE INDEX password_reset_requests_requested_at_idx ON password_reset_requests (requested_at);
