//! `pipelined`: the engine daemon.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use clap::Parser;
use daemon::api::{self, App};
use daemon::check::{Budget, Checker};
use daemon::env::PipelineEnv;
use daemon::registry::{Desired, Registry};
use daemon::supervisor::{Settings, Supervisor};

/// The engine daemon: runs many pipelines, deployed with `pipectl deploy`.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Address of the HTTP API.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Registry of deployed pipelines and their checkpoints.
    #[arg(long, env = "PIPELINED_STATE_DIR", default_value = "state")]
    state_dir: PathBuf,
    /// Kafka bootstrap servers.
    #[arg(long, env = "PIPELINED_BOOTSTRAP", default_value = "127.0.0.1:9092")]
    bootstrap: String,
    /// Event schemas.
    #[arg(long, env = "PIPELINED_SCHEMAS", default_value = "schemas")]
    schemas: PathBuf,
    /// File holding the API's bearer token (else the environment variable PIPELINED_TOKEN).
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// Run without a token: only on a loopback address.
    #[arg(long)]
    insecure: bool,
    /// Time between checkpoints (commits) of each pipeline without `commit_every`;
    /// default: 1s with an exactly_once sink, else 10s.
    #[arg(long, value_parser = parse_duration)]
    checkpoint_interval: Option<Duration>,
    /// Longest time a pipeline's micro-batch waits for more records once it has its first
    /// one (0 to 10s): lower means lower latency at low rates, higher larger batches.
    #[arg(long, value_parser = parse_latency_target, default_value = "10ms")]
    latency_target: Duration,
    /// Keep pipelines' state in Kafka (changelog topics committed with the offsets in one
    /// transaction) instead of checkpoint files in the state dir; several daemons then share
    /// a pipeline through its consumer group (docs/scaling.md).
    #[arg(long, env = "PIPELINED_KAFKA_STATE")]
    kafka_state: bool,
    /// This daemon's stable name among those sharing pipelines: pipelines with state in
    /// Kafka join their groups as static members, so a restart within the session timeout
    /// (10 s) takes their partitions back without a rebalance (docs/scaling.md).
    #[arg(long, env = "PIPELINED_INSTANCE_ID", value_parser = runtime::config::instance_id)]
    instance_id: Option<String>,
    /// Threads of each pipeline's worker pool, which runs its tasks (one per input
    /// partition when the plan allows); default: one per core.
    #[arg(long, env = "PIPELINED_WORKERS", value_parser = clap::value_parser!(u16).range(1..=1024))]
    workers: Option<u16>,
    /// Largest request body, bytes.
    #[arg(long, default_value_t = 2 * 1024 * 1024)]
    max_body: usize,
    /// Most HTTP connections open at once; past it clients get 503.
    #[arg(long, default_value_t = 256)]
    max_connections: usize,
    /// Longest wait for a request's headers, or for its body.
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    request_timeout: Duration,
    /// Longest wait for a pipeline to stop (stop, delete, redeploy, shutdown); a pipeline
    /// still busy then is abandoned with a log line.
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    stop_timeout: Duration,
    /// Expose process variables whose names start with PREFIX to pipelines, as plain values
    /// (repeatable). Nothing else of the daemon's environment reaches a pipeline.
    #[arg(long = "pipeline-env", value_name = "PREFIX")]
    pipeline_env: Vec<String>,
    /// Expose process variables whose names start with PREFIX to pipelines, as secrets: only
    /// usable as the whole value of a secret Kafka property (repeatable).
    #[arg(long = "secret-env", value_name = "PREFIX")]
    secret_env: Vec<String>,
    /// Expose each file DIR/NAME to pipelines as the secret NAME.
    #[arg(long, value_name = "DIR")]
    secrets_dir: Option<PathBuf>,
    /// Memory budget of checking one deployed pipeline (a child process), MiB.
    #[arg(long, default_value_t = 2048)]
    check_memory_mib: u64,
    /// Time budget of checking one deployed pipeline.
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    check_time: Duration,
    /// Confluent-compatible schema registry URL for `avro_confluent` sources (writer
    /// schemas resolved) and sinks (schemas registered); see docs/schemas.md.
    #[arg(long, env = "PIPELINED_SCHEMA_REGISTRY")]
    schema_registry: Option<String>,
    /// User for basic authentication to the registry (password: --schema-registry-password-env).
    #[arg(long)]
    schema_registry_user: Option<String>,
    /// Environment variable of the daemon holding the registry password.
    #[arg(long)]
    schema_registry_password_env: Option<String>,
    /// Environment variable of the daemon holding a registry bearer token.
    #[arg(long)]
    schema_registry_token_env: Option<String>,
    /// Time allowed for one registry request.
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    schema_registry_timeout: Duration,
    /// Internal: check one pipeline read from standard input (the daemon's child).
    #[arg(long, hide = true)]
    check_pipeline: bool,
    /// Internal: the child's address-space limit, bytes.
    #[arg(long, hide = true, default_value_t = 2 << 30)]
    check_memory: u64,
    /// Internal: the child's CPU-time limit, seconds.
    #[arg(long, hide = true, default_value_t = 10)]
    check_seconds: u64,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    spec::duration::parse(text).map(|d| d.0)
}

fn parse_latency_target(text: &str) -> Result<Duration, String> {
    runtime::config::latency_target(parse_duration(text)?)
}

