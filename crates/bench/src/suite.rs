//! `pipeline-bench suite`: one run that tells the truth about the engine on a broker.
//!
//! Every measurement runs in a process of its own, started by this one and watched from
//! outside: its wall time from start to exit, its CPU time (user + system, read from
//! `/proc/PID/stat` once it has exited and before it is reaped) and its peak RSS
//! (`VmHWM`, sampled every 10 ms while it runs). The same holds for the baselines: kcat
//! (`kcat -C -e -q`, librdkafka's CLI) and the project's own bare rdkafka loop read the very
//! topic each pipeline reads, in the same run, and every pipeline's events/s is quoted as a
//! ratio of theirs. Then the latency table: a pipeline with one output per event is fed at
//! fixed rates and each output's arrival is matched to its input's send time.

use std::collections::BTreeMap;
use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use connectors::Sink as _;
use rdkafka::Message as _;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, ThreadedProducer};

use crate::BenchError;

/// Partitions of every input topic of the suite.
pub const PARTITIONS: i32 = 4;

/// What one process used.
#[derive(Debug, Clone, Copy)]
pub struct Usage {
    pub wall: Duration,
    pub cpu: Duration,
    pub peak_rss_mb: f64,
}

fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// Fields of `/proc/PID/stat` after the command name: (state, utime + stime in ticks).
fn proc_stat(pid: u32) -> Option<(char, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state (field 3), ..., utime (14), stime (15).
    let state = fields.first()?.chars().next()?;
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((state, utime + stime))
}

/// A `kB` field (`VmHWM`, `VmRSS`) of `/proc/{pid}/status` (`pid`: a number or `self`).
pub fn status_kb(pid: &str, field: &str) -> Option<f64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find(|l| l.strip_prefix(field).is_some_and(|r| r.starts_with(':')))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// A process started by [`spawn`]: its stdout lines arrive on `lines`.
pub struct Child {
    child: std::process::Child,
    started: Instant,
    pub lines: mpsc::Receiver<String>,
    peak_kb: f64,
}

impl std::fmt::Debug for Child {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Child")
            .field("pid", &self.child.id())
            .finish()
    }
}

/// Starts `cmd`, its stdout read line by line unless `discard` (then it goes nowhere).
pub fn spawn(cmd: &mut Command, discard: bool) -> Result<Child, BenchError> {
    let mut child = cmd
        .stdout(if discard {
            Stdio::null()
        } else {
            Stdio::piped()
        })
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("starting {cmd:?}: {e}"))?;
    let started = Instant::now();
    let (tx, lines) = mpsc::channel();
    if let Some(out) = child.stdout.take() {
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
    }
    Ok(Child {
        child,
        started,
        lines,
        peak_kb: 0.0,
    })
}

impl Child {
    /// Waits for a line starting with `prefix` (at most `timeout`).
    pub fn expect_line(&mut self, prefix: &str, timeout: Duration) -> Result<String, BenchError> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left.min(Duration::from_millis(10))) {
                Ok(line) if line.starts_with(prefix) => return Ok(line),
                Ok(line) => println!("    | {line}"),
                Err(mpsc::RecvTimeoutError::Timeout) if !left.is_zero() => self.sample(),
                Err(_) => return Err(format!("no `{prefix}` line from the child").into()),
            }
        }
    }

    fn sample(&mut self) {
        if let Some(kb) = status_kb(&self.child.id().to_string(), "VmHWM") {
            self.peak_kb = self.peak_kb.max(kb);
        }
    }

    /// Waits for the process to exit (at most `timeout`, then kills it): what it used.
    pub fn finish(mut self, timeout: Duration) -> Result<Usage, BenchError> {
        let pid = self.child.id();
        let ticks = clock_ticks();
        let deadline = Instant::now() + timeout;
        let mut cpu_ticks = 0;
        loop {
            match proc_stat(pid) {
                Some(('Z', t)) => {
                    cpu_ticks = t;
                    break;
                }
                Some((_, t)) => cpu_ticks = t,
                None => break,
            }
            self.sample();
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                return Err(format!("the child {pid} did not finish within {timeout:?}").into());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let wall = self.started.elapsed();
        let status = self.child.wait()?;
        if !status.success() {
            return Err(format!("the child {pid} failed: {status}").into());
        }
        Ok(Usage {
            wall,
            cpu: Duration::from_secs_f64(cpu_ticks as f64 / ticks),
            peak_rss_mb: self.peak_kb / 1024.0,
        })
    }
}

