//! A sink: encodes rows as they arrive, and at the end of each turn hands them to the
//! producer; the task waits for their acknowledgement only before it commits offsets past
//! them ([`crate::barrier`]). An exactly-once sink instead hands its records to the
//! task's next state commit, which writes them in its Kafka transaction with the state and
//! the source offsets past their inputs ([`crate::state`]).
//!
//! A record larger than the sink's `message.max.bytes` (librdkafka's default, 1,000,000,
//! unless its `kafka.properties` say otherwise) would fail the write of every record with
//! it: it goes to the dead-letter topic of the source its rows came from instead, with the
//! reason (header `error`) and the sink (header `sink`).

use async_trait::async_trait;
use connectors::registry::{Registry, RegistryError};
use connectors::{OutRecord, Sink};
use datafusion::arrow::array::{Array, RecordBatch, StringArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::DataType;
use formats::avro::{AvroCodec, Framing};
use formats::json::encode_rows_into;
use planner::{Delivery, Format, SinkPlan};
use std::ops::Range;

use crate::error::{RuntimeError, internal};
use crate::metrics::{Detail, SinkMetrics};
use crate::operator::{Context, Flushed, Operator};

/// How a sink's rows are encoded.
#[derive(Debug)]
enum Encoder {
    Json,
    Avro(AvroCodec),
}

/// The Avro framing of a format, `None` for JSON.
pub(crate) fn framing(format: Format) -> Option<Framing> {
    match format {
        Format::Json => None,
        Format::Avro => Some(Framing::Plain),
        // No schema registry yet: the id written is 0 and ids read are not checked.
        Format::AvroConfluent => Some(Framing::Confluent { schema_id: 0 }),
    }
}

/// librdkafka's default `message.max.bytes`.
const DEFAULT_MAX_BYTES: usize = 1_000_000;

/// Room a record needs beyond its key and value (librdkafka counts the record's framing
/// and headers against `message.max.bytes`).
const RECORD_OVERHEAD: usize = 512;

/// A sink writing to `K`.
#[derive(Debug)]
pub struct SinkOp<K> {
    sink: K,
    encoder: Encoder,
    key: Option<usize>,
    /// The encoded keys and values of the records held until the flush, in one buffer
    /// reused from flush to flush (no allocation per record), and each record's key and
    /// value ranges in it.
    bytes: Vec<u8>,
    buffer: Vec<(Option<Range<usize>>, Range<usize>)>,
    /// The value ranges of the batch being encoded.
    encoded: Vec<Range<usize>>,
    metrics: SinkMetrics,
    /// Written in the task's transaction (`delivery: exactly_once`).
    exactly_once: bool,
    /// Value bytes of the records in `buffer`.
    buffered: u64,
    /// The largest record it writes (key and value); larger ones are dead-lettered.
    max_bytes: usize,
    /// Its name, for the dead letters' headers.
    name: String,
}

impl<K: Sink> SinkOp<K> {
    /// The sink `name` of `plan`, writing through `sink`. An `avro_confluent` sink with a
    /// `registry` registers its schema under its subject (by default `<topic>-value`, the
    /// TopicNameStrategy) and writes the id the registry gives it.
    pub fn new(
        name: &str,
        plan: &SinkPlan,
        sink: K,
        registry: Option<&Registry>,
    ) -> Result<Self, RuntimeError> {
        let codec = |f| {
            AvroCodec::for_arrow(plan.schema.clone(), name, f)
                .map_err(|e| RuntimeError::Unsupported(format!("sink `{name}`: {e}")))
        };
        let encoder = match (framing(plan.format), registry) {
            (None, _) => Encoder::Json,
            (Some(Framing::Confluent { .. }), Some(registry)) => {
                let avsc = formats::avro::avro_schema_for(&plan.schema, name)
                    .map_err(|e| RuntimeError::Unsupported(format!("sink `{name}`: {e}")))?;
                let subject = &plan.subject;
                let schema_id = registry.register(subject, &avsc).map_err(|e| match e {
                    RegistryError::Incompatible(m) => RegistryError::Incompatible(format!(
                        "sink `{name}`: the registry refuses its schema under subject `{subject}` as incompatible with the subject's earlier versions: {m}"
                    )),
                    other => other,
                })?;
                Encoder::Avro(codec(Framing::Confluent { schema_id })?)
            }
            (Some(f), _) => Encoder::Avro(codec(f)?),
        };
        Ok(Self {
            sink,
            encoder,
            key: plan.key.as_ref().and_then(|k| plan.schema.index_of(k).ok()),
            bytes: Vec::new(),
            buffer: Vec::new(),
            encoded: Vec::new(),
            metrics: SinkMetrics {
                topic: plan.topic.clone(),
                ..Default::default()
            },
            exactly_once: plan.delivery == Delivery::ExactlyOnce,
            buffered: 0,
            max_bytes: plan
                .properties
                .get("message.max.bytes")
                .and_then(|v| v.parse().ok())
                .unwrap_or(DEFAULT_MAX_BYTES),
            name: name.to_string(),
        })
    }
}

pub(crate) fn key_bytes(column: &dyn Array) -> Result<Vec<Option<Vec<u8>>>, RuntimeError> {
    let strings = cast(&column.slice(0, column.len()), &DataType::Utf8).map_err(internal)?;
    let strings = strings
        .as_any()
        .downcast_ref::<StringArray>()
        .ok_or_else(|| internal("key cast"))?;
    Ok(strings
        .iter()
        .map(|v| v.map(|s| s.as_bytes().to_vec()))
        .collect())
}

#[async_trait]
impl<K: Sink> Operator for SinkOp<K> {
    async fn process(
        &mut self,
        _port: usize,
        _partition: i32,
        batch: RecordBatch,
        ctx: &mut Context,
    ) -> Result<(), RuntimeError> {
        self.encoded.clear();
        match &self.encoder {
            Encoder::Json => encode_rows_into(&batch, &mut self.bytes, &mut self.encoded),
            Encoder::Avro(c) => c.encode_rows_into(&batch, &mut self.bytes, &mut self.encoded),
        }
        .map_err(internal)?;
        let keys = match self.key {
            Some(k) => Some(
                cast(batch.column(k), &DataType::Utf8)
                    .map_err(internal)?
                    .as_any()
                    .downcast_ref::<StringArray>()
                    .ok_or_else(|| internal("key cast"))?
                    .clone(),
            ),
            None => None,
        };
        for row in 0..self.encoded.len() {
            let value = self.encoded[row].clone();
            let key = keys.as_ref().filter(|k| !k.is_null(row)).map(|k| {
                let begin = self.bytes.len();
                self.bytes.extend_from_slice(k.value(row).as_bytes());
                begin..self.bytes.len()
            });
            let size = value.len() + key.as_ref().map_or(0, ExactSizeIterator::len);
            if size + RECORD_OVERHEAD > self.max_bytes {
                let error = format!(
                    "a record of {size} bytes for sink `{}` exceeds its message.max.bytes ({}) with its framing",
                    self.name, self.max_bytes
                );
                self.metrics.oversize += 1;
                ctx.dead_letter(
                    self.bytes[value].to_vec(),
                    vec![
                        ("error".to_string(), error.into_bytes()),
                        ("sink".to_string(), self.name.clone().into_bytes()),
                        (
                            "sink-topic".to_string(),
                            self.metrics.topic.clone().into_bytes(),
                        ),
                    ],
                );
                continue;
            }
            self.buffered += value.len() as u64;
            self.buffer.push((key, value));
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<Flushed, RuntimeError> {
        if self.exactly_once {
            return Ok(Flushed::default());
        }
        if self.buffer.is_empty() {
            // Only dead-lettered records' bytes, if any.
            self.bytes.clear();
            return Ok(Flushed::default());
        }
        let bytes = &self.bytes;
        let records: Vec<OutRecord<'_>> = self
            .buffer
            .iter()
            .map(|(k, v)| OutRecord {
                key: k.clone().map(|k| &bytes[k]),
                value: &bytes[v.clone()],
                timestamp: None,
                partition: None,
            })
            .collect();
        self.sink.send(&records, &[]).await?;
        let flushed = Flushed {
            records: records.len() as u64,
            bytes: records.iter().map(|r| r.value.len() as u64).sum(),
        };
        // The producer has copied the records.
        self.buffer.clear();
        self.bytes.clear();
        self.buffered = 0;
        self.metrics.records += flushed.records;
        self.metrics.bytes += flushed.bytes;
        Ok(flushed)
    }

    fn transactional(&mut self) -> Vec<connectors::changelog::OutputRecord> {
        if !self.exactly_once {
            return Vec::new();
        }
        self.metrics.records += self.buffer.len() as u64;
        self.metrics.bytes += self.buffered;
        self.buffered = 0;
        let out = self
            .buffer
            .drain(..)
            .map(|(key, value)| connectors::changelog::OutputRecord {
                topic: self.metrics.topic.clone(),
                key: key.map(|k| self.bytes[k].to_vec()),
                value: self.bytes[value].to_vec(),
                headers: Vec::new(),
            })
            .collect();
        self.bytes.clear();
        out
    }

    fn pending_bytes(&self) -> u64 {
        if self.exactly_once { self.buffered } else { 0 }
    }

    fn delivery(&self) -> Result<Option<(u64, u64)>, RuntimeError> {
        Ok(Some((self.sink.handed(), self.sink.delivered()?)))
    }

    fn report(&self, name: &str, detail: &mut Detail) {
        detail.sinks.insert(name.to_string(), self.metrics.clone());
    }
}
