-- Event ids without one lock per event until commit.
--
-- Until now each recording transaction bumped the log's counter row and
-- held its lock through its commit (and, with durable commits, through the
-- WAL flush): revocations of unrelated accounts committed one at a time.
-- Now a transaction records its events, unnumbered, in
-- `revocation_pending` (no shared row: writers do not wait for each
-- other). Right after they commit, a replica's numbering task
-- (`jobs::event_numbering`, woken by `authd_revocation_pending`) moves
-- every committed pending event into `revocation_events` with the next ids,
-- in one short transaction under the counter row: the lock is taken once
-- per batch, not once per revocation, and never by a use case.
--
-- Readers see exactly what they saw before: ids without gaps that become
-- visible in order (each batch commits before the next can take the
-- counter), announced on `authd_revocation` with the new head. Event times
-- are taken when the event is numbered, from the database's clock, so they
-- still rise with ids (`start_at`, the retention horizon): they say when
-- the change became visible, a few milliseconds after its commit.
CREATE TABLE revocation_pending (
    seq         bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind        text        NOT NULL CHECK (kind IN (
        'SESSION_ENDED', 'USER_SESSIONS_ENDED', 'USER_DISABLED', 'USER_DELETED',
        'FACTORS_CHANGED', 'PASSWORD_CHANGED', 'ROLES_CHANGED', 'USER_ENABLED',
        'IDENTIFIER_CHANGED')),
    user_id     uuid        NOT NULL,
    session_ids uuid[]      NOT NULL,
    detail      jsonb,
    txn         bigint      NOT NULL
);

-- Returns the event's place in the pending queue, not its id (it has none
-- until it is numbered); callers only test that something was recorded.
CREATE OR REPLACE FUNCTION authd_record_event(
    p_kind text, p_user_id uuid, p_session_ids uuid[], p_detail jsonb
) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    pending bigint;
BEGIN
    INSERT INTO revocation_pending (kind, user_id, session_ids, detail, txn)
    VALUES (p_kind, p_user_id, COALESCE(p_session_ids, '{}'), p_detail,
            pg_current_xact_id()::text::bigint)
    RETURNING seq INTO pending;
    -- Delivered at commit to every replica, whose numbering task then runs;
    -- a lost notification only delays the event until a replica's sweep.
    PERFORM pg_notify('authd_revocation_pending', '');
    RETURN pending;
END $$;

-- Numbers up to `p_limit` committed pending events, oldest first, and
-- returns the log's new head; 0 when nothing is pending, -1 when the
-- counter is held (another numberer, or the clean-up moving
-- `pruned_through`): the caller tries again shortly. Numberers never queue
-- behind each other (SKIP LOCKED), and one that finds nothing pending takes
-- no lock and writes nothing.
CREATE FUNCTION authd_number_events(p_limit integer) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    head bigint;
    numbered bigint;
BEGIN
    PERFORM 1 FROM revocation_pending LIMIT 1;
    IF NOT FOUND THEN
        RETURN 0;
    END IF;
    SELECT last_event_id INTO head FROM revocation_log FOR UPDATE SKIP LOCKED;
    IF NOT FOUND THEN
        RETURN -1;
    END IF;
    -- A new statement, so a new snapshot: it sees every event committed
    -- before the counter was locked, and nothing another numberer moved.
    WITH moved AS (
        DELETE FROM revocation_pending
         WHERE seq IN (SELECT seq FROM revocation_pending ORDER BY seq LIMIT p_limit)
        RETURNING *
    ), inserted AS (
        INSERT INTO revocation_events (id, kind, user_id, session_ids, occurred_at, detail, txn)
        SELECT head + row_number() OVER (ORDER BY seq), kind, user_id, session_ids,
               clock_timestamp(), detail, txn
          FROM moved
        RETURNING 1
    )
    SELECT count(*) INTO numbered FROM inserted;
    IF numbered = 0 THEN
        RETURN 0;
    END IF;
    UPDATE revocation_log SET last_event_id = head + numbered;
    PERFORM pg_notify('authd_revocation', (head + numbered)::text);
    RETURN head + numbered;
END $$;
