//! An in-memory broker: topics of partitions of messages, consumer-group offsets, and the
//! [`Source`] and [`Sink`] over them. Whole pipelines run on it in tests and benchmarks
//! without Kafka (as Arroyo's smoke tests run on file connectors); Kafka's semantics are
//! tested against a real broker.
//!
//! A source reads its partitions round-robin, one message at a time from each, so that every
//! micro-batch interleaves partitions the way a fetch from several brokers may: results that
//! depend on interleaving show up. A sink writes a keyed record to partition
//! `hash(key) % partitions` (FNV-1a; not Kafka's murmur2) and an unkeyed one to partition 0.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use crate::changelog::{Changelog, GroupOffsets, OutputRecord, PeerEntry, Restored, StateRecord};
use crate::{
    Connect, ConnectorError, OutRecord, RawBatch, RecordHeaders, Sink, Source, SourceConfig, Start,
    StoredMessage,
};

#[derive(Debug, Clone)]
struct Message {
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
    timestamp: i64,
    headers: Vec<(String, Vec<u8>)>,
}

impl Message {
    /// The fingerprint header of a changelog record (0 without one).
    fn fingerprint(&self) -> u64 {
        self.headers
            .iter()
            .find(|(k, _)| k == "fingerprint")
            .and_then(|(_, v)| std::str::from_utf8(v).ok()?.parse().ok())
            .unwrap_or(0)
    }
}

#[derive(Debug, Default)]
struct State {
    topics: BTreeMap<String, Vec<Vec<Message>>>,
    /// (group, topic, partition) -> next offset.
    committed: BTreeMap<(String, String, i32), i64>,
}

/// The broker: cheap to clone, every clone sees the same topics.
#[derive(Debug, Clone, Default)]
pub struct Memory {
    state: Arc<Mutex<State>>,
}

