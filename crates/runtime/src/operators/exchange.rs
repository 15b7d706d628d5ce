//! Repartitioning: an exchange sink writes the rows a keyed operator reads to the
//! pipeline's repartition topic (`<group>.<operator>.repartition`), each to the partition of
//! its key, and the task owning that partition reads them back through an exchange source.
//! Kafka Streams repartitions the same way; what it lacks is a watermark that survives the
//! exchange, which a window needs.
//!
//! A repartition partition interleaves rows of every writer. Each writer is a *channel*
//! (numbered by the input partition it reads; one per task): rows carry their channel in a
//! header, and a reader numbers channels `partition * partitions + channel` so that each
//! keeps its rows in the writer's order. Lateness is then decided per channel exactly as it
//! is per input partition without a repartition, and the watermark is the smallest over
//! channels. Writers also send *marks* to every partition, each with its largest event time
//! (at most every [`MARK_EVERY`], when it has changed), whether its input is idle, and at
//! the end of a bounded input that it has ended: a reader's watermark moves on when a writer
//! has nothing for it, and a bounded run ends when every writer has ended (as Flink sends
//! watermarks on every channel of a network exchange).
//!
//! Rows are keyed by their key columns' values as text (joined by U+001F), and go to
//! partition FNV-1a(key) mod partitions; a repartition without key columns sends every row
//! to partition 0 (one task learns it).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use connectors::exchange_headers::{END, FROM, IDLE, TIME};
use connectors::{OutRecord, Sink};
use std::sync::Arc;

use datafusion::arrow::array::{Array, AsArray, Int64Array, Int64Builder, RecordBatch};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, SchemaRef, TimeUnit, TimestampMillisecondType};
use formats::avro::{AvroCodec, Framing};
use formats::json::encode_rows;
use planner::{Format, SinkPlan};

use crate::error::{RuntimeError, internal};
use crate::metrics::{Detail, SinkMetrics};
use crate::operator::{Context, Flushed, Operator};
use crate::operators::sink::key_bytes;

/// Marks of a changed event time go out at most this often (an idle or ended input's at
/// once).
pub const MARK_EVERY: Duration = Duration::from_millis(100);

/// What a writer has told the readers of one of its channels.
#[derive(Debug, Default, Clone, Copy)]
struct Channel {
    /// Rows written (the number of the last).
    seq: u64,
    /// Largest event time written.
    time: Option<i64>,
    idle: bool,
    /// What the last mark said.
    sent: Option<(Option<i64>, bool)>,
}

/// The writing side of a repartition.
#[derive(Debug)]
pub struct ExchangeSink<K> {
    sink: K,
    avro: Option<AvroCodec>,
    by: Vec<usize>,
    time: Option<usize>,
    /// The rows written (with the stream-time column for a window).
    schema: SchemaRef,
    partitions: usize,
    /// The channels this task writes, by input partition (rows after a window or a model
    /// are of the first).
    channels: BTreeMap<i32, Channel>,
    /// Rows waiting for the barrier: channel, partition, key, value.
    buffer: Vec<(i32, i32, Vec<u8>, Vec<u8>)>,
    last_marks: Option<Instant>,
    ended: bool,
    /// The marks saying so have gone out.
    end_sent: bool,
    metrics: SinkMetrics,
}

