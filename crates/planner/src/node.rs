//! The resolved plan: what the runtime runs, typed, with every default applied and every
//! name resolved. The runtime reads only these types, never the YAML model of the `spec`
//! crate: a window's shape is an enum, a model's kind is an enum, a duration is a
//! [`Duration`], a dead-letter topic is a name.

use std::collections::BTreeMap;
use std::time::Duration;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::logical_expr::LogicalPlan;

use crate::InputRole;
use crate::sql::InputTable;

/// Where a source starts reading when its group has no committed offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartFrom {
    /// The group's committed offsets; the earliest offset where it has none.
    Committed,
    /// The earliest offset in the topic.
    Earliest,
    /// Messages written after the start.
    Latest,
    /// The first offset at or after this time, milliseconds since the epoch.
    Timestamp(i64),
}

/// Message encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// A JSON object per message.
    Json,
    /// Avro binary, no framing.
    Avro,
    /// Confluent wire format (magic byte, schema id, Avro binary).
    AvroConfluent,
}

/// What a bad record does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnError {
    /// Stop the pipeline with the error.
    Fail,
    /// Skip and count it.
    Skip,
    /// Write it to the source's dead-letter topic.
    DeadLetter,
}

/// What a row that is late for all its windows does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnLate {
    /// Drop and count it.
    Drop,
    /// Write it to the dead-letter topic of the source it came from.
    DeadLetter,
}

/// A source's event time.
#[derive(Debug, Clone)]
pub struct EventTime {
    /// The timestamp column; `None`: the Kafka message timestamp.
    pub field: Option<String>,
    /// How far behind its partition's newest event time an event may arrive.
    pub max_out_of_order: Duration,
    /// A partition quiet for this long stops holding back the watermark.
    pub idle_timeout: Option<Duration>,
}

/// A Kafka source.
#[derive(Debug, Clone)]
pub struct SourcePlan {
    /// Topic read.
    pub topic: String,
    /// Consumer group (the pipeline's name unless set).
    pub group: String,
    /// Where reading starts.
    pub start: StartFrom,
    /// Consumer properties (checked against the allow-list).
    pub properties: BTreeMap<String, String>,
    /// Message encoding.
    pub format: Format,
    /// Name of the event schema (for `pipectl plan`).
    pub schema_name: String,
    /// Decoded rows.
    pub schema: SchemaRef,
    /// The event schema as Avro JSON (the writer schema of Avro messages).
    pub avro_json: String,
    /// Event time, when declared.
    pub event_time: Option<EventTime>,
    /// What a bad record does.
    pub on_error: OnError,
    /// Where dead letters of this source go (bad records, late rows).
    pub dead_letter_topic: String,
    /// The key column when the topic is read as a changelog table.
    pub table_key: Option<String>,
    /// The column the message key carries (`key:`): the partitions of a stream are keyed
    /// by it.
    pub key: Option<String>,
    /// Set when this source reads a repartition topic the pipeline writes itself.
    pub exchange: Option<Exchange>,
}

/// A repartition: the rows a keyed operator reads go through an internal topic keyed by
/// the operator's key, written by the tasks upstream and read back by the task that owns
/// each key. Written by an exchange sink, read by an exchange source (same value on both).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exchange {
    /// The operator it feeds.
    pub feeds: String,
    /// The node whose rows it carries.
    pub carries: String,
    /// Columns whose values key the rows; none: every row goes to partition 0.
    pub by: Vec<String>,
    /// Why the rows are repartitioned.
    pub why: String,
    /// The event-time column of the rows, when the operator fed needs a watermark: the
    /// writers then send their progress per partition they read (see the runtime's
    /// `exchange` module).
    pub time_field: Option<String>,
}

