//! The fault matrix of delivery (issue 13), on a real Apache Kafka broker with the engine as
//! child processes: per-minute windows of 100,000 sensor readings (1% malformed, 1% late)
//! over 4 partitions with state in Kafka, interrupted at arbitrary points (SIGKILL, SIGTERM,
//! a crash just before a commit, broker restarts, a zombie instance), then run to the end
//! of its input; and a copy of readings with oversize records. Every window row is checked by (line, window) against DuckDB
//! (`tests/oracle/window_oracle.py`), every dead letter by the partition and offset of the
//! record it carries against the records DuckDB finds malformed. Readers are
//! `read_committed`. The test prints a table (test, events, missing, duplicated,
//! dead-lettered) and then checks it: exactly-once runs lose and double nothing,
//! at-least-once runs lose nothing (their duplicates show what exactly-once buys).
//!
//! Run by `scripts/gate` with the broker it starts (`KAFKA_BOOTSTRAP`, `REQUIRE_KAFKA=1`).

use std::collections::BTreeSet;
use std::process::Command;

use connectors::Sink as _;
use serde_json::Value;

mod support;
use support::{Interrupted, bootstrap, epoch_ms, kafka_state_run, root, unique};
#[path = "support/daemon.rs"]
mod daemon_support;
#[path = "support/oracles.rs"]
mod oracles;
use oracles::{assert_same_windows, distinct_windows, read, same_json, window_oracle};

const EVENTS: i64 = 100_000;

/// One row of the matrix.
struct Row {
    test: &'static str,
    exactly_once: bool,
    events: usize,
    missing: usize,
    duplicated: usize,
    dead_lettered: usize,
    /// Dead letters of records that are not malformed, or malformed records without one.
    wrong_letters: usize,
    /// Records that must be dead-lettered: malformed (and, in one row, oversize); `None`:
    /// the row's pipeline skips bad records.
    malformed: Option<usize>,
    /// Seconds each restarted run took to commit past where it started.
    resumed: Vec<f64>,
    /// Partitions of the output and dead-letter topics whose last transaction is still
    /// open (their last stable offset short of their end).
    open: usize,
    /// The distinct window rows and DuckDB's.
    windows: (Vec<Value>, Vec<Value>),
}

/// A run's topics and group, and the arguments of a `pipectl run` of it.
struct Setup {
    input: String,
    output: String,
    dlq: String,
    group: String,
    delivery: &'static str,
    feed: std::process::Child,
}

impl Setup {
    /// New topics, fed with 100,000 readings at 5,000 events/s while the engine runs (so
    /// that each interruption lands in the middle of the input).
    fn new(bootstrap: &str, delivery: &'static str, seed: u64) -> Self {
        Self::fed_at(bootstrap, delivery, seed, 5_000)
    }

    /// The same, fed at `rate` events/s.
    fn fed_at(bootstrap: &str, delivery: &'static str, seed: u64, rate: u32) -> Self {
        let input = unique("faults.in");
        let feed = Command::new(env!("CARGO_BIN_EXE_pipectl"))
            .args([
                "gen",
                "--bootstrap",
                bootstrap,
                "--kind",
                "production/sensor_reading",
            ])
            .args(["--count", &EVENTS.to_string(), "--seed", &seed.to_string()])
            .args(["--topic", &input, "--partitions", "4"])
            .args(["--rate", &rate.to_string()])
            .args(["--malformed", "0.01", "--late", "0.01"])
            .current_dir(root())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("gen starts");
        // The topic exists before the engine starts.
        while connectors::committed_total(bootstrap, "none", &input).is_err() {
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        Self {
            input,
            output: unique("faults.out"),
            dlq: unique("faults.dlq"),
            group: unique("group"),
            delivery,
            feed,
        }
    }

    fn env(&self) -> [(&str, &str); 5] {
        [
            ("TEST_INPUT_TOPIC", self.input.as_str()),
            ("TEST_OUTPUT_TOPIC", self.output.as_str()),
            ("TEST_DEAD_LETTER_TOPIC", self.dlq.as_str()),
            ("TEST_GROUP", self.group.as_str()),
            ("TEST_DELIVERY", self.delivery),
        ]
    }

    /// A run with state in Kafka, committing every 500 ms.
    fn args<'a>(&self, bootstrap: &'a str) -> Vec<&'a str> {
        kafka_state_run("tests/pipelines/sensor-window.yaml", bootstrap, false)
    }

    /// Waits for the feed, runs the pipeline to the end of its input and checks it.
    fn finish(mut self, bootstrap: &str, test: &'static str, resumed: Vec<f64>) -> Row {
        assert!(self.feed.wait().expect("gen ends").success(), "gen failed");
        let args = kafka_state_run("tests/pipelines/sensor-window.yaml", bootstrap, true);
        let last = Command::new(env!("CARGO_BIN_EXE_pipectl"))
            .args(&args)
            .envs(self.env())
            .current_dir(root())
            .output()
            .expect("pipectl runs");
        assert!(
            last.status.success(),
            "{test}: the last run failed:\n{}",
            String::from_utf8_lossy(&last.stderr)
        );
        check(
            bootstrap,
            test,
            self.delivery,
            (&self.input, &self.output, &self.dlq),
            resumed,
        )
    }
}