impl<K: Sink> ExchangeSink<K> {
    /// The exchange sink of `plan` (named `name`), writing through `sink` to a topic of
    /// `partitions` partitions, for the channels `channels`.
    pub fn new(
        name: &str,
        plan: &SinkPlan,
        sink: K,
        partitions: usize,
        channels: &[i32],
    ) -> Result<Self, RuntimeError> {
        let exchange = plan
            .exchange
            .as_ref()
            .ok_or_else(|| internal("an exchange sink without its exchange"))?;
        let column = |c: &str, schema: &SchemaRef| {
            schema
                .index_of(c)
                .map_err(|_| internal(format!("exchange column `{c}`")))
        };
        let by = exchange
            .by
            .iter()
            .map(|c| column(c, &plan.schema))
            .collect::<Result<Vec<_>, _>>()?;
        let time = match &exchange.time_field {
            Some(t) => Some(column(t, &plan.schema)?),
            None => None,
        };
        let avro = match plan.format {
            Format::Json => None,
            _ => Some(
                AvroCodec::for_arrow(
                    plan.schema.clone(),
                    &format!("{}.repartition", exchange.feeds),
                    Framing::Plain,
                )
                .map_err(|e| internal(format!("exchange `{name}`: {e}")))?,
            ),
        };
        Ok(Self {
            sink,
            avro,
            by,
            time,
            schema: plan.schema.clone(),
            partitions: partitions.max(1),
            channels: channels.iter().map(|c| (*c, Channel::default())).collect(),
            buffer: Vec::new(),
            last_marks: None,
            ended: false,
            end_sent: false,
            metrics: SinkMetrics {
                topic: plan.topic.clone(),
                ..Default::default()
            },
        })
    }

    /// The marks due now: per channel whose news the readers have not had.
    fn marks(&mut self) -> Vec<(i32, Option<i64>, bool)> {
        if self.end_sent {
            return Vec::new();
        }
        let now = Instant::now();
        let timely = self.last_marks.is_none_or(|t| now - t >= MARK_EVERY);
        let mut out = Vec::new();
        for (c, ch) in &mut self.channels {
            let news = ch.sent != Some((ch.time, ch.idle));
            let urgent = ch.sent.is_none_or(|(_, idle)| idle != ch.idle);
            if self.ended || (news && (timely || urgent)) {
                out.push((*c, ch.time, ch.idle));
                ch.sent = Some((ch.time, ch.idle));
            }
        }
        if !out.is_empty() {
            self.last_marks = Some(now);
        }
        out
    }
}

