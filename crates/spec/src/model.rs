//! The pipeline language, v1: the typed form of a pipeline file.
//!
//! Every struct denies unknown fields and documents every field; the user docs and the JSON
//! Schema (`pipectl schema`) are generated from these comments, so edit them as user-facing
//! text.

use std::collections::BTreeMap;
use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, de};

use crate::duration::Duration;

/// A streaming pipeline: Kafka sources, SQL transforms and windows, incremental models and
/// Kafka sinks.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[schemars(title = "Pipeline")]
pub struct Pipeline {
    /// Version of the pipeline language. Always `pipelines/v1`.
    pub api_version: ApiVersion,
    /// Kind of document. Always `Pipeline`.
    pub kind: DocumentKind,
    /// Name and description of the pipeline.
    pub metadata: Metadata,
    /// What the pipeline reads, computes and writes.
    pub spec: PipelineSpec,
}

/// Version of the pipeline language.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
pub enum ApiVersion {
    /// Version 1.
    #[serde(rename = "pipelines/v1")]
    V1,
}

/// Kind of document.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
pub enum DocumentKind {
    /// A pipeline.
    Pipeline,
}

/// Name and description of a pipeline.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub struct Metadata {
    /// Unique name of the pipeline in an engine: lowercase letters, digits and `-`, at most 63
    /// characters (like a Kubernetes name). Also the default Kafka consumer group.
    pub name: String,
    /// What the pipeline is for, shown by `pipectl list` and `pipectl get`.
    #[serde(default)]
    pub description: Option<String>,
    /// Free-form labels for selecting and grouping pipelines. Never used as metric labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// The body of a pipeline.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub struct PipelineSpec {
    /// Kafka topics the pipeline reads. Each source is a table that SQL can query by its name.
    pub sources: Vec<Source>,
    /// SQL transforms, stateless or windowed. Each is a table named after it.
    #[serde(default)]
    pub transforms: Vec<Transform>,
    /// Incremental models that learn from every event of their input.
    #[serde(default)]
    pub models: Vec<Model>,
    /// Kafka topics the pipeline writes.
    #[serde(default)]
    pub sinks: Vec<Sink>,
    /// How often the pipeline commits: its state, the source offsets past what it has
    /// processed and, in one Kafka transaction with them, the records of its `exactly_once`
    /// sinks, which become visible to `read_committed` readers then. From 100ms to 1h.
    /// Default: the runner's `--checkpoint-interval`, else 1s with an `exactly_once` sink
    /// and 10s without (as Kafka Streams' `commit.interval.ms` is shorter under
    /// exactly-once).
    #[serde(default)]
    pub commit_every: Option<Duration>,
}

/// A Kafka source: a topic decoded with an event schema.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub struct Source {
    /// Position in its list in the file (set by the loader, not read from YAML).
    #[serde(skip)]
    #[schemars(skip)]
    pub index: usize,
    /// Name of the source; SQL reads it as a table of this name. Lowercase letters, digits and
    /// `_`, starting with a letter.
    pub name: String,
    /// The Kafka topic and how to consume it.
    pub kafka: KafkaSource,
    /// Encoding of the message values.
    pub format: Format,
    /// Event schema: a path under `schemas/` without the `.avsc` suffix, such as
    /// `production/sensor_reading`.
    pub schema: String,
    /// Where each event's time comes from, and how out of order events may arrive. Without it
    /// the Kafka message timestamp is the event time and no disorder is allowed.
    #[serde(default)]
    pub event_time: Option<EventTime>,
    /// What to do with a message that cannot be decoded or fails the schema.
    #[serde(default)]
    pub on_error: OnError,
    /// Topic for records that fail, when `on_error` is `dead_letter`. Defaults to
    /// `<pipeline>.<source>.dead_letter`.
    #[serde(default)]
    pub dead_letter_topic: Option<String>,
    /// Read the topic as a table (a compacted changelog): the latest row per key. Stream
    /// transforms join it as a lookup table; it cannot be windowed.
    #[serde(default)]
    pub table: Option<TableSource>,
    /// The column whose value the producers put in the message key, so that every event of
    /// one value of it is in one partition. Windows grouped by it and models keyed by it
    /// then run as one task per partition, in parallel (see docs/scaling.md).
    #[serde(default)]
    pub key: Option<String>,
}

/// A source read as a table.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub struct TableSource {
    /// Column whose value identifies a row; a newer row with the same key replaces it.
    pub key: String,
}

