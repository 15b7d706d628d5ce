//! `pipectl demo`: the example pipelines on an in-process Kafka broker (librdkafka's mock
//! cluster), fed by the generator, with live results in the terminal. Needs nothing
//! installed. The mock broker keeps only the newest few megabytes of each partition, which
//! is fine while consumers keep up; tests use a real broker.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use connectors::{KafkaSink, Sink as _};
use generator::{Generator, Settings};
use planner::{NodeKind, PipelinePlan};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::mocking::MockCluster;
use runtime::{RunConfig, Runner, Stats};

use crate::generate::{default_topic, records};

type DemoError = Box<dyn std::error::Error>;

/// Settings of a demo run.
#[derive(Debug)]
pub struct DemoArgs {
    /// How long to run; `None` until Ctrl-C.
    pub duration: Option<Duration>,
    /// Events per second per event kind.
    pub rate: f64,
    /// Event time per wall-clock second, in seconds (600: ten minutes pass every second).
    pub speedup: f64,
}

struct Running {
    name: String,
    stats: Arc<Stats>,
    handle: tokio::task::JoinHandle<Result<(), String>>,
    sinks: Vec<String>,
}

/// Loads and plans every pipeline in `dir`; reports and skips the invalid ones.
async fn load_pipelines(dir: &Path) -> Vec<PipelinePlan> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path()).collect())
        .unwrap_or_default();
    files.retain(|p| p.extension().is_some_and(|e| e == "yaml"));
    files.sort();
    let schemas =
        event_schema::find_schema_dir(dir).unwrap_or_else(|| Path::new("schemas").to_path_buf());
    let registry = event_schema::SchemaRegistry::new(schemas);
    let mut plans = Vec::new();
    for file in files {
        let name = file.display().to_string();
        let Ok(text) = std::fs::read_to_string(&file) else {
            continue;
        };
        match planner::check(&name, &text, &registry, &spec::process_env).await {
            (_, Some(plan)) => plans.push(plan),
            (doc, None) => {
                for d in doc.diagnostics() {
                    eprintln!("{}", d.render(&name));
                }
            }
        }
    }
    plans
}

fn topics_of(plan: &PipelinePlan) -> (Vec<(String, String)>, Vec<String>) {
    let mut sources = Vec::new();
    let mut outputs = Vec::new();
    for n in &plan.nodes {
        match &n.kind {
            // A repartition's topic is the pipeline's own business.
            NodeKind::Source(s) if s.exchange.is_none() => {
                sources.push((s.schema_name.clone(), s.topic.clone()));
                outputs.push(s.dead_letter_topic.clone());
            }
            // Made here as every topic of the demo: the in-process broker does not make
            // topics of the broker's default replication, as the runner asks for.
            NodeKind::Sink(s) => outputs.push(s.topic.clone()),
            _ => {}
        }
    }
    (sources, outputs)
}

