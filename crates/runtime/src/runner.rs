//! The runner: divides a pipeline into tasks and runs them on the worker pool.
//!
//! A pipeline whose plan allows it ([`planner::Parallelism::PerPartition`]) runs as one
//! [`Task`] per input partition: task `i` reads partition `i` of every stream source (and
//! every table whole), and owns its operators' state for that partition. Tasks are tokio
//! tasks, so they run in parallel on the runtime's worker threads (`--workers`). Other
//! pipelines run as one task over every partition.
//!
//! Tasks share nothing but the pipeline's counters ([`Stats`]); each checkpoints on its own
//! (`task-<i>.cbor`, or its changelogs). A run stops when every task has stopped: at the
//! stop signal, at the end of a bounded input (each task when its own partitions are
//! idle), or at the first task's error, which stops the others.
//!
//! With state in Kafka, instances of a pipeline share it through its consumer group
//! ([`connectors::membership`]): an instance runs the tasks of the partitions the group
//! assigns it, each restoring its state from the changelogs before it reads, and stops a
//! task (which commits) before its partition is revoked. Without it, an instance runs every
//! task itself.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use connectors::membership::Event;
use connectors::{Connect, Kafka};
use planner::{NodeKind, Parallelism, PipelinePlan, TransformKind};

use crate::checkpoint::Store;
use crate::config::{RunConfig, Stats, Summary};
use crate::error::{RuntimeError, internal};
use crate::task::{Part, Task};

/// A pipeline ready to run.
pub struct Runner<C: Connect = Kafka> {
    mode: Mode<C>,
    /// Tasks of the whole pipeline (over every instance).
    tasks: usize,
    warnings: Vec<String>,
}

/// Which tasks an instance runs.
enum Mode<C: Connect> {
    /// All of them, made at the start (the instance assigns every partition itself).
    Fixed(Vec<Task<C>>),
    /// Those of the partitions the consumer group gives it, made as they are assigned.
    Group(Box<Group<C>>),
}

/// What an instance needs to make tasks as the group assigns partitions.
struct Group<C: Connect> {
    plan: Arc<PipelinePlan>,
    config: RunConfig,
    stats: Arc<Stats>,
    connect: C,
    member: Arc<C::Membership>,
    events: tokio::sync::mpsc::UnboundedReceiver<Event>,
    /// The partitions of each task (`[None]`: one task, run by the owner of partition 0).
    layout: Vec<Option<Vec<i32>>>,
}

impl<C: Connect> std::fmt::Debug for Runner<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runner")
            .field("tasks", &self.tasks)
            .finish()
    }
}

impl Runner<Kafka> {
    /// Connects every source and sink of `plan` to Kafka (`config.bootstrap`) and makes its
    /// tasks.
    pub async fn new(
        plan: &PipelinePlan,
        config: RunConfig,
        stats: Arc<Stats>,
    ) -> Result<Self, RuntimeError> {
        let kafka = Kafka::new(config.bootstrap.clone());
        Self::connect(plan, config, stats, kafka).await
    }
}

/// Whether some operator of `plan` keeps state per key (so that its sources must be
/// co-partitioned to run as tasks).
fn keyed_state(plan: &PipelinePlan) -> bool {
    plan.nodes.iter().any(|n| match &n.kind {
        NodeKind::Transform(t) => !matches!(t.kind, TransformKind::Stateless),
        NodeKind::Model(_) => true,
        NodeKind::Source(_) | NodeKind::Sink(_) => false,
    })
}

/// Whether `plan` keeps its state in Kafka: when asked to (`--kafka-state`), and always when
/// a sink is `exactly_once`, whose records commit in the state's transaction (as Kafka
/// Streams' `exactly_once_v2` always keeps state in changelogs).
pub fn state_in_kafka(plan: &PipelinePlan, config: &RunConfig) -> bool {
    config.kafka_state || plan.exactly_once_sink().is_some()
}

