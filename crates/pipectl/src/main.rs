//! `pipectl`: the command line of the pipeline engine.
//!
//! Exit codes: 0 success, 1 the input is invalid (a pipeline has errors) or the daemon
//! refused the request, 2 usage (bad arguments, a file that cannot be read), 3 the daemon
//! cannot be reached, 4 missing or wrong token, 5 no such pipeline or version.

mod demo;
mod generate;
mod registry;
mod remote;
mod run;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use event_schema::{SchemaRegistry, find_schema_dir};
use spec::Diagnostic;

#[derive(Debug, Parser)]
#[command(
    name = "pipectl",
    version,
    about = "Build, check and run streaming pipelines"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    server: remote::ServerArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check pipeline files and report every error with file, line and column.
    Validate {
        /// Pipeline YAML files, or directories of them.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Directory of event schemas (default: the nearest `schemas/` above each file).
        #[arg(long, env = "PIPECTL_SCHEMAS")]
        schemas: Option<PathBuf>,
        /// Also check `avro_confluent` sources and sinks against the registry's latest
        /// versions of their subjects.
        #[command(flatten)]
        registry: registry::RegistryArgs,
    },
    /// Show what a pipeline compiles to: each node's inputs, DataFusion plan and schema.
    Plan {
        /// A pipeline YAML file.
        file: PathBuf,
        /// Directory of event schemas (default: the nearest `schemas/` above the file).
        #[arg(long, env = "PIPECTL_SCHEMAS")]
        schemas: Option<PathBuf>,
        /// Also check `avro_confluent` sources and sinks against the registry.
        #[command(flatten)]
        registry: registry::RegistryArgs,
    },
    /// Print the JSON Schema of the pipeline language (for editor completion).
    Schema,
    /// Write generated events with a known ground truth to a Kafka topic.
    Gen {
        /// Kafka bootstrap servers.
        #[arg(long, env = "PIPECTL_BOOTSTRAP", default_value = "127.0.0.1:9092")]
        bootstrap: String,
        /// Event kind: an event schema such as `production/sensor_reading`, or `all` (every
        /// kind to its default topic, side by side).
        #[arg(long)]
        kind: String,
        /// Number of events.
        #[arg(long, default_value_t = 10_000)]
        count: u64,
        /// Random seed; the same seed gives the same events.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Topic (default: the one the example pipelines read for this kind).
        #[arg(long)]
        topic: Option<String>,
        /// Partitions of the topic when it is created.
        #[arg(long, default_value_t = 4)]
        partitions: i32,
        /// Events per second of wall-clock time (default: as fast as possible).
        #[arg(long)]
        rate: Option<f64>,
        /// Fraction of events moved 10 minutes back in event time (late).
        #[arg(long, default_value_t = 0.0)]
        late: f64,
        /// Fraction of events replaced by malformed bytes.
        #[arg(long, default_value_t = 0.0)]
        malformed: f64,
        /// Fraction of events out of order by up to 4 s (on time).
        #[arg(long, default_value_t = 0.1)]
        out_of_order: f64,
        /// Event time of the first event: RFC 3339, or `now` (default 2026-01-01T00:00:00Z).
        #[arg(long)]
        start: Option<String>,
        /// Event time between events, in ms.
        #[arg(long, default_value_t = 100.0)]
        interval_ms: f64,
        /// Message encoding: json, avro or avro_confluent (the schema registered under
        /// `<topic>-value` with --schema-registry, else schema id 0).
        #[arg(long, default_value = "json")]
        format: String,
        /// Key messages by this field of the event (default: the kind's natural key, such
        /// as `line_id` or `sku`).
        #[arg(long)]
        key: Option<String>,
        /// Directory of event schemas (for Avro; default: the nearest `schemas/`).
        #[arg(long, env = "PIPECTL_SCHEMAS")]
        schemas: Option<PathBuf>,
        #[command(flatten)]
        registry: registry::RegistryArgs,
    },
    /// Run the example pipelines on an in-process Kafka broker with generated events and show
    /// live results. Needs nothing installed.
    Demo {
        /// How long to run (such as `30s`); default until Ctrl-C.
        #[arg(long, value_parser = parse_duration)]
        duration: Option<Duration>,
        /// Directory of pipelines to run.
        #[arg(long, default_value = "pipelines")]
        pipelines: PathBuf,
        /// Events per second per event kind.
        #[arg(long, default_value_t = 500.0)]
        rate: f64,
        /// Seconds of event time per second of wall-clock time. The default, 10 minutes a
        /// second, closes the examples' hour windows and 30-minute sessions within seconds
        /// (at 60 a customer's events came every 4 minutes of event time, so no session
        /// ever closed, and the first hour window after a minute).
        #[arg(long, default_value_t = 600.0)]
        speedup: f64,
    },
    /// Validate pipeline files locally, show the difference with what the daemon runs, and
    /// deploy them (a changed file becomes the next version of its pipeline).
    Deploy {
        /// Pipeline YAML files, or directories of them.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Validate (locally and on the daemon) and show the difference; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Directory of event schemas for the local check (default: the nearest `schemas/`).
        #[arg(long, env = "PIPECTL_SCHEMAS")]
        schemas: Option<PathBuf>,
    },
    /// List the pipelines of the daemon.
    List {
        /// Output format.
        #[arg(short, long, value_enum, default_value = "table")]
        output: remote::Output,
    },
    /// Show a pipeline: version, status and (with -o json|yaml) its spec.
    Get {
        /// Pipeline name.
        name: String,
        /// Output format.
        #[arg(short, long, value_enum, default_value = "table")]
        output: remote::Output,
    },
    /// Show a pipeline's live counters; `-w` refreshes every 2 s until Ctrl-C.
    Status {
        /// Pipeline name.
        name: String,
        /// Keep watching.
        #[arg(short, long)]
        watch: bool,
        /// Output format.
        #[arg(short, long, value_enum, default_value = "table")]
        output: remote::Output,
    },
    /// Stop a pipeline (it writes a final checkpoint and stays stopped).
    Stop {
        /// Pipeline name.
        name: String,
        /// Output format.
        #[arg(short, long, value_enum, default_value = "table")]
        output: remote::Output,
    },
    /// Start a stopped pipeline from its checkpoint.
    Start {
        /// Pipeline name.
        name: String,
        /// Output format.
        #[arg(short, long, value_enum, default_value = "table")]
        output: remote::Output,
    },
    /// Stop a pipeline and delete it with its versions and checkpoints.
    Delete {
        /// Pipeline name.
        name: String,
        /// Output format.
        #[arg(short, long, value_enum, default_value = "table")]
        output: remote::Output,
    },
    /// Deploy an earlier version again (as a new version).
    Rollback {
        /// Pipeline name.
        name: String,
        /// The version to restore (default: the one before the current).
        #[arg(long)]
        to: Option<u32>,
        /// Output format.
        #[arg(short, long, value_enum, default_value = "table")]
        output: remote::Output,
    },
    /// List the deployed versions of a pipeline.
    Versions {
        /// Pipeline name.
        name: String,
        /// Output format.
        #[arg(short, long, value_enum, default_value = "table")]
        output: remote::Output,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Run one pipeline in the foreground with a live status line, until Ctrl-C.
    Run {
        /// A pipeline YAML file.
        file: PathBuf,
        /// Kafka bootstrap servers.
        #[arg(long, env = "PIPECTL_BOOTSTRAP", default_value = "127.0.0.1:9092")]
        bootstrap: String,
        /// Stop when no input arrived for this long (such as `5s`); the input counts as
        /// finished, so open windows are emitted.
        #[arg(long, value_parser = parse_duration)]
        until_idle: Option<Duration>,
        /// Stop after this many input events (open windows are not emitted).
        #[arg(long)]
        max_events: Option<u64>,
        /// Most messages per micro-batch.
        #[arg(long, default_value_t = 10_000)]
        max_batch: usize,
        /// No status line.
        #[arg(long)]
        quiet: bool,
        /// Directory of event schemas (default: the nearest `schemas/` above the file).
        #[arg(long, env = "PIPECTL_SCHEMAS")]
        schemas: Option<PathBuf>,
        /// Keep checkpoints (state of windows, joins, tables and models, with offsets) here
        /// and resume from the one found there.
        #[arg(long)]
        checkpoint_dir: Option<PathBuf>,
        /// Keep state in Kafka instead: each stateful operator's changes go to its compacted
        /// changelog topic, committed with the source offsets in one transaction every
        /// checkpoint interval; a restart restores from there (docs/scaling.md).
        #[arg(long, conflicts_with = "checkpoint_dir")]
        kafka_state: bool,
        /// With state in Kafka: this instance's stable name among those sharing the
        /// pipeline. It joins the group as a static member, so a restart within the session
        /// timeout (10 s) takes its partitions back without a rebalance (docs/scaling.md).
        #[arg(long, value_parser = runtime::config::instance_id)]
        instance_id: Option<String>,
        /// Time between checkpoints (commits) for a pipeline without `commit_every`;
        /// default: 1s with an exactly_once sink, else 10s.
        #[arg(long, value_parser = parse_duration)]
        checkpoint_interval: Option<Duration>,
        /// Longest time a micro-batch waits for more records once it has its first one
        /// (0 to 10s): lower means lower latency at low rates, higher means larger batches.
        #[arg(long, value_parser = parse_latency_target, default_value = "10ms")]
        latency_target: Duration,
        /// Threads that run the pipeline's tasks (one task per input partition when the
        /// plan allows); default: one per core.
        #[arg(long, value_parser = clap::value_parser!(u16).range(1..=1024))]
        workers: Option<u16>,
        #[command(flatten)]
        registry: registry::RegistryArgs,
    },
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    spec::duration::parse(text).map(|d| d.0)
}

