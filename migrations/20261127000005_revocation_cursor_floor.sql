-- A subscriber's cursor must never be 0, which WatchRevocations reads as
-- "from now": on an empty log a subscriber that remembered 0 and
-- reconnected would skip whatever happened meanwhile. An empty log starts
-- at 1, as if one event had been pruned, so the first real event is 2 and
-- every cursor handed out (heartbeats included) resumes exactly.
UPDATE revocation_log SET last_event_id = 1, pruned_through = 1 WHERE last_event_id = 0;
