//! The runtime: runs a planned pipeline continuously, on Kafka or on the in-memory broker.
//!
//! | module | owns |
//! |---|---|
//! | [`runner`] | the loop: read micro-batches, decode, apply the error policy, push rows through the graph, flush outputs at the barrier, checkpoint |
//! | [`config`] | `RunConfig`, the live `Stats`, the `Summary` of a run |
//! | [`error`] | `RuntimeError` and who is to blame |
//! | [`checkpoint`] | the checkpoint file: offsets and operator state, written atomically |
//! | [`transform`], [`window`], [`slot`], [`table`] | SQL transforms: stateless plans, windows, interval joins, changelog tables |
//! | [`model`], [`cluster`] | the incremental model operators |
//! | [`metrics`] | measurements published to the daemon |

pub mod checkpoint;
pub mod cluster;
pub mod config;
pub mod error;
pub mod metrics;
pub mod model;
pub mod runner;
pub mod slot;
pub mod table;
pub mod transform;
pub mod window;

pub use config::{RunConfig, Stats, Summary};
pub use error::{Blame, RuntimeError};
pub use metrics::ModelSummary;
pub use runner::{Runner, dead_letter_topic, stop_signal};
