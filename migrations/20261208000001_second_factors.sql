-- Second factors. A session records how it was proven (RFC 8176 `amr`;
-- the level `acr` follows from it) and when last (`auth_time`; NULL means
-- at its creation, as for every session before this migration, all of
-- which proved a password). Constant defaults add the columns without
-- rewriting the table.
ALTER TABLE sessions
    ADD COLUMN amr text[] NOT NULL DEFAULT '{pwd}',
    ADD COLUMN auth_time timestamptz,
    ADD COLUMN mfa_enrollment_required boolean NOT NULL DEFAULT false;

-- One row per factor; an enrollment is a row not confirmed yet, which
-- dies at `expires_at`. Passkeys will be rows of another kind.
CREATE TABLE factors (
    id              uuid        PRIMARY KEY,
    user_id         uuid        NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    kind            text        NOT NULL CHECK (kind IN ('totp')),
    name            text        NOT NULL CHECK (length(name) BETWEEN 1 AND 64),
    created_at      timestamptz NOT NULL,
    confirmed_at    timestamptz,
    expires_at      timestamptz,
    last_used_at    timestamptz,
    -- The TOTP secret sealed with an AEAD under the data key `secret_key_id`
    -- (AUTHD_DATA_KEYS); never stored in the clear.
    secret_sealed   bytea,
    secret_key_id   text,
    -- The last 30-second step a code was accepted for: a step is accepted
    -- once, and never one older than the last (RFC 6238 §5.2).
    totp_last_step  bigint,
    CHECK (kind <> 'totp' OR (secret_sealed IS NOT NULL AND secret_key_id IS NOT NULL)),
    CHECK (confirmed_at IS NOT NULL OR expires_at IS NOT NULL)
);
CREATE INDEX factors_user_id_idx ON factors (user_id);
CREATE INDEX factors_pending_expiry_idx ON factors (expires_at) WHERE confirmed_at IS NULL;

-- Single-use recovery codes, as SHA-256 of the normalised code (80 random
-- bits each: too many to search even at a fast hash's speed).
CREATE TABLE recovery_codes (
    user_id     uuid        NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    code_hash   bytea       NOT NULL CHECK (length(code_hash) = 32),
    created_at  timestamptz NOT NULL,
    used_at     timestamptz,
    PRIMARY KEY (user_id, code_hash)
);

-- A login whose password checked out and whose second factor is due. The
-- token is stored as SHA-256 only; it dies when used, after 5 wrong
-- proofs, at `expires_at`, or when the account's security stamp moves.
CREATE TABLE mfa_challenges (
    token_hash      bytea       PRIMARY KEY CHECK (length(token_hash) = 32),
    user_id         uuid        NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    security_stamp  bigint      NOT NULL,
    -- The Login throttle counter the password was charged on; wrong codes
    -- are charged on it too.
    throttle_key    text        NOT NULL,
    created_at      timestamptz NOT NULL,
    expires_at      timestamptz NOT NULL,
    failures        integer     NOT NULL DEFAULT 0,
    consumed_at     timestamptz
);
CREATE INDEX mfa_challenges_user_id_idx ON mfa_challenges (user_id);
CREATE INDEX mfa_challenges_expiry_idx ON mfa_challenges (expires_at);

-- Notice mails of factor changes. NOT VALID, validated by the next
-- migration under a lock that lets writes through.
ALTER TABLE email_outbox DROP CONSTRAINT email_outbox_kind_check;
ALTER TABLE email_outbox ADD CONSTRAINT email_outbox_kind_check CHECK (kind IN (
    'password_reset', 'password_changed',
    'email_verification', 'email_change', 'email_change_notice', 'email_changed',
    'account_deleted',
    'factor_added', 'factor_removed', 'recovery_code_used',
    'recovery_codes_regenerated', 'factors_reset')) NOT VALID;

-- Factor changes are events of the revocation log, so services that follow
-- it hear of them.
ALTER TABLE revocation_events DROP CONSTRAINT revocation_events_kind_check;
ALTER TABLE revocation_events ADD CONSTRAINT revocation_events_kind_check CHECK (kind IN (
    'SESSION_ENDED', 'USER_SESSIONS_ENDED', 'USER_DISABLED', 'USER_DELETED',
    'FACTORS_CHANGED')) NOT VALID;
