//! A source task: reads micro-batches of raw messages, decodes them a batch at a time,
//! applies the source's `on_error` policy record by record, and hands the rows to the
//! source's operator one partition at a time (keeping offset order). In a changelog table a
//! message without a value deletes its key (a tombstone): those keys go to the operator's
//! port 1, in order with the upserts.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use connectors::registry::{Registry, RegistryError};

use connectors::{Connect, RawBatch, Source as _};
use datafusion::arrow::array::{RecordBatch, TimestampMillisecondArray, UInt32Array};
use datafusion::arrow::compute::{cast, take};
use datafusion::arrow::datatypes::{DataType, TimeUnit};
use formats::avro::{AvroCodec, Resolution};
use formats::json::JsonDecoder;
use planner::{Format, OnError, SourcePlan};

use crate::error::{RuntimeError, internal};
use crate::metrics::SourceMetrics;
use crate::operator::DeadLetter;
use crate::operators::sink::framing;

/// How a source's messages are decoded.
enum Decoder {
    Json(JsonDecoder),
    Avro(AvroCodec),
    /// Confluent-framed Avro, each message read with its writer's schema from the registry
    /// resolved to the declared one.
    Registry {
        codec: AvroCodec,
        registry: Arc<Registry>,
        /// Per schema id seen: how to read it, or why it cannot be read.
        resolutions: HashMap<u32, Result<Resolution, String>>,
    },
}

/// Attempts at reaching the registry for a new schema id before the run fails (retryable):
/// one every 500 ms.
const REGISTRY_ATTEMPTS: u32 = 60;

/// Looks up the schema ids of `messages` not seen before.
fn learn_ids(
    codec: &AvroCodec,
    registry: &Registry,
    resolutions: &mut HashMap<u32, Result<Resolution, String>>,
    messages: &[&[u8]],
) -> Result<(), RuntimeError> {
    for m in messages {
        let Some(id) = formats::avro::confluent_id(m) else {
            continue;
        };
        if resolutions.contains_key(&id) {
            continue;
        }
        let mut attempt = 0;
        let found = loop {
            match registry.schema(id) {
                Err(RegistryError::Unreachable(_)) if attempt + 1 < REGISTRY_ATTEMPTS => {
                    attempt += 1;
                    std::thread::sleep(Duration::from_millis(500));
                }
                other => break other,
            }
        };
        let resolution = match found {
            Ok(writer) => codec
                .resolve(&writer)
                .map_err(|e| format!("its writer schema cannot be read as the declared one: {e}")),
            Err(RegistryError::NotFound(_)) => Err("not in the registry".to_string()),
            Err(e) => return Err(e.into()),
        };
        resolutions.insert(id, resolution);
    }
    Ok(())
}

/// What a source task hands to its operator: rows (port 0) or tombstone keys (port 1) of
/// one partition, in offset order.
pub(crate) enum Rows {
    Upserts(i32, RecordBatch),
    Deletes(i32, Vec<String>),
}

/// A running source.
pub(crate) struct SourceTask<C: Connect> {
    /// Its node in the graph.
    pub node: usize,
    pub name: String,
    pub topic: String,
    /// Its consumer group.
    pub group: String,
    /// Next offset to read per partition, over the whole run (restored ones included).
    pub position: BTreeMap<i32, i64>,
    /// Column of the decoded rows holding the event time, if the source declares one.
    time_col: Option<usize>,
    /// Event times (ms) of the rows of the current micro-batch, for the latency histogram.
    pub times: Vec<i64>,
    pub conn: C::Source,
    decoder: Decoder,
    on_error: OnError,
    /// A table (read whole, not a stream).
    pub table: bool,
    pub dead_letter_topic: String,
    /// Opened when the source first has a dead letter (or at start with `on_error:
    /// dead_letter`, so a topic that cannot be written fails early).
    pub dead_letter: Option<C::Sink>,
    /// Dead letters waiting for the barrier.
    pub letters: Vec<DeadLetter>,
    pub last_seen: HashMap<i32, Instant>,
    pub idle_timeout: Option<Duration>,
    /// `max_out_of_order` of its event time, ms.
    pub allowed_ms: i64,
    pub metrics: SourceMetrics,
    /// A repartition topic's source: the writers' marks.
    pub progress: Option<crate::operators::exchange::Progress>,
    /// The marks of the current micro-batch: channel and mark, in order.
    pub marks: Vec<(i32, connectors::Mark)>,
}