/// FNV-1a, 64 bits: the partition of a key does not depend on the client library.
fn hash(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

#[async_trait]
impl<K: Sink> Operator for ExchangeSink<K> {
    async fn process(
        &mut self,
        _port: usize,
        partition: i32,
        batch: RecordBatch,
        _ctx: &mut Context,
    ) -> Result<(), RuntimeError> {
        let channel = match self.channels.contains_key(&partition) {
            true => partition,
            false => *self
                .channels
                .keys()
                .next()
                .ok_or_else(|| internal("an exchange without channels"))?,
        };
        let ch = self
            .channels
            .get_mut(&channel)
            .ok_or_else(|| internal("exchange channel"))?;
        let mut columns = batch.columns().to_vec();
        // For a window: each row carries its writer's stream time before it, so that the
        // reader decides lateness as it would have without the repartition.
        if let Some(t) = self.time {
            let ms = cast(
                batch.column(t),
                &DataType::Timestamp(TimeUnit::Millisecond, None),
            )
            .map_err(internal)?;
            let ms = ms.as_primitive::<TimestampMillisecondType>();
            let mut before = Int64Builder::with_capacity(batch.num_rows());
            for ts in ms.iter() {
                before.append_option(ch.time);
                if let Some(ts) = ts {
                    ch.time = Some(ch.time.map_or(ts, |t| t.max(ts)));
                }
            }
            columns.push(Arc::new(before.finish()));
        }
        let first = ch.seq + 1;
        ch.seq += batch.num_rows() as u64;
        columns.push(Arc::new(Int64Array::from_iter_values(
            (first..=ch.seq).map(|n| n as i64),
        )));
        let batch = RecordBatch::try_new(self.schema.clone(), columns).map_err(internal)?;
        let values = match &self.avro {
            Some(c) => c.encode_rows(&batch),
            None => encode_rows(&batch),
        }
        .map_err(internal)?;
        let keys = self
            .by
            .iter()
            .map(|k| key_bytes(batch.column(*k).as_ref()))
            .collect::<Result<Vec<_>, _>>()?;
        for (row, value) in values.into_iter().enumerate() {
            let mut key = Vec::new();
            for (i, column) in keys.iter().enumerate() {
                if i > 0 {
                    key.push(0x1f);
                }
                key.extend_from_slice(column[row].as_deref().unwrap_or_default());
            }
            let p = match self.by.is_empty() {
                true => 0,
                false => (hash(&key) % self.partitions as u64) as i32,
            };
            self.buffer.push((channel, p, key, value));
        }
        Ok(())
    }

    fn advance(&mut self, idle: &std::collections::BTreeSet<i32>) -> Option<i64> {
        for (c, ch) in &mut self.channels {
            ch.idle = idle.contains(c);
        }
        None
    }

    async fn finish(&mut self, _ctx: &mut Context) -> Result<(), RuntimeError> {
        self.ended = true;
        Ok(())
    }

    async fn flush(&mut self) -> Result<Flushed, RuntimeError> {
        let mut flushed = Flushed::default();
        let channels: Vec<i32> = self.channels.keys().copied().collect();
        for c in channels {
            let records: Vec<OutRecord<'_>> = self
                .buffer
                .iter()
                .filter(|(ch, ..)| *ch == c)
                .map(|(_, p, k, v)| OutRecord {
                    key: (!self.by.is_empty()).then_some(k.as_slice()),
                    value: v,
                    timestamp: None,
                    partition: Some(*p),
                })
                .collect();
            if records.is_empty() {
                continue;
            }
            let from = c.to_string();
            self.sink.send(&records, &[(FROM, from.as_bytes())]).await?;
            flushed.records += records.len() as u64;
            flushed.bytes += records.iter().map(|r| r.value.len() as u64).sum::<u64>();
        }
        self.buffer.clear();
        self.metrics.records += flushed.records;
        self.metrics.bytes += flushed.bytes;
        let ended = self.ended;
        for (c, time, idle) in self.marks() {
            let from = c.to_string();
            // Every mark has a time header (empty: nothing written yet): it is what makes
            // a message a mark.
            let time = time.map(|t| t.to_string()).unwrap_or_default();
            let mut headers: Vec<(&str, &[u8])> =
                vec![(FROM, from.as_bytes()), (TIME, time.as_bytes())];
            if idle {
                headers.push((IDLE, b"1"));
            }
            if ended {
                headers.push((END, b"1"));
            }
            let marks: Vec<OutRecord<'_>> = (0..self.partitions as i32)
                .map(|p| OutRecord {
                    key: None,
                    value: &[],
                    timestamp: None,
                    partition: Some(p),
                })
                .collect();
            self.sink.send(&marks, &headers).await?;
        }
        self.end_sent = ended;
        // Rows between tasks are not the pipeline's output (they show as the topic's sink
        // metrics); marks are progress.
        Ok(Flushed::default())
    }

    fn save(&mut self) -> Result<Option<Vec<u8>>, RuntimeError> {
        let seqs: BTreeMap<i32, u64> = self.channels.iter().map(|(c, ch)| (*c, ch.seq)).collect();
        crate::checkpoint::encode(&seqs).map(Some)
    }

    fn load(&mut self, state: &[u8]) -> Result<(), RuntimeError> {
        let seqs: BTreeMap<i32, u64> = crate::checkpoint::decode(state)?;
        for (c, seq) in seqs {
            if let Some(ch) = self.channels.get_mut(&c) {
                ch.seq = seq;
            }
        }
        Ok(())
    }

    fn delivery(&self) -> Result<Option<(u64, u64)>, RuntimeError> {
        Ok(Some((self.sink.handed(), self.sink.delivered()?)))
    }

    fn report(&self, name: &str, detail: &mut Detail) {
        detail.sinks.insert(name.to_string(), self.metrics.clone());
    }
}

/// The reading side of a repartition: drops the rows of a channel it has had already (a
/// writer that replays from its last commit writes them again, with the same numbers) and
/// the numbers themselves. What it has had per channel is its state, committed with the
/// reader's offsets and its readers' state, so no row is counted twice across restarts.
#[derive(Debug, Default)]
pub struct ExchangeSource {
    /// The number of the last row had, per channel.
    seen: BTreeMap<i32, u64>,
    /// Rows dropped as had already.
    pub replayed: u64,
}

#[async_trait]
impl Operator for ExchangeSource {
    async fn process(
        &mut self,
        _port: usize,
        channel: i32,
        batch: RecordBatch,
        ctx: &mut Context,
    ) -> Result<(), RuntimeError> {
        let Ok(i) = batch.schema().index_of(planner::EXCHANGE_SEQ) else {
            return Err(internal("a repartitioned row without its number"));
        };
        let seqs = batch
            .column(i)
            .as_any()
            .downcast_ref::<Int64Array>()
            .ok_or_else(|| internal("the number column of a repartition"))?
            .clone();
        let seen = self.seen.entry(channel).or_insert(0);
        let keep: Vec<u32> = (0..seqs.len())
            .filter(|r| {
                let seq = seqs.value(*r) as u64;
                let new = seq > *seen;
                if new {
                    *seen = seq;
                }
                new
            })
            .map(|r| r as u32)
            .collect();
        self.replayed += (seqs.len() - keep.len()) as u64;
        let mut batch = batch;
        batch.remove_column(i);
        let batch = match keep.len() == seqs.len() {
            true => batch,
            false => datafusion::arrow::compute::take_record_batch(
                &batch,
                &datafusion::arrow::array::UInt32Array::from(keep),
            )
            .map_err(internal)?,
        };
        if batch.num_rows() > 0 {
            ctx.emit(0, channel, batch);
        }
        Ok(())
    }

    fn save(&mut self) -> Result<Option<Vec<u8>>, RuntimeError> {
        crate::checkpoint::encode(&self.seen).map(Some)
    }

    fn load(&mut self, state: &[u8]) -> Result<(), RuntimeError> {
        self.seen = crate::checkpoint::decode(state)?;
        Ok(())
    }

    fn report(&self, name: &str, detail: &mut Detail) {
        detail.replayed.insert(name.to_string(), self.replayed);
    }
}

/// The channels of the readers of a topic of `partitions` partitions whose `read`
/// partitions a task reads: `partition * partitions + writer` for every writer.
pub(crate) fn reader_channels(read: &[i32], partitions: usize) -> Vec<i32> {
    let n = partitions as i32;
    read.iter()
        .flat_map(|p| (0..n).map(move |w| p * n + w))
        .collect()
}

/// Keeps the marks a reader has had, per channel.
#[derive(Debug, Default)]
pub(crate) struct Progress {
    /// Partitions of the topic (writers).
    pub partitions: usize,
    /// Channels whose writer said it is idle.
    pub idle: std::collections::BTreeSet<i32>,
    /// Channels whose writer said its input has ended.
    pub ended: std::collections::BTreeSet<i32>,
}

impl Progress {
    /// A reader of a topic of `partitions` partitions.
    pub fn new(partitions: usize) -> Self {
        Self {
            partitions: partitions.max(1),
            ..Default::default()
        }
    }

    /// The channel of a message of `partition` written by `from`.
    pub fn channel(&self, partition: i32, from: i32) -> i32 {
        partition * self.partitions as i32 + from
    }

    /// Takes in a mark of `channel`.
    pub fn mark(&mut self, channel: i32, mark: &connectors::Mark) {
        if mark.idle {
            self.idle.insert(channel);
        } else {
            self.idle.remove(&channel);
        }
        if mark.end {
            self.ended.insert(channel);
        }
    }

    /// Whether every writer of the partitions `read` has ended.
    pub fn all_ended(&self, read: &[i32]) -> bool {
        reader_channels(read, self.partitions)
            .iter()
            .all(|c| self.ended.contains(c))
    }
}
