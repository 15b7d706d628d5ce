//! Kafka connectors: a source that reads micro-batches of raw messages, a sink that writes
//! records with an idempotent producer, and topic administration. They move bytes; decoding
//! and encoding are the formats crate's job.
//!
//! `start_from: committed` subscribes to the topic in the consumer group, so several engine
//! instances share its partitions (Kafka assigns them). `earliest`, `latest` and `timestamp`
//! mean "every run starts there": those runs assign all partitions themselves and still
//! commit offsets under the group, for lag monitoring. A run resuming from a checkpoint
//! assigns all partitions at the checkpoint's offsets.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, ProducerContext, ThreadedProducer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

pub use delivery::Ledger;

pub mod changelog;
mod delivery;
pub mod membership;
pub mod memory;
pub mod registry;
mod watermarks;

/// Where a run's micro-batches of raw messages come from: a Kafka topic, or a topic of the
/// in-memory broker ([`memory::Memory`]) in tests and benchmarks.
pub trait Source: Send + Sync + 'static {
    /// All partitions of the topic.
    fn partitions(&self) -> &[i32];
    /// Where each partition this run assigned itself started (concrete offsets).
    fn start_offsets(&self) -> &BTreeMap<i32, i64>;
    /// Fills `batch` with up to the configured number of messages, waiting at most the
    /// configured time; an empty batch means nothing arrived meanwhile.
    fn next_batch(
        &self,
        batch: &mut RawBatch,
    ) -> impl std::future::Future<Output = Result<(), ConnectorError>> + Send;
    /// Commits `next` (next offset to read per partition) for the group, and waits for the
    /// group coordinator to take it.
    fn commit(&self, next: &BTreeMap<i32, i64>) -> Result<(), ConnectorError>;
    /// Sends a commit of `next` without waiting for it (a later commit covers it if it is
    /// lost).
    fn commit_async(&self, next: &BTreeMap<i32, i64>) -> Result<(), ConnectorError> {
        self.commit(next)
    }
    /// Messages behind the end per partition (-1: unknown), `known` being the caller's next
    /// offsets for partitions nothing was read from yet.
    fn lag(&self, known: &BTreeMap<i32, i64>) -> BTreeMap<i32, i64>;
    /// As `lag`, without waiting for the broker: from watermarks fetched meanwhile (at most
    /// about a second old; -1 where none has been fetched yet).
    fn cached_lag(&self, known: &BTreeMap<i32, i64>) -> BTreeMap<i32, i64> {
        self.lag(known)
    }
}

