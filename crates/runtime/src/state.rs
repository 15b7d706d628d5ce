//! State in Kafka: each stateful operator of a task writes, at every commit, the entries of
//! its state that changed ([`crate::Operator::changes`]) to partition `task` of its
//! changelog topic `<group>.<operator>.changelog` (compacted; `<group>` is the consumer
//! group of the pipeline's first stream source, the pipeline's name by default), and the
//! task's source offsets are committed for their groups in the same Kafka transaction
//! ([`connectors::changelog`]). A task restores by reading its partition of every changelog
//! to the end before it reads its sources, which resume at the group's committed offsets:
//! state always matches the input position, so after any crash no event is learnt twice or
//! skipped, even though outputs are at least once.
//!
//! Tables are not written to changelogs: every task reads its tables from their start
//! again (their topic is their changelog, as Kafka Streams does with source tables).

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use connectors::Connect;
use connectors::changelog::{Changelog as _, GroupOffsets, StateRecord};
use planner::{NodeKind, PipelinePlan, TransformKind};

use crate::config::Stats;
use crate::error::RuntimeError;
use crate::source::SourceTask;

/// The positions of a task's stream sources, as a state commit records them.
pub(crate) fn positions<C: Connect>(sources: &[SourceTask<C>]) -> Vec<GroupOffsets> {
    sources
        .iter()
        .filter(|s| !s.table)
        .map(|s| (s.group.clone(), s.topic.clone(), s.position.clone()))
        .collect()
}
use crate::task::Node;

/// A task's changelogs.
pub(crate) struct StateLog<C: Connect> {
    log: C::Changelog,
    /// The task's partition of every changelog.
    partition: i32,
    /// Changelog topic per stateful node (by index in the graph).
    topics: BTreeMap<usize, String>,
    /// Tasks of the pipeline.
    tasks: usize,
    /// The nodes that merge with the other tasks' (global models), by index.
    merging: Vec<usize>,
    /// The pipeline's stream sources: (group, topic).
    inputs: Vec<(String, String)>,
}

/// Whether node `kind` keeps state that goes to a changelog.
fn logged(kind: &NodeKind) -> bool {
    match kind {
        NodeKind::Transform(t) => !matches!(t.kind, TransformKind::Stateless),
        NodeKind::Model(_) => true,
        // A repartition's writer numbers its rows and its reader drops the ones it had.
        NodeKind::Source(s) => s.exchange.is_some(),
        NodeKind::Sink(s) => s.exchange.is_some(),
    }
}

/// The consumer group that names a pipeline's changelogs and transactional ids.
fn pipeline_group(plan: &PipelinePlan) -> String {
    plan.nodes
        .iter()
        .find_map(|n| match &n.kind {
            NodeKind::Source(s) if s.table_key.is_none() => Some(s.group.clone()),
            _ => None,
        })
        .unwrap_or_else(|| plan.name.clone())
}

/// librdkafka's `message.max.bytes` when not set.
const DEFAULT_MESSAGE_MAX: u64 = 1_000_000;

/// The changelog topic of each node that keeps state, by node index:
/// `<group>.<node>.changelog`, with a partition per task.
pub fn changelog_topics(plan: &PipelinePlan) -> BTreeMap<usize, String> {
    let group = pipeline_group(plan);
    plan.nodes
        .iter()
        .enumerate()
        .filter(|(_, n)| logged(&n.kind))
        .map(|(i, n)| (i, format!("{group}.{}.changelog", n.name)))
        .collect()
}

impl<C: Connect> StateLog<C> {
    /// Opens task `index` of `tasks`' changelogs, creating their topics when missing, and
    /// fences any earlier holder of the task (its transactions abort).
    pub async fn open(
        plan: &PipelinePlan,
        connect: &C,
        index: usize,
        tasks: usize,
        member: Option<&C::Membership>,
    ) -> Result<Self, RuntimeError> {
        let group = pipeline_group(plan);
        let mut groups: Vec<String> = Vec::new();
        let mut properties = BTreeMap::new();
        for n in &plan.nodes {
            if let NodeKind::Source(s) = &n.kind
                && s.table_key.is_none()
            {
                if !groups.contains(&s.group) {
                    groups.push(s.group.clone());
                }
                if properties.is_empty() {
                    properties.clone_from(&s.properties);
                }
            }
        }
        // The exactly-once sinks' producer settings (validated equal) go to the
        // transactional producer that writes their records, except a smaller
        // `message.max.bytes`: the sink dead-letters records over its own limit, and the
        // producer's must still fit the state entries.
        if let Some(sink) = plan.exactly_once_sink() {
            for (k, v) in &sink.properties {
                if k == "message.max.bytes" {
                    let larger = v.parse::<u64>().is_ok_and(|n| n > DEFAULT_MESSAGE_MAX);
                    if !larger {
                        continue;
                    }
                }
                properties.insert(k.clone(), v.clone());
            }
        }
        let topics = changelog_topics(plan);
        for topic in topics.values() {
            connect
                .internal_topic(topic, tasks, true, &properties)
                .await?;
        }
        let log = connect.changelog(
            &format!("{group}.task-{index}"),
            &groups,
            &properties,
            member,
        )?;
        let inputs = plan
            .nodes
            .iter()
            .filter_map(|n| match &n.kind {
                NodeKind::Source(s) if s.table_key.is_none() => {
                    Some((s.group.clone(), s.topic.clone()))
                }
                _ => None,
            })
            .collect();
        Ok(Self {
            log,
            partition: index as i32,
            topics,
            tasks,
            merging: Vec::new(),
            inputs,
        })
    }

