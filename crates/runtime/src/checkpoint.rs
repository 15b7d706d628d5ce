//! Checkpoints: the state of every operator and the source offsets it corresponds to, taken
//! together at the end of a micro-batch turn (the barrier: no record is in flight, every
//! output of the turn has been acknowledged by Kafka).
//!
//! A checkpoint is one file, `checkpoint.cbor` in the pipeline's checkpoint directory (one
//! per task, `task-<i>.cbor`, for a pipeline run as a task per partition), replaced
//! atomically (written beside it, synced, renamed). It holds, per source, the next
//! offset to read of every partition, and per stateful operator (by node name) a fingerprint
//! of the operator's definition and its state as bytes: Arrow IPC streams for row state
//! (open windows, join buffers, changelog tables), CBOR for model state (f64 bit-exact).
//!
//! Restoring rules (also for a new version of a pipeline): a source resumes at the
//! checkpoint's offsets when it reads the same topic under the same name; an operator takes
//! the checkpointed state when its name and definition are unchanged, and starts empty
//! otherwise (with a warning naming it).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::ipc::reader::StreamReader;
use datafusion::arrow::ipc::writer::StreamWriter;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::RuntimeError;

/// Version of the checkpoint layout; a file of another version is refused, not misread.
pub const FORMAT: u32 = 1;

/// A pipeline's state at a barrier.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Checkpoint {
    /// [`FORMAT`].
    pub format: u32,
    /// Pipeline name.
    pub pipeline: String,
    /// Pipeline version that wrote it.
    pub version: String,
    /// Wall-clock time it was taken, ms since the epoch.
    pub taken_at_ms: i64,
    /// Per source name: where to resume.
    pub sources: BTreeMap<String, SourcePosition>,
    /// Per node name: operator state.
    pub operators: BTreeMap<String, OperatorState>,
}

/// Where a source resumes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SourcePosition {
    /// The topic read.
    pub topic: String,
    /// Next offset to read, per partition.
    pub next_offsets: BTreeMap<i32, i64>,
}

/// One operator's state.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OperatorState {
    /// Fingerprint of the definition the state belongs to.
    pub fingerprint: u64,
    /// The state, encoded by the operator.
    #[serde(with = "serde_bytes")]
    pub state: Vec<u8>,
}

fn corrupt(e: impl std::fmt::Display) -> RuntimeError {
    RuntimeError::Checkpoint(e.to_string())
}

/// Encodes `value` as CBOR.
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, RuntimeError> {
    let mut bytes = Vec::new();
    ciborium::into_writer(value, &mut bytes).map_err(corrupt)?;
    Ok(bytes)
}

/// Decodes CBOR written by [`encode`].
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, RuntimeError> {
    ciborium::from_reader(bytes).map_err(corrupt)
}

/// Rows as an Arrow IPC stream.
pub fn write_rows(schema: &SchemaRef, batches: &[RecordBatch]) -> Result<Vec<u8>, RuntimeError> {
    let mut writer = StreamWriter::try_new(Vec::new(), schema).map_err(corrupt)?;
    for b in batches {
        writer.write(b).map_err(corrupt)?;
    }
    writer.into_inner().map_err(corrupt)
}

/// Rows written by [`write_rows`].
pub fn read_rows(bytes: &[u8]) -> Result<Vec<RecordBatch>, RuntimeError> {
    StreamReader::try_new(bytes, None)
        .map_err(corrupt)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(corrupt)
}

/// The checkpoint file of a pipeline, or of one of its partition tasks.
#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
    /// `checkpoint` for a pipeline run as one task, `task-<i>` for task `i` of several.
    name: String,
}

impl Store {
    /// Checkpoints of a pipeline run as one task, kept in `dir` (created when missing).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            name: "checkpoint".into(),
        }
    }

    /// Checkpoints of task `index` of a pipeline run as several, kept in `dir`.
    pub fn task(dir: impl Into<PathBuf>, index: usize) -> Self {
        Self {
            dir: dir.into(),
            name: format!("task-{index}"),
        }
    }

    /// How many tasks the checkpoints in `dir` were written by: 1 for `checkpoint.cbor`,
    /// N for `task-0.cbor` .. `task-<N-1>.cbor`, 0 when there are none.
    pub fn tasks_in(dir: &Path) -> usize {
        if dir.join("checkpoint.cbor").exists() {
            return 1;
        }
        let Ok(entries) = std::fs::read_dir(dir) else {
            return 0;
        };
        entries
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                name.strip_prefix("task-")?
                    .strip_suffix(".cbor")?
                    .parse::<usize>()
                    .ok()
            })
            .map(|i| i + 1)
            .max()
            .unwrap_or(0)
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn file(&self) -> PathBuf {
        self.dir.join(format!("{}.cbor", self.name))
    }

    /// The latest checkpoint, if one was written.
    pub fn load(&self) -> Result<Option<Checkpoint>, RuntimeError> {
        let bytes = match std::fs::read(self.file()) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(RuntimeError::Checkpoint(format!(
                    "reading {}: {e}",
                    self.file().display()
                )));
            }
        };
        let c: Checkpoint = decode(&bytes).map_err(|e| {
            RuntimeError::Checkpoint(format!("{} is unreadable: {e}", self.file().display()))
        })?;
        if c.format != FORMAT {
            return Err(RuntimeError::Checkpoint(format!(
                "{} has layout version {}, this engine reads {FORMAT}",
                self.file().display(),
                c.format
            )));
        }
        Ok(Some(c))
    }

    /// Replaces the checkpoint atomically: a crash leaves the old one or the new one whole.
    pub fn save(&self, checkpoint: &Checkpoint) -> Result<(), RuntimeError> {
        let io = |what: &str, e: std::io::Error| {
            RuntimeError::Checkpoint(format!("{what} {}: {e}", self.dir.display()))
        };
        std::fs::create_dir_all(&self.dir).map_err(|e| io("creating", e))?;
        let bytes = encode(checkpoint)?;
        let tmp = self.dir.join(format!("{}.cbor.tmp", self.name));
        let mut f = std::fs::File::create(&tmp).map_err(|e| io("writing in", e))?;
        f.write_all(&bytes).map_err(|e| io("writing in", e))?;
        f.sync_all().map_err(|e| io("syncing in", e))?;
        std::fs::rename(&tmp, self.file()).map_err(|e| io("renaming in", e))?;
        // The rename itself is durable once the directory is synced.
        std::fs::File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| io("syncing", e))
    }
}