fn parse_latency_target(text: &str) -> Result<Duration, String> {
    runtime::config::latency_target(parse_duration(text)?)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Command::Run {
        workers: Some(n), ..
    } = &cli.command
    {
        builder.worker_threads(usize::from(*n));
    }
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    runtime.block_on(run(cli))
}

async fn run(cli: Cli) -> ExitCode {
    let server = cli.server;
    match cli.command {
        Command::Deploy {
            files,
            dry_run,
            schemas,
        } => deploy(&files, dry_run, schemas.as_deref(), &server).await,
        Command::List { output } => with_client(&server, |c| {
            let v = c.call("GET", "/api/v1/pipelines", None)?;
            remote::print(&v, output, |v| {
                remote::pipelines_table(
                    v["pipelines"]
                        .as_array()
                        .map(Vec::as_slice)
                        .unwrap_or_default(),
                )
            });
            Ok(())
        }),
        Command::Get { name, output } => with_pipeline(&server, &name, |c| {
            let v = c.call("GET", &remote::pipeline_path(&name, ""), None)?;
            remote::print(&v, output, |v| {
                remote::pipelines_table(std::slice::from_ref(v))
            });
            Ok(())
        }),
        Command::Status {
            name,
            watch,
            output,
        } => with_pipeline(&server, &name, |c| {
            // With -w, the table also shows rates since the previous poll.
            let mut previous: Option<(std::time::Instant, u64, u64)> = None;
            loop {
                let mut v = c.call("GET", &remote::pipeline_path(&name, "/status"), None)?;
                let (i, o) = (
                    v["events_in"].as_u64().unwrap_or(0),
                    v["events_out"].as_u64().unwrap_or(0),
                );
                if let Some((at, pi, po)) = previous {
                    let dt = at.elapsed().as_secs_f64().max(1e-3);
                    v["events_in_per_second"] = serde_json::json!(i.saturating_sub(pi) as f64 / dt);
                    v["events_out_per_second"] =
                        serde_json::json!(o.saturating_sub(po) as f64 / dt);
                }
                previous = Some((std::time::Instant::now(), i, o));
                remote::print(&v, output, remote::status_table);
                if !watch {
                    return Ok(());
                }
                println!();
                std::thread::sleep(Duration::from_secs(2));
            }
        }),
        Command::Stop { name, output } => with_pipeline(&server, &name, |c| {
            let v = c.call("POST", &remote::pipeline_path(&name, "/stop"), None)?;
            remote::print(&v, output, |_| format!("{name}: stopped\n"));
            Ok(())
        }),
        Command::Start { name, output } => with_pipeline(&server, &name, |c| {
            let v = c.call("POST", &remote::pipeline_path(&name, "/start"), None)?;
            remote::print(&v, output, |_| format!("{name}: started\n"));
            Ok(())
        }),
        Command::Delete { name, output } => with_pipeline(&server, &name, |c| {
            let v = c.call("DELETE", &remote::pipeline_path(&name, ""), None)?;
            remote::print(&v, output, |_| format!("{name}: deleted\n"));
            Ok(())
        }),
        Command::Rollback { name, to, output } => with_pipeline(&server, &name, |c| {
            let body = serde_json::json!({ "to": to });
            let path = remote::pipeline_path(&name, "/rollback");
            let v = c.call("POST", &path, Some(&body))?;
            remote::print(&v, output, |v| {
                format!(
                    "{name}: version {} runs the spec of version {}\n",
                    v["version"], v["rollback_of"]
                )
            });
            Ok(())
        }),
        Command::Versions { name, output } => with_pipeline(&server, &name, |c| {
            let v = c.call("GET", &remote::pipeline_path(&name, "/versions"), None)?;
            remote::print(&v, output, remote::versions_table);
            Ok(())
        }),
        Command::Completions { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "pipectl",
                &mut std::io::stdout(),
            );
            ExitCode::SUCCESS
        }
        Command::Validate {
            files,
            schemas,
            registry,
        } => match registry.connect() {
            Ok(r) => validate(&files, schemas.as_deref(), r.as_deref()).await,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(2)
            }
        },
        Command::Plan {
            file,
            schemas,
            registry,
        } => match registry.connect() {
            Ok(r) => plan(&file, schemas.as_deref(), r.as_deref()).await,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(2)
            }
        },
        Command::Schema => {
            print!("{}", spec::json_schema());
            ExitCode::SUCCESS
        }
        Command::Gen {
            bootstrap,
            kind,
            count,
            seed,
            topic,
            partitions,
            rate,
            late,
            malformed,
            out_of_order,
            start,
            interval_ms,
            format,
            key,
            schemas,
            registry,
        } => {
            let registry = match registry.connect() {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(2);
                }
            };
            let kinds: Vec<String> = if kind == "all" {
                if topic.is_some() {
                    eprintln!(
                        "error: --kind all writes each kind to its own default topic; drop --topic"
                    );
                    return ExitCode::from(2);
                }
                generator::KINDS.iter().map(|k| k.to_string()).collect()
            } else {
                vec![kind]
            };
            let mut jobs = Vec::new();
            for kind in &kinds {
                let avro = match avro_encoding(&format, kind, schemas.as_deref()) {
                    Ok(a) => a,
                    Err(e) => {
                        eprintln!("error: {e}");
                        return ExitCode::from(2);
                    }
                };
                let mut settings = generator::Settings::new(kind, seed);
                settings.late = late;
                settings.malformed = malformed;
                settings.out_of_order = out_of_order;
                settings.interval_ms = interval_ms;
                match start.as_deref() {
                    None => {}
                    Some("now") => settings.start_ms = chrono::Utc::now().timestamp_millis(),
                    Some(t) => match chrono::DateTime::parse_from_rfc3339(t) {
                        Ok(t) => settings.start_ms = t.timestamp_millis(),
                        Err(e) => {
                            eprintln!("error: --start `{t}`: {e} (write RFC 3339 or `now`)");
                            return ExitCode::from(2);
                        }
                    },
                }
                let Some(topic) = topic
                    .clone()
                    .or_else(|| generate::default_topic(kind).map(str::to_string))
                else {
                    eprintln!(
                        "error: unknown kind `{kind}`; known kinds: all, {}",
                        generator::KINDS.join(", ")
                    );
                    return ExitCode::from(2);
                };
                let avro = match (avro, &registry, format.as_str()) {
                    (Some(a), Some(r), "avro_confluent") => {
                        match a.registered(r, &format!("{topic}-value")) {
                            Ok(a) => Some(a),
                            Err(e) => {
                                eprintln!("error: {e}");
                                return ExitCode::from(1);
                            }
                        }
                    }
                    (a, _, _) => a,
                };
                jobs.push(generate::GenArgs {
                    bootstrap: bootstrap.clone(),
                    settings,
                    count,
                    topic,
                    partitions,
                    rate,
                    quiet: kinds.len() > 1,
                    avro,
                    key: key.clone(),
                });
            }
            // Kinds are generated side by side (with --rate, each at that rate).
            let topics: Vec<String> = jobs.iter().map(|j| j.topic.clone()).collect();
            let results = futures::future::join_all(jobs.into_iter().map(generate::generate)).await;
            let mut code = ExitCode::SUCCESS;
            for ((kind, topic), result) in kinds.iter().zip(&topics).zip(results) {
                match result {
                    Ok(r) => println!(
                        "wrote {} {kind} events to {topic} ({} malformed, {} late)",
                        r.events, r.malformed, r.late
                    ),
                    Err(e) => {
                        eprintln!("error: {kind}: {}", chain(e.as_ref()));
                        code = ExitCode::from(1);
                    }
                }
            }
            code
        }
        Command::Demo {
            duration,
            pipelines,
            rate,
            speedup,
        } => {
            let args = demo::DemoArgs {
                duration,
                rate,
                speedup,
            };
            match demo::demo(&pipelines, &args).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {}", chain(e.as_ref()));
                    ExitCode::from(1)
                }
            }
        }
        Command::Run {
            file,
            bootstrap,
            until_idle,
            max_events,
            max_batch,
            quiet,
            schemas,
            checkpoint_dir,
            kafka_state,
            instance_id,
            checkpoint_interval,
            latency_target,
            registry,
            workers: _,
        } => {
            let schema_registry = match registry.connect() {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(2);
                }
            };
            let plan = match check_file(&file, schemas.as_deref(), schema_registry.as_deref()).await
            {
                Checked::Valid(Some(plan), _) => plan,
                Checked::Valid(None, _) | Checked::Invalid => return ExitCode::from(1),
                Checked::Unreadable => return ExitCode::from(2),
            };
            let mut config = runtime::RunConfig::new(bootstrap);
            config.until_idle = until_idle;
            config.max_events = max_events;
            config.max_batch = max_batch;
            config.checkpoint_dir = checkpoint_dir;
            config.kafka_state = kafka_state;
            config.instance_id = instance_id;
            config.notify = runtime::Notify::to(|line| {
                eprintln!("{} {line}", chrono::Utc::now().format("%H:%M:%S%.3f"));
            });
            config.checkpoint_interval = checkpoint_interval;
            config.latency_target = latency_target;
            config.registry = schema_registry;
            match run::run(&plan, config, quiet).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {}", chain(e.as_ref()));
                    ExitCode::from(1)
                }
            }
        }
    }
}

