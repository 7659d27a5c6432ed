//! What happened, told to the outside: the audit trail ([`audit`]), one event per mutation,
//! refusal and (optionally) pull, whoever made it (a client, a replicating registry, the
//! lifecycle worker); and webhooks: the queue the registry's pushes and deletes land in
//! ([`webhook_queue`]) and its delivery ([`webhooks`]). Knows nothing of HTTP: callers say
//! what happened.

pub mod audit;
pub mod webhook_queue;
pub mod webhooks;

pub use audit::{Audit, AuditEvent, Outcome};
