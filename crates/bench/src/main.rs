//! `pipeline-bench`: events per second of the engine's hot paths, with peak memory.
//!
//! ```sh
//! cargo run --release -p bench -- --events 1000000                            # in memory
//! cargo run --release -p bench -- --events 1000000 --bootstrap 127.0.0.1:9092 # and through Kafka
//! ```
//!
//! ```sh
//! scripts/bench-tools   # kcat
//! cargo run --release -p bench -- suite --bootstrap 127.0.0.1:9092              # the suite
//! ```
//!
//! The suite ([`suite`], docs/performance.md) runs each pipeline in a process of its own and
//! prints its events/s as a ratio of kcat's and of a bare rdkafka loop's on the same topic,
//! with CPU and peak RSS, then the latency table at fixed input rates. Without `suite`, it
//! prints one line per measurement: decode (JSON, Avro), the real runner on the in-memory
//! broker running a filter pipeline and a window pipeline, and, with a broker, a bare
//! rdkafka consumer beside the engine running the same two pipelines over the same topic.
//! Run release builds only; debug numbers mean nothing.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use connectors::Sink as _;
use datafusion::arrow::array::RecordBatch;
use formats::avro::{AvroCodec, Framing};
use formats::json::JsonDecoder;
use generator::{Generator, Settings};
use planner::{NodeKind, PipelinePlan};
use rdkafka::consumer::{Consumer, StreamConsumer};

mod child;
mod suite;

type BenchError = Box<dyn std::error::Error>;

const PIPELINE: &str = r#"
apiVersion: pipelines/v1
kind: Pipeline
metadata: { name: bench }
spec:
  sources:
    - name: readings
      kafka: { topic: "${BENCH_TOPIC:-bench}", start_from: earliest, group: "${BENCH_GROUP:-bench}" }
      format: json
      schema: production/sensor_reading
      event_time: { field: ts, max_out_of_order: 5s }
      on_error: skip
  transforms:
    - name: clean
      sql: |
        SELECT upper(line_id) AS line_id, ts, temperature, vibration, failure_rate
        FROM readings WHERE temperature BETWEEN -50 AND 250
    - name: per_minute
      window: { tumbling: 1m }
      sql: |
        SELECT line_id, window_start, window_end, count(*) AS n, avg(temperature) AS t,
               max(vibration) AS v, avg(failure_rate) AS f
        FROM clean GROUP BY line_id, window_start, window_end
  sinks:
    - name: out
      from: "${BENCH_SINK_FROM:-per_minute}"
      kafka: { topic: "${BENCH_TOPIC:-bench}.out" }
      format: json
"#;

/// The scale benchmark's pipeline: per-line windows and a per-line regression, keyed like
/// its topic, so that it runs as a task per partition.
const KEYED: &str = r#"
apiVersion: pipelines/v1
kind: Pipeline
metadata: { name: bench-keyed }
spec:
  sources:
    - name: readings
      kafka: { topic: "${BENCH_TOPIC:-keyed}", start_from: earliest, group: "${BENCH_GROUP:-keyed}" }
      format: json
      schema: production/sensor_reading
      key: line_id
      event_time: { field: ts, max_out_of_order: 5s }
      on_error: skip
  transforms:
    - name: per_minute
      window: { tumbling: 1m }
      sql: |
        SELECT line_id, window_start, window_end, count(*) AS n, avg(temperature) AS t,
               max(vibration) AS v, avg(failure_rate) AS f
        FROM readings GROUP BY line_id, window_start, window_end
  models:
    - name: failure
      input: readings
      key: line_id
      regression: { target: failure_rate, features: [temperature, humidity, pressure, speed, vibration] }
  sinks:
    - { name: windows, from: per_minute, kafka: { topic: "${BENCH_TOPIC:-keyed}.windows" }, format: json, delivery: "${BENCH_DELIVERY:-at_least_once}" }
    - { name: predictions, from: failure.predictions, kafka: { topic: "${BENCH_TOPIC:-keyed}.predictions" }, format: json, delivery: "${BENCH_DELIVERY:-at_least_once}" }
"#;