/// The Avro encoding `format` asks for (`None` for JSON).
fn avro_encoding(
    format: &str,
    kind: &str,
    schemas: Option<&Path>,
) -> Result<Option<generate::AvroEncoding>, String> {
    let framing = match format {
        "json" => return Ok(None),
        "avro" => formats::avro::Framing::Plain,
        "avro_confluent" => formats::avro::Framing::Confluent { schema_id: 0 },
        other => {
            return Err(format!(
                "--format `{other}`: expected json, avro or avro_confluent"
            ));
        }
    };
    let dir = schemas.map(Path::to_path_buf).unwrap_or_else(|| {
        find_schema_dir(&std::env::current_dir().unwrap_or_default())
            .unwrap_or_else(|| PathBuf::from("schemas"))
    });
    let s = SchemaRegistry::new(dir)
        .load(kind)
        .map_err(|e| e.to_string())?;
    let json = formats::json::JsonDecoder::new(s.arrow.clone()).map_err(|e| e.to_string())?;
    let codec =
        formats::avro::AvroCodec::new(&s.avro_json, s.arrow, framing).map_err(|e| e.to_string())?;
    Ok(Some(generate::AvroEncoding { json, codec }))
}

/// Runs `f` with a client of the daemon; failures print and give their exit code.
fn with_client(
    server: &remote::ServerArgs,
    f: impl FnOnce(&remote::Client) -> Result<(), remote::Failure>,
) -> ExitCode {
    match remote::Client::new(server).and_then(|c| f(&c)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => e.report(),
    }
}