/// Runs the demo.
pub async fn demo(dir: &Path, args: &DemoArgs) -> Result<(), DemoError> {
    let cluster = MockCluster::new(1)?;
    let bootstrap = cluster.bootstrap_servers();
    eprintln!("demo: in-process Kafka broker at {bootstrap}");
    let plans = load_pipelines(dir).await;
    if plans.is_empty() {
        return Err(format!("no valid pipeline in {}", dir.display()).into());
    }
    // Topics: every source, sink and dead-letter topic of every pipeline.
    let mut kinds: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut all_topics = BTreeSet::new();
    for plan in &plans {
        let (sources, outputs) = topics_of(plan);
        for (kind, topic) in sources {
            all_topics.insert(topic.clone());
            kinds.entry(kind).or_default().insert(topic);
        }
        all_topics.extend(outputs);
        // A pipeline with state in Kafka (one with an exactly_once sink) makes its changelogs
        // through the admin API, which the in-process broker does not serve.
        all_topics.extend(runtime::changelog_topics(plan).into_values());
    }
    for topic in &all_topics {
        cluster.create_topic(topic, 4, 1)?;
    }

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    // Generators: one per event kind, event time starting now and running `speedup` times
    // faster than the wall clock.
    let mut generators = Vec::new();
    for (kind, topics) in &kinds {
        if default_topic(kind).is_none() {
            continue;
        }
        let mut settings = Settings::new(kind, 7);
        settings.start_ms = chrono::Utc::now().timestamp_millis();
        settings.interval_ms = 1000.0 * args.speedup / args.rate;
        settings.late = 0.005;
        settings.malformed = 0.002;
        let topics: Vec<String> = topics.iter().cloned().collect();
        let bootstrap = bootstrap.clone();
        let rate = args.rate;
        let mut stop = stop_rx.clone();
        generators.push(tokio::spawn(async move {
            let sinks: Vec<KafkaSink> = topics
                .iter()
                .filter_map(|t| KafkaSink::new(&bootstrap, t, &BTreeMap::new(), Vec::new()).ok())
                .collect();
            let Ok(mut generator) = Generator::new(settings) else {
                return;
            };
            let started = Instant::now();
            let mut sent = 0u64;
            let tick = (rate / 10.0).max(1.0) as u64;
            while !*stop.borrow() {
                let events: Vec<generator::Event> =
                    (0..tick).map(|_| generator.next_event()).collect();
                let records = records(&events);
                for sink in &sinks {
                    if sink.send_all(&records, &[]).await.is_err() {
                        return;
                    }
                }
                sent += tick;
                let due = Duration::from_secs_f64(sent as f64 / rate);
                let wait = due.saturating_sub(started.elapsed());
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    _ = stop.changed() => {}
                }
            }
        }));
    }

    // Pipelines.
    let mut running = Vec::new();
    for plan in &plans {
        let stats = Arc::new(Stats::default());
        let mut config = RunConfig::new(bootstrap.clone());
        config.max_wait = Duration::from_millis(200);
        let runner = match Runner::new(plan, config, stats.clone()).await {
            Ok(r) => r,
            Err(e) => {
                eprintln!("demo: {} does not run here: {e}", plan.name);
                continue;
            }
        };
        for w in runner.warnings() {
            eprintln!("demo: {}: {w}", plan.name);
        }
        let mut stop = stop_rx.clone();
        let name = plan.name.clone();
        let handle = tokio::spawn(async move {
            runner
                .run(async move {
                    let _ = stop.changed().await;
                })
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        });
        let sinks = plan
            .nodes
            .iter()
            .filter_map(|n| match &n.kind {
                NodeKind::Sink(s) if s.exchange.is_none() => Some(s.topic.clone()),
                _ => None,
            })
            .collect();
        running.push(Running {
            name,
            stats,
            handle,
            sinks,
        });
    }

    // A reader of every sink topic, keeping the newest record of each.
    let sink_topics: Vec<String> = running.iter().flat_map(|r| r.sinks.clone()).collect();
    let reader: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("group.id", "pipectl-demo-viewer")
        .set("auto.offset.reset", "earliest")
        .create()?;
    let refs: Vec<&str> = sink_topics.iter().map(String::as_str).collect();
    reader.subscribe(&refs)?;
    let mut latest: BTreeMap<String, String> = BTreeMap::new();

    let started = Instant::now();
    let mut next_print = Instant::now() + Duration::from_secs(2);
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        let done = args.duration.is_some_and(|d| started.elapsed() >= d);
        if done {
            break;
        }
        tokio::select! {
            _ = &mut ctrl_c => break,
            m = tokio::time::timeout(Duration::from_millis(100), reader.recv()) => {
                if let Ok(Ok(m)) = m {
                    let text = String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned();
                    latest.insert(m.topic().to_string(), text);
                }
            }
        }
        if Instant::now() >= next_print {
            print_status(started.elapsed(), &running, &latest);
            next_print = Instant::now() + Duration::from_secs(2);
        }
    }
    let _ = stop_tx.send(true);
    for g in generators {
        let _ = g.await;
    }
    let mut failed = Vec::new();
    for r in running {
        match r.handle.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => failed.push(format!("{}: {e}", r.name)),
            Err(e) => failed.push(format!("{}: {e}", r.name)),
        }
    }
    println!(
        "demo: stopped after {:.0}s",
        started.elapsed().as_secs_f64()
    );
    if failed.is_empty() {
        Ok(())
    } else {
        Err(failed.join("; ").into())
    }
}

fn print_status(elapsed: Duration, running: &[Running], latest: &BTreeMap<String, String>) {
    println!(
        "\n── {:>4.0}s ──────────────────────────────────────────────",
        elapsed.as_secs_f64()
    );
    for r in running {
        let s = &r.stats;
        let state = if r.handle.is_finished() {
            "  STOPPED (error below)"
        } else {
            ""
        };
        println!(
            "{:<24} in {:>8}  out {:>7}  errors {:>4}  dead-lettered {:>4}  late {:>4}{state}",
            r.name,
            s.events_in.load(Ordering::Relaxed),
            s.events_out.load(Ordering::Relaxed),
            s.errors.load(Ordering::Relaxed),
            s.dead_lettered.load(Ordering::Relaxed),
            s.late.load(Ordering::Relaxed),
        );
        for topic in &r.sinks {
            if let Some(record) = latest.get(topic) {
                let mut shown: String = record.chars().take(150).collect();
                if shown.len() < record.len() {
                    shown.push('…');
                }
                println!("    {topic}: {shown}");
            }
        }
    }
}