/// How often `plan` commits: its `commit_every`, else the runner's checkpoint interval, else
/// 1 s with an exactly-once sink (its records wait for the commit to be seen) and 10 s
/// without.
pub fn commit_interval(plan: &PipelinePlan, config: &RunConfig) -> Duration {
    plan.commit_every.or(config.checkpoint_interval).unwrap_or(
        if plan.exactly_once_sink().is_some() {
            Duration::from_secs(1)
        } else {
            Duration::from_secs(10)
        },
    )
}

/// The group member's client properties: the source's, and with an instance id its static
/// membership (`group.instance.id`, which no pipeline may set: docs/security.md).
fn member_properties(
    source: &planner::SourcePlan,
    config: &RunConfig,
) -> std::collections::BTreeMap<String, String> {
    let mut properties = source.properties.clone();
    if let Some(id) = &config.instance_id {
        properties.insert("group.instance.id".into(), format!("{}.{id}", source.group));
    }
    properties
}

/// Why `plan` runs as one task here although its plan allows one per partition: a global
/// model merges across tasks only through state in Kafka.
pub fn single_task_reason(plan: &PipelinePlan, kafka_state: bool) -> Option<String> {
    if let Parallelism::Single(why) = &plan.parallelism {
        return Some(why.clone());
    }
    if kafka_state {
        return None;
    }
    plan.nodes.iter().find_map(|n| match &n.kind {
        NodeKind::Model(m)
            if m.key.is_none() =>
        {
            Some(format!(
            "model `{}` is global: its tasks merge what they learn through state in Kafka (--kafka-state)",
            n.name
            ))
        }
        _ => None,
    })
}

/// The partitions of each task: `[None]` for one task over every partition. Makes the
/// pipeline's repartition topics, with as many partitions as its input has.
async fn layout<C: Connect>(
    plan: &PipelinePlan,
    connect: &C,
    kafka_state: bool,
) -> Result<Vec<Option<Vec<i32>>>, RuntimeError> {
    let mut counts = Vec::new();
    for n in &plan.nodes {
        if let NodeKind::Source(s) = &n.kind
            && s.table_key.is_none()
            && s.exchange.is_none()
        {
            let partitions = connect.partitions(&s.topic, &s.properties)?;
            counts.push((n.name.clone(), s.topic.clone(), partitions.len()));
        }
    }
    let most = counts.iter().map(|c| c.2).max().unwrap_or(1);
    if keyed_state(plan)
        && let Some((name, topic, n)) = counts.iter().find(|c| c.2 != most)
    {
        let (big, big_topic, _) = counts
            .iter()
            .find(|c| c.2 == most)
            .ok_or_else(|| internal("partition counts"))?;
        return Err(RuntimeError::Unsupported(format!(
            "sources `{big}` (topic `{big_topic}`, {most} partitions) and `{name}` (topic `{topic}`, {n} partitions) are not co-partitioned: a keyed operator reads both, and partition i of every source goes to task i. Give the topics the same number of partitions, keyed by the same column"
        )));
    }
    for n in &plan.nodes {
        if let NodeKind::Source(s) = &n.kind
            && s.exchange.is_some()
        {
            connect
                .internal_topic(&s.topic, most, false, &s.properties)
                .await?;
        }
    }
    if single_task_reason(plan, kafka_state).is_some() || most <= 1 {
        return Ok(vec![None]);
    }
    Ok((0..most as i32).map(|i| Some(vec![i])).collect())
}