/// How a transform joins two streams.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub struct Join {
    /// Rows of the two streams can match while their event times are at most this far apart;
    /// each side's rows are kept this long (plus `max_out_of_order`) past the other side's
    /// stream time. Write the same bound in the SQL condition to make results independent of
    /// timing.
    pub within: Duration,
}

/// The Kafka side of a source.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub struct KafkaSource {
    /// Topic to read, all partitions.
    pub topic: String,
    /// Where a consumer group with no committed offset starts, or where every run starts.
    #[serde(default)]
    pub start_from: StartFrom,
    /// Consumer group. Defaults to the pipeline's name, so several engine instances running
    /// the same pipeline share the partitions.
    #[serde(default)]
    pub group: Option<String>,
    /// Extra librdkafka consumer properties, from an allow-list (security protocol, SASL
    /// PLAIN/SCRAM credentials, TLS as PEM text, client tuning within bounds; see
    /// docs/security.md). A secret such as `sasl.password` must be exactly `${NAME}`.
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
}

/// Where consumption starts.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum StartFrom {
    /// The group's committed offsets; the earliest offset where the group has none. This is
    /// what Kafka Streams does, and what lets a restarted pipeline resume.
    #[default]
    Committed,
    /// The earliest offset still in the topic, ignoring committed offsets.
    Earliest,
    /// Only messages written after the pipeline starts.
    Latest,
    /// The first offset whose timestamp is at or after this time (RFC 3339, such as
    /// `2026-11-01T00:00:00Z`).
    Timestamp(String),
}

/// Message encodings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    /// One JSON object per message, fields named as in the schema.
    Json,
    /// Avro binary encoding of the declared schema, no framing.
    Avro,
    /// Confluent wire format: magic byte 0, a 4-byte schema id, then Avro binary.
    AvroConfluent,
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Format::Json => "json",
            Format::Avro => "avro",
            Format::AvroConfluent => "avro_confluent",
        })
    }
}

/// Event time of a source.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub struct EventTime {
    /// Timestamp field of the schema that holds the event time. Omit to use the Kafka message
    /// timestamp.
    #[serde(default)]
    pub field: Option<String>,
    /// How far behind the newest event time of its partition an event may arrive and still
    /// count. The watermark is the newest event time seen minus this.
    #[serde(default)]
    pub max_out_of_order: Duration,
    /// A partition with no message for this long stops holding back the watermark.
    #[serde(default)]
    pub idle_timeout: Option<Duration>,
}

/// What happens to a record that fails to decode or validate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum OnError {
    /// Stop the pipeline with the error (the Kafka Streams default).
    #[default]
    Fail,
    /// Skip the record and count it in `pipeline_errors_total`.
    Skip,
    /// Write the original bytes to the dead-letter topic, with the source topic, partition,
    /// offset and error in headers, and count it.
    DeadLetter,
}

/// A SQL transform.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub struct Transform {
    /// Position in its list in the file (set by the loader, not read from YAML).
    #[serde(skip)]
    #[schemars(skip)]
    pub index: usize,
    /// Name of the transform; later SQL reads its output as a table of this name.
    pub name: String,
    /// One SQL `SELECT` (joins allowed) over sources, transforms and model outputs
    /// (`<model>.predictions`). No DDL, no DML, one statement; at most 64 KiB, expressions
    /// nested at most 256 deep, 32 tables and 64 SELECT blocks (docs/security.md).
    pub sql: String,
    /// Makes the transform an event-time window aggregation: the SQL sees two extra columns,
    /// `window_start` and `window_end`, and must `GROUP BY` them. Rows are emitted once the
    /// watermark passes `window_end`.
    #[serde(default)]
    pub window: Option<Window>,
    /// Required when the SQL joins two streams (an interval join).
    #[serde(default)]
    pub join: Option<Join>,
}

/// An event-time window. Give exactly one of `tumbling`, `hopping` or `session`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub struct Window {
    /// Fixed, non-overlapping windows of this size, aligned to the Unix epoch.
    #[serde(default)]
    pub tumbling: Option<Duration>,
    /// Overlapping windows of `size` starting every `slide`.
    #[serde(default)]
    pub hopping: Option<Hopping>,
    /// Windows per group that close after `gap` without events.
    #[serde(default)]
    pub session: Option<Session>,
    /// Timestamp column that places rows in windows. Defaults to the event-time field of the
    /// source the input comes from.
    #[serde(default)]
    pub time_field: Option<String>,
    /// What happens to an event whose window has already been emitted.
    #[serde(default)]
    pub on_late: OnLate,
}