/// The engine sent `signal` three times, then run to the end.
fn interrupted(
    bootstrap: &str,
    test: &'static str,
    delivery: &'static str,
    signal: &str,
    seed: u64,
) -> Row {
    let setup = Setup::new(bootstrap, delivery, seed);
    let (mut args, env) = (setup.args(bootstrap), setup.env());
    // The exactly-once rows restart as the same static group member, as a deployment with
    // a stable instance name would; at least once as a dynamic one.
    if delivery == "exactly_once" {
        args.extend(["--instance-id", "faults-a"]);
    }
    let run = Interrupted {
        binary: env!("CARGO_BIN_EXE_pipectl"),
        bootstrap,
        args: &args,
        env: &env,
        group: &setup.group,
        input: &setup.input,
    };
    let resumed = run.times(3, signal, 12_000, EVENTS);
    setup.finish(bootstrap, test, resumed)
}

/// Two instances; one is stopped (SIGSTOP) for 30 s, long enough for the group to give its
/// partitions to the other, whose tasks take over their transactional ids (fencing the
/// stopped one's producers); then it runs on (SIGCONT): a zombie whose commits must fail.
fn zombie(bootstrap: &str, seed: u64) -> Row {
    let setup = Setup::new(bootstrap, "exactly_once", seed);
    let (args, env) = (setup.args(bootstrap), setup.env());
    let start = |name: &str| {
        let log = std::env::temp_dir().join(unique(name));
        let child = Command::new(env!("CARGO_BIN_EXE_pipectl"))
            .args(&args)
            .envs(env)
            .current_dir(root())
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log"))
            .spawn()
            .expect("pipectl starts");
        (child, log)
    };
    let committed =
        || connectors::committed_total(bootstrap, &setup.group, &setup.input).unwrap_or(0);
    let sleep = |s: u64| std::thread::sleep(std::time::Duration::from_secs(s));
    let (mut a, a_log) = start("zombie-a");
    while committed() < 10_000 {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let (mut b, b_log) = start("zombie-b");
    sleep(5);
    let signal = |child: &std::process::Child, s: &str| {
        let _ = Command::new("kill")
            .args([format!("-{s}"), child.id().to_string()])
            .status();
    };
    signal(&a, "STOP");
    println!("instance A stopped at {} committed offsets", committed());
    sleep(30);
    signal(&a, "CONT");
    println!("instance A continued at {} committed offsets", committed());
    sleep(5);
    for (name, child, log) in [("A", &mut a, &a_log), ("B", &mut b, &b_log)] {
        signal(child, "TERM");
        let status = child.wait().expect("reaped");
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let fenced = text
            .lines()
            .filter(|l| l.contains("fenced") || l.contains("Fenced"))
            .count();
        println!("instance {name}: {status}, {fenced} lines about fencing");
    }
    setup.finish(bootstrap, "zombie (SIGSTOP 30 s)", Vec::new())
}

/// The names of the daemon row's pipelines in the table.
const DAEMON_ROWS: [&str; 7] = [
    "daemon restarts: pipeline 1",
    "daemon restarts: pipeline 2",
    "daemon restarts: pipeline 3",
    "daemon restarts: pipeline 4",
    "daemon restarts: pipeline 5",
    "daemon restarts: pipeline 6",
    "daemon restarts: pipeline 7",
];

/// The daemon running 7 pipelines over one input (4 exactly once with state in Kafka, 3 at
/// least once with checkpoints in its state dir), stopped (SIGTERM) and then killed
/// (SIGKILL) while they run, each time once every pipeline has committed 12,000 more
/// offsets; after each start every pipeline must commit past where it was. Then each is
/// run to the end of its input from where the daemon left it (its state in Kafka, or the
/// daemon's checkpoint), which flushes its last windows.
fn daemon_restarted(bootstrap: &str, seed: u64) -> Vec<Row> {
    use daemon_support::{Daemon, free_port, ok, pipectl};
    // Fed for 50 s: the two restarts of the daemon (each until every pipeline has committed
    // 12,000 more offsets, the slowest of seven pipelines on two cores setting the pace)
    // land before the end of the input. At 5,000 events/s (20 s) every pipeline had once
    // reached the end before the SIGKILL.
    let setup = Setup::fed_at(bootstrap, "exactly_once", seed, 2_000);
    let template = std::fs::read_to_string(root().join("tests/pipelines/sensor-window.yaml"))
        .expect("pipeline");
    let dir = std::env::temp_dir().join(unique("faults-daemon"));
    let state = dir.join("state");
    std::fs::create_dir_all(&dir).expect("dir");
    struct Deployed {
        name: String,
        group: String,
        output: String,
        dlq: String,
        delivery: &'static str,
        file: String,
    }
    let pipelines: Vec<Deployed> = (0..DAEMON_ROWS.len())
        .map(|i| {
            let delivery = if i < 4 {
                "exactly_once"
            } else {
                "at_least_once"
            };
            let (name, group) = (format!("faults-daemon-{i}"), unique("group"));
            let (output, dlq) = (unique("faults.out"), unique("faults.dlq"));
            let yaml = template
                .replace("name: sensor-window-test", &format!("name: {name}"))
                .replace("${TEST_INPUT_TOPIC}", &setup.input)
                .replace("${TEST_GROUP}", &group)
                .replace("${TEST_FORMAT:-json}", "json")
                .replace("${TEST_DEAD_LETTER_TOPIC}", &dlq)
                .replace("${TEST_OUTPUT_TOPIC}", &output)
                .replace("${TEST_DELIVERY:-at_least_once}", delivery);
            let file = dir.join(format!("{name}.yaml")).display().to_string();
            std::fs::write(&file, yaml).expect("write");
            Deployed {
                name,
                group,
                output,
                dlq,
                delivery,
                file,
            }
        })
        .collect();
    let committed = |p: &Deployed| {
        Interrupted {
            binary: "",
            bootstrap,
            args: &[],
            env: &[],
            group: &p.group,
            input: &setup.input,
        }
        .committed()
    };
    let port = free_port();
    // A daemon with a stable name: its pipelines with state in Kafka are static members.
    let start = || Daemon::start_with(&state, port, bootstrap, &["--instance-id", "faults-d"]);
    let mut daemon = start();
    let mut deploy = vec!["deploy"];
    deploy.extend(pipelines.iter().map(|p| p.file.as_str()));
    ok(pipectl(&daemon.url, &deploy));
    let mut last = vec![0i64; pipelines.len()];
    let mut resumed = vec![Vec::new(); pipelines.len()];
    for (round, signal) in ["TERM", "KILL", ""].into_iter().enumerate() {
        let started = std::time::Instant::now();
        let mut first = vec![None; pipelines.len()];
        // The last round only waits for every pipeline to resume.
        let every = if signal.is_empty() { 1 } else { 12_000 };
        loop {
            let now: Vec<i64> = pipelines.iter().map(committed).collect();
            for (i, n) in now.iter().enumerate() {
                if first[i].is_none() && *n > last[i] {
                    first[i] = Some(started.elapsed().as_secs_f64());
                }
            }
            // A pipeline that has committed its whole input can commit no more.
            if now
                .iter()
                .zip(&last)
                .all(|(n, l)| *n >= (l + every).min(EVENTS))
            {
                break;
            }
            assert!(
                started.elapsed() < std::time::Duration::from_secs(120),
                "not every pipeline commits {every} more offsets (round {round}, {now:?} after {last:?}):\n{}",
                daemon.logs()
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        if round > 0 {
            for (r, f) in resumed.iter_mut().zip(&first) {
                r.extend(*f);
            }
        }
        match signal {
            "TERM" => daemon.stop(),
            "KILL" => daemon.crash(),
            _ => {
                daemon.stop();
                break;
            }
        }
        last = pipelines.iter().map(committed).collect();
        println!("daemon SIG{signal} after {last:?} committed input offsets");
        daemon = start();
    }
    assert!(
        setup
            .feed
            .wait_with_output()
            .expect("gen ends")
            .status
            .success(),
        "gen failed"
    );
    assert!(
        last.iter().all(|l| *l < EVENTS),
        "the daemon was stopped after the end ({last:?})"
    );
    // Each to the end of its input, from where the daemon left it, all at once.
    let runs: Vec<std::process::Child> = pipelines
        .iter()
        .map(|p| {
            let mut args = vec![
                "run",
                p.file.as_str(),
                "--bootstrap",
                bootstrap,
                "--checkpoint-interval",
                "500ms",
                "--until-idle",
                "5s",
                "--quiet",
            ];
            let checkpoints = state.join("checkpoints").join(&p.name);
            if p.delivery == "at_least_once" {
                args.extend(["--checkpoint-dir", checkpoints.to_str().expect("utf-8")]);
            }
            Command::new(env!("CARGO_BIN_EXE_pipectl"))
                .args(&args)
                .current_dir(root())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("pipectl starts")
        })
        .collect();
    for (run, p) in runs.into_iter().zip(&pipelines) {
        let out = run.wait_with_output().expect("reaped");
        assert!(
            out.status.success(),
            "{}: the last run failed:\n{}",
            p.name,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let oracle = window_oracle(bootstrap, &setup.input);
    let rows = pipelines
        .iter()
        .zip(DAEMON_ROWS)
        .zip(resumed)
        .map(|((p, test), resumed)| {
            check_against(
                &oracle,
                bootstrap,
                test,
                p.delivery,
                (&p.output, &p.dlq),
                resumed,
            )
        })
        .collect();
    std::fs::remove_dir_all(&dir).ok();
    rows
}

/// The matrix row of a run over `input` that wrote `output` and `dead letters`.
fn check(
    bootstrap: &str,
    test: &'static str,
    delivery: &str,
    (input, output, dlq): (&str, &str, &str),
    resumed: Vec<f64>,
) -> Row {
    let oracle = window_oracle(bootstrap, input);
    check_against(&oracle, bootstrap, test, delivery, (output, dlq), resumed)
}

/// What DuckDB finds in an input: its messages, the window rows and the malformed records.
type Oracle = (
    Vec<connectors::StoredMessage>,
    Vec<Value>,
    BTreeSet<(i32, i64)>,
);

/// The matrix row of a run that wrote `output` and `dead letters`, against `oracle`.
fn check_against(
    (messages, expected, malformed): &Oracle,
    bootstrap: &str,
    test: &'static str,
    delivery: &str,
    (output, dlq): (&str, &str),
    resumed: Vec<f64>,
) -> Row {
    let written: Vec<Value> = read(bootstrap, output)
        .iter()
        .map(|m| serde_json::from_slice(&m.payload).expect("output is JSON"))
        .collect();
    let distinct = distinct_windows(&written);
    let key = |v: &Value| {
        (
            v["line_id"].as_str().unwrap_or_default().to_string(),
            epoch_ms(&v["window_start"]),
            epoch_ms(&v["window_end"]),
        )
    };
    let got: BTreeSet<_> = distinct.iter().map(key).collect();
    let missing = expected.iter().filter(|e| !got.contains(&key(e))).count();
    let letters = read(bootstrap, dlq);
    let origins: BTreeSet<(i32, i64)> = letters
        .iter()
        .map(|m| {
            let h = |k: &str| {
                m.headers
                    .iter()
                    .find(|(n, _)| n == k)
                    .map(|(_, v)| v.clone())
                    .unwrap_or_default()
            };
            (
                h("source-partition").parse().expect("partition header"),
                h("source-offset").parse().expect("offset header"),
            )
        })
        .collect();
    let open = [output, dlq]
        .iter()
        .map(|t| open_transactions(bootstrap, t))
        .sum();
    Row {
        open,
        test,
        exactly_once: delivery == "exactly_once",
        events: messages.len(),
        missing,
        duplicated: written.len() - distinct.len(),
        dead_lettered: letters.len(),
        wrong_letters: origins.symmetric_difference(malformed).count(),
        malformed: Some(malformed.len()),
        resumed,
        windows: (distinct, expected.clone()),
    }
}

/// Partitions of `topic` whose last stable offset is short of their end: a
/// `read_committed` reader at the end of the partition stands before the high watermark.
fn open_transactions(bootstrap: &str, topic: &str) -> usize {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let consumer: BaseConsumer = rdkafka::config::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", unique("lso"))
        .set("enable.partition.eof", "true")
        .set("isolation.level", "read_committed")
        .create()
        .expect("consumer");
    let timeout = std::time::Duration::from_secs(10);
    let metadata = consumer
        .fetch_metadata(Some(topic), timeout)
        .expect("metadata");
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    let mut tpl = rdkafka::TopicPartitionList::new();
    for p in &partitions {
        tpl.add_partition_offset(topic, *p, rdkafka::Offset::Beginning)
            .expect("partition");
    }
    consumer.assign(&tpl).expect("assign");
    let mut ended = BTreeSet::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while ended.len() < partitions.len() && std::time::Instant::now() < deadline {
        if let Some(Err(rdkafka::error::KafkaError::PartitionEOF(p))) =
            consumer.poll(std::time::Duration::from_millis(100))
        {
            ended.insert(p);
        }
    }
    let position = consumer.position().expect("position");
    partitions
        .iter()
        .filter(|p| {
            let (_, high) = consumer
                .fetch_watermarks(topic, **p, timeout)
                .expect("watermarks");
            let at = match position.find_partition(topic, **p).map(|e| e.offset()) {
                Some(rdkafka::Offset::Offset(o)) => o,
                _ => 0,
            };
            !ended.contains(*p) || (high > 0 && at < high)
        })
        .count()
}

/// A broker of this test's own (the shared one serves other tests meanwhile), stopped with
/// the test.
struct OwnBroker {
    port: String,
    dir: String,
}

impl OwnBroker {
    fn start() -> Self {
        let port = std::env::var("FAULTS_KAFKA_PORT").unwrap_or_else(|_| "19192".into());
        let dir = std::env::temp_dir()
            .join(format!("pipeline-faults-kafka-{port}"))
            .display()
            .to_string();
        let broker = Self { port, dir };
        broker.script("start");
        broker
    }

    fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn script(&self, what: &str) {
        let out = Command::new(root().join("scripts/kafka"))
            .arg(what)
            .env("KAFKA_PORT", &self.port)
            .env("KAFKA_RUN_DIR", &self.dir)
            .output()
            .expect("scripts/kafka runs");
        assert!(
            out.status.success(),
            "scripts/kafka {what}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Kills the broker (SIGKILL) and starts it again on the same log dir.
    fn restart(&self) {
        let pid = std::fs::read_to_string(format!("{}/kafka.pid", self.dir)).expect("pid file");
        let _ = Command::new("kill").args(["-KILL", pid.trim()]).status();
        while Command::new("kill")
            .args(["-0", pid.trim()])
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
        {
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        self.script("resume");
    }
}

impl Drop for OwnBroker {
    fn drop(&mut self) {
        let _ = Command::new(root().join("scripts/kafka"))
            .arg("stop")
            .env("KAFKA_PORT", &self.port)
            .env("KAFKA_RUN_DIR", &self.dir)
            .output();
    }
}

/// The broker SIGKILLed and started again on its log dir three times while the engine
/// runs; an engine run that fails meanwhile is started again, as a supervisor would.
fn broker_restarted(seed: u64) -> Row {
    let broker = OwnBroker::start();
    let bootstrap = broker.bootstrap();
    let setup = Setup::new(&bootstrap, "exactly_once", seed);
    let (args, env) = (setup.args(&bootstrap), setup.env());
    let start = || {
        Command::new(env!("CARGO_BIN_EXE_pipectl"))
            .args(&args)
            .envs(env)
            .current_dir(root())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("pipectl starts")
    };
    let committed = || connectors::committed_total(&bootstrap, &setup.group, &setup.input).ok();
    let mut engine = start();
    let mut restarts = 0;
    let mut last = 0;
    for _ in 0..3 {
        let began = std::time::Instant::now();
        while committed().unwrap_or(last) < last + 12_000
            && began.elapsed() < std::time::Duration::from_secs(120)
        {
            if engine.try_wait().expect("wait").is_some() {
                restarts += 1;
                engine = start();
            }
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
        last = committed().unwrap_or(last);
        broker.restart();
        println!("broker restarted at {last} committed offsets");
    }
    let _ = Command::new("kill")
        .args(["-TERM", &engine.id().to_string()])
        .status();
    let status = engine.wait().expect("reaped");
    println!("engine runs started again after failing: {restarts}; the last ended {status}");
    setup.finish(&bootstrap, "broker restarted 3 times", Vec::new())
}

/// The engine aborted three times between a transaction's last send and its commit (a
/// test-only crash point), then run to the end.
fn crashed_before_commit(bootstrap: &str, seed: u64) -> Row {
    let setup = Setup::new(bootstrap, "exactly_once", seed);
    let mut args = setup.args(bootstrap);
    // Bounded in case the crash point never comes.
    args.extend(["--until-idle", "20s"]);
    let mut env = setup.env().to_vec();
    env.extend([
        ("PIPELINE_FAILPOINT", "before-commit"),
        ("PIPELINE_FAILPOINT_AFTER", "8"),
    ]);
    for _ in 0..3 {
        let out = Command::new(env!("CARGO_BIN_EXE_pipectl"))
            .args(&args)
            .envs(env.iter().copied())
            .current_dir(root())
            .output()
            .expect("pipectl runs");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("failpoint before-commit: aborting"),
            "the run crashed at the crash point ({}):\n{stderr}",
            out.status
        );
        println!(
            "aborted before a commit at {} committed offsets",
            connectors::committed_total(bootstrap, &setup.group, &setup.input).unwrap_or(-1)
        );
    }
    setup.finish(bootstrap, "crash before a commit", Vec::new())
}

/// 100,000 readings, 1% malformed (by the generator) and 0.1% padded past the sink's
/// 2,000-byte records (by this test), copied exactly once: the dead letters are exactly the
/// malformed and the padded readings, the output every other reading once.
fn oversize(bootstrap: &str, seed: u64) -> Row {
    let (input, output, dlq, group) = (
        unique("oversize.in"),
        unique("oversize.out"),
        unique("oversize.dlq"),
        unique("group"),
    );
    let mut settings = generator::Settings::new("production/sensor_reading", seed);
    settings.malformed = 0.01;
    let (mut malformed, mut padded) = (0, 0);
    // (line, machine, ts) of every reading that should be copied, with its count.
    let mut valid: std::collections::BTreeMap<(String, String, i64), i64> = Default::default();
    let mut records: Vec<(String, Vec<u8>)> = Vec::new();
    for (i, e) in generator::Generator::new(settings)
        .expect("kind")
        .take(EVENTS as usize)
        .enumerate()
    {
        if e.malformed {
            malformed += 1;
            records.push((e.key, e.value));
            continue;
        }
        let mut v: Value = serde_json::from_slice(&e.value).expect("a reading");
        if i % 1000 == 999 {
            padded += 1;
            v["machine_id"] = Value::String(format!("M{}", "x".repeat(3000)));
        } else {
            let k = (
                v["line_id"].as_str().expect("line").to_string(),
                v["machine_id"].as_str().expect("machine").to_string(),
                epoch_ms(&v["ts"]),
            );
            *valid.entry(k).or_default() += 1;
        }
        records.push((e.key, serde_json::to_vec(&v).expect("json")));
    }
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(async {
            connectors::create_topic(bootstrap, &input, 4).await?;
            let sink = connectors::KafkaSink::new(
                bootstrap,
                &input,
                &std::collections::BTreeMap::new(),
                Vec::new(),
            )?;
            for chunk in records.chunks(10_000) {
                let out: Vec<connectors::OutRecord<'_>> = chunk
                    .iter()
                    .map(|(k, v)| connectors::OutRecord {
                        key: Some(k.as_bytes()),
                        value: v,
                        timestamp: None,
                        partition: None,
                    })
                    .collect();
                sink.send_all(&out, &[]).await?;
            }
            Ok::<_, connectors::ConnectorError>(())
        })
        .expect("the input is written");
    let env = [
        ("TEST_INPUT_TOPIC", input.as_str()),
        ("TEST_OUTPUT_TOPIC", output.as_str()),
        ("TEST_DEAD_LETTER_TOPIC", dlq.as_str()),
        ("TEST_GROUP", group.as_str()),
    ];
    let run = Command::new(env!("CARGO_BIN_EXE_pipectl"))
        .args([
            "run",
            "tests/pipelines/faults-copy.yaml",
            "--bootstrap",
            bootstrap,
        ])
        .args([
            "--kafka-state",
            "--checkpoint-interval",
            "500ms",
            "--until-idle",
            "5s",
        ])
        .arg("--quiet")
        .envs(env)
        .current_dir(root())
        .output()
        .expect("pipectl runs");
    assert!(
        run.status.success(),
        "the copy failed:\n{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let mut got = valid.clone();
    for v in got.values_mut() {
        *v = 0;
    }
    let mut unexpected = 0;
    for m in read(bootstrap, &output) {
        let v: Value = serde_json::from_slice(&m.payload).expect("json");
        let k = (
            v["line_id"].as_str().unwrap_or_default().to_string(),
            v["machine_id"].as_str().unwrap_or_default().to_string(),
            epoch_ms(&v["ts"]),
        );
        match got.get_mut(&k) {
            Some(n) => *n += 1,
            None => unexpected += 1,
        }
    }
    let missing: i64 = valid.iter().map(|(k, n)| (n - got[k]).max(0)).sum();
    let duplicated: i64 = valid.iter().map(|(k, n)| (got[k] - n).max(0)).sum();
    let letters = read(bootstrap, &dlq);
    let by_sink = letters
        .iter()
        .filter(|m| m.headers.iter().any(|(k, _)| k == "sink"))
        .count();
    println!(
        "oversize: {malformed} malformed and {padded} padded readings; {by_sink} of {} dead letters from the sink",
        letters.len()
    );
    Row {
        test: "1% malformed, 0.1% oversize",
        exactly_once: true,
        events: records.len(),
        missing: missing as usize,
        duplicated: duplicated as usize + unexpected,
        dead_lettered: letters.len(),
        wrong_letters: by_sink.abs_diff(padded) + (letters.len() - by_sink).abs_diff(malformed),
        malformed: Some(malformed + padded),
        resumed: Vec::new(),
        open: open_transactions(bootstrap, &output) + open_transactions(bootstrap, &dlq),
        windows: (Vec::new(), Vec::new()),
    }
}

/// The last snapshot per key of a snapshot topic (the global model's: the one with the
/// most samples).
fn last_snapshots(bootstrap: &str, topic: &str) -> std::collections::BTreeMap<String, Value> {
    let mut last: std::collections::BTreeMap<String, Value> = Default::default();
    for m in read(bootstrap, topic) {
        let v: Value = serde_json::from_slice(&m.payload).expect("json");
        let key = v["line_id"].as_str().unwrap_or_default().to_string();
        let more = last
            .get(&key)
            .is_none_or(|w| v["samples"].as_u64() >= w["samples"].as_u64());
        if more {
            last.insert(key, v);
        }
    }
    last
}

/// The scale-out pipeline (per-line windows, a per-line and a global regression) over one
/// input twice at once, exactly once: uninterrupted, and SIGKILLed three times (restored
/// from Kafka each time). The window rows of the two must be byte-equal (a restored run
/// cuts micro-batches elsewhere, but sums of doubles are exact: planner::exact), the
/// models' last snapshots equal to 1e-12 (a global model merges the other tasks' partials
/// as they arrive).
fn restores_equal_one_run(bootstrap: &str, seed: u64) -> Row {
    let setup = Setup::new(bootstrap, "exactly_once", seed);
    let snapshots = [unique("restored.snapshots"), unique("whole.snapshots")];
    let whole_output = unique("whole.out");
    let whole_group = unique("group");
    let base_args =
        |until_idle| kafka_state_run("tests/pipelines/scale-out.yaml", bootstrap, until_idle);
    let env = |output: &str, snapshots: &str, group: &str| -> Vec<(String, String)> {
        [
            ("TEST_INPUT_TOPIC", setup.input.as_str()),
            ("TEST_OUTPUT_TOPIC", output),
            ("TEST_SNAPSHOT_TOPIC", snapshots),
            ("TEST_GROUP", group),
            ("TEST_DELIVERY", "exactly_once"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    };
    let whole_env = env(&whole_output, &snapshots[1], &whole_group);
    let mut whole = Command::new(env!("CARGO_BIN_EXE_pipectl"))
        .args(base_args(true))
        .envs(whole_env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .current_dir(root())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("pipectl starts");
    let restored_env = env(&setup.output, &snapshots[0], &setup.group);
    let restored_env: Vec<(&str, &str)> = restored_env
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let args = base_args(false);
    let run = Interrupted {
        binary: env!("CARGO_BIN_EXE_pipectl"),
        bootstrap,
        args: &args,
        env: &restored_env,
        group: &setup.group,
        input: &setup.input,
    };
    let resumed = run.times(3, "KILL", 12_000, EVENTS);
    let mut setup = setup;
    assert!(setup.feed.wait().expect("gen ends").success(), "gen failed");
    let last = Command::new(env!("CARGO_BIN_EXE_pipectl"))
        .args(base_args(true))
        .envs(restored_env.iter().copied())
        .current_dir(root())
        .output()
        .expect("pipectl runs");
    assert!(
        last.status.success(),
        "{}",
        String::from_utf8_lossy(&last.stderr)
    );
    assert!(
        whole.wait().expect("reaped").success(),
        "the uninterrupted run failed"
    );

    let windows = |topic: &str| -> Vec<Value> {
        read(bootstrap, topic)
            .iter()
            .map(|m| serde_json::from_slice(&m.payload).expect("json"))
            .collect()
    };
    let (restored, one) = (windows(&setup.output), windows(&whole_output));
    let (restored_distinct, one_distinct) = (distinct_windows(&restored), distinct_windows(&one));
    let key = |v: &Value| {
        (
            v["line_id"].as_str().unwrap_or_default().to_string(),
            epoch_ms(&v["window_start"]),
        )
    };
    let theirs: std::collections::BTreeMap<_, &Value> =
        restored_distinct.iter().map(|v| (key(v), v)).collect();
    let (mut missing, mut differ, mut far) = (0, 0, 0);
    for w in &one_distinct {
        match theirs.get(&key(w)) {
            None => missing += 1,
            Some(r) if *r != w => {
                differ += 1;
                far += usize::from(!same_json(r, w));
            }
            Some(_) => {}
        }
    }
    let (a, b) = (
        last_snapshots(bootstrap, &snapshots[0]),
        last_snapshots(bootstrap, &snapshots[1]),
    );
    let (ga, gb) = (
        last_snapshots(bootstrap, &format!("{}.global", snapshots[0])),
        last_snapshots(bootstrap, &format!("{}.global", snapshots[1])),
    );
    let models_differ = a.len().abs_diff(b.len())
        + a.iter()
            .filter(|(k, v)| {
                b.get(*k)
                    .is_none_or(|w| !same_json(&model_of(v), &model_of(w)))
            })
            .count()
        + ga.iter()
            .filter(|(k, v)| {
                gb.get(*k)
                    .is_none_or(|w| !same_json(&model_of(v), &model_of(w)))
            })
            .count();
    println!(
        "restores: {} window rows, {differ} not byte-equal to the uninterrupted run's ({far} past 1e-12); {} line models and the global one, {models_differ} differing past 1e-12",
        one_distinct.len(),
        a.len()
    );
    assert_eq!(
        differ, 0,
        "window rows not byte-equal to the uninterrupted run's"
    );
    assert_eq!(
        models_differ, 0,
        "models differing from the uninterrupted run's"
    );
    assert!(one_distinct.len() > 1000, "{} windows", one_distinct.len());
    Row {
        test: "3 restores = one run",
        exactly_once: true,
        events: EVENTS as usize,
        missing: missing + one_distinct.len().abs_diff(restored_distinct.len()),
        duplicated: restored.len() - restored_distinct.len(),
        dead_lettered: 0,
        wrong_letters: 0,
        malformed: None,
        resumed,
        open: open_transactions(bootstrap, &setup.output),
        windows: (Vec::new(), Vec::new()),
    }
}

/// A snapshot's model: samples, intercept and coefficients (its prequential metrics depend
/// on when the other tasks' partials arrived, for a global model).
fn model_of(v: &Value) -> Value {
    serde_json::json!({
        "samples": v["samples"],
        "intercept": v["intercept"],
        "coefficients": v["coefficients"],
    })
}

/// A row of the matrix by name, and how to run it.
type Scenario<'a> = (&'a str, Box<dyn Fn() -> Vec<Row> + 'a>);

#[test]
fn the_fault_matrix_loses_nothing_and_exactly_once_doubles_nothing() {
    let Some(bootstrap) = bootstrap() else { return };
    let b = bootstrap.as_str();
    let scenarios: Vec<Scenario<'_>> = vec![
        (
            "kill",
            Box::new(|| {
                vec![interrupted(
                    b,
                    "engine SIGKILLed 3 times",
                    "exactly_once",
                    "KILL",
                    31,
                )]
            }),
        ),
        (
            "term",
            Box::new(|| {
                vec![interrupted(
                    b,
                    "engine SIGTERMed 3 times",
                    "exactly_once",
                    "TERM",
                    32,
                )]
            }),
        ),
        ("crash", Box::new(|| vec![crashed_before_commit(b, 35)])),
        ("broker", Box::new(|| vec![broker_restarted(36)])),
        ("zombie", Box::new(|| vec![zombie(b, 34)])),
        ("oversize", Box::new(|| vec![oversize(b, 37)])),
        ("daemon", Box::new(|| daemon_restarted(b, 39))),
        ("restores", Box::new(|| vec![restores_equal_one_run(b, 38)])),
        (
            "at-least-once",
            Box::new(|| {
                vec![interrupted(
                    b,
                    "engine SIGKILLed 3 times",
                    "at_least_once",
                    "KILL",
                    33,
                )]
            }),
        ),
    ];
    // FAULTS_ONLY=zombie,broker runs only those rows (while working on one).
    let only = std::env::var("FAULTS_ONLY").ok();
    let rows: Vec<Row> = scenarios
        .iter()
        .filter(|(name, _)| {
            only.as_ref()
                .is_none_or(|o| o.split(',').any(|x| x == *name))
        })
        .flat_map(|(_, run)| run())
        .collect();
    println!(
        "\n{:<28} {:<14} {:>7} {:>7} {:>10} {:>13} {:>9} {:>9}  resumed (s)",
        "test",
        "delivery",
        "events",
        "missing",
        "duplicated",
        "dead-lettered",
        "injected",
        "open txns"
    );
    for r in &rows {
        let resumed: Vec<String> = r.resumed.iter().map(|s| format!("{s:.1}")).collect();
        println!(
            "{:<28} {:<14} {:>7} {:>7} {:>10} {:>13} {:>9} {:>9}  {}",
            r.test,
            if r.exactly_once {
                "exactly_once"
            } else {
                "at_least_once"
            },
            r.events,
            r.missing,
            r.duplicated,
            r.dead_lettered,
            r.malformed.map_or("-".to_string(), |m| m.to_string()),
            r.open,
            resumed.join(", ")
        );
    }
    for r in &rows {
        let what = format!(
            "{} ({})",
            r.test,
            if r.exactly_once {
                "exactly once"
            } else {
                "at least once"
            }
        );
        // While the broker is killed, the feed's producer may write a batch again (the
        // input then holds more than it sent; the windows are checked against what it
        // holds): nothing acknowledged may be missing.
        if r.test == "broker restarted 3 times" {
            assert!(r.events >= EVENTS as usize, "{what}: events in the input");
        } else {
            assert_eq!(r.events, EVENTS as usize, "{what}: events in the input");
        }
        assert_eq!(r.missing, 0, "{what}: window rows missing");
        assert!(
            r.malformed.is_none_or(|m| m > 500),
            "{what}: the oracle sees the malformed records"
        );
        assert_eq!(
            r.wrong_letters, 0,
            "{what}: dead letters are the malformed records"
        );
        assert_eq!(r.open, 0, "{what}: transactions left open");
        if r.exactly_once {
            assert_eq!(r.duplicated, 0, "{what}: window rows written twice");
            assert_eq!(
                r.dead_lettered,
                r.malformed.unwrap_or(0),
                "{what}: one dead letter per malformed record"
            );
        }
        if !r.windows.1.is_empty() {
            assert_same_windows(&r.windows.0, &r.windows.1);
        }
    }
}