    /// With several tasks, tells every stateful node so; those that merge with the other
    /// tasks' state (global models) are then sent what the others commit.
    pub fn join_peers(&mut self, nodes: &mut [Node]) {
        if self.tasks < 2 {
            return;
        }
        for i in self.topics.keys() {
            if nodes[*i].op.merges(self.partition) {
                self.merging.push(*i);
            }
        }
    }

    /// Hands the merging nodes what the other tasks committed since the last call (`to_end`:
    /// everything committed so far).
    pub fn poll_peers(&self, nodes: &mut [Node], to_end: bool) -> Result<(), RuntimeError> {
        for i in &self.merging {
            let topic = &self.topics[i];
            let node = &mut nodes[*i];
            for (task, key, value, fingerprint) in self.log.peers(topic, self.partition, to_end)? {
                // Only a task of the same definition learns what this one does (during a
                // rolling change, the others' are left out until they run it too).
                if fingerprint == node.fingerprint {
                    node.op.peer(task, &key, &value)?;
                }
            }
        }
        Ok(())
    }

    /// Whether some node merges with the other tasks'.
    pub fn merges(&self) -> bool {
        !self.merging.is_empty()
    }

    /// Waits (at most `within`) until every task has committed its state for the whole
    /// input, then hands the merging nodes the others' last state. Returns whether they all
    /// had.
    pub async fn settle(
        &self,
        nodes: &mut [Node],
        within: std::time::Duration,
    ) -> Result<bool, RuntimeError> {
        let deadline = std::time::Instant::now() + within;
        let mut all = false;
        while !all && std::time::Instant::now() < deadline {
            all = true;
            for (group, topic) in &self.inputs {
                all &= self.log.caught_up(group, topic)?;
            }
            if !all {
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
        }
        self.poll_peers(nodes, true)?;
        Ok(all)
    }

    /// Loads every stateful node's state from its changelog: the entries its definition
    /// wrote (others are ignored, with a warning).
    pub fn restore(
        &self,
        nodes: &mut [Node],
        warnings: &mut Vec<String>,
        stats: &Stats,
    ) -> Result<(), RuntimeError> {
        let started = std::time::Instant::now();
        for (i, topic) in &self.topics {
            let node = &mut nodes[*i];
            let restored = self.log.restore(topic, self.partition)?;
            let bytes: usize = restored.iter().map(|(k, (v, _))| k.len() + v.len()).sum();
            stats
                .restored_bytes
                .fetch_add(bytes as u64, Ordering::Relaxed);
            let total = restored.len();
            let entries: Vec<(Vec<u8>, Vec<u8>)> = restored
                .into_iter()
                .filter(|(_, (_, f))| *f == node.fingerprint)
                .map(|(k, (v, _))| (k, v))
                .collect();
            if entries.len() < total {
                // Entries of an earlier definition stay in the compacted topic until their
                // keys are written again; they are never read into this one.
                warnings.push(format!(
                    "`{}` ignores {} entries of its changelog `{topic}` written by an earlier definition of it",
                    node.name,
                    total - entries.len()
                ));
            }
            if !entries.is_empty() {
                node.op.restore(entries)?;
            }
        }
        stats.restore_micros.fetch_add(
            u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        Ok(())
    }

    /// Writes what changed in every stateful node, the records exactly-once sinks hold and
    /// `letters` (dead letters), all with the task's `headers`, and commits `offsets` (the
    /// stream sources' positions), in one transaction (call at a barrier).
    pub async fn commit(
        &self,
        nodes: &mut [Node],
        letters: Vec<connectors::changelog::OutputRecord>,
        offsets: Vec<GroupOffsets>,
        headers: &[(String, String)],
        stats: &Stats,
    ) -> Result<(), RuntimeError> {
        let letters_written = letters.len() as u64;
        let mut outputs = letters;
        for node in nodes.iter_mut() {
            outputs.extend(node.op.transactional());
        }
        for o in &mut outputs {
            o.headers.extend(
                headers
                    .iter()
                    .map(|(k, v)| (k.clone(), v.as_bytes().to_vec())),
            );
        }
        let mut records = Vec::new();
        let mut bytes = 0;
        for (i, topic) in &self.topics {
            let node = &mut nodes[*i];
            for (key, value) in node.op.changes()? {
                bytes += key.len() + value.as_ref().map_or(0, Vec::len);
                records.push(StateRecord {
                    topic: topic.clone(),
                    partition: self.partition,
                    key,
                    value,
                    fingerprint: node.fingerprint,
                });
            }
        }
        self.log.commit(&records, &outputs, &offsets).await?;
        stats
            .events_out
            .fetch_add(outputs.len() as u64 - letters_written, Ordering::Relaxed);
        stats.state_bytes.fetch_add(bytes as u64, Ordering::Relaxed);
        stats.checkpoints.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}
