//! `pipelined`, the engine daemon: many pipelines at once, each isolated on its own thread,
//! deployed, versioned, stopped and rolled back through an HTTP JSON API, with a persistent
//! registry so that a restarted daemon resumes every pipeline that was running from its
//! checkpoint.

pub mod api;
pub mod check;
pub mod env;
pub mod metrics;
pub mod registry;
pub mod server;
pub mod supervisor;

/// Now, RFC 3339 with milliseconds, UTC.
pub fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}