/// The incremental-state benchmark's pipeline: a regression per key, state in changelogs.
const MANY_KEYS: &str = r#"
apiVersion: pipelines/v1
kind: Pipeline
metadata: { name: bench-keys }
spec:
  sources:
    - name: readings
      kafka: { topic: many_keys, start_from: earliest, group: many_keys }
      format: json
      schema: production/sensor_reading
      key: line_id
      event_time: { field: ts }
      on_error: skip
  models:
    - name: per_key
      input: readings
      key: line_id
      regression: { target: failure_rate, features: [temperature, humidity, pressure, speed, vibration] }
      snapshot_every: { events: 1000000000 }
  sinks:
    - { name: predictions, from: per_key.predictions, kafka: { topic: many_keys.predictions }, format: json }
"#;

/// The incremental-state benchmark's window: an hour per key (every reading falls in the
/// first hour, so no window closes during the runs), state in changelogs.
const MANY_WINDOWS: &str = r#"
apiVersion: pipelines/v1
kind: Pipeline
metadata: { name: bench-windows }
spec:
  sources:
    - name: readings
      kafka: { topic: many_keys, start_from: earliest, group: many_windows }
      format: json
      schema: production/sensor_reading
      key: line_id
      event_time: { field: ts }
      on_error: skip
  transforms:
    - name: per_hour
      window: { tumbling: 1h }
      sql: |
        SELECT line_id, window_start, window_end, count(*) AS readings,
               avg(temperature) AS avg_temperature, max(vibration) AS max_vibration
        FROM readings GROUP BY line_id, window_start, window_end
  sinks:
    - { name: windows, from: per_hour, kafka: { topic: many_keys.windows }, format: json }
"#;

/// Keys of the incremental-state benchmark.
const KEYS: usize = 100_000;

/// State bytes written by the commits of one run of the many-keys pipeline over the next
/// `events` messages of its topic, with state kept in the in-memory broker's changelogs.
async fn state_bytes_of_a_run(
    broker: &connectors::memory::Memory,
    yaml: &str,
    events: usize,
) -> Result<u64, BenchError> {
    let plan = plan_of(yaml, &[]).await?;
    let stats = Arc::new(runtime::Stats::default());
    let mut config = runtime::RunConfig::new("memory");
    config.kafka_state = true;
    // One commit, when the run stops.
    config.checkpoint_interval = Some(Duration::from_secs(3600));
    config.max_events = Some(events as u64);
    let runner = runtime::Runner::connect(&plan, config, stats.clone(), broker.clone()).await?;
    runner.run(std::future::pending()).await?;
    Ok(stats.state_bytes.load(Ordering::Relaxed))
}

/// Changelog bytes of a commit after every one of 100,000 keys learnt, and of the next
/// commit after 1% of them learnt again: models and windows write only the keys that
/// changed.
async fn incremental_state() -> Result<(), BenchError> {
    let broker = connectors::memory::Memory::new();
    broker.create_topic("many_keys", 1);
    broker.create_topic("many_keys.predictions", 1);
    broker.create_topic("many_keys.windows", 1);
    let reading = |key: usize, i: usize| {
        serde_json::json!({
            "line_id": format!("K{key:06}"), "machine_id": "M1", "ts": 1_767_225_600_000i64 + i as i64,
            "temperature": 60.0 + (i % 17) as f64, "humidity": 40.0 + (i % 7) as f64,
            "pressure": 300.0 + (i % 11) as f64, "speed": 100.0 + (i % 13) as f64,
            "vibration": 3.0 + (i % 5) as f64 / 10.0, "failure_rate": 1.0 + (i % 19) as f64 / 10.0,
        })
        .to_string()
    };
    for k in 0..KEYS {
        broker.produce("many_keys", 0, None, Some(reading(k, k).as_bytes()), 0)?;
    }
    let full = state_bytes_of_a_run(&broker, MANY_KEYS, KEYS).await?;
    let full_windows = state_bytes_of_a_run(&broker, MANY_WINDOWS, KEYS).await?;
    let changed = KEYS / 100;
    for j in 0..changed {
        // Spread over the key space.
        let k = j * 100 + 7;
        broker.produce(
            "many_keys",
            0,
            None,
            Some(reading(k, KEYS + j).as_bytes()),
            0,
        )?;
    }
    let incremental = state_bytes_of_a_run(&broker, MANY_KEYS, changed).await?;
    let incremental_windows = state_bytes_of_a_run(&broker, MANY_WINDOWS, changed).await?;
    println!(
        "{:<44} {full:>12} bytes   (all {KEYS} keys of a per-key regression)",
        "state written by a commit, every key new"
    );
    println!(
        "{:<44} {incremental:>12} bytes   ({changed} keys changed: {:.2}% of the full state)",
        "state written by the next commit",
        100.0 * incremental as f64 / full.max(1) as f64
    );
    println!(
        "{:<44} {full_windows:>12} bytes   (the open hour of all {KEYS} keys of a window)",
        "window state written by a commit, every key new"
    );
    println!(
        "{:<44} {incremental_windows:>12} bytes   ({changed} keys changed: {:.2}% of the full state)",
        "window state written by the next commit",
        100.0 * incremental_windows as f64 / full_windows.max(1) as f64
    );
    Ok(())
}