/// As [`with_client`], for a command on the pipeline `name` (checked to be a pipeline name).
fn with_pipeline(
    server: &remote::ServerArgs,
    name: &str,
    f: impl FnOnce(&remote::Client) -> Result<(), remote::Failure>,
) -> ExitCode {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if !ok {
        eprintln!("error: `{name}` is not a pipeline name (lowercase letters, digits and `-`)");
        return ExitCode::from(2);
    }
    with_client(server, f)
}

/// `pipectl deploy`: every file is validated locally first (nothing is deployed unless all
/// are valid); then, per file, the difference with the deployed version, and the deploy.
async fn deploy(
    files: &[PathBuf],
    dry_run: bool,
    schemas: Option<&Path>,
    server: &remote::ServerArgs,
) -> ExitCode {
    let files = expand_dirs(files);
    let mut valid = Vec::new();
    let mut worst = 0u8;
    let mut names: std::collections::BTreeMap<String, PathBuf> = Default::default();
    for file in &files {
        match check_file(file, schemas, None).await {
            Checked::Valid(_, doc) => match doc.pipeline.as_ref() {
                Some(p) if names.contains_key(&p.metadata.name) => {
                    eprintln!(
                        "error: {} and {} both define pipeline `{}`",
                        names[&p.metadata.name].display(),
                        file.display(),
                        p.metadata.name
                    );
                    worst = worst.max(1);
                }
                Some(p) => {
                    names.insert(p.metadata.name.clone(), file.clone());
                    valid.push((file, p.metadata.name.clone()));
                }
                None => worst = worst.max(1),
            },
            Checked::Invalid => worst = worst.max(1),
            Checked::Unreadable => worst = worst.max(2),
        }
    }
    if worst > 0 {
        eprintln!("nothing deployed: fix the errors above first");
        return ExitCode::from(worst);
    }
    with_client(server, |c| {
        for (file, name) in &valid {
            let shown = file.display().to_string();
            let yaml = std::fs::read_to_string(file).map_err(|e| remote::Failure {
                code: 2,
                message: format!("error: cannot read {shown}: {e}"),
            })?;
            match c.call("GET", &remote::pipeline_path(name, ""), None) {
                Ok(current) => {
                    let deployed = current["spec"].as_str().unwrap_or_default();
                    if deployed == yaml {
                        println!("{name}: unchanged (version {})", current["version"]);
                    } else {
                        let version = current["version"].as_u64().unwrap_or_default();
                        print!("{}", remote::diff(name, deployed, version, &shown, &yaml));
                    }
                }
                Err(e) if e.code == remote::EXIT_NOT_FOUND => {
                    println!("{name}: new pipeline");
                }
                Err(e) => return Err(e),
            }
            let path = if dry_run {
                "/api/v1/pipelines?dry_run=true"
            } else {
                "/api/v1/pipelines"
            };
            let v = c.call("POST", path, Some(&remote::deploy_body(&shown, &yaml)))?;
            match (dry_run, v["changed"].as_bool()) {
                (true, Some(true)) => println!(
                    "{name}: valid on the daemon; would deploy version {} (dry run)",
                    v["version"]
                ),
                (true, _) => println!("{name}: valid on the daemon; nothing to deploy (dry run)"),
                (false, Some(true)) => println!("{name}: deployed version {}", v["version"]),
                (false, _) => println!("{name}: unchanged, running version {}", v["version"]),
            }
        }
        Ok(())
    })
}