impl<C: Connect> SourceTask<C> {
    /// The task of source node `node` (`plan`), reading through `conn`.
    pub fn new(
        node: usize,
        name: &str,
        plan: &SourcePlan,
        conn: C::Source,
        dead_letter: Option<C::Sink>,
        registry: Option<&Arc<Registry>>,
    ) -> Result<Self, RuntimeError> {
        let codec = |f| {
            AvroCodec::new(&plan.avro_json, plan.schema.clone(), f)
                .map_err(|e| RuntimeError::Unsupported(format!("source `{name}`: {e}")))
        };
        let decoder = match (framing(plan.format), plan.format, registry) {
            (None, _, _) => Decoder::Json(JsonDecoder::new(plan.schema.clone()).map_err(internal)?),
            (Some(f), Format::AvroConfluent, Some(registry)) => Decoder::Registry {
                codec: codec(f)?,
                registry: registry.clone(),
                resolutions: HashMap::new(),
            },
            (Some(f), _, _) => Decoder::Avro(codec(f)?),
        };
        Ok(Self {
            node,
            name: name.to_string(),
            topic: plan.topic.clone(),
            group: plan.group.clone(),
            // Where every partition starts, even one that stays empty.
            position: conn.start_offsets().clone(),
            time_col: plan
                .event_time
                .as_ref()
                .and_then(|e| e.field.as_deref())
                .and_then(|f| plan.schema.index_of(f).ok()),
            times: Vec::new(),
            conn,
            decoder,
            on_error: plan.on_error,
            table: plan.table_key.is_some(),
            dead_letter_topic: plan.dead_letter_topic.clone(),
            dead_letter,
            letters: Vec::new(),
            last_seen: HashMap::new(),
            idle_timeout: plan.event_time.as_ref().and_then(|e| e.idle_timeout),
            allowed_ms: plan
                .event_time
                .as_ref()
                .map_or(0, |e| e.max_out_of_order.as_millis() as i64),
            metrics: SourceMetrics {
                topic: plan.topic.clone(),
                ..Default::default()
            },
            progress: None,
            marks: Vec::new(),
        })
    }

    /// The partitions its readers see: its own, or a repartition topic's channels.
    pub fn channels(&self) -> Vec<i32> {
        match &self.progress {
            Some(p) => {
                crate::operators::exchange::reader_channels(self.conn.partitions(), p.partitions)
            }
            None => self.conn.partitions().to_vec(),
        }
    }

    /// Whether every writer of the repartition topic it reads has ended (false for other
    /// sources).
    pub fn writers_ended(&self) -> bool {
        self.progress
            .as_ref()
            .is_some_and(|p| p.all_ended(self.conn.partitions()))
    }

