//! Changelogs: compacted topics holding operators' state, written in Kafka transactions
//! together with the source offsets that the state corresponds to, as Kafka Streams keeps
//! its state stores. A transaction holds one commit of one task: the state entries that
//! changed since its last commit (a tombstone for state that ended) and the next offset of
//! every partition it reads, committed for the sources' consumer groups. A reader with
//! `isolation.level=read_committed` sees a commit whole or not at all, so restored state
//! always matches the committed offsets.
//!
//! Each task has its own transactional producer (`transactional.id` = the pipeline's group
//! and the task number): a second instance of the same task fences the first
//! (`init_transactions`), whose next commit fails and stops it.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

use crate::{ConnectorError, kafka};

/// One entry of an operator's state: `value` `None` deletes the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateRecord {
    /// The changelog topic.
    pub topic: String,
    /// Its partition (the task's).
    pub partition: i32,
    /// The key within the operator's state.
    pub key: Vec<u8>,
    /// The state of that key, or `None` when it ended.
    pub value: Option<Vec<u8>>,
    /// The operator's definition: a restore ignores entries of another.
    pub fingerprint: u64,
}

/// A record of an exactly-once sink, written in the transaction of the commit that also
/// holds the source offsets past the inputs it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputRecord {
    /// The sink's topic.
    pub topic: String,
    /// Message key (the producer's partitioner chooses the partition by it).
    pub key: Option<Vec<u8>>,
    /// Message value.
    pub value: Vec<u8>,
    /// Message headers.
    pub headers: crate::RecordHeaders,
}

/// Source offsets committed with the state: (consumer group, topic, next offset per
/// partition).
pub type GroupOffsets = (String, String, BTreeMap<i32, i64>);

/// An entry another task committed: (its partition, key, value, the fingerprint of the
/// operator that wrote it).
pub type PeerEntry = (i32, Vec<u8>, Vec<u8>, u64);

/// A reader of other tasks' entries of one changelog: the consumer, how many partitions it
/// reads, and those read to their end since their last entry.
type Tail = (BaseConsumer, usize, std::collections::BTreeSet<i32>);

/// The latest state per key of a changelog partition, with the fingerprint that wrote it.
pub type Restored = BTreeMap<Vec<u8>, (Vec<u8>, u64)>;

/// Where a task's state is kept.
pub trait Changelog: Send + Sync + 'static {
    /// Writes `records` and `outputs` and commits `offsets`, atomically: after a crash
    /// either all are visible (to `read_committed` readers) or none.
    fn commit(
        &self,
        records: &[StateRecord],
        outputs: &[OutputRecord],
        offsets: &[GroupOffsets],
    ) -> impl std::future::Future<Output = Result<(), ConnectorError>> + Send;
    /// The latest committed entry per key of `partition` of `topic` (tombstones applied),
    /// read to the end.
    fn restore(&self, topic: &str, partition: i32) -> Result<Restored, ConnectorError>;
    /// The entries other tasks committed to `topic` (every partition but `own`) since the
    /// last call, as (partition, key, value); with `to_end`, read up to the end of every
    /// partition.
    fn peers(&self, topic: &str, own: i32, to_end: bool) -> Result<Vec<PeerEntry>, ConnectorError>;
    /// Whether `group` has committed offsets at the end of every partition of `topic`:
    /// every task of the pipeline has committed its state for the whole input.
    fn caught_up(&self, group: &str, topic: &str) -> Result<bool, ConnectorError>;
}

/// A crash point of the fault tests: with the `failpoints` feature (test builds only), the
/// process aborts at the `PIPELINE_FAILPOINT_AFTER`-th (default first) pass through the
/// point named by `PIPELINE_FAILPOINT`.
#[cfg(feature = "failpoints")]
fn failpoint(name: &str) {
    use std::sync::atomic::{AtomicU64, Ordering};
    static PASSES: AtomicU64 = AtomicU64::new(0);
    if std::env::var("PIPELINE_FAILPOINT").is_ok_and(|f| f == name) {
        let after: u64 = std::env::var("PIPELINE_FAILPOINT_AFTER")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(1);
        if PASSES.fetch_add(1, Ordering::Relaxed) + 1 >= after {
            eprintln!("failpoint {name}: aborting");
            std::process::abort();
        }
    }
}