/// Partitions of the scale benchmark's topic.
const KEYED_PARTITIONS: usize = 8;

fn peak_rss_mb() -> f64 {
    suite::status_kb("self", "VmHWM").map_or(0.0, |kb| kb / 1024.0)
}

fn report(what: &str, events: usize, elapsed: Duration) {
    println!(
        "{what:<44} {:>12.0} events/s   ({events} events in {:.2} s, peak RSS {:.0} MB)",
        events as f64 / elapsed.as_secs_f64(),
        elapsed.as_secs_f64(),
        peak_rss_mb()
    );
}

async fn plan_with(env: &[(&str, String)]) -> Result<PipelinePlan, BenchError> {
    plan_of(PIPELINE, env).await
}

async fn plan_of(yaml: &str, env: &[(&str, String)]) -> Result<PipelinePlan, BenchError> {
    let dir =
        event_schema::find_schema_dir(&std::env::current_dir()?).ok_or("no schemas/ directory")?;
    let registry = event_schema::SchemaRegistry::new(dir);
    let lookup = |name: &str| {
        env.iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.clone())
            .or_else(|| std::env::var(name).ok())
    };
    match planner::check("bench.yaml", yaml, &registry, &lookup).await {
        (_, Some(p)) => Ok(p),
        (doc, None) => Err(doc
            .diagnostics()
            .iter()
            .map(|d| d.render("bench.yaml"))
            .collect::<Vec<_>>()
            .join("\n")
            .into()),
    }
}

/// Runs `plan` to `events` input events on a runtime of its own with `workers` threads (on
/// a thread of its own, since the caller's runtime cannot block), with state in Kafka
/// committed every second if `kafka_state`: (events read, time to read and process them,
/// tasks).
fn run_on_workers<C: connectors::Connect>(
    workers: usize,
    plan: &PipelinePlan,
    bootstrap: &str,
    connect: C,
    events: usize,
    kafka_state: bool,
) -> Result<(usize, Duration, usize), String> {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(workers)
                    .enable_all()
                    .build()
                    .map_err(|e| e.to_string())?;
                rt.block_on(async {
                    let stats = Arc::new(runtime::Stats::default());
                    let mut config = runtime::RunConfig::new(bootstrap);
                    config.max_events = Some(events as u64);
                    config.kafka_state = kafka_state;
                    config.checkpoint_interval = Some(Duration::from_secs(1));
                    let runner = runtime::Runner::connect(plan, config, stats.clone(), connect)
                        .await
                        .map_err(|e| e.to_string())?;
                    let tasks = runner.tasks();
                    let started = Instant::now();
                    let handle = tokio::spawn(runner.run(std::future::pending()));
                    while stats.events_in.load(Ordering::Relaxed) < events as u64
                        && !handle.is_finished()
                    {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                    let consumed = started.elapsed();
                    handle
                        .await
                        .map_err(|e| e.to_string())?
                        .map_err(|e| e.to_string())?;
                    Ok((
                        stats.events_in.load(Ordering::Relaxed) as usize,
                        consumed,
                        tasks,
                    ))
                })
            })
            .join()
            .map_err(|_| "the benchmark thread panicked".to_string())?
    })
}

