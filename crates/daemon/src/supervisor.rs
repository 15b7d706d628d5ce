//! Runs many pipelines at once, each isolated on its own thread with its own Tokio runtime:
//! a pipeline that fails, panics or blocks (librdkafka's metadata calls block) never stops
//! another. A failed pipeline is restarted with exponential backoff (1 s doubling to 60 s),
//! resuming from its last checkpoint, as Flink's restart strategies do; its status shows the
//! error and the number of restarts.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use runtime::{RunConfig, Runner, Stats};
use serde::Serialize;
use tokio::sync::watch;

use crate::now;

/// Where and how pipelines run.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Kafka bootstrap servers.
    pub bootstrap: String,
    /// State directory: registry and checkpoints.
    pub state_dir: PathBuf,
    /// Event schemas.
    pub schemas: PathBuf,
    /// Time between checkpoints.
    pub checkpoint_interval: Duration,
}

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
}

impl Status {
    fn new(phase: Phase) -> Self {
        Self {
            phase,
            since: now(),
            last_error: None,
            restarts: 0,
            warnings: Vec::new(),
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

    fn failed(&self, error: String) {
        log(&format!("pipeline {}: failed: {error}", self.who));
        let mut s = self.lock();
        s.phase = Phase::Failed;
        s.since = now();
        s.last_error = Some(error);
    }
}

/// A pipeline the supervisor knows: its version and, while running, its thread.
#[derive(Debug)]
struct Slot {
    version: u32,
    live: Arc<Live>,
    stop: Option<watch::Sender<bool>>,
    thread: Option<std::thread::JoinHandle<()>>,
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
        let thread = {
            let (name, settings, live) = (name.to_string(), self.settings.clone(), live.clone());
            std::thread::Builder::new()
                .name(format!("pipeline-{name}"))
                .spawn(move || run_thread(name, version, yaml, settings, live, rx))
        };
        let thread = match thread {
            Ok(t) => Some(t),
            Err(e) => {
                live.failed(format!("cannot start a thread: {e}"));
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
            },
        );
    }

    /// Stops a pipeline and waits for it (its final checkpoint written). Returns whether it
    /// was running.
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
        if let Some(thread) = thread
            && thread.join().is_err()
        {
            live.failed("the pipeline thread panicked while stopping".into());
        }
        was_running
    }

    /// Stops and forgets a pipeline.
    pub fn remove(&self, name: &str) {
        self.stop(name);
        self.slots().remove(name);
    }

    /// Stops every pipeline (daemon shutdown), in parallel.
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

/// The body of a pipeline's thread: plan, run, and on failure restart with backoff, until
/// asked to stop.
fn run_thread(
    name: String,
    version: u32,
    yaml: String,
    settings: Settings,
    live: Arc<Live>,
    stop: watch::Receiver<bool>,
) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            live.failed(format!("cannot start a runtime: {e}"));
            return;
        }
    };
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async move {
        let mut backoff = Duration::from_secs(1);
        loop {
            live.set(Phase::Starting);
            // Run as a task so that a panic is caught and reported instead of ending the
            // thread silently.
            let attempt = tokio::task::spawn_local(attempt(
                name.clone(),
                version,
                yaml.clone(),
                settings.clone(),
                live.clone(),
                stop.clone(),
            ));
            let outcome = match attempt.await {
                Ok(r) => r,
                Err(e) if e.is_panic() => Err(format!("panicked: {}", panic_text(e))),
                Err(e) => Err(e.to_string()),
            };
            if *stop.borrow() {
                if let Err(e) = outcome {
                    live.failed(e);
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
                Err(e) => {
                    live.failed(e);
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

/// One start of a pipeline: plan it, connect, run until stopped or failed.
async fn attempt(
    name: String,
    version: u32,
    yaml: String,
    settings: Settings,
    live: Arc<Live>,
    stop: watch::Receiver<bool>,
) -> Result<(), String> {
    let registry = event_schema::SchemaRegistry::new(&settings.schemas);
    let file = format!("{name}.yaml");
    let (doc, plan) = planner::check(&file, &yaml, &registry, &spec::process_env).await;
    let diagnostics = doc.diagnostics();
    let Some(plan) = plan.filter(|_| diagnostics.is_empty()) else {
        // It was valid when deployed: the daemon's environment or schemas changed since.
        return Err(diagnostics
            .iter()
            .map(|d| d.render(&file))
            .collect::<Vec<_>>()
            .join("; "));
    };
    let mut config = RunConfig::new(settings.bootstrap.clone());
    config.version = version.to_string();
    config.checkpoint_dir = Some(settings.checkpoint_dir(&name));
    config.checkpoint_interval = settings.checkpoint_interval;
    let runner = Runner::new(&plan, config, live.stats.clone())
        .await
        .map_err(|e| e.to_string())?;
    for w in runner.warnings() {
        log(&format!("pipeline {name} v{version}: warning: {w}"));
    }
    live.lock().warnings = runner.warnings().to_vec();
    live.set(Phase::Running);
    let mut stop = stop;
    let stopped = async move {
        let _ = stop.wait_for(|s| *s).await;
    };
    let summary = runner.run(stopped).await.map_err(|e| e.to_string())?;
    live.lock().warnings = summary.warnings;
    Ok(())
}
