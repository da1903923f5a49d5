-- Links that prove an address, stored only as SHA-256. `purpose` says what
-- consuming one does: 'verify' marks the account's address verified (and
-- only while the account still has the address in `email`); 'change'
-- switches the account to `email`, which is then verified. A token is
-- usable while it is neither consumed nor superseded and has not expired.
-- Rows stay for a day after they are created: the per-account cap on these
-- mails counts the rows of the last hour, so it holds across replicas.
CREATE TABLE email_verification_tokens (
    token_hash    bytea       PRIMARY KEY CHECK (length(token_hash) = 32),
    user_id       uuid        NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    purpose       text        NOT NULL CHECK (purpose IN ('verify', 'change')),
    email         text        NOT NULL CHECK (length(email) BETWEEN 3 AND 254),
    created_at    timestamptz NOT NULL,
    expires_at    timestamptz NOT NULL CHECK (expires_at > created_at),
    consumed_at   timestamptz,
    superseded_at timestamptz,
    CHECK (consumed_at IS NULL OR superseded_at IS NULL)
);
CREATE INDEX email_verification_tokens_user_created_idx
    ON email_verification_tokens (user_id, created_at);

-- The mails of the account lifecycle.
ALTER TABLE email_outbox DROP CONSTRAINT email_outbox_kind_check;
ALTER TABLE email_outbox ADD CONSTRAINT email_outbox_kind_check CHECK (kind IN (
    'password_reset', 'password_changed',
    'email_verification', 'email_change', 'email_change_notice', 'account_deleted'));

-- The account a message is about, so deleting the account deletes every
-- mail it was sent, at whatever address, sent or pending. The notice of a
-- deletion has none (it outlives the account until it is delivered).
ALTER TABLE email_outbox ADD COLUMN user_id uuid REFERENCES users (id) ON DELETE CASCADE;
CREATE INDEX email_outbox_user_id_idx ON email_outbox (user_id) WHERE user_id IS NOT NULL;
-- Mail queued before this migration: its account is the one at the address.
UPDATE email_outbox o SET user_id = u.id
  FROM users u
 WHERE lower(u.email COLLATE "und-x-icu") = lower(o.recipient COLLATE "und-x-icu");

-- Where each session was started from, so its owner can recognise it in
-- ListSessions. Both come from the client and are capped; NULL when unknown.
ALTER TABLE sessions
    ADD COLUMN user_agent text CHECK (length(user_agent) <= 256),
    ADD COLUMN ip_address text CHECK (length(ip_address) <= 45);