impl<C: Connect> Runner<C> {
    /// Connects every source and sink of `plan` through `connect` (Kafka, or the in-memory
    /// broker) and makes its tasks (with state in Kafka: joins its consumer group, and
    /// makes tasks as partitions are assigned).
    pub async fn connect(
        plan: &PipelinePlan,
        config: RunConfig,
        stats: Arc<Stats>,
        connect: C,
    ) -> Result<Self, RuntimeError> {
        let mut config = config;
        config.kafka_state = state_in_kafka(plan, &config);
        let layout = layout(plan, &connect, config.kafka_state).await?;
        // A restarted run's stats may hold the tasks of the run before.
        if let Ok(mut views) = stats.tasks.lock() {
            views.clear();
        }
        stats
            .watermark_ms
            .store(i64::MIN, std::sync::atomic::Ordering::Relaxed);
        let tasks = layout.len();
        let driver = plan.nodes.iter().find_map(|n| match &n.kind {
            NodeKind::Source(s) if s.table_key.is_none() => Some(s),
            _ => None,
        });
        if config.kafka_state
            && let Some(driver) = driver
        {
            let (member, events) = connect.join(
                &driver.group,
                &driver.topic,
                &member_properties(driver, &config),
            )?;
            return Ok(Self {
                mode: Mode::Group(Box::new(Group {
                    plan: Arc::new(plan.clone()),
                    config,
                    stats,
                    connect,
                    member: Arc::new(member),
                    events,
                    layout,
                })),
                tasks,
                warnings: Vec::new(),
            });
        }
        if let Some(dir) = &config.checkpoint_dir {
            let found = Store::tasks_in(dir);
            if found != 0 && (found == 1) != (tasks == 1) || found > tasks {
                return Err(RuntimeError::Checkpoint(format!(
                    "the state in {} was written by a run of {found} task(s), and this run has {tasks}: the pipeline's partitioning changed (its `key:`, its keyed operators or its topics' partition counts). Resume it as it was, or move that directory away to start over",
                    dir.display()
                )));
            }
        }
        let mut warnings = Vec::new();
        let mut built = Vec::with_capacity(tasks);
        for (index, only) in layout.into_iter().enumerate() {
            let store = config.checkpoint_dir.as_ref().map(|dir| match tasks {
                1 => Store::new(dir),
                _ => Store::task(dir, index),
            });
            let task = Task::connect(
                plan,
                config.clone(),
                stats.clone(),
                connect.clone(),
                Part {
                    index,
                    only,
                    store,
                    tasks,
                },
                None,
            )
            .await?;
            merge_warnings(&mut warnings, task.warnings().iter().cloned());
            built.push(task);
        }
        Ok(Self {
            mode: Mode::Fixed(built),
            tasks,
            warnings,
        })
    }

    /// Parts of the pipeline this runtime skips or runs differently, with why (print them
    /// before running).
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// Number of tasks of the pipeline (over every instance).
    pub fn tasks(&self) -> usize {
        self.tasks
    }

    /// Runs until a stop condition of the config, until `stop` resolves, or until a task
    /// fails (which stops the others; the first error is returned).
    pub async fn run(
        self,
        stop: impl std::future::Future<Output = ()>,
    ) -> Result<Summary, RuntimeError> {
        match self.mode {
            Mode::Fixed(tasks) => {
                let stats = tasks.first().map(|t| t.stats.clone());
                if let Some(s) = &stats {
                    for i in 0..tasks.len() {
                        s.own(i, Some(false));
                    }
                }
                let n = tasks.len();
                let result = run_fixed(tasks, self.warnings, stop).await;
                if let Some(s) = &stats {
                    for i in 0..n {
                        s.own(i, None);
                    }
                }
                result
            }
            Mode::Group(group) => group.run(self.warnings, stop).await,
        }
    }
}

fn merge_warnings(into: &mut Vec<String>, more: impl IntoIterator<Item = String>) {
    for w in more {
        if !into.contains(&w) {
            into.push(w);
        }
    }
}

