//! Delivery groups: how a sink knows which of the records it handed to the producer Kafka
//! has acknowledged, without a future (an allocation) per record.
//!
//! Every call of a sink's `send` opens a group of its records; each record carries its group
//! to the producer's delivery report, which counts it off. Groups complete in any order (a
//! partition's records are acknowledged in order, partitions independently); the ledger
//! reports how many groups *from the first* are complete, which is what a caller committing
//! offsets needs: every record of those groups is in Kafka.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

/// The records of one `send`, not yet acknowledged.
#[derive(Debug)]
pub struct Group {
    outstanding: AtomicU64,
    /// The first delivery failure of the group's sink.
    failed: Arc<OnceLock<String>>,
}

impl Group {
    /// A delivery report for one of its records: `error` when Kafka did not take it.
    pub fn report(&self, error: Option<&rdkafka::error::KafkaError>) {
        if let Some(e) = error {
            let _ = self.failed.set(e.to_string());
        }
        self.outstanding.fetch_sub(1, Ordering::Release);
    }

    /// Its records could not all be handed over.
    pub fn fail(&self, reason: String) {
        let _ = self.failed.set(reason);
    }
}

/// One sink's groups, in the order they were handed over.
#[derive(Debug, Default)]
pub struct Ledger {
    open: Mutex<VecDeque<Arc<Group>>>,
    handed: AtomicU64,
    delivered: AtomicU64,
    failed: Arc<OnceLock<String>>,
}

impl Ledger {
    /// Opens the group of the next `records` records.
    pub fn open(&self, records: u64) -> Arc<Group> {
        let group = Arc::new(Group {
            outstanding: AtomicU64::new(records),
            failed: self.failed.clone(),
        });
        if let Ok(mut open) = self.open.lock() {
            open.push_back(group.clone());
        }
        self.handed.fetch_add(1, Ordering::Relaxed);
        group
    }

    /// Groups opened so far.
    pub fn handed(&self) -> u64 {
        self.handed.load(Ordering::Relaxed)
    }

    /// How many groups from the first are acknowledged, or why a record was not.
    pub fn delivered(&self) -> Result<u64, String> {
        if let Some(reason) = self.failed.get() {
            return Err(reason.clone());
        }
        let mut open = self
            .open
            .lock()
            .map_err(|_| "a delivery report panicked".to_string())?;
        while open
            .front()
            .is_some_and(|g| g.outstanding.load(Ordering::Acquire) == 0)
        {
            open.pop_front();
            self.delivered.fetch_add(1, Ordering::Relaxed);
        }
        Ok(self.delivered.load(Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_count_as_delivered_only_from_the_first_one_on() {
        let ledger = Ledger::default();
        let first = ledger.open(2);
        let second = ledger.open(1);
        second.report(None);
        assert_eq!(ledger.delivered(), Ok(0), "the first group is still open");
        first.report(None);
        assert_eq!(ledger.delivered(), Ok(0));
        first.report(None);
        assert_eq!(ledger.delivered(), Ok(2));
        assert_eq!(ledger.handed(), 2);
    }

    #[test]
    fn a_failed_record_fails_the_ledger() {
        let ledger = Ledger::default();
        let group = ledger.open(1);
        group.report(Some(&rdkafka::error::KafkaError::Canceled));
        assert!(ledger.delivered().is_err());
    }
}