fn fnv1a(bytes: &[u8]) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in bytes {
        h ^= u32::from(*b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

impl Memory {
    /// An empty broker.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Creates `topic` with `partitions` partitions unless it exists.
    pub fn create_topic(&self, topic: &str, partitions: usize) {
        self.lock()
            .topics
            .entry(topic.to_string())
            .or_insert_with(|| vec![Vec::new(); partitions.max(1)]);
    }

    /// Appends a message to a partition (the topic must exist); returns its offset.
    pub fn produce(
        &self,
        topic: &str,
        partition: i32,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        timestamp: i64,
    ) -> Result<i64, ConnectorError> {
        let mut state = self.lock();
        let parts = state
            .topics
            .get_mut(topic)
            .ok_or_else(|| ConnectorError::Config(format!("topic `{topic}` does not exist")))?;
        let part = usize::try_from(partition)
            .ok()
            .and_then(|p| parts.get_mut(p))
            .ok_or_else(|| {
                ConnectorError::Config(format!("topic `{topic}` has no partition {partition}"))
            })?;
        part.push(Message {
            key: key.map(<[u8]>::to_vec),
            value: value.map(<[u8]>::to_vec),
            timestamp,
            headers: Vec::new(),
        });
        Ok(part.len() as i64 - 1)
    }

    /// Every message of `topic`, in partition then offset order (empty when it does not
    /// exist). Tombstones read as empty payloads.
    pub fn messages(&self, topic: &str) -> Vec<StoredMessage> {
        let state = self.lock();
        let Some(parts) = state.topics.get(topic) else {
            return Vec::new();
        };
        parts
            .iter()
            .enumerate()
            .flat_map(|(p, msgs)| {
                msgs.iter().enumerate().map(move |(o, m)| StoredMessage {
                    partition: p as i32,
                    offset: o as i64,
                    key: m.key.clone(),
                    payload: m.value.clone().unwrap_or_default(),
                    headers: m
                        .headers
                        .iter()
                        .map(|(k, v)| (k.clone(), String::from_utf8_lossy(v).into_owned()))
                        .collect(),
                })
            })
            .collect()
    }

    /// The group's committed next offsets of `topic`.
    pub fn committed(&self, group: &str, topic: &str) -> BTreeMap<i32, i64> {
        self.lock()
            .committed
            .iter()
            .filter(|((g, t, _), _)| g == group && t == topic)
            .map(|((_, _, p), o)| (*p, *o))
            .collect()
    }

    fn ends(&self, topic: &str) -> Option<Vec<i64>> {
        self.lock()
            .topics
            .get(topic)
            .map(|parts| parts.iter().map(|p| p.len() as i64).collect())
    }
}

/// A source over a topic of the in-memory broker.
#[derive(Debug)]
pub struct MemorySource {
    broker: Memory,
    topic: String,
    group: String,
    partitions: Vec<i32>,
    start_offsets: BTreeMap<i32, i64>,
    next: Mutex<BTreeMap<i32, i64>>,
    max_batch: usize,
    max_wait: Duration,
    /// Reads exchange headers.
    exchange: bool,
}

impl Source for MemorySource {
    fn partitions(&self) -> &[i32] {
        &self.partitions
    }

    fn start_offsets(&self) -> &BTreeMap<i32, i64> {
        &self.start_offsets
    }

    async fn next_batch(&self, batch: &mut RawBatch) -> Result<(), ConnectorError> {
        {
            let state = self.broker.lock();
            let parts = state.topics.get(&self.topic).ok_or_else(|| {
                ConnectorError::Config(format!("topic `{}` does not exist", self.topic))
            })?;
            let mut next = self.next.lock().unwrap_or_else(|e| e.into_inner());
            // Round-robin, one message from each partition in turn.
            let mut progress = true;
            while batch.len() < self.max_batch && progress {
                progress = false;
                for (p, msgs) in parts.iter().enumerate() {
                    if batch.len() >= self.max_batch {
                        break;
                    }
                    let partition = p as i32;
                    let Some(offset) = next.get_mut(&partition) else {
                        // Not assigned to this source.
                        continue;
                    };
                    let Some(m) = usize::try_from(*offset).ok().and_then(|o| msgs.get(o)) else {
                        continue;
                    };
                    let begin = batch.bytes.len();
                    batch
                        .bytes
                        .extend_from_slice(m.value.as_deref().unwrap_or_default());
                    batch.spans.push((begin, batch.bytes.len()));
                    batch.partitions.push(partition);
                    batch.offsets.push(*offset);
                    batch.timestamps.push(m.timestamp);
                    batch.null_value.push(m.value.is_none());
                    if self.exchange {
                        batch.exchange.push(crate::Exchanged::read(
                            m.headers.iter().map(|(k, v)| (k.as_str(), v.as_slice())),
                        ));
                    }
                    let key = m.key.as_ref().map(|k| {
                        let begin = batch.key_bytes.len();
                        batch.key_bytes.extend_from_slice(k);
                        (begin, batch.key_bytes.len())
                    });
                    batch.keys.push(key);
                    *offset += 1;
                    progress = true;
                }
            }
        }
        if batch.is_empty() {
            tokio::time::sleep(self.max_wait).await;
        } else if batch.first_at.is_none() {
            batch.first_at = Some(std::time::Instant::now());
        }
        Ok(())
    }

    fn commit(&self, next: &BTreeMap<i32, i64>) -> Result<(), ConnectorError> {
        let mut state = self.broker.lock();
        for (p, o) in next {
            state
                .committed
                .insert((self.group.clone(), self.topic.clone(), *p), *o);
        }
        Ok(())
    }

    fn lag(&self, known: &BTreeMap<i32, i64>) -> BTreeMap<i32, i64> {
        let ends = self.broker.ends(&self.topic).unwrap_or_default();
        let next = self.next.lock().unwrap_or_else(|e| e.into_inner());
        ends.iter()
            .enumerate()
            .filter(|(p, _)| self.partitions.contains(&(*p as i32)))
            .map(|(p, end)| {
                let p = p as i32;
                let pos = next.get(&p).or(known.get(&p)).copied().unwrap_or(0);
                (p, (end - pos).max(0))
            })
            .collect()
    }
}

/// A sink writing a topic of the in-memory broker.
#[derive(Debug)]
pub struct MemorySink {
    broker: Memory,
    topic: String,
    headers: Vec<(String, String)>,
}

impl MemorySink {
    fn write(&self, r: &OutRecord<'_>, extra: &[(&str, &[u8])]) {
        let mut state = self.broker.lock();
        let parts = state
            .topics
            .entry(self.topic.clone())
            .or_insert_with(|| vec![Vec::new()]);
        let p = match (r.partition, r.key) {
            (Some(p), _) => (p.max(0) as usize).min(parts.len() - 1),
            (None, Some(k)) => fnv1a(k) as usize % parts.len(),
            (None, None) => 0,
        };
        let mut headers: Vec<(String, Vec<u8>)> = self
            .headers
            .iter()
            .map(|(k, v)| (k.clone(), v.as_bytes().to_vec()))
            .collect();
        headers.extend(extra.iter().map(|(k, v)| ((*k).to_string(), v.to_vec())));
        parts[p].push(Message {
            key: r.key.map(<[u8]>::to_vec),
            value: Some(r.value.to_vec()),
            timestamp: r.timestamp.unwrap_or(0),
            headers,
        });
    }
}

impl Sink for MemorySink {
    async fn send(
        &self,
        records: &[OutRecord<'_>],
        extra_headers: &[(&str, &[u8])],
    ) -> Result<(), ConnectorError> {
        for r in records {
            self.write(r, extra_headers);
        }
        Ok(())
    }

    async fn send_with_headers(
        &self,
        records: &[(OutRecord<'_>, RecordHeaders)],
    ) -> Result<(), ConnectorError> {
        for (r, headers) in records {
            let extra: Vec<(&str, &[u8])> = headers
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_slice()))
                .collect();
            self.write(r, &extra);
        }
        Ok(())
    }

    /// The in-memory broker takes a record as it is written: nothing is ever outstanding.
    fn handed(&self) -> u64 {
        0
    }

    fn delivered(&self) -> Result<u64, ConnectorError> {
        Ok(0)
    }
}

/// A task's changelog on the in-memory broker: a commit appends its records and commits
/// its offsets under one lock, so it is atomic as a Kafka transaction is.
#[derive(Debug)]
pub struct MemoryChangelog {
    broker: Memory,
    /// Per (topic, partition) of other tasks: the next offset to read.
    read: Mutex<BTreeMap<(String, i32), usize>>,
}

impl Changelog for MemoryChangelog {
    async fn commit(
        &self,
        records: &[StateRecord],
        outputs: &[OutputRecord],
        offsets: &[GroupOffsets],
    ) -> Result<(), ConnectorError> {
        let mut state = self.broker.lock();
        for o in outputs {
            let parts = state
                .topics
                .entry(o.topic.clone())
                .or_insert_with(|| vec![Vec::new()]);
            let p = o
                .key
                .as_deref()
                .map_or(0, |k| fnv1a(k) as usize % parts.len());
            parts[p].push(Message {
                key: o.key.clone(),
                value: Some(o.value.clone()),
                timestamp: 0,
                headers: o.headers.clone(),
            });
        }
        for r in records {
            let part = state
                .topics
                .get_mut(&r.topic)
                .and_then(|parts| {
                    usize::try_from(r.partition)
                        .ok()
                        .and_then(|p| parts.get_mut(p))
                })
                .ok_or_else(|| {
                    ConnectorError::Config(format!(
                        "changelog `{}` has no partition {}",
                        r.topic, r.partition
                    ))
                })?;
            part.push(Message {
                key: Some(r.key.clone()),
                value: r.value.clone(),
                timestamp: 0,
                headers: vec![("fingerprint".into(), r.fingerprint.to_string().into_bytes())],
            });
        }
        for (group, topic, next) in offsets {
            for (p, o) in next {
                state
                    .committed
                    .insert((group.clone(), topic.clone(), *p), *o);
            }
        }
        Ok(())
    }

    fn peers(
        &self,
        topic: &str,
        own: i32,
        _to_end: bool,
    ) -> Result<Vec<PeerEntry>, ConnectorError> {
        let state = self.broker.lock();
        let mut read = self.read.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = Vec::new();
        let Some(parts) = state.topics.get(topic) else {
            return Ok(out);
        };
        for (p, msgs) in parts.iter().enumerate() {
            let p = p as i32;
            if p == own {
                continue;
            }
            let next = read.entry((topic.to_string(), p)).or_insert(0);
            for m in &msgs[*next..] {
                if let (Some(k), Some(v)) = (&m.key, &m.value) {
                    out.push((p, k.clone(), v.clone(), m.fingerprint()));
                }
            }
            *next = msgs.len();
        }
        Ok(out)
    }

    fn caught_up(&self, group: &str, topic: &str) -> Result<bool, ConnectorError> {
        let ends = self.broker.ends(topic).unwrap_or_default();
        let committed = self.broker.committed(group, topic);
        Ok(ends
            .iter()
            .enumerate()
            .all(|(p, end)| committed.get(&(p as i32)).copied().unwrap_or(0) >= *end))
    }

    fn restore(&self, topic: &str, partition: i32) -> Result<Restored, ConnectorError> {
        let state = self.broker.lock();
        let mut out = Restored::new();
        let Some(part) = state
            .topics
            .get(topic)
            .and_then(|parts| usize::try_from(partition).ok().and_then(|p| parts.get(p)))
        else {
            return Ok(out);
        };
        for m in part {
            let Some(key) = &m.key else { continue };
            let fingerprint = m.fingerprint();
            match &m.value {
                Some(v) => {
                    out.insert(key.clone(), (v.clone(), fingerprint));
                }
                None => {
                    out.remove(key);
                }
            }
        }
        Ok(out)
    }
}

impl Connect for Memory {
    type Source = MemorySource;
    type Sink = MemorySink;
    type Changelog = MemoryChangelog;
    type Membership = crate::membership::SoleMember;

    fn changelog(
        &self,
        _id: &str,
        _groups: &[String],
        _properties: &BTreeMap<String, String>,
        _member: Option<&Self::Membership>,
    ) -> Result<MemoryChangelog, ConnectorError> {
        Ok(MemoryChangelog {
            broker: self.clone(),
            read: Mutex::new(BTreeMap::new()),
        })
    }

    /// The sole member: every partition of `topic`, at once.
    fn join(
        &self,
        _group: &str,
        topic: &str,
        _properties: &BTreeMap<String, String>,
    ) -> Result<crate::membership::Joined<Self::Membership>, ConnectorError> {
        let ends = self
            .ends(topic)
            .ok_or_else(|| ConnectorError::Config(format!("topic `{topic}` does not exist")))?;
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let _ = tx.send(crate::membership::Event::Assigned(
            (0..ends.len() as i32).collect(),
        ));
        Ok((crate::membership::SoleMember(tx), rx))
    }

    async fn internal_topic(
        &self,
        topic: &str,
        partitions: usize,
        _compacted: bool,
        _properties: &BTreeMap<String, String>,
    ) -> Result<(), ConnectorError> {
        if let Some(ends) = self.ends(topic)
            && ends.len() != partitions
        {
            return Err(ConnectorError::Config(format!(
                "internal topic `{topic}` has {} partitions, the pipeline has {partitions} tasks",
                ends.len()
            )));
        }
        self.create_topic(topic, partitions);
        Ok(())
    }

    fn partitions(
        &self,
        topic: &str,
        _properties: &BTreeMap<String, String>,
    ) -> Result<Vec<i32>, ConnectorError> {
        let ends = self
            .ends(topic)
            .ok_or_else(|| ConnectorError::Config(format!("topic `{topic}` does not exist")))?;
        Ok((0..ends.len() as i32).collect())
    }

    fn source(&self, config: &SourceConfig) -> Result<MemorySource, ConnectorError> {
        let ends = self.ends(&config.topic).ok_or_else(|| {
            ConnectorError::Config(format!("topic `{}` does not exist", config.topic))
        })?;
        let committed = self.committed(&config.group, &config.topic);
        let state = self.lock();
        let parts = &state.topics[&config.topic];
        let mut start_offsets = BTreeMap::new();
        let assigned: Vec<i32> = (0..ends.len() as i32)
            .filter(|p| config.only.as_ref().is_none_or(|only| only.contains(p)))
            .collect();
        for (p, end) in ends.iter().enumerate() {
            let partition = p as i32;
            if !assigned.contains(&partition) {
                continue;
            }
            let start = match &config.start {
                Start::Resume(fallback) => match committed.get(&partition) {
                    Some(o) => {
                        start_offsets.insert(partition, *o);
                        continue;
                    }
                    None => fallback.as_ref(),
                },
                other => other,
            };
            let offset = match start {
                Start::Resume(_) => 0,
                Start::Earliest => 0,
                Start::Latest => *end,
                Start::Committed => committed.get(&partition).copied().unwrap_or(0),
                Start::Offsets(next) => next
                    .get(&partition)
                    .or(committed.get(&partition))
                    .copied()
                    .unwrap_or(0),
                Start::Timestamp(ms) => parts[p]
                    .iter()
                    .position(|m| m.timestamp >= *ms)
                    .map_or(*end, |o| o as i64),
            };
            start_offsets.insert(partition, offset);
        }
        drop(state);
        Ok(MemorySource {
            broker: self.clone(),
            topic: config.topic.clone(),
            group: config.group.clone(),
            partitions: assigned,
            next: Mutex::new(start_offsets.clone()),
            start_offsets,
            max_batch: config.max_batch.max(1),
            max_wait: config.max_wait,
            exchange: config.exchange,
        })
    }

    fn sink(
        &self,
        topic: &str,
        _properties: &BTreeMap<String, String>,
        headers: Vec<(String, String)>,
    ) -> Result<MemorySink, ConnectorError> {
        Ok(MemorySink {
            broker: self.clone(),
            topic: topic.to_string(),
            headers,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(topic: &str, start: Start, max_batch: usize) -> SourceConfig {
        SourceConfig {
            topic: topic.into(),
            group: "g".into(),
            start,
            properties: BTreeMap::new(),
            max_batch,
            max_wait: Duration::from_millis(1),
            linger: Duration::from_millis(1),
            only: None,
            exchange: false,
        }
    }

    #[tokio::test]
    async fn reads_partitions_round_robin_and_resumes_from_commits() {
        let broker = Memory::new();
        broker.create_topic("t", 2);
        for i in 0..3u8 {
            broker
                .produce("t", 0, None, Some(&[b'a' + i]), 0)
                .expect("p0");
            broker
                .produce("t", 1, None, Some(&[b'x' + i]), 0)
                .expect("p1");
        }
        let source = broker
            .source(&config("t", Start::Earliest, 4))
            .expect("source");
        let mut batch = RawBatch::default();
        source.next_batch(&mut batch).await.expect("batch");
        assert_eq!(batch.payloads(), vec![b"a", b"x", b"b", b"y"]);
        assert_eq!(batch.partitions, vec![0, 1, 0, 1]);
        source.commit(&batch.next_offsets()).expect("commit");
        assert_eq!(
            source.lag(&BTreeMap::new()),
            BTreeMap::from([(0, 1), (1, 1)])
        );
        let again = broker
            .source(&config("t", Start::Committed, 10))
            .expect("again");
        batch.clear();
        again.next_batch(&mut batch).await.expect("rest");
        assert_eq!(batch.payloads(), vec![b"c", b"z"]);
        assert_eq!(batch.offsets, vec![2, 2]);
        // Nothing more: an empty batch after the wait.
        batch.clear();
        again.next_batch(&mut batch).await.expect("empty");
        assert!(batch.is_empty());
    }

    #[tokio::test]
    async fn a_source_given_partitions_reads_and_reports_only_those() {
        let broker = Memory::new();
        broker.create_topic("t", 3);
        for p in 0..3 {
            broker
                .produce("t", p, None, Some(&[b'a' + p as u8]), 0)
                .expect("produce");
        }
        let mut c = config("t", Start::Committed, 10);
        c.only = Some(vec![1]);
        let source = broker.source(&c).expect("source");
        assert_eq!(source.partitions(), &[1]);
        assert_eq!(source.lag(&BTreeMap::new()), BTreeMap::from([(1, 1)]));
        let mut batch = RawBatch::default();
        source.next_batch(&mut batch).await.expect("batch");
        assert_eq!(batch.payloads(), vec![b"b"]);
        assert_eq!(batch.partitions, vec![1]);
        assert_eq!(source.lag(&BTreeMap::new()), BTreeMap::from([(1, 0)]));
    }

    #[tokio::test]
    async fn a_sink_writes_keys_to_their_partition() {
        let broker = Memory::new();
        broker.create_topic("out", 3);
        let sink = broker
            .sink(
                "out",
                &BTreeMap::new(),
                vec![("pipeline".into(), "p".into())],
            )
            .expect("sink");
        let records = [
            OutRecord {
                key: Some(b"k1"),
                value: b"1",
                timestamp: None,
                partition: None,
            },
            OutRecord {
                key: Some(b"k1"),
                value: b"2",
                timestamp: None,
                partition: None,
            },
            OutRecord {
                key: None,
                value: b"3",
                timestamp: None,
                partition: None,
            },
        ];
        sink.send_all(&records, &[]).await.expect("sent");
        let messages = broker.messages("out");
        assert_eq!(messages.len(), 3);
        let k1: Vec<i32> = messages
            .iter()
            .filter(|m| m.key.as_deref() == Some(b"k1"))
            .map(|m| m.partition)
            .collect();
        assert_eq!(k1[0], k1[1]);
        assert_eq!(
            messages[0].headers,
            vec![("pipeline".to_string(), "p".to_string())]
        );
    }
}