#[cfg(not(feature = "failpoints"))]
fn failpoint(_name: &str) {}

/// Header naming the fingerprint of the operator that wrote an entry.
const FINGERPRINT: &str = "fingerprint";

/// Longest a transaction call may take.
const TXN_TIMEOUT: Duration = Duration::from_secs(30);

/// How long the broker lets a transaction stay open before it aborts it, unless an
/// exactly-once sink's properties say otherwise: the records' delivery timeout (librdkafka
/// requires it to be no longer), 30 s. A transaction here lasts one commit (the records are
/// held in memory between commits), so it bounds how long a crashed task's open
/// transaction holds up `read_committed` readers if nothing fences it first, not the
/// commit interval.
const TRANSACTION_TIMEOUT_MS: &str = "30000";

/// Longest a restore may read before it fails (retried by the caller's restart).
const RESTORE_TIMEOUT: Duration = Duration::from_secs(300);

/// Who commits a group's offsets.
enum GroupClient {
    /// A client of our own, not a member: for groups that only store offsets.
    Own(BaseConsumer),
    /// The instance's member of the group: its member id and generation fence commits of
    /// an instance that lost the partitions.
    Member(std::sync::Arc<BaseConsumer<crate::membership::MemberContext>>),
}

impl GroupClient {
    fn metadata(&self) -> Option<rdkafka::consumer::ConsumerGroupMetadata> {
        match self {
            GroupClient::Own(c) => c.group_metadata(),
            GroupClient::Member(c) => c.group_metadata(),
        }
    }
}