/// The scale benchmark: the keyed pipeline on 1 and 2 workers, over `topic` of `connect`.
async fn scale<C: connectors::Connect>(
    place: &str,
    topic: &str,
    bootstrap: &str,
    connect: C,
    events: usize,
) -> Result<(), BenchError> {
    let mut rates = Vec::new();
    for workers in [1, 2] {
        let group = format!("{topic}-{workers}-workers");
        let plan = plan_of(
            KEYED,
            &[("BENCH_TOPIC", topic.to_string()), ("BENCH_GROUP", group)],
        )
        .await?;
        let (n, elapsed, tasks) =
            run_on_workers(workers, &plan, bootstrap, connect.clone(), events, false)?;
        report(
            &format!("window + regression per line, {place}, {workers} worker(s)"),
            n,
            elapsed,
        );
        println!("{:<44} {tasks} tasks", "");
        rates.push(n as f64 / elapsed.as_secs_f64());
    }
    println!(
        "{:<44} 2 workers / 1 worker: {:.2}",
        "",
        rates[1] / rates[0]
    );
    Ok(())
}

/// The cost of exactly-once delivery: the keyed pipeline on 2 workers with state in Kafka
/// committed every second, its sinks at least once, then exactly once.
async fn delivery_cost<C: connectors::Connect>(
    place: &str,
    topic: &str,
    bootstrap: &str,
    connect: C,
    events: usize,
) -> Result<(), BenchError> {
    let mut rates = Vec::new();
    for delivery in ["at_least_once", "exactly_once"] {
        let plan = plan_of(
            KEYED,
            &[
                ("BENCH_TOPIC", topic.to_string()),
                ("BENCH_GROUP", format!("{topic}-{delivery}")),
                ("BENCH_DELIVERY", delivery.to_string()),
            ],
        )
        .await?;
        let (n, elapsed, _) = run_on_workers(2, &plan, bootstrap, connect.clone(), events, true)?;
        report(
            &format!("window + regression, {place}, {delivery}"),
            n,
            elapsed,
        );
        rates.push(n as f64 / elapsed.as_secs_f64());
    }
    println!(
        "{:<44} exactly once / at least once: {:.2} (state in Kafka, commit every 1 s, 2 workers)",
        "",
        rates[1] / rates[0]
    );
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), BenchError> {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    match args.get(1).map(String::as_str) {
        Some("child") => {
            let bootstrap = arg("--bootstrap").ok_or("--bootstrap")?;
            let topic = arg("--topic").unwrap_or_default();
            let events: u64 = arg("--events").map_or(Ok(0), |v| v.parse())?;
            return match args.get(2).map(String::as_str) {
                Some("bare") => suite::bare_child(&bootstrap, &topic, events),
                Some("relay") => suite::relay_child(&bootstrap, &topic, events),
                Some("many") => {
                    let suffix = arg("--suffix").unwrap_or_default();
                    child::many(&bootstrap, &topic, &suffix).await
                }
                Some("pipeline") => {
                    let spec = args.get(3).ok_or("a pipeline")?;
                    let suffix = arg("--suffix").unwrap_or_default();
                    let target = arg("--latency-target")
                        .map(|ms| ms.parse().map(Duration::from_millis))
                        .transpose()?;
                    child::pipeline(spec, &bootstrap, &topic, &suffix, events, target).await
                }
                _ => Err("child bare|pipeline".into()),
            };
        }
        Some("suite") => {
            let bootstrap = arg("--bootstrap").ok_or("suite needs --bootstrap HOST:PORT")?;
            let events: usize = arg("--events").map_or(Ok(1_000_000), |v| v.parse())?;
            let example_events: usize =
                arg("--example-events").map_or(Ok(200_000), |v| v.parse())?;
            let seconds: u64 = arg("--seconds").map_or(Ok(10), |v| v.parse())?;
            let rates: Vec<u64> = arg("--rates")
                .unwrap_or_else(|| "10000,50000,200000".into())
                .split(',')
                .map(str::parse)
                .collect::<Result<_, _>>()?;
            let memory_seconds: u64 = arg("--memory-seconds").map_or(Ok(30), |v| v.parse())?;
            // Parts to run (all by default): throughput, examples, latency, memory.
            let only: Vec<String> = arg("--only")
                .map(|o| o.split(',').map(String::from).collect())
                .unwrap_or_default();
            return suite::run(
                &bootstrap,
                events,
                example_events,
                &rates,
                seconds,
                memory_seconds,
                &only,
            )
            .await;
        }
        _ => {}
    }
    let events: usize = arg("--events").map_or(Ok(1_000_000), |v| v.parse())?;
    let batch_size = 10_000;
    println!(
        "pipeline-bench: {events} sensor readings (~{} bytes of JSON each), micro-batches of {batch_size}, {} cores",
        170,
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );

    let mut settings = Settings::new("production/sensor_reading", 1);
    settings.interval_ms = 10.0;
    let (keys, messages): (Vec<String>, Vec<Vec<u8>>) = Generator::new(settings)?
        .take(events)
        .map(|e| (e.key, e.value))
        .unzip();

    let plan = plan_with(&[]).await?;
    let (schema, avro_json) = plan
        .nodes
        .iter()
        .find_map(|n| match &n.kind {
            NodeKind::Source(s) => Some((s.schema.clone(), s.avro_json.clone())),
            _ => None,
        })
        .ok_or("no source")?;

    // Decode.
    let mut json = JsonDecoder::new(schema.clone())?;
    let started = Instant::now();
    let mut batches: Vec<RecordBatch> = Vec::new();
    for chunk in messages.chunks(batch_size) {
        let refs: Vec<&[u8]> = chunk.iter().map(Vec::as_slice).collect();
        batches.push(json.decode(&refs)?.batch);
    }
    report("decode JSON -> Arrow", events, started.elapsed());

    let avro = AvroCodec::new(&avro_json, schema.clone(), Framing::Plain)?;
    let avro_messages: Vec<Vec<u8>> = batches
        .iter()
        .map(|b| avro.encode_rows(b))
        .collect::<Result<Vec<_>, _>>()?
        .into_iter()
        .flatten()
        .collect();
    let started = Instant::now();
    for chunk in avro_messages.chunks(batch_size) {
        let refs: Vec<&[u8]> = chunk.iter().map(Vec::as_slice).collect();
        let _ = avro.decode(&refs)?;
    }
    report("decode Avro -> Arrow", events, started.elapsed());

    // The real runner on the in-memory broker: decode, SQL, window, encode, sink; no Kafka.
    let broker = connectors::memory::Memory::new();
    broker.create_topic("bench", 4);
    for (i, m) in messages.iter().enumerate() {
        broker.produce("bench", (i % 4) as i32, None, Some(m), 0)?;
    }
    for (what, from) in [
        ("engine: filter -> sink, in-memory broker", "clean"),
        ("engine: filter + 1m window, in-memory broker", "per_minute"),
    ] {
        let group = format!("memory-{from}");
        let plan = plan_with(&[
            ("BENCH_TOPIC", "bench".to_string()),
            ("BENCH_GROUP", group),
            ("BENCH_SINK_FROM", from.to_string()),
        ])
        .await?;
        let stats = Arc::new(runtime::Stats::default());
        let mut config = runtime::RunConfig::new("memory");
        config.max_events = Some(events as u64);
        let runner = runtime::Runner::connect(&plan, config, stats.clone(), broker.clone()).await?;
        let before = broker.messages("bench.out").len();
        let started = Instant::now();
        runner.run(std::future::pending()).await?;
        report(
            what,
            stats.events_in.load(Ordering::Relaxed) as usize,
            started.elapsed(),
        );
        println!(
            "{:<44} {} records written",
            "",
            broker.messages("bench.out").len() - before
        );
    }

    // The scale benchmark in memory: messages keyed by line, as the generator keys them.
    broker.create_topic("keyed", KEYED_PARTITIONS);
    for (k, m) in keys.iter().zip(&messages) {
        let p = planner::fnv1a(k.as_bytes()) % KEYED_PARTITIONS as u64;
        broker.produce("keyed", p as i32, Some(k.as_bytes()), Some(m), 0)?;
    }
    scale(
        "in-memory broker",
        "keyed",
        "memory",
        broker.clone(),
        events,
    )
    .await?;
    delivery_cost(
        "in-memory broker",
        "keyed",
        "memory",
        broker.clone(),
        events,
    )
    .await?;
    incremental_state().await?;

    let Some(bootstrap) = arg("--bootstrap") else {
        println!("(add --bootstrap HOST:PORT to measure through a Kafka broker)");
        return Ok(());
    };
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_nanos();
    let topic = format!("bench.{nanos}");
    connectors::create_topic(&bootstrap, &topic, 4).await?;
    let sink = connectors::KafkaSink::new(&bootstrap, &topic, &BTreeMap::new(), Vec::new())?;
    for chunk in messages.chunks(batch_size) {
        let records: Vec<connectors::OutRecord<'_>> = chunk
            .iter()
            .map(|m| connectors::OutRecord {
                key: None,
                value: m,
                timestamp: None,
                partition: None,
            })
            .collect();
        sink.send_all(&records, &[]).await?;
    }

    // A bare consumer: the ceiling set by Kafka fetch.
    let consumer: StreamConsumer = rdkafka::config::ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("group.id", format!("bare-{nanos}"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()?;
    consumer.subscribe(&[topic.as_str()])?;
    let started = Instant::now();
    let mut n = 0;
    while n < events {
        let m = consumer.recv().await?;
        std::hint::black_box(rdkafka::Message::payload(&m));
        n += 1;
    }
    report("bare rdkafka consumer", events, started.elapsed());
    drop(consumer);

    // The engine's source alone: micro-batches copied into one buffer.
    let source = connectors::KafkaSource::connect(
        &bootstrap,
        &connectors::SourceConfig {
            topic: topic.clone(),
            group: format!("source-{nanos}"),
            start: connectors::Start::Earliest,
            properties: BTreeMap::new(),
            max_batch: batch_size,
            max_wait: Duration::from_millis(100),
            linger: Duration::from_millis(100),
            only: None,
            exchange: false,
        },
    )?;
    let mut raw = connectors::RawBatch::default();
    let (started, mut n, mut turns) = (Instant::now(), 0, 0);
    while n < events {
        raw.clear();
        source.next_batch(&mut raw).await?;
        n += raw.len();
        turns += 1;
    }
    report(
        "engine source (micro-batches only)",
        events,
        started.elapsed(),
    );
    println!("{:<44} {turns} micro-batches", "");

    for (what, from) in [
        ("engine: filter -> sink, via Kafka", "clean"),
        ("engine: filter + 1m window, via Kafka", "per_minute"),
    ] {
        let group = format!("{what}-{nanos}").replace([' ', ':', '>', '+', ','], "_");
        let plan = plan_with(&[
            ("BENCH_TOPIC", topic.clone()),
            ("BENCH_GROUP", group),
            ("BENCH_SINK_FROM", from.to_string()),
        ])
        .await?;
        let stats = Arc::new(runtime::Stats::default());
        let mut config = runtime::RunConfig::new(bootstrap.clone());
        config.max_events = Some(events as u64);
        let runner = runtime::Runner::new(&plan, config, stats.clone()).await?;
        let started = Instant::now();
        let handle = tokio::spawn(runner.run(std::future::pending()));
        // Throughput is measured to the moment every event has been consumed and processed;
        // closing the consumer and producers afterwards is reported on its own.
        while stats.events_in.load(Ordering::Relaxed) < events as u64 && !handle.is_finished() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let consumed = started.elapsed();
        handle.await??;
        report(
            what,
            stats.events_in.load(Ordering::Relaxed) as usize,
            consumed,
        );
        println!(
            "{:<44} then {:.2} s to shut down",
            "",
            (started.elapsed() - consumed).as_secs_f64()
        );
    }

    // The scale benchmark through Kafka: a topic of 8 partitions keyed by line.
    let keyed = format!("bench.keyed.{nanos}");
    connectors::create_topic(&bootstrap, &keyed, KEYED_PARTITIONS as i32).await?;
    let sink = connectors::KafkaSink::new(&bootstrap, &keyed, &BTreeMap::new(), Vec::new())?;
    for (chunk, chunk_keys) in messages.chunks(batch_size).zip(keys.chunks(batch_size)) {
        let records: Vec<connectors::OutRecord<'_>> = chunk
            .iter()
            .zip(chunk_keys)
            .map(|(m, k)| connectors::OutRecord {
                key: Some(k.as_bytes()),
                value: m,
                timestamp: None,
                partition: None,
            })
            .collect();
        sink.send_all(&records, &[]).await?;
    }
    let kafka = connectors::Kafka::new(bootstrap.clone());
    scale("via Kafka", &keyed, &bootstrap, kafka.clone(), events).await?;
    delivery_cost("via Kafka", &keyed, &bootstrap, kafka, events).await?;
    Ok(())
}
