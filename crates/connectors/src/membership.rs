//! Membership in a pipeline's consumer group: which partitions this instance owns. Kafka
//! decides (cooperative-sticky assignment); nothing of ours does.
//!
//! A member subscribes to the pipeline's first stream topic (its other stream topics are
//! co-partitioned: partition `i` of each goes with partition `i` of the first). It never
//! reads messages itself: its partitions are paused as soon as they are assigned, and the
//! instance runs a task per owned partition with consumers of its own. Before partitions are
//! revoked, the member waits (at most [`REVOKE_WAIT`]) until the instance has stopped their
//! tasks, which commit their state and offsets first. Its group metadata (member id and
//! generation) goes into every state transaction (KIP-447), so an instance that lost its
//! partitions (a zombie) cannot commit offsets for them any more.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use rdkafka::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::topic_partition_list::TopicPartitionList;

use crate::{ConnectorError, kafka};

/// What the group tells an instance.
#[derive(Debug)]
pub enum Event {
    /// These partitions are now this instance's.
    Assigned(Vec<i32>),
    /// These partitions are being taken away: stop their tasks (each commits), then send
    /// on the channel.
    Revoked(Vec<i32>, std::sync::mpsc::SyncSender<()>),
}

/// A member and the receiver of what the group tells it.
pub type Joined<M> = (M, tokio::sync::mpsc::UnboundedReceiver<Event>);

/// Longest a revocation waits for the instance to stop the revoked tasks; past it the
/// partitions are released anyway (the next owner fences the late tasks).
pub const REVOKE_WAIT: Duration = Duration::from_secs(30);

/// A member's view of the group.
pub trait Membership: Send + Sync + 'static {}

/// The rebalance callbacks of a member.
#[derive(Debug)]
pub struct MemberContext {
    events: tokio::sync::mpsc::UnboundedSender<Event>,
    /// Set when the member leaves: revocations then do not wait for tasks (they have
    /// stopped already).
    leaving: AtomicBool,
}

impl ClientContext for MemberContext {}

fn partitions(tpl: &TopicPartitionList) -> Vec<i32> {
    let mut p: Vec<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
    p.sort_unstable();
    p
}

impl ConsumerContext for MemberContext {
    fn pre_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            let revoked = partitions(tpl);
            if revoked.is_empty() || self.leaving.load(Ordering::Relaxed) {
                return;
            }
            let (done, wait) = std::sync::mpsc::sync_channel(1);
            if self.events.send(Event::Revoked(revoked, done)).is_ok() {
                let _ = wait.recv_timeout(REVOKE_WAIT);
            }
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            // The member reads nothing: the instance's tasks do.
            let _ = consumer.pause(tpl);
            let _ = self.events.send(Event::Assigned(partitions(tpl)));
        }
    }
}

/// A member of a pipeline's group on Kafka.
pub struct KafkaMembership {
    group: String,
    pub(crate) consumer: Arc<BaseConsumer<MemberContext>>,
    stop: Arc<AtomicBool>,
    poller: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for KafkaMembership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaMembership").finish()
    }
}

impl Membership for KafkaMembership {}

impl KafkaMembership {
    /// Joins `group` as a member for `topic`; the group's decisions arrive on the receiver.
    pub fn join(
        bootstrap: &str,
        group: &str,
        topic: &str,
        properties: &BTreeMap<String, String>,
    ) -> Result<Joined<Self>, ConnectorError> {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let mut client = ClientConfig::new();
        for (k, v) in properties {
            client.set(k, v);
        }
        let consumer: BaseConsumer<MemberContext> = client
            .set("bootstrap.servers", bootstrap)
            .set("group.id", group)
            .set("partition.assignment.strategy", "cooperative-sticky")
            .set("enable.auto.commit", "false")
            // A member that died is replaced within this (the broker's minimum is 6 s).
            .set("session.timeout.ms", "10000")
            .set("heartbeat.interval.ms", "2000")
            .create_with_context(MemberContext {
                events: tx,
                leaving: AtomicBool::new(false),
            })
            .map_err(kafka("creating the group member"))?;
        consumer
            .subscribe(&[topic])
            .map_err(kafka(format!("joining group `{group}` for `{topic}`")))?;
        let consumer = Arc::new(consumer);
        let stop = Arc::new(AtomicBool::new(false));
        let poller = {
            let (consumer, stop) = (consumer.clone(), stop.clone());
            std::thread::Builder::new()
                .name("group-member".into())
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        // Serves rebalances; messages never come (partitions are paused).
                        let _ = consumer.poll(Duration::from_millis(100));
                    }
                })
                .map_err(|e| ConnectorError::Config(format!("cannot start a thread: {e}")))?
        };
        Ok((
            Self {
                group: group.to_string(),
                consumer,
                stop,
                poller: Some(poller),
            },
            rx,
        ))
    }

    /// The group it is a member of.
    pub fn group(&self) -> &str {
        &self.group
    }
}

impl Drop for KafkaMembership {
    /// Leaves the group (its partitions go to the other members at once).
    fn drop(&mut self) {
        self.consumer
            .context()
            .leaving
            .store(true, Ordering::Relaxed);
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.poller.take() {
            let _ = t.join();
        }
        self.consumer.unsubscribe();
        // Serves the revocation of leaving.
        let _ = self.consumer.poll(Duration::from_millis(100));
    }
}

/// The only member of a group on the in-memory broker: it owns every partition at once
/// and for good (it keeps the channel open).
#[derive(Debug)]
pub struct SoleMember(pub tokio::sync::mpsc::UnboundedSender<Event>);

impl Membership for SoleMember {}
