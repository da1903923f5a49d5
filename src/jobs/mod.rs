//! Background work every replica runs beside the RPCs: the clean-up of
//! expired rows, the delivery of queued mail, the numbering of recorded
//! events and the push delivery of Shared Signals. Each shares its work with
//! the other replicas through PostgreSQL (locks, `SKIP LOCKED`), never
//! through this process's memory.

pub mod cleanup;
pub mod event_numbering;
pub mod mail_worker;
pub mod ssf_push;
pub mod ssf_worker;