/// An error with its causes, `a: b: c`.
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let next = s.to_string();
        if !text.contains(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = s.source();
    }
    text
}

/// The schema registry for `file`: the explicit directory, or the nearest `schemas/`.
fn registry_for(file: &Path, explicit: Option<&Path>) -> SchemaRegistry {
    if let Some(dir) = explicit {
        return SchemaRegistry::new(dir);
    }
    let start = file
        .canonicalize()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .unwrap_or_else(|| PathBuf::from("."));
    SchemaRegistry::new(find_schema_dir(&start).unwrap_or_else(|| PathBuf::from("schemas")))
}

enum Checked {
    Valid(Option<planner::PipelinePlan>, Box<spec::Document>),
    Invalid,
    Unreadable,
}

async fn check_file(
    file: &Path,
    schemas: Option<&Path>,
    schema_registry: Option<&connectors::registry::Registry>,
) -> Checked {
    let name = file.display().to_string();
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: cannot read {name}: {e}");
            return Checked::Unreadable;
        }
    };
    let registry = registry_for(file, schemas);
    let (mut doc, plan) = planner::check(&name, &text, &registry, &spec::process_env).await;
    if let (Some(plan), Some(r)) = (&plan, schema_registry)
        && let Err(e) = registry::check_plan(&mut doc, plan, r)
    {
        eprintln!("error: cannot check {name} against the schema registry: {e}");
        return Checked::Unreadable;
    }
    let diagnostics = doc.diagnostics();
    if diagnostics.is_empty() {
        return Checked::Valid(plan, Box::new(doc));
    }
    let lines: Vec<&str> = text.lines().collect();
    for d in &diagnostics {
        eprint!("{}", render(d, &name, &lines));
    }
    eprintln!(
        "{name}: {} error{}",
        diagnostics.len(),
        if diagnostics.len() == 1 { "" } else { "s" }
    );
    Checked::Invalid
}

