-- Every replica keeps live sessions in a memory cache to answer GetMe and
-- IntrospectToken without a query. These triggers announce each change that
-- must evict cache entries, from whatever code path makes it: a session
-- ending, and any change to (or deletion of) an account.
CREATE FUNCTION authd_notify_session_ended() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.revoked_at IS NOT NULL AND OLD.revoked_at IS NULL THEN
        PERFORM pg_notify('authd_session_ended', NEW.id::text);
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER sessions_notify_ended
    AFTER UPDATE OF revoked_at ON sessions
    FOR EACH ROW EXECUTE FUNCTION authd_notify_session_ended();

CREATE FUNCTION authd_notify_user_changed() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('authd_user_changed', OLD.id::text);
    RETURN NULL;
END $$;

CREATE TRIGGER users_notify_changed
    AFTER UPDATE OR DELETE ON users
    FOR EACH ROW EXECUTE FUNCTION authd_notify_user_changed();
