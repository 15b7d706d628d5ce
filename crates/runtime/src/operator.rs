//! The one operator model: every node of a pipeline (source, SQL transform, window, join,
//! model, sink) is an [`Operator`]. The runner holds the operators and the edges between
//! their ports and knows nothing else about them; [`crate::operators::build`] is the one
//! place that maps a plan node to its operator.
//!
//! An operator receives batches on numbered input ports and emits batches on numbered output
//! ports through a [`Context`]. A batch belongs to one Kafka partition of the source its rows
//! come from, or to none (`-1`: after a window or a model, rows of every partition mix).
//! Between two calls the runner may checkpoint: state is what [`Operator::save`] returns.

use std::collections::BTreeSet;

use async_trait::async_trait;
use datafusion::arrow::array::RecordBatch;

use crate::error::{RuntimeError, internal};
use crate::metrics::Detail;

/// A dead letter: the record's bytes and the headers saying why.
pub type DeadLetter = (Vec<u8>, connectors::RecordHeaders);

/// What an operator's call produced; the runner routes it.
#[derive(Debug, Default)]
pub struct Context {
    /// Batches emitted: output port, partition (-1: none), rows.
    pub(crate) emitted: Vec<(u8, i32, RecordBatch)>,
    /// Records for the dead-letter topic of the source the rows came from.
    pub(crate) dead_letters: Vec<DeadLetter>,
    /// Rows dropped as late for every window they belong to.
    pub(crate) late: u64,
}

impl Context {
    /// Emits `batch` on output `port`, as rows of `partition` (-1: of no one partition).
    pub fn emit(&mut self, port: u8, partition: i32, batch: RecordBatch) {
        if batch.num_rows() > 0 {
            self.emitted.push((port, partition, batch));
        }
    }

    /// Sends a record to the dead-letter topic of the source the input rows came from.
    pub fn dead_letter(&mut self, value: Vec<u8>, headers: connectors::RecordHeaders) {
        self.dead_letters.push((value, headers));
    }

    /// Counts `n` rows that came too late for every window.
    pub fn late(&mut self, n: u64) {
        self.late += n;
    }

    /// Takes the batches emitted on output `port` so far (for tests that drive one
    /// operator).
    pub fn take(&mut self, port: u8) -> Vec<RecordBatch> {
        let (taken, kept) = std::mem::take(&mut self.emitted)
            .into_iter()
            .partition(|(p, _, _)| *p == port);
        self.emitted = kept;
        taken.into_iter().map(|(_, _, b)| b).collect()
    }

    /// Rows counted late so far.
    pub fn late_rows(&self) -> u64 {
        self.late
    }
}

/// What a sink wrote at a barrier.
#[derive(Debug, Default, Clone, Copy)]
pub struct Flushed {
    /// Records handed to the producer.
    pub records: u64,
    /// Their value bytes.
    pub bytes: u64,
}

/// A node of a running pipeline.
#[async_trait]
pub trait Operator: Send {
    /// Called once before the first batch, after any restore: an operator whose readers
    /// need its state (a changelog table) emits it here.
    async fn open(&mut self, _ctx: &mut Context) -> Result<(), RuntimeError> {
        Ok(())
    }

    /// Rows of `partition` (-1: of no one partition) arriving on input `port`, in offset
    /// order.
    async fn process(
        &mut self,
        port: usize,
        partition: i32,
        batch: RecordBatch,
        ctx: &mut Context,
    ) -> Result<(), RuntimeError>;

    /// Once per turn: the partitions of the operator's source that are idle. Returns the
    /// operator's watermark, for operators that keep one.
    fn advance(&mut self, _idle: &BTreeSet<i32>) -> Option<i64> {
        None
    }

    /// A writer upstream of a repartition reports its progress on `partition` (a channel
    /// of the exchange source this operator reads on input `port`: see
    /// [`crate::operators::exchange`]).
    async fn progress(
        &mut self,
        _port: usize,
        _partition: i32,
        _mark: connectors::Mark,
        _ctx: &mut Context,
    ) -> Result<(), RuntimeError> {
        Ok(())
    }

