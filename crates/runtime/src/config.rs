//! How a run is configured (`RunConfig`), what it counts while it runs (`Stats`) and what it
//! reports when it ends (`Summary`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use crate::metrics;

/// How to run.
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// Kafka bootstrap servers.
    pub bootstrap: String,
    /// Most messages per micro-batch.
    pub max_batch: usize,
    /// Longest wait for a first message before a turn goes on without input (timers,
    /// idle partitions, the lag probe).
    pub max_wait: Duration,
    /// The latency target: a micro-batch closes at most this long after its first message
    /// arrived, so that at low input rates a record does not wait for a full batch. Larger
    /// values mean larger batches (more throughput per turn) at moderate rates; a backlog
    /// fills batches to `max_batch` either way.
    pub latency_target: Duration,
    /// Stop after this long without input, treating the input as finished (windows flush).
    pub until_idle: Option<Duration>,
    /// Stop after this many input messages (windows do not flush).
    pub max_events: Option<u64>,
    /// Pipeline version written in record headers.
    pub version: String,
    /// Where checkpoints are kept; none: no checkpoints.
    pub checkpoint_dir: Option<std::path::PathBuf>,
    /// Time between checkpoints (and state commits) of a pipeline that sets no
    /// `commit_every`; none: 1 s with an exactly-once sink, else 10 s (see
    /// [`crate::commit_interval`]).
    pub checkpoint_interval: Option<Duration>,
    /// Keep state in Kafka (changelog topics, committed with the offsets in one
    /// transaction every `checkpoint_interval`) rather than in `checkpoint_dir`.
    pub kafka_state: bool,
    /// This instance's stable name among those sharing a pipeline: with state in Kafka it
    /// joins the consumer group as static member `<group>.<instance_id>` (KIP-345), so a
    /// restart within the session timeout takes its partitions back at once. None: a
    /// dynamic member.
    pub instance_id: Option<String>,
    /// Once set, no checkpoint is written any more: the pipeline is being deleted, and a run
    /// that stops late must not bring its checkpoint back.
    pub discard: Arc<AtomicBool>,
    /// The schema registry of `avro_confluent` sources and sinks; none: sources read every
    /// message with their declared schema, sinks write schema id 0.
    pub registry: Option<Arc<connectors::registry::Registry>>,
    /// Told what the consumer group does (partitions assigned and revoked) and when tasks
    /// start and stop, as one line each.
    pub notify: Notify,
}

/// Checks an instance id (`--instance-id`): 1 to 64 letters, digits, `.`, `_` or `-`, as it
/// goes into `group.instance.id`.
pub fn instance_id(text: &str) -> Result<String, String> {
    let ok = (1..=64).contains(&text.len())
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(text.to_string())
    } else {
        Err(format!(
            "`{text}`: use 1 to 64 letters, digits, `.`, `_` or `-` (a name stable across restarts of this instance, such as its host name)"
        ))
    }
}

/// Checks a latency target given on a command line: 0 (every read returns what is there)
/// to 10 s.
pub fn latency_target(target: Duration) -> Result<Duration, String> {
    if target <= Duration::from_secs(10) {
        Ok(target)
    } else {
        Err(format!(
            "{target:?}: a latency target is at most 10s (a micro-batch that waits longer holds its records back for no gain; the default is 10ms)"
        ))
    }
}

/// A receiver of lines.
type Tell = dyn Fn(&str) + Send + Sync;

/// Where a run tells what happens to its tasks (a log).
#[derive(Clone, Default)]
pub struct Notify(Option<Arc<Tell>>);

impl Notify {
    /// Lines go to `f`.
    pub fn to(f: impl Fn(&str) + Send + Sync + 'static) -> Self {
        Self(Some(Arc::new(f)))
    }

    /// Tells `line`.
    pub fn tell(&self, line: &str) {
        if let Some(f) = &self.0 {
            f(line);
        }
    }
}

impl std::fmt::Debug for Notify {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "Notify(on)"
        } else {
            "Notify(off)"
        })
    }
}

impl RunConfig {
    /// Defaults: batches of up to 10,000 messages, closed 10 ms after their first message;
    /// 100 ms without input make an empty turn.
    pub fn new(bootstrap: impl Into<String>) -> Self {
        Self {
            bootstrap: bootstrap.into(),
            max_batch: 10_000,
            max_wait: Duration::from_millis(100),
            latency_target: Duration::from_millis(10),
            until_idle: None,
            max_events: None,
            version: "1".into(),
            checkpoint_dir: None,
            checkpoint_interval: None,
            kafka_state: false,
            instance_id: None,
            discard: Arc::new(AtomicBool::new(false)),
            registry: None,
            notify: Notify::default(),
        }
    }
}

