-- Accounts. Email and username are unique whatever their letter case; the
-- index names are what the code maps to EMAIL_TAKEN / USERNAME_TAKEN.
CREATE TABLE users (
    id             uuid        PRIMARY KEY,
    email          text        NOT NULL CHECK (length(email) BETWEEN 3 AND 254),
    username       text        CHECK (length(username) BETWEEN 3 AND 32),
    full_name      text        NOT NULL DEFAULT '',
    phone          text        NOT NULL DEFAULT '',
    image_url      text        NOT NULL DEFAULT '',
    password_hash  text        NOT NULL,
    email_verified boolean     NOT NULL DEFAULT false,
    created_at     timestamptz NOT NULL,
    updated_at     timestamptz NOT NULL
);
CREATE UNIQUE INDEX users_email_key ON users (lower(email));
CREATE UNIQUE INDEX users_username_key ON users (lower(username));

-- A session is one login: a family of refresh tokens. It ends when revoked,
-- when unused for the idle lifetime, or at its absolute expiry.
CREATE TABLE sessions (
    id                  uuid        PRIMARY KEY,
    user_id             uuid        NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at          timestamptz NOT NULL,
    last_used_at        timestamptz NOT NULL,
    idle_expires_at     timestamptz NOT NULL,
    absolute_expires_at timestamptz NOT NULL,
    revoked_at          timestamptz,
    revoked_reason      text
);
CREATE INDEX sessions_user_id_idx ON sessions (user_id);
CREATE INDEX sessions_expiry_idx ON sessions (idle_expires_at);

-- Refresh tokens, stored only as SHA-256. A token is consumed by rotation;
-- presenting a consumed one again is reuse and ends the session.
CREATE TABLE refresh_tokens (
    token_hash  bytea       PRIMARY KEY CHECK (length(token_hash) = 32),
    session_id  uuid        NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    issued_at   timestamptz NOT NULL,
    consumed_at timestamptz
);
CREATE INDEX refresh_tokens_session_id_idx ON refresh_tokens (session_id);
