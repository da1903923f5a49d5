-- Passkeys (WebAuthn). A passkey is a factor (kind 'passkey') with a row
-- here holding what verifies it; removing the factor removes the row.
ALTER TABLE factors DROP CONSTRAINT factors_kind_check;
ALTER TABLE factors ADD CONSTRAINT factors_kind_check
    CHECK (kind IN ('totp', 'passkey')) NOT VALID;

CREATE TABLE passkeys (
    factor_id       uuid        PRIMARY KEY REFERENCES factors (id) ON DELETE CASCADE,
    user_id         uuid        NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    -- Unique across accounts: a credential registered to one account can
    -- never be planted on another (WebAuthn §7.1 step 26).
    credential_id   bytea       NOT NULL UNIQUE CHECK (length(credential_id) BETWEEN 16 AND 1023),
    -- webauthn-rs's Passkey (public key, algorithm, flags), rewritten after
    -- each login with what the authenticator last said.
    credential      jsonb       NOT NULL,
    -- The authenticator's signature counter: a login is accepted only when
    -- it moves forward (or both are 0: authenticators without one), by one
    -- conditional UPDATE, so a cloned authenticator is caught whichever
    -- replica it reaches.
    sign_count      bigint      NOT NULL DEFAULT 0 CHECK (sign_count >= 0),
    backup_eligible boolean     NOT NULL,
    backed_up       boolean     NOT NULL
);
CREATE INDEX passkeys_user_id_idx ON passkeys (user_id);

-- A started WebAuthn ceremony, keyed by its challenge (the ceremony id
-- clients see): any replica finishes it, once, within 5 minutes.
CREATE TABLE webauthn_ceremonies (
    challenge   bytea       PRIMARY KEY CHECK (length(challenge) BETWEEN 16 AND 64),
    kind        text        NOT NULL CHECK (kind IN ('registration', 'authentication')),
    -- Registration: the account registering. Authentication: the account
    -- named by the login, or the one a second factor is due for (NULL with
    -- `named` false: a discoverable credential, any account; NULL with
    -- `named` true: a login that named no account with a passkey, which
    -- nothing can finish).
    user_id     uuid        REFERENCES users (id) ON DELETE CASCADE,
    named       boolean     NOT NULL DEFAULT false,
    -- Registration: the factor's label.
    name        text        CHECK (length(name) BETWEEN 1 AND 64),
    -- webauthn-rs's ceremony state, never sent to the client.
    state       jsonb       NOT NULL,
    created_at  timestamptz NOT NULL,
    expires_at  timestamptz NOT NULL
);
CREATE INDEX webauthn_ceremonies_expiry_idx ON webauthn_ceremonies (expires_at);
CREATE INDEX webauthn_ceremonies_user_id_idx ON webauthn_ceremonies (user_id);

-- The notice sent when a passkey's signature counter goes backwards.
ALTER TABLE email_outbox DROP CONSTRAINT email_outbox_kind_check;
ALTER TABLE email_outbox ADD CONSTRAINT email_outbox_kind_check CHECK (kind IN (
    'password_reset', 'password_changed',
    'email_verification', 'email_change', 'email_change_notice', 'email_changed',
    'account_deleted',
    'factor_added', 'factor_removed', 'recovery_code_used',
    'recovery_codes_regenerated', 'factors_reset',
    'passkey_cloned')) NOT VALID;
