-- The revocation log behind AdminService.WatchRevocations: every ended
-- session, disabled or deleted account, written in the transaction that
-- makes the change, so a committed revocation always has its event and a
-- rolled-back one never does.
--
-- Event ids come from a one-row counter rather than a sequence. A sequence
-- hands out numbers at insert time, and transactions commit in another
-- order: a reader that saw 6 before 5 committed would move its cursor past
-- 5 and never deliver it. Bumping the counter locks its row until commit,
-- so transactions that record events commit one after another, in id
-- order, and the ids have no gaps. The price is that revocations serialize
-- on that row (for a few microseconds plus a commit each); nothing on the
-- token hot path records events. The counter is the last lock any
-- transaction takes, so it cannot be part of a deadlock.
CREATE TABLE revocation_log (
    singleton      boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    last_event_id  bigint  NOT NULL CHECK (last_event_id >= 0),
    -- Events up to this id were deleted (retention): older cursors cannot
    -- be resumed.
    pruned_through bigint  NOT NULL CHECK (pruned_through BETWEEN 0 AND last_event_id)
);
INSERT INTO revocation_log (last_event_id, pruned_through) VALUES (0, 0);

CREATE TABLE revocation_events (
    id          bigint      PRIMARY KEY,
    kind        text        NOT NULL
        CHECK (kind IN ('SESSION_ENDED', 'USER_SESSIONS_ENDED', 'USER_DISABLED', 'USER_DELETED')),
    -- Only ids: an event outlives a deleted account, its personal data must not.
    user_id     uuid        NOT NULL,
    session_ids uuid[]      NOT NULL DEFAULT '{}',
    occurred_at timestamptz NOT NULL
);
CREATE INDEX revocation_events_occurred_at_idx ON revocation_events (occurred_at);

CREATE FUNCTION authd_record_revocation(
    p_kind text, p_user_id uuid, p_session_ids uuid[], p_occurred_at timestamptz
) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    event_id bigint;
BEGIN
    UPDATE revocation_log SET last_event_id = last_event_id + 1
     RETURNING last_event_id INTO event_id;
    INSERT INTO revocation_events (id, kind, user_id, session_ids, occurred_at)
    VALUES (event_id, p_kind, p_user_id, COALESCE(p_session_ids, '{}'), p_occurred_at);
    -- Wakes every replica's subscribers at commit; a lost notification
    -- only delays delivery, since readers poll the log as well.
    PERFORM pg_notify('authd_revocation', event_id::text);
    RETURN event_id;
END $$;

-- A deleted account's sessions go by cascade, with no UPDATE to report
-- them, so the deletion itself is the event. The cascade is an AFTER
-- trigger named RI_ConstraintTrigger_…, which fires before this one (triggers
-- fire in name order), keeping the counter the last lock taken.
CREATE FUNCTION authd_record_user_deleted() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM authd_record_revocation('USER_DELETED', OLD.id, NULL, now());
    RETURN NULL;
END $$;

CREATE TRIGGER users_record_deleted
    AFTER DELETE ON users
    FOR EACH ROW EXECUTE FUNCTION authd_record_user_deleted();
