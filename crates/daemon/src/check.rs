//! Checking a deployed pipeline in a child process, under a memory and a time budget.
//!
//! Validation parses YAML and SQL and plans with DataFusion, which folds constants and
//! optimizes: work a hostile pipeline can make large. The language bounds what it knows to be
//! costly (docs/security.md); this is the guard for what it does not: the daemon runs the
//! check in a child `pipelined --check-pipeline` whose address space and CPU time are
//! limited (`setrlimit`) and which is killed when its wall-clock budget runs out. Whatever
//! the pipeline does to the child, the daemon's memory, its other pipelines and its shutdown
//! are untouched, and the deploy is refused with the reason. At most two checks run at once.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{ExitCode, Stdio};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Semaphore;

use crate::env::PipelineEnv;

/// What a check may cost.
#[derive(Debug, Clone, Copy)]
pub struct Budget {
    /// Address space of the child, bytes (its planner thread's 256 MiB stack counts).
    pub memory: u64,
    /// Wall-clock time.
    pub time: Duration,
}

impl Default for Budget {
    fn default() -> Self {
        Self {
            memory: 2 << 30,
            time: Duration::from_secs(10),
        }
    }
}

/// What the parent sends.
#[derive(Debug, Serialize, Deserialize)]
struct Request {
    file: String,
    yaml: String,
}

/// One located problem, as the child reports it.
#[derive(Debug, Serialize, Deserialize)]
struct Problem {
    line: usize,
    col: usize,
    path: String,
    message: String,
}

/// What the child answers.
#[derive(Debug, Serialize, Deserialize)]
struct Answer {
    name: Option<String>,
    problems: Vec<Problem>,
}

/// The outcome of a check: the pipeline's name when it is valid, else its problems.
#[derive(Debug)]
pub struct Outcome {
    /// `Some` when the pipeline is valid.
    pub name: Option<String>,
    /// Every problem, located.
    pub diagnostics: Vec<spec::Diagnostic>,
}

/// Runs checks in child processes.
#[derive(Debug)]
pub struct Checker {
    exe: PathBuf,
    schemas: PathBuf,
    env: PipelineEnv,
    budget: Budget,
    permits: Semaphore,
}

impl Checker {
    /// A checker running this executable.
    pub fn new(schemas: PathBuf, env: PipelineEnv, budget: Budget) -> std::io::Result<Self> {
        Ok(Self {
            exe: std::env::current_exe()?,
            schemas,
            env,
            budget,
            permits: Semaphore::new(2),
        })
    }

    /// Checks `yaml` as `pipectl validate` does, with the daemon's schemas and exposed
    /// variables. `Err` when the check itself could not finish (the budget, a crash): the
    /// message says why, for the user.
    pub async fn check(&self, file: &str, yaml: &str) -> Result<Outcome, String> {
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| "the daemon is shutting down".to_string())?;
        let mut child = tokio::process::Command::new(&self.exe)
            .arg("--check-pipeline")
            .arg("--schemas")
            .arg(&self.schemas)
            .args(self.env.args())
            .arg("--check-memory")
            .arg(self.budget.memory.to_string())
            .arg("--check-seconds")
            .arg(self.budget.time.as_secs().max(1).to_string())
            .env_clear()
            .envs(self.env.exposed_process_vars())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("cannot start the pipeline check: {e}"))?;
        let request = serde_json::to_vec(&Request {
            file: file.to_string(),
            yaml: yaml.to_string(),
        })
        .map_err(|e| e.to_string())?;
        let mut stdin = child.stdin.take().ok_or("no stdin")?;
        let mut stdout = child.stdout.take().ok_or("no stdout")?;
        let work = async {
            stdin.write_all(&request).await?;
            drop(stdin);
            let mut out = Vec::new();
            stdout.read_to_end(&mut out).await?;
            let status = child.wait().await?;
            Ok::<_, std::io::Error>((status, out))
        };
        let (status, out) = match tokio::time::timeout(self.budget.time, work).await {
            Ok(Ok(done)) => done,
            Ok(Err(e)) => return Err(format!("the pipeline check failed: {e}")),
            Err(_) => {
                return Err(format!(
                    "checking the pipeline took longer than its budget of {:?} (planning is bounded in time); simplify the SQL",
                    self.budget.time
                ));
            }
        };
        if !status.success() {
            return Err(format!(
                "checking the pipeline exceeded its budget of {} MiB of memory or crashed ({status}); the deploy is refused",
                self.budget.memory >> 20
            ));
        }
        let answer: Answer = serde_json::from_slice(&out)
            .map_err(|e| format!("internal error: unreadable check result: {e} (please report)"))?;
        Ok(Outcome {
            name: answer.name,
            diagnostics: answer
                .problems
                .into_iter()
                .map(|p| spec::Diagnostic {
                    pos: Some(spec::Pos::new(p.line, p.col)),
                    path: p.path,
                    message: p.message,
                })
                .collect(),
        })
    }
}

/// The child: limits itself, reads a request on stdin, answers on stdout.
pub fn run_child(schemas: PathBuf, env: PipelineEnv, memory: u64, seconds: u64) -> ExitCode {
    // Address space and CPU time: past them the allocator fails (the process aborts) or the
    // kernel ends the process; the parent reports either as a refused deploy.
    if rlimit::setrlimit(rlimit::Resource::AS, memory, memory).is_err()
        || rlimit::setrlimit(rlimit::Resource::CPU, seconds + 1, seconds + 2).is_err()
    {
        return ExitCode::from(3);
    }
    let mut input = Vec::new();
    if std::io::stdin()
        .take(16 * 1024 * 1024)
        .read_to_end(&mut input)
        .is_err()
    {
        return ExitCode::from(2);
    }
    let Ok(request) = serde_json::from_slice::<Request>(&input) else {
        return ExitCode::from(2);
    };
    let Ok(rt) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        return ExitCode::from(3);
    };
    let registry = event_schema::SchemaRegistry::new(&schemas);
    let (doc, plan) = rt.block_on(planner::check(
        &request.file,
        &request.yaml,
        &registry,
        &env,
    ));
    let diagnostics = doc.diagnostics();
    let answer = Answer {
        name: plan
            .filter(|_| diagnostics.is_empty())
            .map(|p| p.name.clone()),
        problems: diagnostics
            .into_iter()
            .map(|d| {
                let pos = d.pos.unwrap_or_default();
                Problem {
                    line: pos.line,
                    col: pos.col,
                    path: d.path,
                    message: d.message,
                }
            })
            .collect(),
    };
    let Ok(out) = serde_json::to_vec(&answer) else {
        return ExitCode::from(3);
    };
    let mut stdout = std::io::stdout();
    if stdout
        .write_all(&out)
        .and_then(|()| stdout.flush())
        .is_err()
    {
        return ExitCode::from(3);
    }
    ExitCode::SUCCESS
}
