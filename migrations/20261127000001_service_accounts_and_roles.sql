-- Roles a service authorizes on (carried in access tokens), and disabled
-- accounts (no login, every session ended, no reset mail).
ALTER TABLE users
    ADD COLUMN roles       text[]      NOT NULL DEFAULT '{}'
        CHECK (cardinality(roles) <= 32),
    ADD COLUMN disabled_at timestamptz;

-- ListUsers pages through accounts in a stable order.
CREATE INDEX users_created_at_id_idx ON users (created_at, id);

-- Services with their own credentials. Each key is stored only as its
-- SHA-256; revoking an account deletes it and its keys.
CREATE TABLE service_accounts (
    id         uuid        PRIMARY KEY,
    name       text        NOT NULL UNIQUE CHECK (name ~ '^[a-z0-9][a-z0-9._-]{0,62}$'),
    scopes     text[]      NOT NULL,
    created_at timestamptz NOT NULL
);

CREATE TABLE service_account_keys (
    id           uuid        PRIMARY KEY,
    account_id   uuid        NOT NULL REFERENCES service_accounts (id) ON DELETE CASCADE,
    key_hash     bytea       NOT NULL UNIQUE CHECK (length(key_hash) = 32),
    created_at   timestamptz NOT NULL,
    last_used_at timestamptz
);
CREATE INDEX service_account_keys_account_id_idx ON service_account_keys (account_id);

-- Secrets every replica must share (the page-token key), created by the
-- first replica that needs one.
CREATE TABLE server_secrets (
    name  text  PRIMARY KEY,
    value bytea NOT NULL CHECK (length(value) >= 32)
);

-- Every replica caches key lookups; a deleted key or account (or changed
-- scopes) must reach them all at once, like a session's end.
CREATE FUNCTION authd_notify_service_keys_changed() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('authd_service_keys_changed', '');
    RETURN NULL;
END $$;

CREATE TRIGGER service_account_keys_notify_deleted
    AFTER DELETE ON service_account_keys
    FOR EACH STATEMENT EXECUTE FUNCTION authd_notify_service_keys_changed();

CREATE TRIGGER service_accounts_notify_changed
    AFTER UPDATE OF scopes OR DELETE ON service_accounts
    FOR EACH STATEMENT EXECUTE FUNCTION authd_notify_service_keys_changed();