/// Runs every task of the pipeline in this instance.
async fn run_fixed<C: Connect>(
    tasks: Vec<Task<C>>,
    warnings: Vec<String>,
    stop: impl std::future::Future<Output = ()>,
) -> Result<Summary, RuntimeError> {
    let (tell, told) = tokio::sync::watch::channel(false);
    let mut running = tokio::task::JoinSet::new();
    for task in tasks {
        let mut told = told.clone();
        running.spawn(task.run(async move {
            let _ = told.wait_for(|stop| *stop).await;
        }));
    }
    tokio::pin!(stop);
    let mut summary = Summary { warnings };
    let mut failed: Option<RuntimeError> = None;
    let mut stopping = false;
    loop {
        tokio::select! {
            () = &mut stop, if !stopping => {
                stopping = true;
                let _ = tell.send(true);
            }
            done = running.join_next() => {
                let result = match done {
                    None => break,
                    Some(Ok(result)) => result,
                    Some(Err(e)) => Err(internal(format!("a task ended abnormally: {e}"))),
                };
                match result {
                    Ok(s) => merge_warnings(&mut summary.warnings, s.warnings),
                    Err(e) => {
                        failed.get_or_insert(e);
                        let _ = tell.send(true);
                    }
                }
            }
        }
    }
    match failed {
        Some(e) => Err(e),
        None => Ok(summary),
    }
}

impl<C: Connect> Group<C> {
    /// The task of assigned partition `p`, if it has one: with one task per partition,
    /// task `p`; with one task in all, task 0 goes with partition 0.
    fn part(&self, p: i32) -> Option<Part> {
        let tasks = self.layout.len();
        let index = usize::try_from(p).ok().filter(|i| *i < tasks)?;
        let only = self.layout[index].clone();
        Some(Part {
            index,
            only,
            store: None,
            tasks,
        })
    }

