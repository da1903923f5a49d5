-- Revocation events take their time from the database's clock, read once
-- the log's counter row is locked, instead of the time the caller passes
-- (each replica's own clock, or the transaction's start). Two things
-- follow, and WatchRevocations relies on both:
-- * one clock: event times, the retention horizon the clean-up computes
--   (`now()` there too) and a subscriber's `since` are compared on the
--   same clock, whichever replica wrote or reads them;
-- * times rise with ids: the previous holder of the counter committed
--   before this transaction got it, so its event's time is earlier. "The
--   first event at or after a time" is then one index probe, and it is
--   preceded by nothing younger.
-- `p_occurred_at` stays in the signature so that callers keep working; it
-- is no longer read.
CREATE OR REPLACE FUNCTION authd_record_revocation(
    p_kind text, p_user_id uuid, p_session_ids uuid[], p_occurred_at timestamptz
) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    event_id bigint;
BEGIN
    UPDATE revocation_log SET last_event_id = last_event_id + 1
     RETURNING last_event_id INTO event_id;
    INSERT INTO revocation_events (id, kind, user_id, session_ids, occurred_at)
    VALUES (event_id, p_kind, p_user_id, COALESCE(p_session_ids, '{}'), clock_timestamp());
    -- Wakes every replica's subscribers at commit; a lost notification
    -- only delays delivery, since readers poll the log as well.
    PERFORM pg_notify('authd_revocation', event_id::text);
    RETURN event_id;
END $$;