/// Where a run writes records: a Kafka topic, or a topic of the in-memory broker.
///
/// Writing is in two steps, so that producing overlaps the next micro-batch: `send` hands
/// records to the producer (one *delivery group* per call) and returns before Kafka has
/// acknowledged them; `delivered` says how many groups, counted from the first, are
/// acknowledged, and `settle` waits for all of them (the barrier before offsets commit).
pub trait Sink: Send + Sync + 'static {
    /// Hands every record to the producer as one delivery group (waiting only while the
    /// producer's queue is full); an empty call is no group.
    fn send(
        &self,
        records: &[OutRecord<'_>],
        extra_headers: &[(&str, &[u8])],
    ) -> impl std::future::Future<Output = Result<(), ConnectorError>> + Send;
    /// Hands over records that each carry their own headers (dead letters), as one group.
    fn send_with_headers(
        &self,
        records: &[(OutRecord<'_>, RecordHeaders)],
    ) -> impl std::future::Future<Output = Result<(), ConnectorError>> + Send;
    /// Delivery groups handed over so far.
    fn handed(&self) -> u64;
    /// How many of the first groups are acknowledged, every record of each; an error when
    /// Kafka refused or timed out a record.
    fn delivered(&self) -> Result<u64, ConnectorError>;
    /// Waits until every group handed over is acknowledged.
    fn settle(&self) -> impl std::future::Future<Output = Result<(), ConnectorError>> + Send {
        async move {
            while self.delivered()? < self.handed() {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            Ok(())
        }
    }
    /// Writes every record and waits until all are acknowledged.
    fn send_all(
        &self,
        records: &[OutRecord<'_>],
        extra_headers: &[(&str, &[u8])],
    ) -> impl std::future::Future<Output = Result<(), ConnectorError>> + Send {
        async move {
            self.send(records, extra_headers).await?;
            self.settle().await
        }
    }
}

/// Makes the sources and sinks of a run: the runner is generic over it, so a whole pipeline
/// runs on Kafka or, in tests, without a broker.
pub trait Connect: Clone + Send + Sync + 'static {
    /// Its sources.
    type Source: Source;
    /// Its sinks.
    type Sink: Sink;
    /// Its changelogs (the state of tasks).
    type Changelog: changelog::Changelog;
    /// Its members of consumer groups.
    type Membership: membership::Membership;
    /// The changelog of one task: its state transactions as `id` (fencing any earlier
    /// holder of `id`), committing source offsets for `groups` (through `member` for its
    /// group).
    fn changelog(
        &self,
        id: &str,
        groups: &[String],
        properties: &BTreeMap<String, String>,
        member: Option<&Self::Membership>,
    ) -> Result<Self::Changelog, ConnectorError>;
    /// Joins `group` for the partitions of `topic`: the group's assignments and
    /// revocations arrive on the receiver.
    fn join(
        &self,
        group: &str,
        topic: &str,
        properties: &BTreeMap<String, String>,
    ) -> Result<membership::Joined<Self::Membership>, ConnectorError>;
    /// Creates the internal topic `topic` of `partitions` partitions (`compacted`: a
    /// changelog; else a repartition topic) unless it exists; one that exists with another
    /// number of partitions is refused.
    fn internal_topic(
        &self,
        topic: &str,
        partitions: usize,
        compacted: bool,
        properties: &BTreeMap<String, String>,
    ) -> impl std::future::Future<Output = Result<(), ConnectorError>> + Send;
    /// The partitions of `topic`, asked with the source's client `properties`.
    fn partitions(
        &self,
        topic: &str,
        properties: &BTreeMap<String, String>,
    ) -> Result<Vec<i32>, ConnectorError>;
    /// Connects a source as `config` says.
    fn source(&self, config: &SourceConfig) -> Result<Self::Source, ConnectorError>;
    /// A sink writing `topic` with `headers` on every record.
    fn sink(
        &self,
        topic: &str,
        properties: &BTreeMap<String, String>,
        headers: Vec<(String, String)>,
    ) -> Result<Self::Sink, ConnectorError>;
}

/// Kafka, through librdkafka. Its clones share one producer per client configuration, so
/// the sinks of every task of a run write through the same producer.
#[derive(Clone)]
pub struct Kafka {
    /// `host:port` list.
    pub bootstrap: String,
    producers: std::sync::Arc<std::sync::Mutex<Vec<SharedProducer>>>,
}

/// A producer and the client properties it was made with.
type SharedProducer = (BTreeMap<String, String>, Producer);

impl std::fmt::Debug for Kafka {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kafka")
            .field("bootstrap", &self.bootstrap)
            .finish()
    }
}

impl Kafka {
    /// Kafka at `bootstrap` (`host:port` list).
    pub fn new(bootstrap: impl Into<String>) -> Self {
        Self {
            bootstrap: bootstrap.into(),
            producers: Default::default(),
        }
    }

    /// The producer of `properties`, made on first use.
    fn producer(&self, properties: &BTreeMap<String, String>) -> Result<Producer, ConnectorError> {
        let mut producers = self
            .producers
            .lock()
            .map_err(|_| ConnectorError::Config("a producer panicked".into()))?;
        if let Some((_, p)) = producers.iter().find(|(props, _)| props == properties) {
            return Ok(p.clone());
        }
        let p = producer(&self.bootstrap, properties)?;
        producers.push((properties.clone(), p.clone()));
        Ok(p)
    }
}

impl Connect for Kafka {
    type Source = KafkaSource;
    type Sink = KafkaSink;
    type Changelog = changelog::KafkaChangelog;
    type Membership = membership::KafkaMembership;
    fn changelog(
        &self,
        id: &str,
        groups: &[String],
        properties: &BTreeMap<String, String>,
        member: Option<&Self::Membership>,
    ) -> Result<Self::Changelog, ConnectorError> {
        changelog::KafkaChangelog::new(&self.bootstrap, id, groups, properties, member)
    }
    fn join(
        &self,
        group: &str,
        topic: &str,
        properties: &BTreeMap<String, String>,
    ) -> Result<membership::Joined<Self::Membership>, ConnectorError> {
        membership::KafkaMembership::join(&self.bootstrap, group, topic, properties)
    }
    async fn internal_topic(
        &self,
        topic: &str,
        partitions: usize,
        compacted: bool,
        properties: &BTreeMap<String, String>,
    ) -> Result<(), ConnectorError> {
        match self.partitions(topic, properties) {
            Ok(existing) if existing.len() == partitions => return Ok(()),
            Ok(existing) => {
                return Err(ConnectorError::Config(format!(
                    "internal topic `{topic}` has {} partitions, the pipeline has {partitions} tasks: its partitioning changed since the topic was made; delete the topic to start over",
                    existing.len()
                )));
            }
            Err(_) => {}
        }
        let policy = if compacted { "compact" } else { "delete" };
        create_topic_with(
            &self.bootstrap,
            topic,
            partitions as i32,
            -1,
            &[("cleanup.policy", policy)],
            properties,
        )
        .await
    }
    fn partitions(
        &self,
        topic: &str,
        properties: &BTreeMap<String, String>,
    ) -> Result<Vec<i32>, ConnectorError> {
        let mut client = ClientConfig::new();
        for (k, v) in properties {
            client.set(k, v);
        }
        let consumer: rdkafka::consumer::BaseConsumer = client
            .set("bootstrap.servers", &self.bootstrap)
            .create()
            .map_err(kafka("creating a metadata client"))?;
        topic_partitions(&consumer, topic)
    }
    fn source(&self, config: &SourceConfig) -> Result<KafkaSource, ConnectorError> {
        KafkaSource::connect(&self.bootstrap, config)
    }
    fn sink(
        &self,
        topic: &str,
        properties: &BTreeMap<String, String>,
        headers: Vec<(String, String)>,
    ) -> Result<KafkaSink, ConnectorError> {
        Ok(KafkaSink::with_producer(
            self.producer(properties)?,
            topic,
            headers,
        ))
    }
}

impl Source for KafkaSource {
    fn partitions(&self) -> &[i32] {
        KafkaSource::partitions(self)
    }
    fn start_offsets(&self) -> &BTreeMap<i32, i64> {
        KafkaSource::start_offsets(self)
    }
    async fn next_batch(&self, batch: &mut RawBatch) -> Result<(), ConnectorError> {
        KafkaSource::next_batch(self, batch).await
    }
    fn commit(&self, next: &BTreeMap<i32, i64>) -> Result<(), ConnectorError> {
        KafkaSource::commit(self, next, CommitMode::Sync)
    }
    fn commit_async(&self, next: &BTreeMap<i32, i64>) -> Result<(), ConnectorError> {
        KafkaSource::commit(self, next, CommitMode::Async)
    }
    fn lag(&self, known: &BTreeMap<i32, i64>) -> BTreeMap<i32, i64> {
        KafkaSource::lag(self, known)
    }
    fn cached_lag(&self, known: &BTreeMap<i32, i64>) -> BTreeMap<i32, i64> {
        KafkaSource::cached_lag(self, known)
    }
}

impl Sink for KafkaSink {
    async fn send(
        &self,
        records: &[OutRecord<'_>],
        extra_headers: &[(&str, &[u8])],
    ) -> Result<(), ConnectorError> {
        KafkaSink::send(self, records.iter().map(|r| (r, None)), extra_headers).await
    }
    async fn send_with_headers(
        &self,
        records: &[(OutRecord<'_>, RecordHeaders)],
    ) -> Result<(), ConnectorError> {
        KafkaSink::send(self, records.iter().map(|(r, h)| (r, Some(h))), &[]).await
    }
    fn handed(&self) -> u64 {
        self.ledger.handed()
    }
    fn delivered(&self) -> Result<u64, ConnectorError> {
        self.ledger
            .delivered()
            .map_err(|e| ConnectorError::Config(format!("writing to `{}`: {e}", self.topic)))
    }
}

/// Errors of the Kafka layer.
#[derive(Debug, thiserror::Error)]
pub enum ConnectorError {
    /// Kafka said no, or could not be reached (retryable or not, the message says).
    #[error("kafka: {context}: {source}")]
    Kafka {
        /// What we were doing.
        context: String,
        /// librdkafka's error.
        source: KafkaError,
    },
    /// The configuration cannot work (a missing topic, a bad timestamp).
    #[error("{0}")]
    Config(String),
}

impl ConnectorError {
    /// Whether Kafka refused for lack of rights: a fix of credentials or ACLs is needed, a
    /// retry alone would fail the same way.
    pub fn is_authorization(&self) -> bool {
        let ConnectorError::Kafka { source, .. } = self else {
            return false;
        };
        let code = match source {
            KafkaError::MessageConsumption(c)
            | KafkaError::MessageProduction(c)
            | KafkaError::MetadataFetch(c)
            | KafkaError::ConsumerCommit(c)
            | KafkaError::OffsetFetch(c)
            | KafkaError::AdminOp(c) => *c,
            _ => return false,
        };
        matches!(
            code,
            RDKafkaErrorCode::TopicAuthorizationFailed
                | RDKafkaErrorCode::GroupAuthorizationFailed
                | RDKafkaErrorCode::ClusterAuthorizationFailed
                | RDKafkaErrorCode::SaslAuthenticationFailed
                | RDKafkaErrorCode::Authentication
        )
    }
}

fn kafka(context: impl Into<String>) -> impl FnOnce(KafkaError) -> ConnectorError {
    let context = context.into();
    move |source| ConnectorError::Kafka { context, source }
}

/// Whether a consumer error is one librdkafka recovers from by itself. Fatal errors and
/// authorization failures end the run; the rest (coordinator changes, transport failures,
/// leader elections) are reported as they happen and retried by librdkafka.
fn is_transient(e: &KafkaError) -> bool {
    match e {
        KafkaError::MessageConsumption(code) => !matches!(
            code,
            RDKafkaErrorCode::TopicAuthorizationFailed
                | RDKafkaErrorCode::GroupAuthorizationFailed
                | RDKafkaErrorCode::ClusterAuthorizationFailed
                | RDKafkaErrorCode::Fatal
        ),
        _ => false,
    }
}

/// Where a source starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Start {
    /// Committed offsets of the group (earliest when none).
    Committed,
    /// The earliest offsets.
    Earliest,
    /// The end of each partition.
    Latest,
    /// The first offset at or after this time, ms since the epoch.
    Timestamp(i64),
    /// These next offsets (a checkpoint's); partitions not listed start at the group's
    /// committed offset (earliest when none). All partitions are assigned to this instance.
    Offsets(BTreeMap<i32, i64>),
    /// The group's committed offsets (committed with the state in a changelog); partitions
    /// without one start as the inner start says. Assigned by this instance.
    Resume(Box<Start>),
}

/// How to read a topic.
#[derive(Debug, Clone)]
pub struct SourceConfig {
    /// The topic.
    pub topic: String,
    /// Consumer group id.
    pub group: String,
    /// Where to start.
    pub start: Start,
    /// Extra librdkafka properties.
    pub properties: BTreeMap<String, String>,
    /// Most messages in one micro-batch.
    pub max_batch: usize,
    /// Longest wait for a first message: a read returns an empty batch after it.
    pub max_wait: Duration,
    /// Longest wait for a micro-batch to fill once it has its first message (the latency
    /// target): at low rates a record waits this long at most, not for a full batch.
    pub linger: Duration,
    /// Read only these partitions (a partition task's), assigned by the run itself even
    /// when starting from the group's committed offsets; `None`: every partition.
    pub only: Option<Vec<i32>>,
    /// The topic is a repartition topic of the pipeline: read each message's exchange
    /// headers into [`RawBatch::exchange`].
    pub exchange: bool,
}

/// Headers of an exchange record: which writer (the partition it read, see the runtime's
/// `exchange` module) wrote it and, for a progress mark, what it says.
pub mod exchange_headers {
    /// The writer's number.
    pub const FROM: &str = "x-from";
    /// A mark: the writer's largest event time so far, ms (empty: none yet). Every mark
    /// has it.
    pub const TIME: &str = "x-time";
    /// A mark: the writer's input is idle.
    pub const IDLE: &str = "x-idle";
    /// A mark: the writer's input has ended (a bounded run).
    pub const END: &str = "x-end";
}

/// What the exchange headers of one message say.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Exchanged {
    /// The writer.
    pub from: i32,
    /// Set on a mark (a message without rows).
    pub mark: Option<Mark>,
}

/// A writer's progress, sent to every partition of a repartition topic.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Mark {
    /// Its largest event time so far, ms.
    pub time: Option<i64>,
    /// Its input is idle.
    pub idle: bool,
    /// Its input has ended.
    pub end: bool,
}

impl Exchanged {
    /// Reads the exchange headers among `headers` (name, value).
    pub fn read<'a>(headers: impl Iterator<Item = (&'a str, &'a [u8])>) -> Self {
        let mut out = Self::default();
        let number = |v: &[u8]| {
            std::str::from_utf8(v)
                .ok()
                .and_then(|t| t.parse::<i64>().ok())
        };
        for (k, v) in headers {
            match k {
                exchange_headers::FROM => out.from = number(v).unwrap_or(0) as i32,
                exchange_headers::TIME => out.mark.get_or_insert_default().time = number(v),
                exchange_headers::IDLE => out.mark.get_or_insert_default().idle = true,
                exchange_headers::END => out.mark.get_or_insert_default().end = true,
                _ => {}
            }
        }
        out
    }
}

/// One micro-batch of raw messages, stored contiguously.
#[derive(Debug, Default, Clone)]
pub struct RawBatch {
    /// All payloads, back to back.
    pub bytes: Vec<u8>,
    /// `(start, end)` of each payload in `bytes`.
    pub spans: Vec<(usize, usize)>,
    /// Partition of each message.
    pub partitions: Vec<i32>,
    /// Offset of each message.
    pub offsets: Vec<i64>,
    /// Kafka timestamp of each message, ms (0 when the broker gave none).
    pub timestamps: Vec<i64>,
    /// Message keys, back to back.
    pub key_bytes: Vec<u8>,
    /// `(start, end)` of each message's key in `key_bytes`, `None` without a key.
    pub keys: Vec<Option<(usize, usize)>>,
    /// Whether each message had no value at all (a tombstone in a compacted topic), as
    /// opposed to an empty one.
    pub null_value: Vec<bool>,
    /// The exchange headers of each message (a repartition topic's source only).
    pub exchange: Vec<Exchanged>,
    /// Transient errors librdkafka reported while the batch was read (and retried).
    pub transient_errors: u64,
    /// The last of them.
    pub last_transient_error: Option<String>,
    /// When its first message was read: the batch closes `linger` after it.
    pub first_at: Option<std::time::Instant>,
}

impl RawBatch {
    /// Number of messages.
    pub fn len(&self) -> usize {
        self.spans.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    /// The payload of message `i`.
    pub fn payload(&self, i: usize) -> &[u8] {
        let (s, e) = self.spans[i];
        &self.bytes[s..e]
    }

    /// The key of message `i`.
    pub fn key(&self, i: usize) -> Option<&[u8]> {
        self.keys[i].map(|(s, e)| &self.key_bytes[s..e])
    }

    /// Every payload, in order.
    pub fn payloads(&self) -> Vec<&[u8]> {
        (0..self.len()).map(|i| self.payload(i)).collect()
    }

    /// Empties the batch, keeping its buffers.
    pub fn clear(&mut self) {
        self.bytes.clear();
        self.spans.clear();
        self.partitions.clear();
        self.offsets.clear();
        self.timestamps.clear();
        self.key_bytes.clear();
        self.keys.clear();
        self.null_value.clear();
        self.exchange.clear();
        self.transient_errors = 0;
        self.last_transient_error = None;
        self.first_at = None;
    }

    /// The next offset to consume per partition after this batch.
    pub fn next_offsets(&self) -> BTreeMap<i32, i64> {
        let mut out = BTreeMap::new();
        for (p, o) in self.partitions.iter().zip(&self.offsets) {
            let next = out.entry(*p).or_insert(o + 1);
            *next = (*next).max(o + 1);
        }
        out
    }
}

/// A Kafka topic read as micro-batches.
pub struct KafkaSource {
    consumer: std::sync::Arc<StreamConsumer>,
    /// The partitions' watermarks, fetched by a thread of their own.
    probe: watermarks::Probe,
    topic: String,
    partitions: Vec<i32>,
    /// Where each assigned partition started, as concrete offsets (empty when the group
    /// assigns partitions).
    start_offsets: BTreeMap<i32, i64>,
    max_batch: usize,
    max_wait: Duration,
    linger: Duration,
    /// Reads exchange headers.
    exchange: bool,
}

impl std::fmt::Debug for KafkaSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaSource")
            .field("topic", &self.topic)
            .field("partitions", &self.partitions)
            .finish()
    }
}

