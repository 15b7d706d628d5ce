//! The pipeline language: the YAML model, loading with line/column positions under limits,
//! structural validation that reports every error at once, and the JSON Schema.
//!
//! This crate knows nothing of event schemas, SQL or Kafka; the planner checks what needs
//! those and reports through the same [`Document`].

pub mod diag;
pub mod duration;
pub mod interp;
pub mod kafka;
mod load;
pub mod model;
pub mod validate;
pub mod yaml;

pub use diag::{Diagnostic, Pos};
pub use interp::Env;
pub use load::{Document, load, load_with_limits, redact};
pub use model::Pipeline;

/// The JSON Schema of the pipeline language, pretty-printed with a trailing newline (the form
/// committed as `schemas/pipeline.schema.json`).
pub fn json_schema() -> String {
    let schema = schemars::generate::SchemaSettings::draft07()
        .into_generator()
        .into_root_schema_for::<Pipeline>();
    let mut text = serde_json::to_string_pretty(&schema).unwrap_or_default();
    text.push('\n');
    text
}

/// Looks a variable up in the process environment (the usual `env` argument of [`load`]).
pub fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}
