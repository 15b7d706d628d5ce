//! The barrier. At the end of a turn no record is in flight between operators: sinks and
//! dead letters hand their records to the producer, which sends them while the next turns
//! read and compute. Kafka's acknowledgements are awaited only where offsets are committed
//! past those records: before a checkpoint or state commit ([`Task::checkpoint`] settles
//! every output first), when a run ends, and, for pipelines that commit after every turn,
//! turn by turn as the acknowledgements come (the task's in-flight turns). Then (with a
//! checkpoint directory) every operator's state is saved with the source offsets it
//! corresponds to, and the offsets are committed to the consumer groups.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use connectors::{Connect, OutRecord, Sink as _, Source as _};

use crate::checkpoint;
use crate::error::RuntimeError;
use crate::task::Task;

impl<C: Connect> Task<C> {
    /// Hands buffered sink records and dead letters to the producer (without waiting for
    /// Kafka's acknowledgement: see [`Task::delivery`]).
    pub(crate) async fn flush_outputs(&mut self) -> Result<(), RuntimeError> {
        for n in &mut self.nodes {
            let flushed = n.op.flush().await?;
            self.stats
                .events_out
                .fetch_add(flushed.records, Ordering::Relaxed);
        }
        for s in &mut self.sources {
            if s.letters.is_empty() || self.transactional_letters {
                continue;
            }
            // Late rows of a source whose own bad records are not dead-lettered open its
            // dead-letter topic when the first arrives.
            if s.dead_letter.is_none() {
                s.dead_letter = Some(self.connect.sink(
                    &s.dead_letter_topic,
                    &BTreeMap::new(),
                    self.headers.clone(),
                )?);
            }
            let Some(sink) = &s.dead_letter else {
                continue;
            };
            let records: Vec<(OutRecord<'_>, connectors::RecordHeaders)> = s
                .letters
                .iter()
                .map(|(v, h)| {
                    (
                        OutRecord {
                            key: None,
                            value: v,
                            timestamp: None,
                            partition: None,
                        },
                        h.clone(),
                    )
                })
                .collect();
            sink.send_with_headers(&records).await?;
            let n = records.len() as u64;
            self.stats.dead_lettered.fetch_add(n, Ordering::Relaxed);
            s.metrics.dead_lettered += n;
            s.letters.clear();
        }
        Ok(())
    }

    /// Reads into `delivery_buf`, per output (each node, then each source's dead-letter
    /// topic, always in that order): flushes handed over so far, and how many from the first
    /// Kafka has acknowledged.
    pub(crate) fn read_delivery(&mut self) -> Result<(), RuntimeError> {
        let mut out = std::mem::take(&mut self.delivery_buf);
        out.clear();
        for n in &self.nodes {
            out.push(n.op.delivery()?.unwrap_or_default());
        }
        for s in &self.sources {
            out.push(match &s.dead_letter {
                Some(sink) => (sink.handed(), sink.delivered()?),
                None => (0, 0),
            });
        }
        self.delivery_buf = out;
        Ok(())
    }

    /// Waits until Kafka has acknowledged every output handed over (or refused one: the
    /// error). The producer's `message.timeout.ms` bounds the wait.
    pub(crate) async fn settle_outputs(&mut self) -> Result<(), RuntimeError> {
        loop {
            self.read_delivery()?;
            if self
                .delivery_buf
                .iter()
                .all(|(handed, acked)| acked >= handed)
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        self.reap()
    }

    /// Bytes held for the next state transaction: exactly-once sinks' records and, with
    /// them, dead letters.
    pub(crate) fn pending_bytes(&self) -> u64 {
        let letters: usize = match self.transactional_letters {
            true => self
                .sources
                .iter()
                .flat_map(|s| &s.letters)
                .map(|(v, _)| v.len())
                .sum(),
            false => 0,
        };
        letters as u64 + self.nodes.iter().map(|n| n.op.pending_bytes()).sum::<u64>()
    }

    /// Takes the dead letters that go in the next state transaction.
    fn take_transactional_letters(&mut self) -> Vec<connectors::changelog::OutputRecord> {
        if !self.transactional_letters {
            return Vec::new();
        }
        let mut out = Vec::new();
        for s in &mut self.sources {
            let n = s.letters.len() as u64;
            self.stats.dead_lettered.fetch_add(n, Ordering::Relaxed);
            s.metrics.dead_lettered += n;
            out.extend(s.letters.drain(..).map(|(value, headers)| {
                connectors::changelog::OutputRecord {
                    topic: s.dead_letter_topic.clone(),
                    key: None,
                    value,
                    headers,
                }
            }));
        }
        out
    }

    /// Writes a checkpoint (at a barrier: call only with every output flushed), once Kafka
    /// has acknowledged them, then commits its offsets to the consumer groups (for lag
    /// monitoring and for runs without it); with state in Kafka, commits the changed state
    /// and the offsets in one transaction.
    pub(crate) async fn checkpoint(&mut self) -> Result<(), RuntimeError> {
        self.settle_outputs().await?;
        if self.config.discard.load(Ordering::Relaxed) {
            return Ok(());
        }
        if self.state.is_some() {
            let offsets = crate::state::positions(&self.sources);
            let letters = self.take_transactional_letters();
            let Some(state) = &self.state else {
                return Ok(());
            };
            return state
                .commit(
                    &mut self.nodes,
                    letters,
                    offsets,
                    &self.headers,
                    &self.stats,
                )
                .await;
        }
        let Some(store) = self.checkpoints.clone() else {
            return Ok(());
        };
        let mut operators = BTreeMap::new();
        for n in &mut self.nodes {
            if let Some(state) = n.op.save()? {
                operators.insert(
                    n.name.clone(),
                    checkpoint::OperatorState {
                        fingerprint: n.fingerprint,
                        state,
                    },
                );
            }
        }
        let sources = self
            .sources
            .iter()
            .map(|s| {
                (
                    s.name.clone(),
                    checkpoint::SourcePosition {
                        topic: s.topic.clone(),
                        next_offsets: s.position.clone(),
                    },
                )
            })
            .collect();
        store.save(&checkpoint::Checkpoint {
            format: checkpoint::FORMAT,
            pipeline: self.pipeline.clone(),
            version: self.config.version.clone(),
            taken_at_ms: chrono::Utc::now().timestamp_millis(),
            sources,
            operators,
        })?;
        self.stats.checkpoints.fetch_add(1, Ordering::Relaxed);
        for s in &self.sources {
            s.conn.commit(&s.position)?;
        }
        Ok(())
    }
}