const METADATA_TIMEOUT: Duration = Duration::from_secs(10);

/// Partition ids of `topic`, or a config error if it does not exist.
fn topic_partitions<C: Consumer>(consumer: &C, topic: &str) -> Result<Vec<i32>, ConnectorError> {
    let metadata = consumer
        .fetch_metadata(Some(topic), METADATA_TIMEOUT)
        .map_err(kafka(format!("reading metadata of topic `{topic}`")))?;
    let t = metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .ok_or_else(|| ConnectorError::Config(format!("topic `{topic}` does not exist")))?;
    if let Some(err) = t.error() {
        let code = RDKafkaErrorCode::from(err);
        if code == RDKafkaErrorCode::UnknownTopicOrPartition {
            return Err(ConnectorError::Config(format!(
                "topic `{topic}` does not exist (yet: the pipeline is retried until it does)"
            )));
        }
        return Err(ConnectorError::Config(format!(
            "topic `{topic}` is not readable: {code:?}"
        )));
    }
    let mut ids: Vec<i32> = t.partitions().iter().map(|p| p.id()).collect();
    ids.sort_unstable();
    if ids.is_empty() {
        return Err(ConnectorError::Config(format!(
            "topic `{topic}` does not exist"
        )));
    }
    Ok(ids)
}