/// The shape of a window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowShape {
    /// Fixed windows of `size`.
    Tumbling {
        /// Window length.
        size: Duration,
    },
    /// Windows of `size` starting every `slide`.
    Hopping {
        /// Window length.
        size: Duration,
        /// Distance between window starts.
        slide: Duration,
    },
    /// A window per burst of a key's events, closed after `gap` without one.
    Session {
        /// Inactivity that closes a session.
        gap: Duration,
    },
}

/// What kind of operator runs a transform.
#[derive(Debug, Clone)]
pub enum TransformKind {
    /// Filters, projections, scalar functions and lookup joins with tables.
    Stateless,
    /// An event-time window aggregation.
    Window {
        /// Its shape.
        shape: WindowShape,
        /// The column placing rows in windows.
        time_field: String,
        /// What late rows do.
        on_late: OnLate,
    },
    /// An interval join of two streams.
    IntervalJoin {
        /// How far apart in event time two rows may be and still meet.
        within: Duration,
    },
}

/// A SQL transform.
#[derive(Debug, Clone)]
pub struct TransformPlan {
    /// What runs it.
    pub kind: TransformKind,
    /// Each input table as the SQL was planned against it (with `window_start` and
    /// `window_end` for windowed transforms).
    pub inputs: Vec<InputTable>,
    /// What each input is: a stream (with its event-time column, if known) or a table.
    pub roles: Vec<InputRole>,
    /// DataFusion's optimized logical plan, over tables named as `inputs`.
    pub plan: LogicalPlan,
    /// Output rows.
    pub schema: SchemaRef,
}

/// A model input column.
#[derive(Debug, Clone, PartialEq)]
pub enum Feature {
    /// A numeric column as it is.
    Numeric(String),
    /// One 0/1 input per listed value.
    OneHot {
        /// The column.
        column: String,
        /// The vocabulary.
        values: Vec<String>,
    },
    /// One 0/1 input per hash bucket.
    Hashed {
        /// The column.
        column: String,
        /// Number of buckets.
        buckets: u32,
    },
}

/// What a drift alarm does.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum OnDrift {
    /// Only report it.
    Signal,
    /// Forget faster from now on.
    ShortenHalfLife(Duration),
    /// Start learning again.
    Reset,
}

/// Page-Hinkley drift detection on absolute residuals.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Drift {
    /// Alarm threshold (lambda).
    pub threshold: f64,
    /// Tolerated change (delta).
    pub tolerance: f64,
    /// What an alarm does.
    pub on_drift: OnDrift,
}

/// An incremental linear regression.
#[derive(Debug, Clone)]
pub struct Regression {
    /// Target column.
    pub target: String,
    /// Its inputs.
    pub features: Vec<Feature>,
    /// Exponential forgetting.
    pub half_life: Option<Duration>,
    /// Ridge penalty (scale-free).
    pub ridge: f64,
    /// Drift detection.
    pub drift: Option<Drift>,
}

/// An incremental k-means.
#[derive(Debug, Clone)]
pub struct Clustering {
    /// Number of clusters.
    pub k: u32,
    /// Its inputs.
    pub features: Vec<Feature>,
    /// Exponential forgetting.
    pub half_life: Option<Duration>,
    /// Rows buffered before seeding.
    pub seed_sample: u32,
    /// k-means++ seedings tried.
    pub seed_tries: u32,
    /// Share of the seed sample trimmed as outliers.
    pub seed_trim: f64,
    /// Standardise inputs online.
    pub standardize: bool,
    /// A cluster whose weight share falls below this is reseeded.
    pub reseed_below: f64,
    /// Seed of the random choices.
    pub random_seed: u64,
}

/// The kind of model.
#[derive(Debug, Clone)]
pub enum ModelKind {
    /// A regression.
    Regression(Regression),
    /// A clustering.
    Clustering(Clustering),
}