/// Hopping window sizes.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub struct Hopping {
    /// Length of each window.
    pub size: Duration,
    /// Distance between window starts; at most `size`.
    pub slide: Duration,
}

/// Session window gap.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub struct Session {
    /// A session ends when its group sees no event for this long.
    pub gap: Duration,
}

/// What happens to late events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum OnLate {
    /// Drop the event and count it in `pipeline_late_events_total`.
    #[default]
    Drop,
    /// Write the event to the source's dead-letter topic with the reason, and count it.
    DeadLetter,
}

/// An incremental model. Give exactly one of `regression` or `clustering`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub struct Model {
    /// Position in its list in the file (set by the loader, not read from YAML).
    #[serde(skip)]
    #[schemars(skip)]
    pub index: usize,
    /// Name of the model; its outputs are `<name>.predictions` and `<name>.snapshots`.
    pub name: String,
    /// Source or transform whose rows the model learns from.
    pub input: String,
    /// Column that splits the model: one model per distinct value. Omit for one global model.
    #[serde(default)]
    pub key: Option<String>,
    /// Linear regression updated per event.
    #[serde(default)]
    pub regression: Option<Regression>,
    /// Mini-batch k-means updated per micro-batch.
    #[serde(default)]
    pub clustering: Option<Clustering>,
    /// Input columns copied onto every prediction, such as an id to join on.
    #[serde(default)]
    pub passthrough: Vec<String>,
    /// How often a snapshot (coefficients or centroids, metrics) is emitted.
    #[serde(default)]
    pub snapshot_every: Option<SnapshotEvery>,
    /// Prometheus metrics per key. Off by default: keys are event values, so they become
    /// metric labels only when asked for, and only for a bounded number of keys.
    #[serde(default)]
    pub metrics: Option<ModelMetrics>,
}

/// Per-key metrics of a keyed model.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub struct ModelMetrics {
    /// Export quality metrics with a `key` label for at most this many keys (those with the
    /// most samples), 1 to 100.
    pub per_key: u32,
}

/// Incremental linear regression.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub struct Regression {
    /// Numeric column to predict. Rows where it is null are predicted but not learnt from.
    pub target: String,
    /// Input columns: a numeric column by name, or a categorical column with `one_hot` or
    /// `hash_buckets`.
    pub features: Vec<Feature>,
    /// Exponential forgetting on event time: a sample's weight halves every `half_life`.
    /// Omit to weigh all history equally.
    #[serde(default)]
    pub half_life: Option<Duration>,
    /// Scale-free ridge: this factor times the diagonal of the feature co-moments is added
    /// before solving. 0 gives ordinary least squares.
    #[serde(default)]
    pub ridge: f64,
    /// Drift detection on the prediction residuals.
    #[serde(default)]
    pub drift: Option<Drift>,
}

/// Incremental k-means clustering.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub struct Clustering {
    /// Number of clusters, 2 to 1024.
    pub k: u32,
    /// Input columns, as for regression.
    pub features: Vec<Feature>,
    /// Forgetting: a cluster's weight halves every `half_life` of event time. Omit to weigh all
    /// history equally.
    #[serde(default)]
    pub half_life: Option<Duration>,
    /// Events buffered for k-means++ seeding before the first assignment, at most 100,000.
    #[serde(default = "default_seed_sample")]
    pub seed_sample: u32,
    /// k-means++ runs on the seed sample, 1 to 20; the one with the least inertia wins.
    #[serde(default = "default_seed_tries")]
    pub seed_tries: u32,
    /// Fraction of the seed sample left out as outliers before seeding (the points farthest
    /// from their nearest neighbours), 0 to 0.25. Use it when the data has anomalies that
    /// must not become centres: 2 to 5 times the expected anomaly rate.
    #[serde(default)]
    pub seed_trim: f64,
    /// Standardise features online before clustering (recommended when units differ).
    #[serde(default = "default_true")]
    pub standardize: bool,
    /// A cluster whose share of the total weight falls below this fraction is reseeded on a
    /// distant point.
    #[serde(default = "default_reseed_below")]
    pub reseed_below: f64,
    /// Seed of the random generator, for reproducible runs.
    #[serde(default)]
    pub random_seed: u64,
}

fn default_seed_sample() -> u32 {
    1000
}
fn default_seed_tries() -> u32 {
    5
}
fn default_true() -> bool {
    true
}
fn default_reseed_below() -> f64 {
    0.001
}

