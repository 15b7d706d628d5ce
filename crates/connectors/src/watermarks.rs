//! High watermarks of a source's partitions, fetched off the processing path.
//!
//! Asking the broker for a partition's watermarks is a round trip (up to its timeout when
//! the broker is slow); a task that asked on its own loop stalled for it. A thread per
//! source asks once a second and keeps the answers, and the task reads them without
//! waiting. The thread holds only a weak reference to the consumer between probes, and
//! ends when the source is dropped.

use std::collections::BTreeMap;
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::time::Duration;

use rdkafka::consumer::{Consumer, StreamConsumer};

/// How often the probe asks the broker.
const EVERY: Duration = Duration::from_secs(1);
/// How long one partition's answer may take.
const TIMEOUT: Duration = Duration::from_secs(1);

#[derive(Debug, Default)]
struct Shared {
    /// (low, high) per partition, as last fetched; a partition whose fetch failed is absent.
    marks: Mutex<BTreeMap<i32, (i64, i64)>>,
    stopped: Mutex<bool>,
    wake: Condvar,
}

/// The probe of one source; dropping it ends its thread.
#[derive(Debug)]
pub(crate) struct Probe {
    shared: Arc<Shared>,
}

impl Probe {
    /// Starts probing the partitions assigned to `consumer` of `topic`.
    pub(crate) fn start(consumer: &Arc<StreamConsumer>, topic: &str) -> Self {
        let shared = Arc::new(Shared::default());
        let weak = Arc::downgrade(consumer);
        let (thread_shared, topic) = (shared.clone(), topic.to_string());
        // Without a thread (the process is out of them) every lag reads as unknown, which
        // costs only the metric.
        let _ = std::thread::Builder::new()
            .name("lag-probe".into())
            .spawn(move || run(&weak, &topic, &thread_shared));
        Self { shared }
    }

    /// The last fetched (low, high) watermarks per partition.
    pub(crate) fn marks(&self) -> BTreeMap<i32, (i64, i64)> {
        self.shared
            .marks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        *self
            .shared
            .stopped
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = true;
        self.shared.wake.notify_all();
    }
}

fn run(consumer: &Weak<StreamConsumer>, topic: &str, shared: &Shared) {
    loop {
        {
            let Some(consumer) = consumer.upgrade() else {
                return;
            };
            let assigned: Vec<i32> = consumer
                .assignment()
                .map(|tpl| tpl.elements().iter().map(|e| e.partition()).collect())
                .unwrap_or_default();
            let mut fetched = BTreeMap::new();
            for p in assigned {
                if *shared.stopped.lock().unwrap_or_else(|e| e.into_inner()) {
                    return;
                }
                if let Ok(marks) = consumer.fetch_watermarks(topic, p, TIMEOUT) {
                    fetched.insert(p, marks);
                }
            }
            *shared.marks.lock().unwrap_or_else(|e| e.into_inner()) = fetched;
        }
        let stopped = shared.stopped.lock().unwrap_or_else(|e| e.into_inner());
        let (stopped, _) = shared
            .wake
            .wait_timeout_while(stopped, EVERY, |stopped| !*stopped)
            .unwrap_or_else(|e| e.into_inner());
        if *stopped {
            return;
        }
    }
}