/// This program, for its child processes.
fn me() -> Result<PathBuf, BenchError> {
    Ok(std::env::current_exe()?)
}

/// Produces `values` (with `keys`) to a new topic `topic` and waits for every
/// acknowledgement.
pub async fn fill(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
    keys: &[Option<&[u8]>],
    values: &[&[u8]],
) -> Result<(), BenchError> {
    connectors::create_topic(bootstrap, topic, partitions).await?;
    let sink = connectors::KafkaSink::new(bootstrap, topic, &BTreeMap::new(), Vec::new())?;
    for (chunk, chunk_keys) in values.chunks(10_000).zip(keys.chunks(10_000)) {
        let records: Vec<connectors::OutRecord<'_>> = chunk
            .iter()
            .zip(chunk_keys)
            .map(|(v, k)| connectors::OutRecord {
                key: *k,
                value: v,
                timestamp: None,
                partition: None,
            })
            .collect();
        sink.send_all(&records, &[]).await?;
    }
    Ok(())
}

/// A row of the throughput table.
#[derive(Debug)]
pub struct Row {
    pub what: String,
    pub events: u64,
    pub usage: Usage,
}

impl Row {
    pub fn rate(&self) -> f64 {
        self.events as f64 / self.usage.wall.as_secs_f64()
    }
}

/// kcat reading `topic` to its end, its output thrown away.
pub fn kcat(bootstrap: &str, topic: &str, events: u64) -> Result<Row, BenchError> {
    let child = spawn(
        Command::new("kcat").args([
            "-C",
            "-e",
            "-q",
            "-o",
            "beginning",
            "-b",
            bootstrap,
            "-t",
            topic,
        ]),
        true,
    )
    .map_err(|e| format!("{e} (scripts/bench-tools installs kcat)"))?;
    let usage = child.finish(Duration::from_secs(600))?;
    Ok(Row {
        what: "kcat -C -e -q".into(),
        events,
        usage,
    })
}

/// The project's bare rdkafka loop (a child process) reading `topic`.
pub fn bare(bootstrap: &str, topic: &str, events: u64) -> Result<Row, BenchError> {
    let mut child = spawn(
        Command::new(me()?).args([
            "child",
            "bare",
            "--bootstrap",
            bootstrap,
            "--topic",
            topic,
            "--events",
            &events.to_string(),
        ]),
        false,
    )?;
    child.expect_line("done", Duration::from_secs(600))?;
    Ok(Row {
        what: "bare rdkafka loop".into(),
        events,
        usage: child.finish(Duration::from_secs(60))?,
    })
}

/// The child side of [`bare`]: polls a `BaseConsumer` until `events` messages have come,
/// touching each payload.
pub fn bare_child(bootstrap: &str, topic: &str, events: u64) -> Result<(), BenchError> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_nanos();
    let consumer: BaseConsumer = rdkafka::config::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", format!("bare-{nanos}"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()?;
    consumer.subscribe(&[topic])?;
    let mut n = 0u64;
    let mut bytes = 0usize;
    while n < events {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                bytes += m.payload().map_or(0, <[u8]>::len);
                n += 1;
            }
            Some(Err(e)) => return Err(e.into()),
            None => {}
        }
    }
    std::hint::black_box(bytes);
    println!("done {n}");
    Ok(())
}