/// The group's committed next offset per partition (partitions without one are left out),
/// retried while the group coordinator is not ready.
fn committed_offsets<C: Consumer>(
    consumer: &C,
    topic: &str,
    partitions: &[i32],
) -> Result<BTreeMap<i32, i64>, ConnectorError> {
    let mut tpl = TopicPartitionList::new();
    for p in partitions {
        tpl.add_partition(topic, *p);
    }
    let deadline = Instant::now() + METADATA_TIMEOUT * 3;
    loop {
        match consumer.committed_offsets(tpl.clone(), METADATA_TIMEOUT) {
            Ok(found) => {
                return Ok(found
                    .elements()
                    .iter()
                    .filter_map(|e| match e.offset() {
                        Offset::Offset(o) => Some((e.partition(), o)),
                        _ => None,
                    })
                    .collect());
            }
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(200)),
            Err(e) => {
                return Err(kafka(format!("reading the committed offsets of `{topic}`"))(e));
            }
        }
    }
}

impl KafkaSource {
    /// Connects to `bootstrap` and positions the consumer as `config.start` says.
    pub fn connect(bootstrap: &str, config: &SourceConfig) -> Result<Self, ConnectorError> {
        let mut client = ClientConfig::new();
        // Only committed records of transactional writers (another pipeline's exactly-once
        // sinks): librdkafka's default, said here; a source's properties may say otherwise.
        client.set("isolation.level", "read_committed");
        // Prefetch two micro-batches, at most 16 MiB, rather than librdkafka's 100,000
        // messages or 64 MiB: a pipeline reads a micro-batch at a time, and the larger
        // prefetch only held memory (measured by `pipeline-bench suite`: peak RSS of a
        // 4-task window pipeline 415 -> 220 MB at the same events/s). A source's
        // properties may say otherwise.
        let prefetch = (config.max_batch.max(1) * 2).clamp(1_000, 1_000_000);
        client
            .set("queued.min.messages", prefetch.to_string())
            .set("queued.max.messages.kbytes", "16384");
        for (k, v) in &config.properties {
            client.set(k, v);
        }
        client
            .set("bootstrap.servers", bootstrap)
            .set("group.id", &config.group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("enable.partition.eof", "false")
            .set("fetch.wait.max.ms", "50")
            // librdkafka pauses fetching for `fetch.queue.backoff.ms` (default 1 s) when its
            // local queue is above `queued.min.messages`. A pipeline drains the queue a
            // micro-batch at a time, so it crosses that mark between batches; with the default
            // it then ran dry for most of a second (measured: 130k events/s instead of ~1M).
            .set("fetch.queue.backoff.ms", "10");
        let consumer: StreamConsumer = client.create().map_err(kafka("creating the consumer"))?;
        let mut partitions = topic_partitions(&consumer, &config.topic)?;
        let mut start = config.start.clone();
        if let Some(only) = &config.only {
            partitions.retain(|p| only.contains(p));
        }
        let mut resume = BTreeMap::new();
        if let Start::Resume(fallback) = start {
            resume = committed_offsets(&consumer, &config.topic, &partitions)?;
            start = *fallback;
        }
        if start == Start::Committed && (config.only.is_some() || !resume.is_empty()) {
            start = Start::Offsets(BTreeMap::new());
        }
        let mut start_offsets = BTreeMap::new();
        match start {
            Start::Committed => consumer
                .subscribe(&[config.topic.as_str()])
                .map_err(kafka(format!("subscribing to `{}`", config.topic)))?,
            ref start => {
                // Partitions to resume without a known offset start at the group's committed
                // offset, looked up here: assigned with `Offset::Stored`, librdkafka stalls the
                // partition for good when that lookup meets a coordinator that is not ready
                // (seen on fresh brokers: `NotCoordinator`, then no message ever).
                let committed = match start {
                    Start::Offsets(next) if partitions.iter().any(|p| !next.contains_key(p)) => {
                        committed_offsets(&consumer, &config.topic, &partitions)?
                    }
                    _ => BTreeMap::new(),
                };
                let mut tpl = TopicPartitionList::new();
                for p in &partitions {
                    let offset = match start {
                        Start::Earliest => Offset::Beginning,
                        Start::Latest => Offset::End,
                        Start::Timestamp(ms) => Offset::Offset(*ms),
                        Start::Offsets(next) => match next.get(p).or(committed.get(p)) {
                            Some(o) => Offset::Offset(*o),
                            None => Offset::Beginning,
                        },
                        Start::Committed | Start::Resume(_) => Offset::Stored,
                    };
                    tpl.add_partition_offset(&config.topic, *p, offset)
                        .map_err(kafka("building the assignment"))?;
                }
                let tpl = if let Start::Timestamp(_) = start {
                    consumer
                        .offsets_for_times(tpl, METADATA_TIMEOUT)
                        .map_err(kafka("looking up offsets for the start time"))?
                } else {
                    tpl
                };
                // Logical offsets (beginning, end) become concrete ones, so that the run
                // knows where every partition stands even before it reads from it (a
                // checkpoint then records a partition that stayed empty at its start).
                let mut concrete = TopicPartitionList::new();
                for e in tpl.elements() {
                    let p = e.partition();
                    let offset = match (resume.get(&p), e.offset()) {
                        (Some(o), _) => *o,
                        (None, Offset::Offset(o)) => o,
                        (None, logical) => {
                            let (low, high) = consumer
                                .fetch_watermarks(&config.topic, p, METADATA_TIMEOUT)
                                .map_err(kafka(format!(
                                    "reading the offsets of `{}` partition {p}",
                                    config.topic
                                )))?;
                            if logical == Offset::Beginning {
                                low
                            } else {
                                high
                            }
                        }
                    };
                    start_offsets.insert(p, offset);
                    concrete
                        .add_partition_offset(&config.topic, p, Offset::Offset(offset))
                        .map_err(kafka("building the assignment"))?;
                }
                consumer
                    .assign(&concrete)
                    .map_err(kafka(format!("assigning partitions of `{}`", config.topic)))?;
            }
        }
        let consumer = std::sync::Arc::new(consumer);
        Ok(Self {
            probe: watermarks::Probe::start(&consumer, &config.topic),
            consumer,
            topic: config.topic.clone(),
            partitions,
            start_offsets,
            max_batch: config.max_batch.max(1),
            max_wait: config.max_wait,
            linger: config.linger,
            exchange: config.exchange,
        })
    }

    /// Where each partition this run assigned itself started (concrete offsets); empty when
    /// the consumer group assigns partitions.
    pub fn start_offsets(&self) -> &BTreeMap<i32, i64> {
        &self.start_offsets
    }

    /// All partitions of the topic.
    pub fn partitions(&self) -> &[i32] {
        &self.partitions
    }

    /// Partitions this instance owns now (all of them unless the group shares them).
    pub fn assigned(&self) -> Vec<i32> {
        match self.consumer.assignment() {
            Ok(tpl) => {
                let mut ids: Vec<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
                ids.sort_unstable();
                ids
            }
            Err(_) => self.partitions.clone(),
        }
    }

    /// Appends messages to `batch` until it holds `max_batch`, or `linger` has passed since
    /// its first message, or `max_wait` has passed without one (an empty batch). Dropping
    /// the future loses nothing: what was read is in `batch`, and a new call goes on
    /// filling it (the caller clears it once it is processed).
    pub async fn next_batch(&self, batch: &mut RawBatch) -> Result<(), ConnectorError> {
        let close = |batch: &RawBatch| match batch.first_at {
            Some(first) => tokio::time::Instant::from_std(first + self.linger),
            None => tokio::time::Instant::now() + self.max_wait,
        };
        // One deadline per micro-batch (a timer per message costs more than the message).
        let deadline = tokio::time::sleep_until(close(batch));
        tokio::pin!(deadline);
        while batch.len() < self.max_batch {
            let message = tokio::select! {
                biased;
                m = self.consumer.recv() => match m {
                    Ok(m) => m,
                    Err(e) if is_transient(&e) => {
                        // librdkafka retries by itself (a coordinator moving, a broker
                        // restarting); it reports the hiccup, and reading goes on. The
                        // batch still ends on time even if errors keep coming.
                        batch.transient_errors += 1;
                        batch.last_transient_error = Some(e.to_string());
                        if deadline.is_elapsed() {
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                    Err(e) => return Err(kafka(format!("reading `{}`", self.topic))(e)),
                },
                () = &mut deadline => break,
            };
            if batch.first_at.is_none() {
                batch.first_at = Some(std::time::Instant::now());
                deadline.as_mut().reset(close(batch));
            }
            let begin = batch.bytes.len();
            batch
                .bytes
                .extend_from_slice(message.payload().unwrap_or_default());
            batch.spans.push((begin, batch.bytes.len()));
            batch.partitions.push(message.partition());
            batch.offsets.push(message.offset());
            batch
                .timestamps
                .push(message.timestamp().to_millis().unwrap_or(0));
            batch.null_value.push(message.payload().is_none());
            if self.exchange {
                use rdkafka::message::Headers as _;
                let headers = message.headers();
                batch.exchange.push(Exchanged::read(
                    headers
                        .iter()
                        .flat_map(|h| h.iter())
                        .map(|h| (h.key, h.value.unwrap_or_default())),
                ));
            }
            let key = message.key().map(|k| {
                let begin = batch.key_bytes.len();
                batch.key_bytes.extend_from_slice(k);
                (begin, batch.key_bytes.len())
            });
            batch.keys.push(key);
        }
        Ok(())
    }

    /// Commits `next` (next offset to read per partition) for the group; `Async` returns
    /// once the commit is sent.
    pub fn commit(
        &self,
        next: &BTreeMap<i32, i64>,
        mode: CommitMode,
    ) -> Result<(), ConnectorError> {
        if next.is_empty() {
            return Ok(());
        }
        let mut tpl = TopicPartitionList::new();
        for (p, o) in next {
            tpl.add_partition_offset(&self.topic, *p, Offset::Offset(*o))
                .map_err(kafka("building the commit"))?;
        }
        self.consumer
            .commit(&tpl, mode)
            .map_err(kafka(format!("committing offsets of `{}`", self.topic)))
    }

    /// Consumer lag per assigned partition: high watermark minus the current position,
    /// asking the broker for the watermarks now (blocking, up to a second per partition).
    /// A partition the consumer has fetched nothing from yet counts from `known` (the
    /// caller's next offset for it, such as a checkpoint's), else from its low watermark. A
    /// partition whose watermarks cannot be fetched is reported with lag -1 (unknown).
    pub fn lag(&self, known: &BTreeMap<i32, i64>) -> BTreeMap<i32, i64> {
        self.lag_from(known, |p| {
            self.consumer
                .fetch_watermarks(&self.topic, p, Duration::from_secs(1))
                .ok()
        })
    }

    /// As [`KafkaSource::lag`], from the watermarks the source's probe thread fetched last
    /// (at most about a second old), without waiting for the broker.
    pub fn cached_lag(&self, known: &BTreeMap<i32, i64>) -> BTreeMap<i32, i64> {
        let marks = self.probe.marks();
        self.lag_from(known, |p| marks.get(&p).copied())
    }

    fn lag_from(
        &self,
        known: &BTreeMap<i32, i64>,
        marks: impl Fn(i32) -> Option<(i64, i64)>,
    ) -> BTreeMap<i32, i64> {
        let mut out = BTreeMap::new();
        let Ok(position) = self.consumer.position() else {
            return out;
        };
        for e in position.elements() {
            let lag = match marks(e.partition()) {
                Some((low, high)) => {
                    let pos = match (e.offset(), known.get(&e.partition())) {
                        (Offset::Offset(o), _) => o.max(low),
                        (_, Some(o)) => (*o).max(low),
                        _ => low,
                    };
                    (high - pos).max(0)
                }
                None => -1,
            };
            out.insert(e.partition(), lag);
        }
        out
    }
}

/// Headers of one record: names and raw values.
pub type RecordHeaders = Vec<(String, Vec<u8>)>;

/// A record to write.
#[derive(Debug, Clone, Copy)]
pub struct OutRecord<'a> {
    /// Message key.
    pub key: Option<&'a [u8]>,
    /// Message value.
    pub value: &'a [u8],
    /// Message timestamp, ms.
    pub timestamp: Option<i64>,
    /// The partition to write; `None`: the producer's partitioner chooses by key.
    pub partition: Option<i32>,
}

/// The producer the sinks share: its delivery reports go to each record's group.
pub type Producer = std::sync::Arc<ThreadedProducer<Acks>>;

/// The producer's context: counts each delivery report against the group of its record.
#[derive(Debug, Default)]
pub struct Acks;

impl rdkafka::ClientContext for Acks {}

impl ProducerContext for Acks {
    type DeliveryOpaque = std::sync::Arc<delivery::Group>;
    fn delivery(&self, result: &DeliveryResult<'_>, group: Self::DeliveryOpaque) {
        group.report(result.as_ref().err().map(|(e, _)| e));
    }
}

/// An idempotent producer for one topic, with fixed headers on every record.
pub struct KafkaSink {
    producer: Producer,
    topic: String,
    headers: Vec<(String, String)>,
    ledger: Ledger,
}

impl std::fmt::Debug for KafkaSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaSink")
            .field("topic", &self.topic)
            .finish()
    }
}

