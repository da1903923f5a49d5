-- Shared Signals (SSF 1.0, CAEP, RISC). The revocation log becomes the
-- deployment's event log: besides ended sessions and accounts it records
-- password changes, role changes, enabled accounts and changed addresses,
-- each in the transaction of its change. WatchRevocations skips the kinds
-- its contract does not define; SSF streams render every kind as SETs.
--
-- NOT VALID, validated by the next migration under a lock that lets
-- writes through.
ALTER TABLE revocation_events DROP CONSTRAINT revocation_events_kind_check;
ALTER TABLE revocation_events ADD CONSTRAINT revocation_events_kind_check CHECK (kind IN (
    'SESSION_ENDED', 'USER_SESSIONS_ENDED', 'USER_DISABLED', 'USER_DELETED',
    'FACTORS_CHANGED', 'PASSWORD_CHANGED', 'ROLES_CHANGED', 'USER_ENABLED',
    'IDENTIFIER_CHANGED')) NOT VALID;

-- What changed, in authd's words (which factor, added or removed; the new
-- roles), never personal data: an event outlives a deleted account.
-- `txn` is the writing transaction's id, the same for every event of one
-- change (a SET's `txn`). Both are NULL on rows written before this
-- migration; adding nullable columns rewrites nothing.
ALTER TABLE revocation_events ADD COLUMN detail jsonb, ADD COLUMN txn bigint;

CREATE FUNCTION authd_record_event(
    p_kind text, p_user_id uuid, p_session_ids uuid[], p_detail jsonb
) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    event_id bigint;
BEGIN
    UPDATE revocation_log SET last_event_id = last_event_id + 1
     RETURNING last_event_id INTO event_id;
    INSERT INTO revocation_events (id, kind, user_id, session_ids, occurred_at, detail, txn)
    VALUES (event_id, p_kind, p_user_id, COALESCE(p_session_ids, '{}'), clock_timestamp(),
            p_detail, pg_current_xact_id()::text::bigint);
    PERFORM pg_notify('authd_revocation', event_id::text);
    RETURN event_id;
END $$;

-- The existing callers (and the deletion trigger) go through the new
-- function, so their rows carry `txn` too.
CREATE OR REPLACE FUNCTION authd_record_revocation(
    p_kind text, p_user_id uuid, p_session_ids uuid[], p_occurred_at timestamptz
) RETURNS bigint
LANGUAGE sql AS $$
    SELECT authd_record_event(p_kind, p_user_id, p_session_ids, NULL)
$$;

-- A receiver's stream (SSF 1.0 §8.1). Owned by a service account: only its
-- credentials read or change it, and it goes with the account.
CREATE TABLE ssf_streams (
    id               uuid        PRIMARY KEY,
    owner_id         uuid        NOT NULL REFERENCES service_accounts (id) ON DELETE CASCADE,
    audience         text        NOT NULL CHECK (length(audience) BETWEEN 1 AND 512),
    description      text        CHECK (length(description) <= 1024),
    events_requested text[]      NOT NULL,
    events_delivered text[]      NOT NULL,
    delivery_method  text        NOT NULL CHECK (delivery_method IN ('push', 'poll')),
    -- Push only: the receiver's URL, and its Authorization value sealed
    -- with the data keys (it is a credential of the receiver's).
    endpoint_url     text        CHECK (length(endpoint_url) <= 2048),
    authorization_sealed bytea,
    authorization_key_id text,
    status           text        NOT NULL DEFAULT 'enabled'
        CHECK (status IN ('enabled', 'paused', 'disabled')),
    status_reason    text        CHECK (length(status_reason) <= 1024),
    -- Every SET of the log up to event `cursor_event` was delivered (push:
    -- accepted; poll: acknowledged), and the first `cursor_sets` SETs of
    -- the event after it.
    cursor_event     bigint      NOT NULL CHECK (cursor_event >= 0),
    cursor_sets      integer     NOT NULL DEFAULT 0 CHECK (cursor_sets >= 0),
    -- Poll: jtis acknowledged beyond the cursor (acks may come out of order).
    acked            text[]      NOT NULL DEFAULT '{}',
    -- Push: the replica delivering the stream, until when; a failing
    -- receiver's next attempt and its failures in a row.
    lease_owner      uuid,
    lease_until      timestamptz,
    retry_at         timestamptz,
    failures         integer     NOT NULL DEFAULT 0,
    last_error       text,
    created_at       timestamptz NOT NULL,
    updated_at       timestamptz NOT NULL,
    CHECK ((delivery_method = 'push') = (endpoint_url IS NOT NULL))
);
CREATE INDEX ssf_streams_owner_idx ON ssf_streams (owner_id);

-- SETs about a stream itself (verification, stream-updated), delivered
-- before the log's next event.
CREATE TABLE ssf_stream_messages (
    id         bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    stream_id  uuid        NOT NULL REFERENCES ssf_streams (id) ON DELETE CASCADE,
    event      jsonb       NOT NULL,
    created_at timestamptz NOT NULL
);
CREATE INDEX ssf_stream_messages_stream_idx ON ssf_stream_messages (stream_id, id);