/// The latency floor: a child that copies every message of `topic` to `{topic}.predictions`
/// as it comes, with the engine's producer settings (idempotent, `acks=all`,
/// `linger.ms=5`), and no engine in between.
pub fn relay_child(bootstrap: &str, topic: &str, events: u64) -> Result<(), BenchError> {
    let consumer: BaseConsumer = rdkafka::config::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", format!("relay-{topic}"))
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "50")
        .create()?;
    let mut assignment = rdkafka::TopicPartitionList::new();
    for p in 0..PARTITIONS {
        assignment.add_partition_offset(topic, p, rdkafka::Offset::Beginning)?;
    }
    consumer.assign(&assignment)?;
    let producer: ThreadedProducer<DefaultProducerContext> = rdkafka::config::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .create()?;
    let output = format!("{topic}.predictions");
    println!("ready");
    let mut n = 0u64;
    while n < events {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                let mut record =
                    BaseRecord::<[u8], [u8]>::to(&output).payload(m.payload().unwrap_or_default());
                if let Some(k) = m.key() {
                    record = record.key(k);
                }
                while let Err((_, r)) = producer.send(record) {
                    record = r;
                    std::thread::sleep(Duration::from_micros(200));
                }
                n += 1;
            }
            Some(Err(e)) => return Err(e.into()),
            None => {}
        }
    }
    rdkafka::producer::Producer::flush(&producer, Duration::from_secs(30))?;
    println!("done {n}");
    Ok(())
}

/// One of the engine's pipelines as a child process over `topic`: `spec` is a built-in
/// pipeline's name or a pipeline file (its topics renamed with `suffix`).
pub fn engine(
    what: &str,
    spec: &str,
    bootstrap: &str,
    topic: &str,
    suffix: &str,
    events: u64,
) -> Result<Row, BenchError> {
    let mut child = spawn(
        Command::new(me()?).args([
            "child",
            "pipeline",
            spec,
            "--bootstrap",
            bootstrap,
            "--topic",
            topic,
            "--suffix",
            suffix,
            "--events",
            &events.to_string(),
        ]),
        false,
    )?;
    let done = child.expect_line("done", Duration::from_secs(900))?;
    let read: u64 = done
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    Ok(Row {
        what: what.into(),
        events: read,
        usage: child.finish(Duration::from_secs(120))?,
    })
}

pub fn print_table(rows: &[Row], kcat_rate: f64, bare_rate: f64) {
    println!(
        "  {:<46} {:>10} {:>8} {:>8} {:>6} {:>9}",
        "", "events/s", "÷ kcat", "÷ bare", "CPU", "peak RSS"
    );
    for r in rows {
        let cores = r.usage.cpu.as_secs_f64() / r.usage.wall.as_secs_f64();
        println!(
            "  {:<46} {:>10.0} {:>8.2} {:>8.2} {:>6.2} {:>6.0} MB",
            r.what,
            r.rate(),
            r.rate() / kcat_rate,
            r.rate() / bare_rate,
            cores,
            r.usage.peak_rss_mb
        );
    }
}

/// Latency percentiles (ms) of `samples` (µs), sorted in place: p50, p99, p99.9, max.
pub fn percentiles(samples: &mut [u64]) -> [f64; 4] {
    samples.sort_unstable();
    let at = |q: f64| {
        if samples.is_empty() {
            return f64::NAN;
        }
        // Nearest rank.
        let rank = ((q * samples.len() as f64).ceil() as usize).clamp(1, samples.len());
        samples[rank - 1] as f64 / 1000.0
    };
    [at(0.5), at(0.99), at(0.999), at(1.0)]
}