/// Builds an idempotent producer.
pub fn producer(
    bootstrap: &str,
    properties: &BTreeMap<String, String>,
) -> Result<Producer, ConnectorError> {
    let mut client = ClientConfig::new();
    for (k, v) in properties {
        client.set(k, v);
    }
    client
        .set("bootstrap.servers", bootstrap)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("message.timeout.ms", "30000");
    client
        .create_with_context(Acks)
        .map(std::sync::Arc::new)
        .map_err(kafka("creating the producer"))
}

impl KafkaSink {
    /// A sink writing to `topic` with `headers` on every record.
    pub fn new(
        bootstrap: &str,
        topic: &str,
        properties: &BTreeMap<String, String>,
        headers: Vec<(String, String)>,
    ) -> Result<Self, ConnectorError> {
        Ok(Self::with_producer(
            producer(bootstrap, properties)?,
            topic,
            headers,
        ))
    }

    fn with_producer(producer: Producer, topic: &str, headers: Vec<(String, String)>) -> Self {
        Self {
            producer,
            topic: topic.to_string(),
            headers,
            ledger: Ledger::default(),
        }
    }

    /// The topic written.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Hands records, each with its own headers or none, to the producer as one delivery
    /// group.
    async fn send<'r>(
        &self,
        records: impl ExactSizeIterator<Item = (&'r OutRecord<'r>, Option<&'r RecordHeaders>)>,
        extra_headers: &[(&str, &[u8])],
    ) -> Result<(), ConnectorError> {
        if records.len() == 0 {
            return Ok(());
        }
        let group = self.ledger.open(records.len() as u64);
        for (r, own) in records {
            let own_len = own.map_or(0, Vec::len);
            let mut headers =
                OwnedHeaders::new_with_capacity(self.headers.len() + extra_headers.len() + own_len);
            for (k, v) in &self.headers {
                headers = headers.insert(Header {
                    key: k,
                    value: Some(v.as_bytes()),
                });
            }
            for (k, v) in extra_headers {
                headers = headers.insert(Header {
                    key: k,
                    value: Some(*v),
                });
            }
            for (k, v) in own.into_iter().flatten() {
                headers = headers.insert(Header {
                    key: k,
                    value: Some(v.as_slice()),
                });
            }
            let mut record: BaseRecord<'_, [u8], [u8], _> =
                BaseRecord::with_opaque_to(&self.topic, group.clone())
                    .payload(r.value)
                    .headers(headers);
            if let Some(k) = r.key {
                record = record.key(k);
            }
            if let Some(ts) = r.timestamp {
                record = record.timestamp(ts);
            }
            if let Some(p) = r.partition {
                record = record.partition(p);
            }
            loop {
                match self.producer.send(record) {
                    Ok(()) => break,
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                        // The producer's thread serves delivery reports meanwhile.
                        record = back;
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                    Err((e, _)) => {
                        let e = kafka(format!("writing to `{}`", self.topic))(e);
                        group.fail(e.to_string());
                        return Err(e);
                    }
                }
            }
        }
        Ok(())
    }
}

