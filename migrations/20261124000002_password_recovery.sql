-- Password reset tokens, stored only as SHA-256. A token is usable while it
-- is neither consumed nor superseded and has not expired. Rows stay for a
-- day after they are created: the per-account cap on reset mails counts the
-- rows of the last hour, so it holds across replicas.
CREATE TABLE password_reset_tokens (
    token_hash    bytea       PRIMARY KEY CHECK (length(token_hash) = 32),
    user_id       uuid        NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at    timestamptz NOT NULL,
    expires_at    timestamptz NOT NULL CHECK (expires_at > created_at),
    consumed_at   timestamptz,
    superseded_at timestamptz,
    CHECK (consumed_at IS NULL OR superseded_at IS NULL)
);
CREATE INDEX password_reset_tokens_user_created_idx ON password_reset_tokens (user_id, created_at);

-- Mail waiting for delivery, written in the same transaction as the change
-- it reports. The body of a reset mail holds the only plain copy of its
-- token, so bodies exist only while a message is pending: the last check
-- makes sure nothing keeps them once a message is sent or discarded.
CREATE TABLE email_outbox (
    id              uuid        PRIMARY KEY,
    kind            text        NOT NULL CHECK (kind IN ('password_reset', 'password_changed')),
    recipient       text        NOT NULL CHECK (length(recipient) BETWEEN 3 AND 254),
    subject         text        NOT NULL,
    body_text       text,
    body_html       text,
    created_at      timestamptz NOT NULL,
    -- After this the message is pointless (its link is dead) or too late.
    expires_at      timestamptz NOT NULL,
    attempts        integer     NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    next_attempt_at timestamptz NOT NULL,
    last_error      text,
    sent_at         timestamptz,
    discarded_at    timestamptz,
    CHECK (sent_at IS NULL OR discarded_at IS NULL),
    CHECK ((body_text IS NULL) = (sent_at IS NOT NULL OR discarded_at IS NOT NULL)),
    CHECK ((body_html IS NULL) = (body_text IS NULL))
);
CREATE INDEX email_outbox_due_idx ON email_outbox (next_attempt_at)
    WHERE sent_at IS NULL AND discarded_at IS NULL;
CREATE INDEX email_outbox_created_idx ON email_outbox (created_at);