    /// The input has ended (a bounded run): emit everything still held, such as open
    /// windows and last model snapshots.
    async fn finish(&mut self, _ctx: &mut Context) -> Result<(), RuntimeError> {
        Ok(())
    }

    /// Hands what is buffered for outside (a sink's records) to the producer, without
    /// waiting for Kafka to acknowledge it: see [`Operator::delivery`].
    async fn flush(&mut self) -> Result<Flushed, RuntimeError> {
        Ok(Flushed::default())
    }

    /// For an operator that writes to Kafka: how many of its flushes have been handed over
    /// and how many, from the first, Kafka has acknowledged in full; an error once Kafka
    /// refused a record. The task commits offsets only past turns whose flushes are all
    /// acknowledged.
    fn delivery(&self) -> Result<Option<(u64, u64)>, RuntimeError> {
        Ok(None)
    }

    /// Takes the records an exactly-once sink holds for the task's next transaction.
    fn transactional(&mut self) -> Vec<connectors::changelog::OutputRecord> {
        Vec::new()
    }

    /// Bytes held for the next transaction (an exactly-once sink's records).
    fn pending_bytes(&self) -> u64 {
        0
    }

    /// Whether rows read are held without output yet (open windows): without checkpoints,
    /// offsets are committed only once such an operator has emitted everything.
    fn holds_rows(&self) -> bool {
        false
    }

    /// Its state for a checkpoint; `None` for an operator without state.
    fn save(&mut self) -> Result<Option<Vec<u8>>, RuntimeError> {
        Ok(None)
    }

    /// Replaces its state with one [`Operator::save`] wrote for the same definition.
    fn load(&mut self, _state: &[u8]) -> Result<(), RuntimeError> {
        Err(internal(
            "checkpointed state for an operator that keeps none",
        ))
    }

    /// Its state changed since the last call, as entries by key for a changelog:
    /// `(key, Some(state))` for a key whose state is new or changed, `(key, None)` for one
    /// whose state ended. By default the whole state ([`Operator::save`]) under the empty
    /// key, at every call.
    fn changes(&mut self) -> Result<Vec<StateEntry>, RuntimeError> {
        Ok(self
            .save()?
            .map(|state| vec![(Vec::new(), Some(state))])
            .unwrap_or_default())
    }

    /// Replaces its state with the latest entry of every key that [`Operator::changes`]
    /// wrote for the same definition.
    fn restore(&mut self, entries: Vec<(Vec<u8>, Vec<u8>)>) -> Result<(), RuntimeError> {
        match entries.into_iter().find(|(k, _)| k.is_empty()) {
            Some((_, state)) => self.load(&state),
            None => Ok(()),
        }
    }

    /// Told that its task (`task`, the task of partition `task`) is one of several of the
    /// pipeline: returns whether it merges with theirs (a global model whose state merges
    /// exactly), and then does.
    fn merges(&mut self, _task: i32) -> bool {
        false
    }

    /// Takes an entry another task (`task`) committed to this operator's changelog.
    fn peer(&mut self, _task: i32, _key: &[u8], _value: &[u8]) -> Result<(), RuntimeError> {
        Ok(())
    }

    /// At the end of a bounded input, once every task has committed its last state: emits
    /// what waits for all of them (a merging model's last snapshot).
    async fn final_snapshot(&mut self, _ctx: &mut Context) -> Result<(), RuntimeError> {
        Ok(())
    }

    /// Writes its measurements into `detail` under its node's `name` (a model's summary, a
    /// sink's counts, a window's late rows); called at most once a second.
    fn report(&self, _name: &str, _detail: &mut Detail) {}
}

/// One entry of an operator's state in a changelog: its key, and its state or `None` when
/// it ended.
pub type StateEntry = (Vec<u8>, Option<Vec<u8>>);