/// Creates `topic` with `partitions` partitions (replication 1) unless it exists.
pub async fn create_topic(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
) -> Result<(), ConnectorError> {
    create_topic_with(bootstrap, topic, partitions, 1, &[], &BTreeMap::new()).await
}

/// Creates `topic` with `partitions` partitions, `replication` (-1: the broker's default)
/// and topic `config` unless it exists, the admin client configured with `properties`.
async fn create_topic_with(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
    replication: i32,
    config: &[(&str, &str)],
    properties: &BTreeMap<String, String>,
) -> Result<(), ConnectorError> {
    let mut client = ClientConfig::new();
    for (k, v) in properties {
        client.set(k, v);
    }
    let admin: AdminClient<DefaultClientContext> = client
        .set("bootstrap.servers", bootstrap)
        .create()
        .map_err(kafka("creating the admin client"))?;
    let mut new = NewTopic::new(topic, partitions, TopicReplication::Fixed(replication));
    for (k, v) in config {
        new = new.set(k, v);
    }
    let results = admin
        .create_topics(
            [&new],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        )
        .await
        .map_err(kafka(format!("creating topic `{topic}`")))?;
    for r in results {
        match r {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => {
                return Err(ConnectorError::Config(format!(
                    "cannot create topic `{name}`: {code:?}"
                )));
            }
        }
    }
    Ok(())
}

