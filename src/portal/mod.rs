//! Workflow rules behind the portal: pure functions over resources, called by the operations
//! and by the write transaction that every write path passes (so REST and bundles obey them
//! too). Nothing here does I/O.

pub mod availability;
pub mod billing;
pub mod messaging;
pub mod refills;
pub mod scheduling;
