//! The runtime: runs a planned pipeline continuously, on Kafka or on the in-memory broker.
//!
//! | module | owns |
//! |---|---|
//! | [`runner`] | a pipeline's tasks (one per partition when the plan allows), on the worker pool |
//! | [`task`] | a task's loop: read micro-batches, push rows along the graph's edges, stop |
//! | [`source`] | a source task: decode, apply the error policy, split by partition |
//! | [`barrier`] | flush outputs and dead letters, write the checkpoint, commit offsets |
//! | [`checkpoint`] | the checkpoint file: offsets and operator state, written atomically |
//! | `state` | state in Kafka: changelogs committed with the offsets in one transaction |
//! | [`operator`] | the [`Operator`] trait every node implements, and its [`Context`] |
//! | [`operators`] | one file per operator, and the registry that builds the graph |
//! | [`config`] | `RunConfig`, the live `Stats`, the `Summary` of a run |
//! | [`error`] | `RuntimeError` and who is to blame |
//! | [`metrics`] | measurements published to the daemon |

mod barrier;
pub mod checkpoint;
pub mod config;
pub mod error;
pub mod metrics;
pub mod operator;
pub mod operators;
pub mod runner;
mod slot;
mod source;
mod state;
pub mod task;

pub use config::{Notify, RunConfig, Stats, Summary};
pub use error::{Blame, RuntimeError};
pub use metrics::ModelSummary;
pub use operator::{Context, Operator};
pub use runner::{Runner, commit_interval, single_task_reason, state_in_kafka};
pub use state::changelog_topics;
pub use task::stop_signal;