/// The sum over `topic`'s partitions of `group`'s committed next offsets (for tests and
/// tools that watch a run's progress); offsets of transactions still open are not waited
/// for.
pub fn committed_total(bootstrap: &str, group: &str, topic: &str) -> Result<i64, ConnectorError> {
    let consumer: rdkafka::consumer::BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_uncommitted")
        .create()
        .map_err(kafka("creating the client"))?;
    let partitions = topic_partitions(&consumer, topic)?;
    Ok(committed_offsets(&consumer, topic, &partitions)?
        .values()
        .sum())
}

/// A metadata or offset request that failed because the broker is down or busy for a while.
fn is_unreachable(e: &KafkaError) -> bool {
    use rdkafka::types::RDKafkaErrorCode as C;
    matches!(
        e.rdkafka_error_code(),
        Some(
            C::AllBrokersDown
                | C::BrokerTransportFailure
                | C::OperationTimedOut
                | C::RequestTimedOut
                | C::NotLeaderForPartition
                | C::LeaderNotAvailable
                | C::BrokerNotAvailable
                | C::NetworkException
        )
    )
}

/// A message read back from a topic, with everything Kafka stores about it.
#[derive(Debug, Clone)]
pub struct StoredMessage {
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
    /// Key.
    pub key: Option<Vec<u8>>,
    /// Value.
    pub payload: Vec<u8>,
    /// Headers as text.
    pub headers: Vec<(String, String)>,
}

