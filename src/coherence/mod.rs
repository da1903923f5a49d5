//! What keeps each replica's memory honest: the listener that hears
//! PostgreSQL's change notifications, the proof that it keeps up
//! (`freshness`), the session cache it evicts, and the feed that wakes
//! revocation subscribers. A cache here answers only while that proof holds.

pub mod change_listener;
pub mod freshness;
pub mod revocation_feed;
pub mod session_cache;