/// An incremental model.
#[derive(Debug, Clone)]
pub struct ModelPlan {
    /// The table it learns from.
    pub input: String,
    /// Its input rows.
    pub input_schema: SchemaRef,
    /// One model per value of this column; `None`: one global model.
    pub key: Option<String>,
    /// Regression or clustering.
    pub kind: ModelKind,
    /// Input columns copied to each prediction.
    pub passthrough: Vec<String>,
    /// Snapshots after this many learnt rows of a key (the default: 1,000 when neither).
    pub snapshot_events: Option<u64>,
    /// Snapshots after this much event time of a key.
    pub snapshot_time: Option<Duration>,
    /// Keys with their own quality metrics.
    pub metrics_per_key: Option<u32>,
    /// The input's event-time column, when it has one.
    pub time_field: Option<String>,
    /// `<model>.predictions`.
    pub predictions: SchemaRef,
    /// `<model>.snapshots`.
    pub snapshots: SchemaRef,
}

/// Delivery guarantee of a sink.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// A restart may write a record again.
    AtLeastOnce,
    /// One Kafka transaction per checkpoint (not built yet: refused by the planner).
    ExactlyOnce,
}

/// A Kafka sink.
#[derive(Debug, Clone)]
pub struct SinkPlan {
    /// The table written.
    pub from: String,
    /// Topic written.
    pub topic: String,
    /// Producer properties (checked against the allow-list).
    pub properties: BTreeMap<String, String>,
    /// Message encoding.
    pub format: Format,
    /// Column whose value is the message key.
    pub key: Option<String>,
    /// Delivery guarantee.
    pub delivery: Delivery,
    /// The registry subject of an `avro_confluent` sink's schema, by its subject strategy.
    pub subject: String,
    /// Rows written.
    pub schema: SchemaRef,
    /// Set when this sink writes a repartition topic read back by the pipeline.
    pub exchange: Option<Exchange>,
}

/// The kinds of node, each with what the runtime needs.
#[derive(Debug, Clone)]
pub enum NodeKind {
    /// A Kafka source.
    Source(SourcePlan),
    /// A SQL transform.
    Transform(TransformPlan),
    /// An incremental model.
    Model(ModelPlan),
    /// A Kafka sink.
    Sink(SinkPlan),
}

/// A schema as text that does not depend on hash-map order: each field's name, nullability
/// and type (`DataType`'s `Display` sorts nested fields' metadata); fields' own metadata
/// does not change what state means and is left out.
pub fn canonical(schema: &datafusion::arrow::datatypes::Schema) -> String {
    schema
        .fields()
        .iter()
        .map(|f| format!("{}:{}:{}", f.name(), f.is_nullable(), f.data_type()))
        .collect::<Vec<_>>()
        .join(",")
}

/// FNV-1a of `bytes`: stable across processes and platforms (state fingerprints, and
/// the runtime's feature hashing).
pub fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use datafusion::arrow::datatypes::{DataType, Field, Fields, Schema};

    use super::canonical;

    /// The same schema built twice, with metadata in hash maps of their own (whose
    /// iteration orders differ), must read the same: checkpoints are restored by it.
    #[test]
    fn canonical_schema_text_does_not_depend_on_hash_map_order() {
        let build = || {
            let metadata: HashMap<String, String> = (0..16)
                .map(|i| (format!("key{i}"), format!("value{i}")))
                .collect();
            let inner = Field::new("kind", DataType::Utf8, false).with_metadata(metadata.clone());
            Schema::new(vec![
                Field::new("status", DataType::Utf8, true).with_metadata(metadata.clone()),
                Field::new("nested", DataType::Struct(Fields::from(vec![inner])), true),
            ])
        };
        let texts: std::collections::BTreeSet<String> =
            (0..20).map(|_| canonical(&build())).collect();
        assert_eq!(texts.len(), 1, "{texts:?}");
        // The Debug text, which fingerprints used before, is not stable.
        let debug: std::collections::BTreeSet<String> =
            (0..20).map(|_| format!("{:?}", build())).collect();
        assert!(debug.len() > 1, "hash-map order did vary in this process");
    }
}