/// A model input column.
#[derive(Debug, Clone, PartialEq, JsonSchema)]
#[serde(untagged)]
pub enum Feature {
    /// A numeric column, used as it is.
    Numeric(String),
    /// A categorical column turned into numbers.
    Categorical(CategoricalFeature),
}

impl Feature {
    /// The column the feature reads.
    pub fn column(&self) -> &str {
        match self {
            Feature::Numeric(name) => name,
            Feature::Categorical(c) => &c.name,
        }
    }
}

impl<'de> Deserialize<'de> for Feature {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct FeatureVisitor;
        impl<'de> de::Visitor<'de> for FeatureVisitor {
            type Value = Feature;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(
                    "a column name, or a mapping with `name` and `one_hot` or `hash_buckets`",
                )
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Feature, E> {
                Ok(Feature::Numeric(v.to_string()))
            }
            fn visit_map<A: de::MapAccess<'de>>(self, map: A) -> Result<Feature, A::Error> {
                CategoricalFeature::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(Feature::Categorical)
            }
        }
        deserializer.deserialize_any(FeatureVisitor)
    }
}

/// A categorical feature. Give exactly one of `one_hot` or `hash_buckets`.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub struct CategoricalFeature {
    /// Column to read (a string or integer column).
    pub name: String,
    /// Declared vocabulary: one 0/1 input per value; values outside it set none.
    #[serde(default)]
    pub one_hot: Option<Vec<String>>,
    /// Feature hashing into this many inputs, for open vocabularies. A model has at most
    /// 128 inputs (regression) or 256 (clustering) once features are expanded.
    #[serde(default)]
    pub hash_buckets: Option<u32>,
}

/// Page-Hinkley drift detection on the absolute prediction residuals (no standardisation
/// option exists for regression: with the scale-free ridge, scaling features changes nothing).
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub struct Drift {
    /// Alarm threshold (lambda) in units of the residual.
    pub threshold: f64,
    /// Tolerated change (delta) in the residual mean before it counts toward drift.
    #[serde(default)]
    pub tolerance: f64,
    /// What an alarm does.
    #[serde(default)]
    pub on_drift: OnDrift,
}

/// Reaction to a drift alarm.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum OnDrift {
    /// Only report: a metric and a field in the snapshot.
    #[default]
    Signal,
    /// Forget faster from now on: use this half-life.
    ShortenHalfLife(Duration),
    /// Start learning from scratch.
    Reset,
}

/// When snapshots are emitted; the first trigger that fires wins.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub struct SnapshotEvery {
    /// After this many learnt events.
    #[serde(default)]
    pub events: Option<u64>,
    /// After this much event time.
    #[serde(default)]
    pub time: Option<Duration>,
}

/// A Kafka sink.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub struct Sink {
    /// Position in its list in the file (set by the loader, not read from YAML).
    #[serde(skip)]
    #[schemars(skip)]
    pub index: usize,
    /// Name of the sink.
    pub name: String,
    /// What to write: a source, a transform, `<model>.predictions` or `<model>.snapshots`.
    pub from: String,
    /// The Kafka topic and producer settings.
    pub kafka: KafkaSink,
    /// Encoding of the message values.
    pub format: Format,
    /// Column whose value becomes the Kafka message key (so that one key's records stay in
    /// one partition and in order). Omit for no key.
    #[serde(default)]
    pub key: Option<String>,
    /// Delivery guarantee.
    #[serde(default)]
    pub delivery: Delivery,
    /// With `format: avro_confluent`: the registry subject the sink's schema is registered
    /// under (the record is named after the sink).
    #[serde(default)]
    pub subject_strategy: SubjectStrategy,
}

/// How a sink's registry subject is named (Confluent's subject name strategies).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum SubjectStrategy {
    /// `<topic>-value`: one schema history per topic.
    #[default]
    TopicName,
    /// The record's name: one history per record type, whatever the topic.
    RecordName,
    /// `<topic>-<record name>`: several record types per topic, each with its history.
    TopicRecordName,
}

/// The Kafka side of a sink.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub struct KafkaSink {
    /// Topic to write.
    pub topic: String,
    /// Extra librdkafka producer properties, from an allow-list (for example
    /// `compression.type`, `linger.ms`; see docs/security.md). A secret such as
    /// `sasl.password` must be exactly `${NAME}`.
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
}

/// Delivery guarantees of a sink.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Delivery {
    /// Idempotent producer; a restart may write a record again.
    #[default]
    AtLeastOnce,
    /// Sink writes and source offsets commit in one Kafka transaction per checkpoint.
    ExactlyOnce,
}