/// Reads every message of `topic` from the beginning to the current end of each partition,
/// in partition then offset order. Gives up after `timeout`.
pub fn read_all(
    bootstrap: &str,
    topic: &str,
    timeout: Duration,
) -> Result<Vec<StoredMessage>, ConnectorError> {
    use rdkafka::consumer::BaseConsumer;
    static READERS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let reader = READERS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set(
            "group.id",
            format!("read-all-{}-{reader}", std::process::id()),
        )
        .set("enable.auto.commit", "false")
        // A partition written in transactions ends with a commit marker, which is never
        // delivered: its end is where the reader says so.
        .set("enable.partition.eof", "true")
        // Records of open or aborted transactions are not read (librdkafka's default,
        // said here because tests of exactly-once delivery depend on it).
        .set("isolation.level", "read_committed")
        .create()
        .map_err(kafka("creating the reader"))?;
    let deadline = Instant::now() + timeout;
    // Waits out a broker that is down or starved before asking for the partitions.
    while let Err(e) = consumer.fetch_metadata(Some(topic), METADATA_TIMEOUT) {
        if !is_unreachable(&e) || Instant::now() >= deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let partitions = topic_partitions(&consumer, topic)?;
    let mut ends = BTreeMap::new();
    let mut tpl = TopicPartitionList::new();
    for p in &partitions {
        let (low, high) = loop {
            match consumer.fetch_watermarks(topic, *p, METADATA_TIMEOUT) {
                Err(e) if is_unreachable(&e) && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(200))
                }
                r => break r.map_err(kafka(format!("reading the end of `{topic}`")))?,
            }
        };
        if high > low {
            ends.insert(*p, high);
            tpl.add_partition_offset(topic, *p, Offset::Offset(low))
                .map_err(kafka("building the assignment"))?;
        }
    }
    let mut out = Vec::new();
    if ends.is_empty() {
        return Ok(out);
    }
    consumer.assign(&tpl).map_err(kafka("assigning"))?;
    let mut done: BTreeMap<i32, bool> = ends.keys().map(|p| (*p, false)).collect();
    while done.values().any(|d| !d) {
        if Instant::now() > deadline {
            return Err(ConnectorError::Config(format!(
                "reading `{topic}` did not reach its end in {timeout:?}"
            )));
        }
        let Some(m) = consumer.poll(Duration::from_millis(100)) else {
            continue;
        };
        let m = match m {
            Err(KafkaError::PartitionEOF(p)) => {
                done.insert(p, true);
                continue;
            }
            // A broker that is restarting or starved: librdkafka reconnects by itself,
            // and the deadline bounds the wait.
            Err(e) if is_transient(&e) => continue,
            m => m.map_err(kafka(format!("reading `{topic}`")))?,
        };
        let headers = m
            .headers()
            .map(|h| {
                h.iter()
                    .map(|x| {
                        (
                            x.key.to_string(),
                            String::from_utf8_lossy(x.value.unwrap_or_default()).into_owned(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        if m.offset() + 1 >= ends[&m.partition()] {
            done.insert(m.partition(), true);
        }
        out.push(StoredMessage {
            partition: m.partition(),
            offset: m.offset(),
            key: m.key().map(<[u8]>::to_vec),
            payload: m.payload().unwrap_or_default().to_vec(),
            headers,
        });
    }
    out.sort_by_key(|m| (m.partition, m.offset));
    Ok(out)
}