/// The fingerprint header of a changelog record (0 without one).
fn fingerprint_of(m: &rdkafka::message::BorrowedMessage<'_>) -> u64 {
    m.headers()
        .and_then(|h| {
            h.iter()
                .find(|x| x.key == FINGERPRINT)
                .and_then(|x| x.value)
                .and_then(|v| std::str::from_utf8(v).ok())
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// Longest a commit is retried while the group rebalances.
const REBALANCE_WAIT: Duration = Duration::from_secs(60);

/// Whether `e` says the group's generation is changing (a rebalance in progress).
fn rebalancing(e: &ConnectorError) -> bool {
    let ConnectorError::Kafka { source, .. } = e else {
        return false;
    };
    matches!(
        source.rdkafka_error_code(),
        Some(
            rdkafka::types::RDKafkaErrorCode::IllegalGeneration
                | rdkafka::types::RDKafkaErrorCode::RebalanceInProgress
        )
    )
}

/// A task's changelog on Kafka.
pub struct KafkaChangelog {
    bootstrap: String,
    producer: FutureProducer,
    /// Per consumer group, the client whose group metadata goes with its offsets in
    /// `send_offsets_to_transaction`.
    groups: BTreeMap<String, GroupClient>,
    properties: BTreeMap<String, String>,
    /// Per changelog topic read for other tasks' entries: its reader, and the partitions
    /// read to their end since their last entry.
    tails: std::sync::Mutex<BTreeMap<String, Tail>>,
}

impl std::fmt::Debug for KafkaChangelog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaChangelog")
            .field("groups", &self.groups.keys().collect::<Vec<_>>())
            .finish()
    }
}

fn client(bootstrap: &str, properties: &BTreeMap<String, String>) -> ClientConfig {
    let mut c = ClientConfig::new();
    for (k, v) in properties {
        c.set(k, v);
    }
    c.set("bootstrap.servers", bootstrap);
    c
}

impl KafkaChangelog {
    /// The changelog of the task whose producer is `transactional_id`, committing offsets
    /// for `groups` (through `member` for its own group); fences any earlier producer of
    /// the same id.
    pub fn new(
        bootstrap: &str,
        transactional_id: &str,
        groups: &[String],
        properties: &BTreeMap<String, String>,
        member: Option<&crate::membership::KafkaMembership>,
    ) -> Result<Self, ConnectorError> {
        // Defaults that the properties (an exactly-once sink's) may change, then what a
        // transactional producer needs.
        let mut config = ClientConfig::new();
        config
            .set("linger.ms", "5")
            .set("message.timeout.ms", "30000")
            .set("transaction.timeout.ms", TRANSACTION_TIMEOUT_MS);
        for (k, v) in properties {
            config.set(k, v);
        }
        // librdkafka wants a record's delivery to time out within the transaction's.
        let limit = |k: &str, default: u64| {
            config
                .get(k)
                .and_then(|v| v.parse().ok())
                .unwrap_or(default)
        };
        let transaction_ms = limit("transaction.timeout.ms", 60_000);
        if limit("message.timeout.ms", 300_000) > transaction_ms {
            config.set("message.timeout.ms", transaction_ms.to_string());
        }
        let producer: FutureProducer = config
            .set("bootstrap.servers", bootstrap)
            .set("transactional.id", transactional_id)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .create()
            .map_err(kafka("creating the changelog producer"))?;
        producer.init_transactions(TXN_TIMEOUT).map_err(|e| {
            let context = match e.rdkafka_error_code() {
                Some(RDKafkaErrorCode::InvalidTransactionTimeout) => format!(
                    "initialising transactions of `{transactional_id}`: the broker refuses transaction.timeout.ms={} (above its transaction.max.timeout.ms); lower `transaction.timeout.ms` in the exactly-once sinks' kafka.properties, or raise the broker's limit",
                    properties
                        .get("transaction.timeout.ms")
                        .map_or(TRANSACTION_TIMEOUT_MS, String::as_str)
                ),
                _ => format!("initialising transactions of `{transactional_id}`"),
            };
            ConnectorError::Kafka { context, source: e }
        })?;
        let mut by_group = BTreeMap::new();
        for g in groups {
            if let Some(m) = member.filter(|m| m.group() == g) {
                by_group.insert(g.clone(), GroupClient::Member(m.consumer.clone()));
                continue;
            }
            let consumer: BaseConsumer = client(bootstrap, properties)
                .set("group.id", g)
                .set("enable.auto.commit", "false")
                .create()
                .map_err(kafka("creating the group's metadata client"))?;
            by_group.insert(g.clone(), GroupClient::Own(consumer));
        }
        Ok(Self {
            bootstrap: bootstrap.to_string(),
            producer,
            groups: by_group,
            properties: properties.clone(),
            tails: std::sync::Mutex::new(BTreeMap::new()),
        })
    }

    /// Sends everything of one commit in the open transaction.
    async fn send(
        &self,
        records: &[StateRecord],
        outputs: &[OutputRecord],
        offsets: &[GroupOffsets],
    ) -> Result<(), ConnectorError> {
        let mut deliveries = Vec::with_capacity(records.len() + outputs.len());
        for o in outputs {
            let mut headers = OwnedHeaders::new_with_capacity(o.headers.len());
            for (k, v) in &o.headers {
                headers = headers.insert(Header {
                    key: k,
                    value: Some(v.as_slice()),
                });
            }
            let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(&o.topic)
                .payload(o.value.as_slice())
                .headers(headers);
            if let Some(k) = &o.key {
                record = record.key(k.as_slice());
            }
            deliveries.push(self.enqueue(record, "writing an output").await?);
        }
        for r in records {
            let fingerprint = r.fingerprint.to_string();
            let headers = OwnedHeaders::new().insert(Header {
                key: FINGERPRINT,
                value: Some(fingerprint.as_bytes()),
            });
            let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(&r.topic)
                .partition(r.partition)
                .key(r.key.as_slice())
                .headers(headers);
            if let Some(v) = &r.value {
                record = record.payload(v.as_slice());
            }
            deliveries.push(self.enqueue(record, "writing state").await?);
        }
        for (group, topic, next) in offsets {
            if next.is_empty() {
                continue;
            }
            let mut tpl = TopicPartitionList::new();
            for (p, o) in next {
                tpl.add_partition_offset(topic, *p, Offset::Offset(*o))
                    .map_err(kafka("building the offsets"))?;
            }
            let metadata = self
                .groups
                .get(group)
                .and_then(GroupClient::metadata)
                .ok_or_else(|| {
                    ConnectorError::Config(format!("no group metadata for group `{group}`"))
                })?;
            self.producer
                .send_offsets_to_transaction(&tpl, &metadata, TXN_TIMEOUT)
                .map_err(kafka(format!(
                    "adding offsets of `{topic}` to the transaction"
                )))?;
        }
        // Every record and the offsets are sent; the commit has not been asked for.
        failpoint("before-commit");
        self.producer
            .commit_transaction(TXN_TIMEOUT)
            .map_err(kafka("committing the transaction"))?;
        for d in deliveries {
            match d.await {
                Ok(Ok(_)) => {}
                Ok(Err((e, _))) => return Err(kafka("writing state")(e)),
                Err(_) => return Err(kafka("writing state")(KafkaError::Canceled)),
            }
        }
        Ok(())
    }

    /// Queues `record` in the open transaction, waiting while the producer's queue is full.
    async fn enqueue<'a>(
        &self,
        mut record: FutureRecord<'a, [u8], [u8]>,
        what: &str,
    ) -> Result<rdkafka::producer::DeliveryFuture, ConnectorError> {
        loop {
            match self.producer.send_result(record) {
                Ok(delivery) => return Ok(delivery),
                Err((
                    KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::QueueFull),
                    back,
                )) => {
                    record = back;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Err((e, _)) => return Err(kafka(what.to_string())(e)),
            }
        }
    }
}