    /// Runs the tasks of the partitions the group assigns, until `stop`, a failure, or (a
    /// bounded run) no task has run for `until_idle` since the group first answered.
    async fn run(
        mut self,
        warnings: Vec<String>,
        stop: impl std::future::Future<Output = ()>,
    ) -> Result<Summary, RuntimeError> {
        tokio::pin!(stop);
        let mut summary = Summary { warnings };
        let mut running = tokio::task::JoinSet::new();
        // Per running task: the partition it was made for, and its stop signal.
        let mut ids: HashMap<tokio::task::Id, i32> = HashMap::new();
        let mut stops: HashMap<i32, tokio::sync::watch::Sender<bool>> = HashMap::new();
        let mut revoking: Vec<(BTreeSet<i32>, std::sync::mpsc::SyncSender<()>)> = Vec::new();
        let mut failed: Option<RuntimeError> = None;
        let mut stopping = false;
        let mut joined = false;
        let mut idle_since = Instant::now();
        // How often the loop looks at the time (for `until_idle`).
        let tick = self
            .config
            .until_idle
            .map_or(Duration::from_millis(200), |d| {
                d.min(Duration::from_millis(200))
            });
        loop {
            // A revocation is answered once its partitions' tasks have stopped (and
            // committed).
            revoking.retain(|(parts, done)| {
                let pending = parts.iter().any(|p| stops.contains_key(p));
                if !pending {
                    let _ = done.send(());
                }
                pending
            });
            if running.is_empty() {
                // Stopped, or the run's event budget is spent (each task stopped at it).
                if stopping
                    || self
                        .config
                        .max_events
                        .is_some_and(|max| self.stats.events_in.load(Ordering::Relaxed) >= max)
                {
                    break;
                }
                if joined
                    && self
                        .config
                        .until_idle
                        .is_some_and(|idle| idle_since.elapsed() >= idle)
                {
                    break;
                }
            }
            tokio::select! {
                () = &mut stop, if !stopping => {
                    stopping = true;
                    for s in stops.values() {
                        let _ = s.send(true);
                    }
                }
                event = self.events.recv(), if !stopping => match event {
                    None => {
                        failed.get_or_insert(internal("the group member stopped"));
                        stopping = true;
                        for s in stops.values() {
                            let _ = s.send(true);
                        }
                    }
                    Some(Event::Assigned(parts)) => {
                        joined = true;
                        self.stats.rebalances.fetch_add(1, Ordering::Relaxed);
                        self.config.notify.tell(&format!("assigned partitions {parts:?}"));
                        for p in parts {
                            if stops.contains_key(&p) {
                                continue;
                            }
                            let Some(part) = self.part(p) else { continue };
                            let (tell, mut told) = tokio::sync::watch::channel(false);
                            let (plan, config, stats, connect, member) = (
                                self.plan.clone(),
                                self.config.clone(),
                                self.stats.clone(),
                                self.connect.clone(),
                                self.member.clone(),
                            );
                            let index = part.index;
                            self.stats.own(index, Some(true));
                            let handle = running.spawn(async move {
                                let notify = config.notify.clone();
                                let started = Instant::now();
                                let owner = stats.clone();
                                let connecting =
                                    Task::connect(&plan, config, stats, connect, part, Some(&member));
                                // Connecting makes blocking Kafka calls (fencing, reading the
                                // changelogs to their end): on a multi-thread runtime this
                                // worker hands its other tasks on meanwhile, so that every
                                // assigned task restores at once.
                                let task = match tokio::runtime::Handle::current().runtime_flavor()
                                {
                                    tokio::runtime::RuntimeFlavor::MultiThread => {
                                        tokio::task::block_in_place(|| {
                                            tokio::runtime::Handle::current().block_on(connecting)
                                        })
                                    }
                                    _ => connecting.await,
                                };
                                let task = match task {
                                    Ok(t) => t,
                                    Err(e) => {
                                        owner.own(index, None);
                                        return Err(e);
                                    }
                                };
                                owner.own(index, Some(false));
                                notify.tell(&format!(
                                    "task {p} restored in {:.2}s, reading",
                                    started.elapsed().as_secs_f64()
                                ));
                                let result = task
                                    .run(async move {
                                        let _ = told.wait_for(|stop| *stop).await;
                                    })
                                    .await;
                                owner.own(index, None);
                                result
                            });
                            ids.insert(handle.id(), p);
                            stops.insert(p, tell);
                        }
                    }
                    Some(Event::Revoked(parts, done)) => {
                        self.stats.rebalances.fetch_add(1, Ordering::Relaxed);
                        self.config.notify.tell(&format!("revoked partitions {parts:?}"));
                        for p in &parts {
                            if let Some(s) = stops.get(p) {
                                let _ = s.send(true);
                            }
                        }
                        revoking.push((parts.into_iter().collect(), done));
                    }
                },
                done = running.join_next_with_id(), if !running.is_empty() => {
                    let (id, result) = match done {
                        Some(Ok((id, result))) => (id, result),
                        Some(Err(e)) => (
                            e.id(),
                            Err(internal(format!("a task ended abnormally: {e}"))),
                        ),
                        None => continue,
                    };
                    if let Some(p) = ids.remove(&id) {
                        stops.remove(&p);
                        // Also when the task panicked (the task number is the partition).
                        self.stats.own(p as usize, None);
                        self.config.notify.tell(&format!(
                            "task {p} stopped{}",
                            match &result {
                                Ok(_) => String::new(),
                                Err(e) => format!(": {e}"),
                            }
                        ));
                    }
                    match result {
                        Ok(s) => merge_warnings(&mut summary.warnings, s.warnings),
                        Err(e) => {
                            failed.get_or_insert(e);
                            stopping = true;
                            for s in stops.values() {
                                let _ = s.send(true);
                            }
                        }
                    }
                    if running.is_empty() {
                        idle_since = Instant::now();
                    }
                }
                () = tokio::time::sleep(tick) => {}
            }
        }
        for (_, done) in revoking {
            let _ = done.send(());
        }

        // Leaves the group: the partitions go to the other instances.
        drop(self.member);
        match failed {
            Some(e) => Err(e),
            None => Ok(summary),
        }
    }
}
