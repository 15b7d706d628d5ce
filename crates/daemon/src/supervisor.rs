//! Runs many pipelines at once, each isolated on its own thread with its own Tokio runtime:
//! a pipeline that fails, panics or blocks (librdkafka's metadata calls block) never stops
//! another. A failed pipeline is restarted with exponential backoff (1 s doubling to 60 s),
//! resuming from its last checkpoint, as Flink's restart strategies do; its status shows the
//! error and the number of restarts.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use runtime::{Blame, RunConfig, Runner, Stats};
use serde::Serialize;
use tokio::sync::watch;

use crate::env::PipelineEnv;
use crate::now;

/// Where and how pipelines run.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Kafka bootstrap servers.
    pub bootstrap: String,
    /// The schema registry of `avro_confluent` sources and sinks.
    pub schema_registry: Option<Arc<connectors::registry::Registry>>,
    /// State directory: registry and checkpoints.
    pub state_dir: PathBuf,
    /// Event schemas.
    pub schemas: PathBuf,
    /// Time between checkpoints of a pipeline without `commit_every` (none: the engine's
    /// default).
    pub checkpoint_interval: Option<Duration>,
    /// How long a micro-batch waits for more records after its first.
    pub latency_target: Duration,
    /// The variables pipelines may use.
    pub env: PipelineEnv,
    /// Longest wait for a pipeline to stop; past it, it is abandoned (it ends at its next
    /// micro-batch boundary, writing nothing more if it was deleted).
    pub stop_timeout: Duration,
    /// Worker threads of each pipeline.
    pub workers: usize,
    /// State in Kafka rather than in checkpoint files.
    pub kafka_state: bool,
    /// Static group membership of pipelines with state in Kafka (`--instance-id`).
    pub instance_id: Option<String>,
}

/// Stack of a pipeline's thread: planning and running recurse over SQL expressions.
const PIPELINE_STACK_BYTES: usize = 64 * 1024 * 1024;

impl Settings {
    /// The checkpoint directory of a pipeline.
    pub fn checkpoint_dir(&self, name: &str) -> PathBuf {
        self.state_dir.join("checkpoints").join(name)
    }
}

/// What a pipeline is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Connecting and planning.
    Starting,
    /// Processing.
    Running,
    /// Failed; restarting after a backoff.
    Failed,
    /// Stopped (by request, or never started).
    Stopped,
}

/// A pipeline's run status.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    /// What it is doing.
    pub phase: Phase,
    /// Since when, RFC 3339.
    pub since: String,
    /// The last error, if it failed since it was (re)deployed.
    pub last_error: Option<String>,
    /// Restarts after failures since it was (re)deployed.
    pub restarts: u32,
    /// Warnings of its last start (parts skipped, state not restored).
    pub warnings: Vec<String>,
    /// Who is to blame for the last failure: only `external` ones are restarted.
    pub failure: Option<Blame>,
}

impl Status {
    fn new(phase: Phase) -> Self {
        Self {
            phase,
            since: now(),
            last_error: None,
            restarts: 0,
            warnings: Vec::new(),
            failure: None,
        }
    }
}

/// Live view of one pipeline, shared with its thread. Its changes of phase are logged to
/// standard error, one line each.
#[derive(Debug)]
pub struct Live {
    /// Counters of the runner.
    pub stats: Arc<Stats>,
    status: Mutex<Status>,
    /// `NAME vVERSION`, for the log.
    who: String,
    /// Resolved secrets of the pipeline: replaced by `***` in its errors and warnings.
    secrets: Mutex<Vec<String>>,
    /// Set when a stop gave up waiting for the run.
    abandoned: AtomicBool,
}

/// A line of the daemon's log on standard error.
pub fn log(message: &str) {
    eprintln!("{} {message}", now());
}