/// Live counters, readable while the pipeline runs (for the status line and metrics).
#[derive(Debug)]
pub struct Stats {
    /// Messages read.
    pub events_in: AtomicU64,
    /// Records written to sinks.
    pub events_out: AtomicU64,
    /// Records that failed to decode.
    pub errors: AtomicU64,
    /// Records written to dead-letter topics.
    pub dead_lettered: AtomicU64,
    /// Late events (dropped or dead-lettered).
    pub late: AtomicU64,
    /// Smallest watermark of the window operators, ms (`i64::MIN` when none).
    pub watermark_ms: AtomicI64,
    /// Consumer lag summed over partitions (-1 until first measured).
    pub lag: AtomicI64,
    /// Checkpoints written (state commits, with Kafka state).
    pub checkpoints: AtomicU64,
    /// Bytes of state written to changelogs.
    pub state_bytes: AtomicU64,
    /// The tasks this instance runs now (by task number, which is the input partition of
    /// a pipeline run per partition), each with whether it is still restoring its state.
    pub owned: std::sync::Mutex<BTreeMap<usize, bool>>,
    /// Assignments and revocations of partitions by the consumer group.
    pub rebalances: AtomicU64,
    /// Bytes of state read back from changelogs.
    pub restored_bytes: AtomicU64,
    /// Time spent restoring state from changelogs, microseconds.
    pub restore_micros: AtomicU64,
    /// Transient Kafka errors reported by the consumers (retried by librdkafka).
    pub kafka_errors: AtomicU64,
    /// The last of them (written rarely: only when an error happens).
    pub last_kafka_error: std::sync::Mutex<Option<String>>,
    /// Per source, sink, transform and model; latency histograms (published at most once
    /// a second): the merge of every task's.
    pub detail: std::sync::Mutex<metrics::Detail>,
    /// Each task's own view, by task number (published at most once a second).
    pub tasks: std::sync::Mutex<BTreeMap<usize, TaskView>>,
}

/// What one task of a pipeline reports.
#[derive(Debug, Clone, Default)]
pub struct TaskView {
    /// The partitions it reads, by source name.
    pub partitions: BTreeMap<String, Vec<i32>>,
    /// The smallest watermark of its windows, ms (`i64::MIN`: none).
    pub watermark_ms: i64,
    /// Its consumer lag summed over its partitions (-1 until measured).
    pub lag: i64,
    /// Its measurements.
    pub detail: metrics::Detail,
}

impl Stats {
    /// How many tasks this instance runs now.
    pub fn running_tasks(&self) -> usize {
        self.owned.lock().map_or(0, |o| o.len())
    }

    /// Records that task `index` runs (`restoring`: still restoring its state) or, with
    /// `None`, no longer does.
    pub(crate) fn own(&self, index: usize, restoring: Option<bool>) {
        if let Ok(mut owned) = self.owned.lock() {
            match restoring {
                Some(r) => {
                    owned.insert(index, r);
                }
                None => {
                    owned.remove(&index);
                }
            }
        }
    }

    /// Records task `index`'s view and recomputes the pipeline's: the smallest watermark,
    /// the summed lag and the merged measurements of all tasks.
    pub(crate) fn publish(&self, index: usize, view: TaskView) {
        let Ok(mut tasks) = self.tasks.lock() else {
            return;
        };
        tasks.insert(index, view);
        let watermark = tasks
            .values()
            .map(|t| t.watermark_ms)
            .min()
            .unwrap_or(i64::MIN);
        self.watermark_ms.store(watermark, Ordering::Relaxed);
        let measured: Vec<i64> = tasks.values().map(|t| t.lag).filter(|l| *l >= 0).collect();
        if !measured.is_empty() {
            self.lag.store(measured.iter().sum(), Ordering::Relaxed);
        }
        let merged = metrics::Detail::merged(tasks.values().map(|t| &t.detail));
        if let Ok(mut d) = self.detail.lock() {
            *d = merged;
        }
    }
}

impl Default for Stats {
    fn default() -> Self {
        Self {
            events_in: AtomicU64::new(0),
            events_out: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            dead_lettered: AtomicU64::new(0),
            late: AtomicU64::new(0),
            watermark_ms: AtomicI64::new(i64::MIN),
            lag: AtomicI64::new(-1),
            checkpoints: AtomicU64::new(0),
            state_bytes: AtomicU64::new(0),
            owned: std::sync::Mutex::new(BTreeMap::new()),
            rebalances: AtomicU64::new(0),
            restored_bytes: AtomicU64::new(0),
            restore_micros: AtomicU64::new(0),
            kafka_errors: AtomicU64::new(0),
            last_kafka_error: std::sync::Mutex::new(None),
            detail: std::sync::Mutex::new(metrics::Detail::default()),
            tasks: std::sync::Mutex::new(BTreeMap::new()),
        }
    }
}

/// What a run did.
#[derive(Debug, Default)]
pub struct Summary {
    /// Things of the pipeline that this run skipped, with why.
    pub warnings: Vec<String>,
}

#[cfg(test)]
mod tests {
    #[test]
    fn an_instance_id_is_a_short_topic_safe_name() {
        for good in ["host-1", "a", "eu_west.3", &"x".repeat(64)] {
            assert_eq!(super::instance_id(good).as_deref(), Ok(good));
        }
        for bad in ["", "a b", "a,b", "über", &"x".repeat(65), "a/b"] {
            assert!(super::instance_id(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_latency_target_is_at_most_ten_seconds() {
        use std::time::Duration;
        for good in [0, 10, 10_000] {
            let d = Duration::from_millis(good);
            assert_eq!(super::latency_target(d), Ok(d));
        }
        let err =
            super::latency_target(Duration::from_millis(10_001)).expect_err("past 10s is refused");
        assert!(err.contains("at most 10s"), "{err}");
    }
}
