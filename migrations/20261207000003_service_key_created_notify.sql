-- Every replica remembers presented keys that do not exist, so a client
-- repeating one costs no query. A key created anywhere must therefore reach
-- every replica at once, as a deleted one does.
CREATE TRIGGER service_account_keys_notify_created
    AFTER INSERT ON service_account_keys
    FOR EACH STATEMENT EXECUTE FUNCTION authd_notify_service_keys_changed();