    /// Decodes a micro-batch of a repartition topic: rows per channel, in order, and its
    /// marks (kept in `marks`). The rows were written by this pipeline: one that cannot be
    /// read fails the run.
    fn decode_exchange(&mut self, raw: &RawBatch) -> Result<(Vec<Rows>, u64), RuntimeError> {
        let Some(progress) = &mut self.progress else {
            return Err(internal("not a repartition topic"));
        };
        let mut rows: Vec<usize> = Vec::with_capacity(raw.len());
        for i in 0..raw.len() {
            let x = raw.exchange.get(i).copied().unwrap_or_default();
            let channel = progress.channel(raw.partitions[i], x.from);
            match x.mark {
                Some(m) => {
                    progress.mark(channel, &m);
                    self.marks.push((channel, m));
                }
                None => rows.push(i),
            }
        }
        self.metrics.events += rows.len() as u64;
        self.metrics.bytes += raw.bytes.len() as u64;
        self.metrics.batches += 1;
        if rows.is_empty() {
            return Ok((Vec::new(), 0));
        }
        let payloads: Vec<&[u8]> = rows.iter().map(|i| raw.payload(*i)).collect();
        let decoded = match &mut self.decoder {
            Decoder::Json(d) => d.decode(&payloads),
            Decoder::Avro(d) => d.decode(&payloads),
            Decoder::Registry { .. } => {
                return Err(internal("a repartition topic in the registry"));
            }
        }
        .map_err(internal)?;
        if let Some(e) = decoded.errors.first() {
            let i = rows[e.index];
            return Err(RuntimeError::BadRecord {
                topic: self.topic.clone(),
                partition: raw.partitions[i],
                offset: raw.offsets[i],
                error: format!("a repartitioned row cannot be read back: {}", e.message),
            });
        }
        let mut parts: BTreeMap<i32, Split> = BTreeMap::new();
        for (row, &message) in decoded.rows.iter().enumerate() {
            let i = rows[message];
            let from = raw.exchange.get(i).map_or(0, |x| x.from);
            let channel = progress.channel(raw.partitions[i], from);
            parts
                .entry(channel)
                .or_insert_with(|| Split::new(channel))
                .row(row as u32);
        }
        let total = decoded.batch.num_rows();
        let mut out = Vec::new();
        for split in parts.into_values() {
            out.extend(split.finish(&decoded.batch, total)?);
        }
        Ok((out, 0))
    }

    /// Decodes `raw` and applies the error policy. Returns the rows per partition, and the
    /// number of bad records (an `Err` under `on_error: fail`).
    pub fn decode(&mut self, raw: &RawBatch) -> Result<(Vec<Rows>, u64), RuntimeError> {
        if self.progress.is_some() {
            return self.decode_exchange(raw);
        }
        let n = raw.len();
        let now = Instant::now();
        for p in raw.next_offsets().keys() {
            self.last_seen.insert(*p, now);
        }
        let payloads = raw.payloads();
        let mut decoded = match &mut self.decoder {
            Decoder::Json(d) => d.decode(&payloads),
            Decoder::Avro(d) => d.decode(&payloads),
            Decoder::Registry {
                codec,
                registry,
                resolutions,
            } => {
                learn_ids(codec, registry, resolutions, &payloads)?;
                codec.decode_resolved(&payloads, resolutions)
            }
        }
        .map_err(internal)?;
        // Tombstones of a table are deletes, not bad records; without a key a tombstone
        // names nothing and stays a bad record.
        let mut tombstones: Vec<usize> = Vec::new();
        if self.table {
            decoded.errors.retain(|e| match raw.key(e.index) {
                Some(_) if raw.null_value[e.index] => {
                    tombstones.push(e.index);
                    false
                }
                _ => true,
            });
        }
        self.metrics.events += n as u64;
        self.metrics.bytes += raw.bytes.len() as u64;
        self.metrics.batches += 1;
        self.metrics.decode_errors += decoded.errors.len() as u64;
        if let Some(c) = self.time_col {
            let ms = cast(
                decoded.batch.column(c),
                &DataType::Timestamp(TimeUnit::Millisecond, None),
            )
            .map_err(internal)?;
            let ms = ms
                .as_any()
                .downcast_ref::<TimestampMillisecondArray>()
                .ok_or_else(|| internal("event time cast"))?;
            self.times.extend(ms.iter().flatten());
        }
        let bad = decoded.errors.len() as u64;
        if let Some(e) = decoded.errors.first() {
            match self.on_error {
                OnError::Fail => {
                    return Err(RuntimeError::BadRecord {
                        topic: self.topic.clone(),
                        partition: raw.partitions[e.index],
                        offset: raw.offsets[e.index],
                        error: e.message.clone(),
                    });
                }
                OnError::Skip => {}
                OnError::DeadLetter => {
                    for e in &decoded.errors {
                        let headers = vec![
                            ("source-topic".to_string(), self.topic.clone().into_bytes()),
                            (
                                "source-partition".to_string(),
                                raw.partitions[e.index].to_string().into_bytes(),
                            ),
                            (
                                "source-offset".to_string(),
                                raw.offsets[e.index].to_string().into_bytes(),
                            ),
                            ("error".to_string(), e.message.clone().into_bytes()),
                        ];
                        self.letters.push((raw.payload(e.index).to_vec(), headers));
                    }
                }
            }
        }
        // Per partition, in offset order: runs of rows, and tombstones between them. Rows and
        // tombstones are each in message order already: merge them.
        let total = decoded.batch.num_rows();
        let mut parts: BTreeMap<i32, Split> = BTreeMap::new();
        let mut next_tombstone = tombstones.iter().copied().peekable();
        let batch = &decoded.batch;
        for (row, &message) in decoded.rows.iter().enumerate() {
            while let Some(t) = next_tombstone.next_if(|t| *t < message) {
                let p = raw.partitions[t];
                let key = raw.key(t).unwrap_or_default();
                parts
                    .entry(p)
                    .or_insert_with(|| Split::new(p))
                    .delete(key, batch, total)?;
            }
            let p = raw.partitions[message];
            parts
                .entry(p)
                .or_insert_with(|| Split::new(p))
                .row(row as u32);
        }
        for t in next_tombstone {
            let p = raw.partitions[t];
            let key = raw.key(t).unwrap_or_default();
            parts
                .entry(p)
                .or_insert_with(|| Split::new(p))
                .delete(key, batch, total)?;
        }
        let mut out = Vec::new();
        for split in parts.into_values() {
            out.extend(split.finish(batch, total)?);
        }
        Ok((out, bad))
    }
}