/// A diagnostic with the offending line and a caret under the column.
fn render(d: &Diagnostic, file: &str, lines: &[&str]) -> String {
    let mut out = d.render(file);
    out.push('\n');
    if let Some(pos) = d.pos
        && let Some(line) = lines.get(pos.line.wrapping_sub(1))
    {
        let number = pos.line.to_string();
        let pad = " ".repeat(number.len());
        let caret_at: String = line
            .chars()
            .take(pos.col.saturating_sub(1))
            .map(|c| if c == '\t' { '\t' } else { ' ' })
            .collect();
        out.push_str(&format!(" {number} | {line}\n {pad} | {caret_at}^\n"));
    }
    out
}

/// Files as given, with each directory replaced by its `*.yaml` and `*.yml` files (sorted),
/// as `kubectl apply -f DIR` does.
fn expand_dirs(files: &[PathBuf]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for f in files {
        if f.is_dir() {
            let mut inside: Vec<PathBuf> = std::fs::read_dir(f)
                .map(|d| {
                    d.filter_map(|e| e.ok().map(|e| e.path()))
                        .filter(|p| {
                            p.is_file() && p.extension().is_some_and(|x| x == "yaml" || x == "yml")
                        })
                        .collect()
                })
                .unwrap_or_default();
            inside.sort();
            out.extend(inside);
        } else {
            out.push(f.clone());
        }
    }
    out
}