impl Changelog for KafkaChangelog {
    async fn commit(
        &self,
        records: &[StateRecord],
        outputs: &[OutputRecord],
        offsets: &[GroupOffsets],
    ) -> Result<(), ConnectorError> {
        let started = Instant::now();
        loop {
            self.producer
                .begin_transaction()
                .map_err(kafka("beginning a state transaction"))?;
            match self.send(records, outputs, offsets).await {
                Ok(()) => return Ok(()),
                Err(e) => {
                    // Whatever happened, the transaction is not assumed to have landed.
                    let _ = self.producer.abort_transaction(TXN_TIMEOUT);
                    // The group is rebalancing: the member's generation is changing. The
                    // task still owns its partition (a revocation waits for it to stop;
                    // a new owner would have fenced its producer), so the same commit is
                    // tried again under the new generation.
                    if rebalancing(&e) && started.elapsed() < REBALANCE_WAIT {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                    return Err(e);
                }
            }
        }
    }

    fn peers(&self, topic: &str, own: i32, to_end: bool) -> Result<Vec<PeerEntry>, ConnectorError> {
        let mut tails = self
            .tails
            .lock()
            .map_err(|_| ConnectorError::Config("a changelog reader panicked".into()))?;
        if !tails.contains_key(topic) {
            let consumer: BaseConsumer = client(&self.bootstrap, &self.properties)
                .set("group.id", format!("{topic}.peers"))
                .set("enable.auto.commit", "false")
                .set("isolation.level", "read_committed")
                .set("enable.partition.eof", "true")
                .create()
                .map_err(kafka("creating the peers' reader"))?;
            let metadata = consumer
                .fetch_metadata(Some(topic), Duration::from_secs(10))
                .map_err(kafka(format!("reading metadata of `{topic}`")))?;
            let mut tpl = TopicPartitionList::new();
            let mut n = 0;
            for t in metadata.topics().iter().filter(|t| t.name() == topic) {
                for p in t.partitions().iter().filter(|p| p.id() != own) {
                    tpl.add_partition_offset(topic, p.id(), Offset::Beginning)
                        .map_err(kafka("building the assignment"))?;
                    n += 1;
                }
            }
            consumer.assign(&tpl).map_err(kafka("assigning"))?;
            tails.insert(
                topic.to_string(),
                (consumer, n, std::collections::BTreeSet::new()),
            );
        }
        let Some((consumer, n, at_end)) = tails.get_mut(topic) else {
            return Ok(Vec::new());
        };
        let deadline = Instant::now() + RESTORE_TIMEOUT;
        let mut out = Vec::new();
        loop {
            let wait = if to_end {
                Duration::from_millis(100)
            } else {
                Duration::ZERO
            };
            match consumer.poll(wait) {
                Some(Ok(m)) => {
                    at_end.remove(&m.partition());
                    if let (Some(k), Some(v)) = (m.key(), m.payload()) {
                        out.push((m.partition(), k.to_vec(), v.to_vec(), fingerprint_of(&m)));
                    }
                }
                Some(Err(KafkaError::PartitionEOF(p))) => {
                    at_end.insert(p);
                }
                Some(Err(e)) => return Err(kafka(format!("reading `{topic}`"))(e)),
                None if !to_end || at_end.len() >= *n => return Ok(out),
                None if Instant::now() > deadline => {
                    return Err(kafka(format!("reading `{topic}` to its end"))(
                        KafkaError::Canceled,
                    ));
                }
                None => {}
            }
        }
    }

    fn caught_up(&self, group: &str, topic: &str) -> Result<bool, ConnectorError> {
        let consumer: BaseConsumer = client(&self.bootstrap, &self.properties)
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .create()
            .map_err(kafka("creating a client"))?;
        let partitions = crate::topic_partitions(&consumer, topic)?;
        let committed = crate::committed_offsets(&consumer, topic, &partitions)?;
        for p in partitions {
            let (_, high) = consumer
                .fetch_watermarks(topic, p, Duration::from_secs(10))
                .map_err(kafka(format!("reading the end of `{topic}`")))?;
            if committed.get(&p).copied().unwrap_or(0) < high {
                return Ok(false);
            }
        }
        Ok(true)
    }

    fn restore(&self, topic: &str, partition: i32) -> Result<Restored, ConnectorError> {
        let consumer: BaseConsumer = client(&self.bootstrap, &self.properties)
            .set("group.id", format!("{topic}.restore"))
            .set("enable.auto.commit", "false")
            .set("isolation.level", "read_committed")
            .set("enable.partition.eof", "true")
            // At the end of a partition the broker holds a fetch this long for new data
            // (500 ms by default): a restore reading to the end waits for nothing new.
            .set("fetch.wait.max.ms", "10")
            .create()
            .map_err(kafka("creating the restore consumer"))?;
        let mut out = Restored::new();
        let (low, high) = consumer
            .fetch_watermarks(topic, partition, Duration::from_secs(10))
            .map_err(kafka(format!("reading the end of `{topic}`")))?;
        if high <= low {
            return Ok(out);
        }
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(topic, partition, Offset::Beginning)
            .map_err(kafka("building the assignment"))?;
        consumer.assign(&tpl).map_err(kafka("assigning"))?;
        let deadline = Instant::now() + RESTORE_TIMEOUT;
        loop {
            if Instant::now() > deadline {
                return Err(kafka(format!(
                    "restoring `{topic}` partition {partition}: its end was not reached in {RESTORE_TIMEOUT:?}"
                ))(KafkaError::Canceled));
            }
            let Some(m) = consumer.poll(Duration::from_millis(100)) else {
                continue;
            };
            let m = match m {
                Ok(m) => m,
                Err(KafkaError::PartitionEOF(_)) => return Ok(out),
                Err(e) => return Err(kafka(format!("restoring `{topic}`"))(e)),
            };
            let Some(key) = m.key() else { continue };
            let fingerprint = fingerprint_of(&m);
            match m.payload() {
                Some(v) => {
                    out.insert(key.to_vec(), (v.to_vec(), fingerprint));
                }
                None => {
                    out.remove(key);
                }
            }
        }
    }
}