/// The token from `--token-file` or `PIPELINED_TOKEN`.
fn token(args: &Args) -> Result<Option<String>, String> {
    let token = match &args.token_file {
        Some(f) => Some(
            std::fs::read_to_string(f)
                .map_err(|e| format!("cannot read the token file {}: {e}", f.display()))?
                .trim()
                .to_string(),
        ),
        None => std::env::var("PIPELINED_TOKEN")
            .ok()
            .map(|t| t.trim().to_string()),
    };
    match token {
        Some(t) if t.is_empty() => Err("the token is empty".into()),
        Some(t) if t.len() < 16 => {
            Err("the token is shorter than 16 characters: use a random one (such as `openssl rand -hex 32`)".into())
        }
        Some(t) => Ok(Some(t)),
        None if args.insecure => {
            if !args.listen.ip().is_loopback() {
                return Err(format!(
                    "--insecure serves the API without a token, so it binds a loopback address only (not {}); give a token to listen elsewhere",
                    args.listen
                ));
            }
            Ok(None)
        }
        None => Err(
            "no API token: give --token-file FILE or set PIPELINED_TOKEN (or --insecure, loopback only, for development)"
                .into(),
        ),
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let env = match PipelineEnv::new(
        args.pipeline_env.clone(),
        args.secret_env.clone(),
        args.secrets_dir.clone(),
    ) {
        Ok(env) => env,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    if args.check_pipeline {
        return daemon::check::run_child(
            args.schemas.clone(),
            env,
            args.check_memory,
            args.check_seconds,
        );
    }
    match tokio::runtime::Runtime::new() {
        Ok(rt) => rt.block_on(serve(args, env)),
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            ExitCode::from(1)
        }
    }
}

async fn serve(args: Args, env: PipelineEnv) -> ExitCode {
    let token = match token(&args) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let registry = match Registry::open(&args.state_dir) {
        Ok(r) => r,
        Err(e) => {
            eprintln!(
                "error: {e} (state dir {}; is another pipelined using it? each daemon needs its own)",
                args.state_dir.display()
            );
            return ExitCode::from(1);
        }
    };
    let checker = match Checker::new(
        args.schemas.clone(),
        env.clone(),
        Budget {
            memory: args.check_memory_mib << 20,
            time: args.check_time,
        },
    ) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: cannot find the daemon's own executable for pipeline checks: {e}");
            return ExitCode::from(1);
        }
    };
    let schema_registry = match &args.schema_registry {
        None => None,
        Some(url) => match connectors::registry::RegistryConfig::from_options(
            url,
            args.schema_registry_user.as_deref(),
            args.schema_registry_password_env.as_deref(),
            args.schema_registry_token_env.as_deref(),
            args.schema_registry_timeout,
        ) {
            Ok(c) => Some(Arc::new(connectors::registry::Registry::new(c))),
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(2);
            }
        },
    };
    let supervisor = Supervisor::new(Settings {
        schema_registry,
        bootstrap: args.bootstrap.clone(),
        state_dir: args.state_dir.clone(),
        schemas: args.schemas.clone(),
        checkpoint_interval: args.checkpoint_interval,
        latency_target: args.latency_target,
        kafka_state: args.kafka_state,
        instance_id: args.instance_id,
        workers: args.workers.map_or_else(
            || std::thread::available_parallelism().map_or(1, |n| n.get()),
            usize::from,
        ),
        env,
        stop_timeout: args.stop_timeout,
    });
    let listener = match tokio::net::TcpListener::bind(args.listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: cannot listen on {}: {e}", args.listen);
            return ExitCode::from(1);
        }
    };
    let app = Arc::new(App {
        registry,
        supervisor,
        token,
        ready: AtomicBool::new(false),
        checker,
    });
    // Start what was running before the daemon stopped, each from its checkpoint.
    let records = match app.registry.all() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(1);
        }
    };
    for r in &records {
        let v = r.current();
        match r.desired {
            Desired::Running => app.supervisor.start(&r.name, v.version, v.yaml.clone()),
            Desired::Stopped => app.supervisor.register_stopped(&r.name, v.version),
        }
    }
    app.ready.store(true, Ordering::Relaxed);
    daemon::supervisor::log(&format!(
        "pipelined: listening on http://{} ({} pipelines, {} running){}",
        args.listen,
        records.len(),
        records
            .iter()
            .filter(|r| r.desired == Desired::Running)
            .count(),
        if app.token.is_none() {
            " WITHOUT authentication (--insecure)"
        } else {
            ""
        }
    ));
    let limits = daemon::server::Limits {
        max_connections: args.max_connections,
        header_timeout: args.request_timeout,
        body_timeout: args.request_timeout,
        max_body: args.max_body,
        shutdown_timeout: Duration::from_secs(5),
    };
    let served = daemon::server::serve(
        listener,
        api::router(app.clone(), args.max_body),
        limits,
        runtime::stop_signal(),
    )
    .await;
    daemon::supervisor::log("pipelined: stopping pipelines (each writes a final checkpoint)");
    let stopper = app.clone();
    // Each pipeline gets `stop_timeout`; they stop in parallel, so this is the bound too.
    let stopping = tokio::task::spawn_blocking(move || stopper.supervisor.stop_all());
    if tokio::time::timeout(args.stop_timeout + Duration::from_secs(5), stopping)
        .await
        .is_err()
    {
        daemon::supervisor::log("pipelined: pipelines did not stop in time; exiting anyway");
    }
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}