/// One latency measurement: the pipeline `spec` (one output per event on `output`, the
/// event's sequence number in its `machine_id`) as a child process with micro-batches closing
/// `target_ms` after their first message, fed `rate` events/s for
/// `seconds` on a new topic. Returns (events sent, achieved input rate, latencies in µs of
/// the outputs of events sent after the first second, outputs received).
pub async fn latency(
    spec: &str,
    target_ms: u64,
    bootstrap: &str,
    rate: u64,
    seconds: u64,
    nanos: u128,
) -> Result<(u64, f64, Vec<u64>, u64, Usage), BenchError> {
    let topic = format!("bench.latency.{spec}.{target_ms}.{rate}.{nanos}");
    let suffix = format!("latency.{spec}.{target_ms}.{rate}.{nanos}");
    connectors::create_topic(bootstrap, &topic, PARTITIONS).await?;
    let output = format!("{topic}.predictions");
    connectors::create_topic(bootstrap, &output, PARTITIONS).await?;
    let total = rate * seconds;
    let mut child = spawn(
        Command::new(me()?).args([
            "child",
            if spec == "relay" { "relay" } else { "pipeline" },
            spec,
            "--bootstrap",
            bootstrap,
            "--topic",
            &topic,
            "--suffix",
            &suffix,
            "--events",
            &total.to_string(),
            "--latency-target",
            &target_ms.to_string(),
        ]),
        false,
    )?;
    child.expect_line("ready", Duration::from_secs(60))?;

    // The reader of the outputs, first, so that it is positioned before any output exists.
    let consumer: BaseConsumer = rdkafka::config::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", format!("latency-{nanos}-{spec}-{rate}"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "5")
        .create()?;
    // Assigned, not subscribed: a new group's first join waits for the broker's
    // `group.initial.rebalance.delay.ms` (3 s by default), which would count as latency.
    let mut assignment = rdkafka::TopicPartitionList::new();
    for p in 0..PARTITIONS {
        assignment.add_partition_offset(&output, p, rdkafka::Offset::Beginning)?;
    }
    consumer.assign(&assignment)?;
    let sent_at: std::sync::Arc<Vec<std::sync::atomic::AtomicU64>> = std::sync::Arc::new(
        (0..total)
            .map(|_| std::sync::atomic::AtomicU64::new(0))
            .collect(),
    );
    let origin = Instant::now();
    let reader_sent = sent_at.clone();
    let reader = std::thread::spawn(move || -> (Vec<u64>, u64) {
        let warmup = rate; // the events of the first second
        let mut latencies = Vec::with_capacity(total as usize);
        let mut received = 0u64;
        let mut last = Instant::now();
        while received < total && last.elapsed() < Duration::from_secs(30) {
            let Some(Ok(m)) = consumer.poll(Duration::from_millis(50)) else {
                continue;
            };
            let now = origin.elapsed().as_micros() as u64;
            last = Instant::now();
            received += 1;
            let Some(seq) = m.payload().and_then(sequence_of) else {
                continue;
            };
            if seq < warmup || seq >= total {
                continue;
            }
            let at = reader_sent[seq as usize].load(std::sync::atomic::Ordering::Relaxed);
            latencies.push(now.saturating_sub(at));
        }
        (latencies, received)
    });

    // The feed: `rate` events a second, each stamped with its send time.
    let producer: ThreadedProducer<DefaultProducerContext> = rdkafka::config::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("linger.ms", "1")
        .create()?;
    let started = Instant::now();
    let mut sent = 0u64;
    let mut value = String::with_capacity(256);
    let base_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as i64;
    while sent < total {
        let due = ((started.elapsed().as_secs_f64() * rate as f64) as u64).min(total);
        while sent < due {
            use std::fmt::Write as _;
            let line = sent % 8;
            value.clear();
            let ms = base_ms + started.elapsed().as_millis() as i64;
            let _ = write!(
                value,
                r#"{{"line_id":"L{line}","machine_id":"S{sent}","ts":{ms},"temperature":{t:.2},"humidity":{h:.2},"pressure":{p:.2},"speed":{s:.2},"vibration":{v:.3},"failure_rate":{f:.4}}}"#,
                t = 60.0 + (sent % 17) as f64,
                h = 40.0 + (sent % 7) as f64,
                p = 300.0 + (sent % 11) as f64,
                s = 100.0 + (sent % 13) as f64,
                v = 3.0 + (sent % 5) as f64 / 10.0,
                f = 1.0 + (sent % 19) as f64 / 10.0,
            );
            let key = format!("L{line}");
            sent_at[sent as usize].store(
                origin.elapsed().as_micros() as u64,
                std::sync::atomic::Ordering::Relaxed,
            );
            let mut record = BaseRecord::to(&topic).key(&key).payload(&value);
            loop {
                match producer.send(record) {
                    Ok(()) => break,
                    Err((_, r)) => {
                        record = r;
                        std::thread::sleep(Duration::from_micros(200));
                    }
                }
            }
            sent += 1;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let achieved = sent as f64 / started.elapsed().as_secs_f64();
    rdkafka::producer::Producer::flush(&producer, Duration::from_secs(30))?;
    let (latencies, received) = reader.join().map_err(|_| "the latency reader panicked")?;
    let done = child.expect_line("done", Duration::from_secs(120))?;
    if let Some(at) = done.find("processing") {
        println!("    (engine's own histogram: {})", &done[at..]);
    }
    let usage = child.finish(Duration::from_secs(60))?;
    Ok((sent, achieved, latencies, received, usage))
}

/// The sequence number in an output's `"machine_id":"S123"`.
fn sequence_of(payload: &[u8]) -> Option<u64> {
    let key = b"\"machine_id\":\"S";
    let at = payload.windows(key.len()).position(|w| w == key)? + key.len();
    let digits = payload[at..].iter().take_while(|b| b.is_ascii_digit());
    let mut n = 0u64;
    let mut any = false;
    for d in digits {
        n = n * 10 + u64::from(d - b'0');
        any = true;
    }
    any.then_some(n)
}

/// Files of the shipped examples under `dir`.
pub fn examples(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

/// Generated events of `schema` (the generator's kind), keyed as the generator keys them.
fn generated(schema: &str, seed: u64, count: usize) -> Result<Vec<(String, Vec<u8>)>, BenchError> {
    let mut settings = generator::Settings::new(schema, seed);
    settings.interval_ms = 10.0;
    Ok(generator::Generator::new(settings)?
        .take(count)
        .map(|e| (e.key, e.value))
        .collect())
}

async fn fill_generated(
    bootstrap: &str,
    topic: &str,
    events: &[(String, Vec<u8>)],
) -> Result<(), BenchError> {
    let keys: Vec<Option<&[u8]>> = events.iter().map(|(k, _)| Some(k.as_bytes())).collect();
    let values: Vec<&[u8]> = events.iter().map(|(_, v)| v.as_slice()).collect();
    fill(bootstrap, topic, PARTITIONS, &keys, &values).await
}

/// The whole suite on the broker at `bootstrap`: `events` sensor readings for the
/// built-in pipelines, `example_events` per source for each shipped example, and the
/// latency table at `rates`.
pub async fn run(
    bootstrap: &str,
    events: usize,
    example_events: usize,
    rates: &[u64],
    seconds: u64,
    memory_seconds: u64,
    only: &[String],
) -> Result<(), BenchError> {
    let want = |part: &str| only.is_empty() || only.iter().any(|o| o == part);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_nanos();
    println!(
        "pipeline-bench suite: broker {bootstrap}, {} cores, topics of {PARTITIONS} partitions, release build: {}",
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        !cfg!(debug_assertions)
    );

    if want("throughput") {
        // The built-in pipelines over one topic of sensor readings.
        let topic = format!("bench.suite.{nanos}");
        let readings = generated("production/sensor_reading", 1, events)?;
        fill_generated(bootstrap, &topic, &readings).await?;
        // The lookup table: the first reading of each line.
        let mut lines: BTreeMap<&str, &(String, Vec<u8>)> = BTreeMap::new();
        for r in &readings {
            lines.entry(r.0.as_str()).or_insert(r);
        }
        let table: Vec<(String, Vec<u8>)> = lines.values().map(|r| (*r).clone()).collect();
        fill_generated(bootstrap, &format!("{topic}.lines"), &table).await?;
        println!("\nthroughput: {events} sensor readings on topic {topic}");
        let kcat_row = kcat(bootstrap, &topic, events as u64)?;
        let bare_row = bare(bootstrap, &topic, events as u64)?;
        let (kcat_rate, bare_rate) = (kcat_row.rate(), bare_row.rate());
        let mut rows = vec![kcat_row, bare_row];
        for (what, spec) in [
            ("filter + 1m window per line", "window"),
            (
                "filter + global regression, prediction per event",
                "regression",
            ),
            ("both (windows and predictions, two sinks)", "both"),
            ("lookup join with a table of the lines", "lookup"),
        ] {
            let n = if spec == "lookup" {
                events + table.len()
            } else {
                events
            };
            rows.push(engine(
                what,
                spec,
                bootstrap,
                &topic,
                &format!("{spec}.{nanos}"),
                n as u64,
            )?);
        }
        print_table(&rows, kcat_rate, bare_rate);
    }
    if want("examples") {
        // The shipped examples, each over topics of its own.
        let dir = std::env::current_dir()?.join("pipelines");
        println!(
            "\nthe shipped examples: {example_events} events per source, each example's ratio to kcat on its first source topic"
        );
        let mut example_rows = Vec::new();
        let mut example_kcats = Vec::new();
        for (i, file) in examples(&dir).iter().enumerate() {
            let name = file
                .file_stem()
                .map(|s| s.to_string_lossy().to_string())
                .unwrap_or_default();
            let suffix = format!("{name}.{nanos}");
            let spec = file.to_string_lossy().to_string();
            let plan = crate::child::plan(&spec, "", &suffix).await?;
            let mut total = 0;
            let mut first_topic = None;
            for n in &plan.nodes {
                if let planner::NodeKind::Source(s) = &n.kind
                    && s.exchange.is_none()
                {
                    let events = generated(&s.schema_name, 7 + i as u64, example_events)?;
                    fill_generated(bootstrap, &s.topic, &events).await?;
                    total += events.len();
                    first_topic.get_or_insert_with(|| s.topic.clone());
                }
            }
            let Some(first) = first_topic else { continue };
            let k = kcat(bootstrap, &first, example_events as u64)?;
            example_rows.push(engine(&name, &spec, bootstrap, "", &suffix, total as u64)?);
            example_kcats.push(k.rate());
        }
        println!(
            "  {:<46} {:>10} {:>8} {:>8} {:>6} {:>9}",
            "", "events/s", "÷ kcat", "kcat", "CPU", "peak RSS"
        );
        for (r, k) in example_rows.iter().zip(&example_kcats) {
            println!(
                "  {:<46} {:>10.0} {:>8.2} {:>8.0} {:>6.2} {:>6.0} MB",
                r.what,
                r.rate(),
                r.rate() / k,
                k,
                r.usage.cpu.as_secs_f64() / r.usage.wall.as_secs_f64(),
                r.usage.peak_rss_mb
            );
        }
    }
    if want("latency") {
        // Latency at fixed input rates.
        println!(
            "\nlatency: filter + global regression fed at fixed rates for {seconds} s; send -> prediction received, \
         through two Kafka hops; events of the first second left out"
        );
        println!(
            "  {:<22} {:>8} {:>10} {:>9} {:>9} {:>9} {:>9} {:>6} {:>9}",
            "", "rate", "achieved", "p50 ms", "p99 ms", "p99.9 ms", "max ms", "CPU", "peak RSS"
        );
        for (rate, spec, target) in rates.iter().flat_map(|r| {
            [
                (*r, "relay", 0),
                (*r, "regression", 10),
                (*r, "regression", 2),
            ]
        }) {
            let (sent, achieved, mut latencies, received, usage) =
                latency(spec, target, bootstrap, rate, seconds, nanos).await?;
            let [p50, p99, p999, max] = percentiles(&mut latencies);
            let what = if spec == "relay" {
                "bare relay".to_string()
            } else {
                format!("engine, target {target} ms")
            };
            println!(
                "  {what:<22} {rate:>8} {achieved:>10.0} {p50:>9.1} {p99:>9.1} {p999:>9.1} {max:>9.1} {:>6.2} {:>6.0} MB",
                usage.cpu.as_secs_f64() / usage.wall.as_secs_f64(),
                usage.peak_rss_mb
            );
            if received < sent {
                println!("  (only {received} of {sent} predictions arrived)");
            }
        }
    }
    if want("memory") {
        memory(bootstrap, 5_000, memory_seconds, nanos).await?;
    }
    Ok(())
}

/// The memory benchmark: every shipped example and three built-in pipelines (10 with the
/// seven examples) in one process, as one daemon runs them, each source fed `rate` events/s
/// of its kind for `seconds`: the process's RSS at the end (steady state) and its peak.
pub async fn memory(
    bootstrap: &str,
    rate: u64,
    seconds: u64,
    nanos: u128,
) -> Result<(), BenchError> {
    let topic = format!("bench.many.{nanos}");
    let suffix = format!("many.{nanos}");
    let plans = crate::child::many_plans(&topic, &suffix).await?;
    // Every input topic first (the pipelines wait for missing ones), with its generator.
    let mut feeds = Vec::new();
    for (i, plan) in plans.iter().enumerate() {
        for n in &plan.nodes {
            if let planner::NodeKind::Source(s) = &n.kind
                && s.exchange.is_none()
            {
                connectors::create_topic(bootstrap, &s.topic, PARTITIONS).await?;
                let mut settings = generator::Settings::new(&s.schema_name, 11 + i as u64);
                settings.start_ms = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)?
                    .as_millis() as i64;
                settings.interval_ms = 1000.0 / rate as f64;
                let sink =
                    connectors::KafkaSink::new(bootstrap, &s.topic, &BTreeMap::new(), Vec::new())?;
                feeds.push((
                    generator::Generator::new(settings)?,
                    sink,
                    s.table_key.is_some(),
                ));
            }
        }
    }
    let mut child = spawn(
        Command::new(me()?).args([
            "child",
            "many",
            "--bootstrap",
            bootstrap,
            "--topic",
            &topic,
            "--suffix",
            &suffix,
        ]),
        false,
    )?;
    let ready = child.expect_line("ready", Duration::from_secs(120))?;
    let pid = child.child.id();
    let started = Instant::now();
    let streams = feeds.iter().filter(|f| !f.2).count();
    // A task per input: tables get their rows once, streams `rate` a second.
    let tick = rate / 10;
    let mut feeders = Vec::new();
    for (mut generator, sink, table) in feeds {
        feeders.push(tokio::spawn(async move {
            let mut sent = 0u64;
            let mut ticks = 0u32;
            while started.elapsed() < Duration::from_secs(seconds) {
                let events: Vec<generator::Event> =
                    (0..tick).map(|_| generator.next_event()).collect();
                if sink.send_all(&records(&events), &[]).await.is_err() {
                    break;
                }
                sent += tick;
                if table {
                    break;
                }
                ticks += 1;
                let due = Duration::from_millis(100) * ticks;
                tokio::time::sleep(due.saturating_sub(started.elapsed())).await;
            }
            if table { 0 } else { sent }
        }));
    }
    let mut rss_mb = Vec::new();
    while started.elapsed() < Duration::from_secs(seconds) {
        child.sample();
        if let Some(kb) = status_kb(&pid.to_string(), "VmRSS") {
            rss_mb.push(kb / 1024.0);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut sent = 0;
    for f in feeders {
        sent += f.await?;
    }
    let achieved = sent as f64 / started.elapsed().as_secs_f64();
    let last = rss_mb.last().copied().unwrap_or(f64::NAN);
    let steady = rss_mb[rss_mb.len() / 2..]
        .iter()
        .copied()
        .fold(0.0f64, f64::max);
    let peak = child.peak_kb / 1024.0;
    let _ = child.child.kill();
    let _ = child.child.wait();
    println!(
        "\nmemory: {} pipelines in one process ({ready}), {streams} input streams fed {rate} events/s each for {seconds} s ({achieved:.0} events/s in all)",
        plans.len()
    );
    println!(
        "  RSS at the end {last:.0} MB, highest over the second half {steady:.0} MB, peak {peak:.0} MB"
    );
    Ok(())
}

fn records(events: &[generator::Event]) -> Vec<connectors::OutRecord<'_>> {
    events
        .iter()
        .map(|e| connectors::OutRecord {
            key: Some(e.key.as_bytes()),
            value: &e.value,
            timestamp: None,
            partition: None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let mut s: Vec<u64> = (1..=1000).map(|i| i * 1000).collect();
        s.reverse();
        assert_eq!(percentiles(&mut s), [500.0, 990.0, 999.0, 1000.0]);
    }

    #[test]
    fn sequence_numbers_are_read_from_the_machine_id() {
        assert_eq!(
            sequence_of(br#"{"line_id":"L1","machine_id":"S4711","prediction":1.0}"#),
            Some(4711)
        );
        assert_eq!(sequence_of(br#"{"machine_id":"M1"}"#), None);
    }
}
