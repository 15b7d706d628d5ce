//! Why a run stopped, and who is to blame: the class decides what happens next. The daemon
//! restarts a pipeline only after an [`Blame::External`] failure (Kafka unreachable, a topic
//! not there yet), with backoff; a pipeline the engine cannot run, a bad record under
//! `on_error: fail` or a bug leave it failed, with the error, until the user deploys a fix or
//! starts it again (restarting would only fail the same way, forever).

use serde::Serialize;

/// Any error kept as the cause of another.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Who is to blame for a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Blame {
    /// The pipeline: something it asks for cannot run (a fix of the pipeline is needed).
    User,
    /// The data: a bad record under `on_error: fail`, or SQL failing on a value.
    Data,
    /// The outside world: Kafka unreachable, a topic missing, a disk full. Retried.
    External,
    /// A bug of the engine.
    Internal,
}

/// Why a pipeline stopped.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// Kafka failed.
    #[error(transparent)]
    Kafka(#[from] connectors::ConnectorError),
    /// The schema registry failed or refused a schema.
    #[error(transparent)]
    Registry(#[from] connectors::registry::RegistryError),
    /// A record failed and the source's policy is `on_error: fail`.
    #[error(
        "bad record in {topic} partition {partition} offset {offset}: {error} (set `on_error: skip` or `dead_letter` on the source to keep going)"
    )]
    BadRecord {
        /// Topic.
        topic: String,
        /// Partition.
        partition: i32,
        /// Offset.
        offset: i64,
        /// What was wrong.
        error: String,
    },
    /// The pipeline uses something this runtime cannot run.
    #[error("not supported by this version of the runtime: {0}")]
    Unsupported(String),
    /// A checkpoint could not be written or read.
    #[error("checkpoint: {0}")]
    Checkpoint(String),
    /// A transform's SQL failed on the data (a cast, a bounded function's limit).
    #[error("the SQL of a transform failed on its data: {0}")]
    Sql(#[source] datafusion::error::DataFusionError),
    /// A bug, with its cause.
    #[error("internal error (please report): {0}")]
    Internal(#[source] BoxError),
}

/// The one way to make an internal error: from a message or from the error that caused it
/// (which stays its `source`).
pub fn internal(e: impl Into<BoxError>) -> RuntimeError {
    RuntimeError::Internal(e.into())
}

impl RuntimeError {
    /// Who is to blame.
    pub fn blame(&self) -> Blame {
        match self {
            RuntimeError::Kafka(e) => {
                if e.is_authorization() {
                    Blame::User
                } else {
                    Blame::External
                }
            }
            RuntimeError::Registry(e) => match e {
                connectors::registry::RegistryError::Unreachable(_) => Blame::External,
                _ => Blame::User,
            },
            RuntimeError::BadRecord { .. } | RuntimeError::Sql(_) => Blame::Data,
            RuntimeError::Unsupported(_) => Blame::User,
            RuntimeError::Checkpoint(_) => Blame::External,
            RuntimeError::Internal(_) => Blame::Internal,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_errors_keep_their_cause() {
        let cause = datafusion::arrow::error::ArrowError::ComputeError("boom".into());
        let e = internal(cause);
        assert_eq!(e.blame(), Blame::Internal);
        let source = std::error::Error::source(&e).expect("a source");
        assert!(source.to_string().contains("boom"), "{source}");
        assert!(
            internal("no such input")
                .to_string()
                .contains("no such input")
        );
    }

    #[test]
    fn only_external_failures_are_retried() {
        let bad = RuntimeError::BadRecord {
            topic: "t".into(),
            partition: 0,
            offset: 7,
            error: "x".into(),
        };
        assert_eq!(bad.blame(), Blame::Data);
        assert_eq!(RuntimeError::Unsupported("x".into()).blame(), Blame::User);
        let missing = RuntimeError::Kafka(connectors::ConnectorError::Config(
            "topic `t` does not exist".into(),
        ));
        assert_eq!(missing.blame(), Blame::External);
    }
}
