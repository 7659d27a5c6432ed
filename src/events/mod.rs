//! What happened, told to the outside: the audit trail ([`audit`]), one event per mutation,
//! refusal and (optionally) pull, whoever made it (a client, a replicating registry, the
//! lifecycle worker). Knows nothing of HTTP or storage layout: callers say what happened.

pub mod audit;

pub use audit::{Audit, AuditEvent, Outcome};
pub mod webhooks;