async fn validate(
    files: &[PathBuf],
    schemas: Option<&Path>,
    registry: Option<&connectors::registry::Registry>,
) -> ExitCode {
    let files = expand_dirs(files);
    let mut worst = 0u8;
    for file in &files {
        match check_file(file, schemas, registry).await {
            Checked::Valid(_, doc) => {
                let p = doc.pipeline.as_ref().map(|p| &p.spec);
                let counts = p.map_or(String::new(), |s| {
                    format!(
                        " ({} sources, {} transforms, {} models, {} sinks)",
                        s.sources.len(),
                        s.transforms.len(),
                        s.models.len(),
                        s.sinks.len()
                    )
                });
                println!("{}: valid{counts}", file.display());
            }
            Checked::Invalid => worst = worst.max(1),
            Checked::Unreadable => worst = worst.max(2),
        }
    }
    ExitCode::from(worst)
}

async fn plan(
    file: &Path,
    schemas: Option<&Path>,
    registry: Option<&connectors::registry::Registry>,
) -> ExitCode {
    match check_file(file, schemas, registry).await {
        Checked::Valid(Some(plan), _) => {
            print!("{}", plan.explain());
            ExitCode::SUCCESS
        }
        Checked::Valid(None, _) => {
            eprintln!(
                "error: internal error: {} is valid but produced no plan; please report this",
                file.display()
            );
            ExitCode::from(1)
        }
        Checked::Invalid => ExitCode::from(1),
        Checked::Unreadable => ExitCode::from(2),
    }
}