/// One partition's rows and tombstones, in offset order: runs of each, alternating (at
/// most one of `rows` and `deletes` is being filled).
struct Split {
    partition: i32,
    done: Vec<Rows>,
    rows: Vec<u32>,
    deletes: Vec<String>,
}

impl Split {
    fn new(partition: i32) -> Self {
        Self {
            partition,
            done: Vec::new(),
            rows: Vec::new(),
            deletes: Vec::new(),
        }
    }

    fn row(&mut self, row: u32) {
        if !self.deletes.is_empty() {
            let keys = std::mem::take(&mut self.deletes);
            self.done.push(Rows::Deletes(self.partition, keys));
        }
        self.rows.push(row);
    }

    fn delete(
        &mut self,
        key: &[u8],
        batch: &RecordBatch,
        total: usize,
    ) -> Result<(), RuntimeError> {
        if !self.rows.is_empty() {
            let rows = take_rows(batch, std::mem::take(&mut self.rows), total)?;
            self.done.push(Rows::Upserts(self.partition, rows));
        }
        self.deletes.push(String::from_utf8_lossy(key).into_owned());
        Ok(())
    }

    fn finish(mut self, batch: &RecordBatch, total: usize) -> Result<Vec<Rows>, RuntimeError> {
        if !self.deletes.is_empty() {
            self.done.push(Rows::Deletes(self.partition, self.deletes));
        }
        if !self.rows.is_empty() {
            let rows = take_rows(batch, self.rows, total)?;
            self.done.push(Rows::Upserts(self.partition, rows));
        }
        Ok(self.done)
    }
}

/// Rows `rows` of `batch` (all of it, uncopied, when they are all of its `total` rows).
fn take_rows(
    batch: &RecordBatch,
    rows: Vec<u32>,
    total: usize,
) -> Result<RecordBatch, RuntimeError> {
    if rows.len() == total {
        return Ok(batch.clone());
    }
    let idx = UInt32Array::from(rows);
    let columns = batch
        .columns()
        .iter()
        .map(|c| take(c, &idx, None))
        .collect::<Result<Vec<_>, _>>()
        .map_err(internal)?;
    RecordBatch::try_new(batch.schema(), columns).map_err(internal)
}
