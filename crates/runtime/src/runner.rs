//! The runner: divides a pipeline into tasks and runs them on the worker pool.
//!
//! A pipeline whose plan allows it ([`planner::Parallelism::PerPartition`]) runs as one
//! [`Task`] per input partition: task `i` reads partition `i` of every stream source (and
//! every table whole), and owns its operators' state for that partition. Tasks are tokio
//! tasks, so they run in parallel on the runtime's worker threads (`--workers`). Other
//! pipelines run as one task over every partition.
//!
//! Tasks share nothing but the pipeline's counters ([`Stats`]); each checkpoints on its own
//! (`task-<i>.cbor`). A run stops when every task has stopped: at the stop signal, at the
//! end of a bounded input (each task when its own partitions are idle), or at the first
//! task's error, which stops the others.

use std::sync::Arc;

use connectors::{Connect, Kafka};
use planner::{NodeKind, Parallelism, PipelinePlan, TransformKind};

use crate::checkpoint::Store;
use crate::config::{RunConfig, Stats, Summary};
use crate::error::{RuntimeError, internal};
use crate::task::{Part, Task};

/// A pipeline ready to run.
pub struct Runner<C: Connect = Kafka> {
    tasks: Vec<Task<C>>,
    warnings: Vec<String>,
}

impl<C: Connect> std::fmt::Debug for Runner<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runner")
            .field("tasks", &self.tasks.len())
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
        let kafka = Kafka {
            bootstrap: config.bootstrap.clone(),
        };
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

/// The partitions of each task: `[None]` for one task over every partition.
fn layout<C: Connect>(
    plan: &PipelinePlan,
    connect: &C,
) -> Result<Vec<Option<Vec<i32>>>, RuntimeError> {
    if let Parallelism::Single(_) = plan.parallelism {
        return Ok(vec![None]);
    }
    let mut counts = Vec::new();
    for n in &plan.nodes {
        if let NodeKind::Source(s) = &n.kind
            && s.table_key.is_none()
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
    if most <= 1 {
        return Ok(vec![None]);
    }
    Ok((0..most as i32).map(|i| Some(vec![i])).collect())
}

impl<C: Connect> Runner<C> {
    /// Connects every source and sink of `plan` through `connect` (Kafka, or the in-memory
    /// broker) and makes its tasks.
    pub async fn connect(
        plan: &PipelinePlan,
        config: RunConfig,
        stats: Arc<Stats>,
        connect: C,
    ) -> Result<Self, RuntimeError> {
        let layout = layout(plan, &connect)?;
        // A restarted run's stats may hold the tasks of the run before.
        if let Ok(mut views) = stats.tasks.lock() {
            views.clear();
        }
        stats
            .watermark_ms
            .store(i64::MIN, std::sync::atomic::Ordering::Relaxed);
        let tasks = layout.len();
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
            )
            .await?;
            for w in task.warnings() {
                if !warnings.contains(w) {
                    warnings.push(w.clone());
                }
            }
            built.push(task);
        }
        Ok(Self {
            tasks: built,
            warnings,
        })
    }

    /// Parts of the pipeline this runtime skips or runs differently, with why (print them
    /// before running).
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// Number of tasks.
    pub fn tasks(&self) -> usize {
        self.tasks.len()
    }

    /// Runs every task until a stop condition of the config, until `stop` resolves, or
    /// until a task fails (which stops the others; the first error is returned).
    pub async fn run(
        self,
        stop: impl std::future::Future<Output = ()>,
    ) -> Result<Summary, RuntimeError> {
        let (tell, told) = tokio::sync::watch::channel(false);
        let mut running = tokio::task::JoinSet::new();
        for task in self.tasks {
            let mut told = told.clone();
            running.spawn(task.run(async move {
                let _ = told.wait_for(|stop| *stop).await;
            }));
        }
        tokio::pin!(stop);
        let mut summary = Summary {
            warnings: self.warnings,
        };
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
                        Ok(s) => {
                            for w in s.warnings {
                                if !summary.warnings.contains(&w) {
                                    summary.warnings.push(w);
                                }
                            }
                        }
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
}