impl Live {
    fn new(name: &str, version: u32, phase: Phase) -> Arc<Self> {
        Arc::new(Self {
            stats: Arc::new(Stats::default()),
            status: Mutex::new(Status::new(phase)),
            who: format!("{name} v{version}"),
            secrets: Mutex::new(Vec::new()),
            abandoned: AtomicBool::new(false),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Status> {
        // A panic while holding this lock cannot leave a Status half-written.
        self.status.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The current status.
    pub fn status(&self) -> Status {
        self.lock().clone()
    }

    fn set(&self, phase: Phase) {
        let mut s = self.lock();
        if s.phase != phase {
            s.phase = phase;
            s.since = now();
            log(&format!("pipeline {}: {phase:?}", self.who).to_lowercase());
        }
    }

    fn redact(&self, text: &str) -> String {
        let secrets = self.secrets.lock().unwrap_or_else(|e| e.into_inner());
        spec::redact(text, &secrets)
    }

    fn failed(&self, error: String, blame: Blame) {
        let error = self.redact(&error);
        log(&format!("pipeline {}: failed: {error}", self.who));
        let mut s = self.lock();
        s.phase = Phase::Failed;
        s.since = now();
        s.last_error = Some(error);
        s.failure = Some(blame);
    }
}

/// A pipeline the supervisor knows: its version and, while running, its thread.
#[derive(Debug)]
struct Slot {
    version: u32,
    live: Arc<Live>,
    stop: Option<watch::Sender<bool>>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// Set when the pipeline is deleted: its run writes no checkpoint any more.
    discard: Arc<AtomicBool>,
}

/// The pipelines of this daemon.
#[derive(Debug)]
pub struct Supervisor {
    settings: Settings,
    slots: Mutex<BTreeMap<String, Slot>>,
}

impl Supervisor {
    /// A supervisor running nothing yet.
    pub fn new(settings: Settings) -> Self {
        Self {
            settings,
            slots: Mutex::new(BTreeMap::new()),
        }
    }

    /// Its settings.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    fn slots(&self) -> MutexGuard<'_, BTreeMap<String, Slot>> {
        self.slots.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts `yaml` as version `version` of `name`, stopping the version that runs (which
    /// writes its final checkpoint first, so the new version resumes from it). Blocks until
    /// the old version has stopped.
    pub fn start(&self, name: &str, version: u32, yaml: String) {
        self.stop(name);
        let live = Live::new(name, version, Phase::Starting);
        let (tx, rx) = watch::channel(false);
        let discard = Arc::new(AtomicBool::new(false));
        let thread = {
            let (name, settings, live) = (name.to_string(), self.settings.clone(), live.clone());
            let run = Run {
                name,
                version,
                yaml,
                settings,
                live,
                stop: rx,
                discard: discard.clone(),
            };
            std::thread::Builder::new()
                .name(format!("pipeline-{}", run.name))
                .stack_size(PIPELINE_STACK_BYTES)
                .spawn(move || run_thread(run))
        };
        let thread = match thread {
            Ok(t) => Some(t),
            Err(e) => {
                live.failed(format!("cannot start a thread: {e}"), Blame::External);
                None
            }
        };
        self.slots().insert(
            name.to_string(),
            Slot {
                version,
                live,
                stop: Some(tx),
                thread,
                discard,
            },
        );
    }

    /// Records a pipeline that exists but is not to run.
    pub fn register_stopped(&self, name: &str, version: u32) {
        self.slots().insert(
            name.to_string(),
            Slot {
                version,
                live: Live::new(name, version, Phase::Stopped),
                stop: None,
                thread: None,
                discard: Arc::new(AtomicBool::new(false)),
            },
        );
    }

    /// Stops a pipeline and waits for it (its final checkpoint written), at most
    /// `stop_timeout`: a pipeline still busy then is abandoned with a log line and ends by
    /// itself at its next micro-batch boundary. Returns whether it was running.
    pub fn stop(&self, name: &str) -> bool {
        let (stop, thread, live) = {
            let mut slots = self.slots();
            let Some(slot) = slots.get_mut(name) else {
                return false;
            };
            (slot.stop.take(), slot.thread.take(), slot.live.clone())
        };
        let was_running = stop.is_some();
        if let Some(stop) = stop {
            let _ = stop.send(true);
        }
        if let Some(thread) = thread {
            let deadline = Instant::now() + self.settings.stop_timeout;
            while !thread.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            if !thread.is_finished() {
                live.abandoned.store(true, Ordering::Relaxed);
                log(&format!(
                    "pipeline {}: did not stop within {:?}; abandoned (it ends at its next micro-batch)",
                    live.who, self.settings.stop_timeout
                ));
                live.set(Phase::Stopped);
            } else if thread.join().is_err() {
                live.failed(
                    "the pipeline thread panicked while stopping".into(),
                    Blame::Internal,
                );
            }
        }
        was_running
    }

    /// Stops and forgets a pipeline; its run writes no checkpoint from now on, so that the
    /// caller can delete the checkpoints.
    pub fn remove(&self, name: &str) {
        if let Some(slot) = self.slots().get(name) {
            slot.discard.store(true, Ordering::Relaxed);
        }
        self.stop(name);
        self.slots().remove(name);
    }

    /// Stops every pipeline (daemon shutdown), in parallel, each within `stop_timeout`.
    pub fn stop_all(&self) {
        let names: Vec<String> = self.slots().keys().cloned().collect();
        std::thread::scope(|s| {
            for name in &names {
                s.spawn(|| self.stop(name));
            }
        });
    }

    /// Version and live view of a pipeline.
    pub fn live(&self, name: &str) -> Option<(u32, Arc<Live>)> {
        self.slots().get(name).map(|s| (s.version, s.live.clone()))
    }

    /// Every pipeline's version and live view.
    pub fn all(&self) -> Vec<(String, u32, Arc<Live>)> {
        self.slots()
            .iter()
            .map(|(n, s)| (n.clone(), s.version, s.live.clone()))
            .collect()
    }
}

/// What a pipeline's thread runs (and hands to each attempt).
#[derive(Clone)]
struct Run {
    name: String,
    version: u32,
    yaml: String,
    settings: Settings,
    live: Arc<Live>,
    stop: watch::Receiver<bool>,
    discard: Arc<AtomicBool>,
}

/// The body of a pipeline's thread: plan, run, and on failure restart with backoff, until
/// asked to stop.
fn run_thread(run: Run) {
    let Run {
        name,
        version,
        live,
        stop,
        ..
    } = run.clone();
    // The pipeline's worker pool: its tasks run on these threads (planning runs on this
    // one).
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(run.settings.workers.max(1))
        .thread_stack_size(PIPELINE_STACK_BYTES)
        .thread_name(format!("pipeline-{name}-worker"))
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            live.failed(format!("cannot start a runtime: {e}"), Blame::External);
            return;
        }
    };
    let local = tokio::task::LocalSet::new();
    let ended = live.clone();
    local.block_on(&rt, async move {
        let mut backoff = Duration::from_secs(1);
        loop {
            live.set(Phase::Starting);
            // Run as a task so that a panic is caught and reported instead of ending the
            // thread silently.
            let attempt = tokio::task::spawn_local(attempt(run.clone()));
            let outcome = match attempt.await {
                Ok(r) => r,
                Err(e) if e.is_panic() => Err(Failure::new(
                    Blame::Internal,
                    format!("panicked: {} (please report)", panic_text(e)),
                )),
                Err(e) => Err(Failure::new(Blame::Internal, e.to_string())),
            };
            if *stop.borrow() {
                if let Err(f) = outcome {
                    live.failed(f.message, f.blame);
                } else {
                    live.set(Phase::Stopped);
                }
                return;
            }
            match outcome {
                Ok(()) => {
                    live.set(Phase::Stopped);
                    return;
                }
                Err(f) if f.blame != Blame::External => {
                    // Running again would fail the same way: stay failed, with the error,
                    // until a fix is deployed or the pipeline is started again.
                    live.failed(f.message, f.blame);
                    log(&format!(
                        "pipeline {name} v{version}: not restarted ({:?} error: deploy a fix, or `pipectl start` it)",
                        f.blame
                    )
                    .to_lowercase());
                    return;
                }
                Err(f) => {
                    live.failed(f.message, f.blame);
                    log(&format!(
                        "pipeline {name} v{version}: restarting in {backoff:?}"
                    ));
                    let mut stop = stop.clone();
                    let stopped = tokio::select! {
                        () = tokio::time::sleep(backoff) => false,
                        _ = stop.wait_for(|s| *s) => true,
                    };
                    if stopped {
                        return;
                    }
                    live.lock().restarts += 1;
                    backoff = (backoff * 2).min(Duration::from_secs(60));
                }
            }
        }
    });
    if ended.abandoned.load(Ordering::Relaxed) {
        log(&format!("pipeline {}: abandoned run ended", ended.who));
    }
}

fn panic_text(e: tokio::task::JoinError) -> String {
    let payload = e.into_panic();
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic".into()
    }
}

/// Why an attempt ended, and who is to blame (which decides whether to restart).
#[derive(Debug)]
struct Failure {
    blame: Blame,
    message: String,
}

impl Failure {
    fn new(blame: Blame, message: String) -> Self {
        Self { blame, message }
    }
}

impl From<runtime::RuntimeError> for Failure {
    fn from(e: runtime::RuntimeError) -> Self {
        Self::new(e.blame(), e.to_string())
    }
}

/// One start of a pipeline: plan it, connect, run until stopped or failed.
async fn attempt(run: Run) -> Result<(), Failure> {
    let Run {
        name,
        version,
        yaml,
        settings,
        live,
        stop,
        discard,
    } = run;
    let registry = event_schema::SchemaRegistry::new(&settings.schemas);
    let file = format!("{name}.yaml");
    let (doc, plan) = planner::check(&file, &yaml, &registry, &settings.env).await;
    *live.secrets.lock().unwrap_or_else(|e| e.into_inner()) = doc.secrets().to_vec();
    let diagnostics = doc.diagnostics();
    let Some(plan) = plan.filter(|_| diagnostics.is_empty()) else {
        // It was valid when deployed: the daemon's environment or schemas changed since.
        return Err(Failure::new(
            Blame::User,
            diagnostics
                .iter()
                .map(|d| d.render(&file))
                .collect::<Vec<_>>()
                .join("; "),
        ));
    };
    let mut config = RunConfig::new(settings.bootstrap.clone());
    config.version = version.to_string();
    // What the consumer group does, for a pipeline with state in Kafka (asked for, or
    // implied by an exactly-once sink).
    let who = name.clone();
    config.notify = runtime::Notify::to(move |line| log(&format!("pipeline {who}: {line}")));
    config.instance_id.clone_from(&settings.instance_id);
    if settings.kafka_state {
        config.kafka_state = true;
    } else {
        config.checkpoint_dir = Some(settings.checkpoint_dir(&name));
    }
    config.checkpoint_interval = settings.checkpoint_interval;
    config.latency_target = settings.latency_target;
    config.discard = discard;
    config.registry = settings.schema_registry.clone();
    let runner = Runner::new(&plan, config, live.stats.clone()).await?;
    let warnings: Vec<String> = runner.warnings().iter().map(|w| live.redact(w)).collect();
    for w in &warnings {
        log(&format!("pipeline {name} v{version}: warning: {w}"));
    }
    live.lock().warnings = warnings;
    live.set(Phase::Running);
    let mut stop = stop;
    let stopped = async move {
        let _ = stop.wait_for(|s| *s).await;
    };
    let summary = runner.run(stopped).await?;
    live.lock().warnings = summary.warnings.iter().map(|w| live.redact(w)).collect();
    Ok(())
}
