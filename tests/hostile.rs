//! The hostile-input suite: every pipeline in tests/hostile/ is refused with its expected
//! message, by `pipectl validate` and by a live daemon, and the daemon survives them all with
//! bounded memory while its other pipelines go on processing.
//!
//! Each tests/hostile/NAME.yaml starts with `# expect: TEXT` (in the refusal) and optionally
//! `# expect-deploy: TEXT` where the daemon's answer differs. The long ones are written by
//! tests/hostile/generate.py (a test checks they are what it writes).
//!
//! The daemon runs as an operator would run it for untrusted authors: pipelines see only
//! variables starting with `HOSTILE_` (`HOSTILE_SECRET_*` as secrets), its check of a deployed
//! pipeline runs in a child with a 700 MiB budget, and a pipeline that does not stop within
//! 3 s is abandoned.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

mod support;
use support::{bootstrap, root, run_python, unique};
#[path = "support/daemon.rs"]
mod daemon_support;
use daemon_support::{
    Daemon, TOKEN, copy_yaml, feed, free_port, gen_readings, http, pipectl_bin, status, wait_for,
};

/// The value of the secret the operator exposes: no output may ever contain it.
const SECRET: &str = "hostile-secret-value-7731";

#[derive(Debug)]
struct Case {
    file: PathBuf,
    name: String,
    text: String,
    expect: String,
    expect_deploy: String,
}

fn cases() -> Vec<Case> {
    let dir = root().join("tests/hostile");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("tests/hostile")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|file| {
            let text = std::fs::read_to_string(&file).expect("readable");
            let header = |key: &str| {
                text.lines()
                    .find_map(|l| l.strip_prefix(key))
                    .map(str::to_string)
            };
            let expect = header("# expect: ")
                .unwrap_or_else(|| panic!("{} has no `# expect:` line", file.display()));
            let expect_deploy = header("# expect-deploy: ").unwrap_or_else(|| expect.clone());
            let name = file
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            Case {
                file,
                name,
                text,
                expect,
                expect_deploy,
            }
        })
        .collect()
}

/// The child's output, or `None` when it ran past `limit` (it is killed then). Output is read
/// while waiting, so a long message cannot fill the pipe and stall the child.
fn wait_bounded(child: std::process::Child, limit: Duration) -> Option<std::process::Output> {
    let pid = child.id().to_string();
    let (done, finished) = std::sync::mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        if finished.recv_timeout(limit).is_err() {
            let _ = Command::new("kill").args(["-KILL", &pid]).status();
            return true;
        }
        false
    });
    let out = child.wait_with_output().ok();
    let _ = done.send(());
    let killed = watchdog.join().unwrap_or(true);
    if killed { None } else { out }
}

#[test]
fn the_generated_hostile_files_are_what_their_script_writes() {
    let dir = std::env::temp_dir().join(unique("hostile-generated"));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let script = root().join("tests/hostile/generate.py");
    run_python(&[script.as_os_str(), dir.as_os_str()]);
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).expect("generated") {
        let path = entry.expect("entry").path();
        let name = path.file_name().expect("name");
        let committed = root().join("tests/hostile").join(name);
        assert!(
            std::fs::read(&path).ok() == std::fs::read(&committed).ok(),
            "{} differs from what tests/hostile/generate.py writes: run it and commit the result",
            committed.display()
        );
        checked += 1;
    }
    std::fs::remove_dir_all(&dir).ok();
    assert!(checked >= 8, "only {checked} generated files");
}

#[test]
fn pipectl_validate_refuses_every_hostile_pipeline_with_its_message() {
    let cases = cases();
    let mut failures = Vec::new();
    for case in &cases {
        let child = Command::new(pipectl_bin())
            .arg("validate")
            .arg(&case.file)
            .current_dir(root())
            .env_remove("PIPELINED_TOKEN")
            .env_remove("NOPE")
            .env("HOSTILE_SECRET_PW", SECRET)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("pipectl runs");
        let started = Instant::now();
        let Some(out) = wait_bounded(child, Duration::from_secs(120)) else {
            failures.push(format!("{}: still running after 120 s", case.name));
            continue;
        };
        let stderr = String::from_utf8_lossy(&out.stderr);
        println!(
            "{}: exit {:?} in {} ms",
            case.name,
            out.status.code(),
            started.elapsed().as_millis()
        );
        if out.status.code() != Some(1) {
            failures.push(format!(
                "{}: exit {:?}, want 1",
                case.name,
                out.status.code()
            ));
        }
        if !stderr.contains(&case.expect) {
            failures.push(format!(
                "{}: want `{}` in:\n{}",
                case.name,
                case.expect,
                stderr.lines().take(6).collect::<Vec<_>>().join("\n")
            ));
        }
        if stderr.contains(SECRET) || stderr.contains("root:x:0:0") {
            failures.push(format!(
                "{}: the output leaks a secret or a file",
                case.name
            ));
        }
    }
    println!(
        "{} hostile pipelines refused by pipectl validate",
        cases.len()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

fn events_in(url: &str, name: &str) -> u64 {
    status(url, name)["events_in"].as_u64().unwrap_or(0)
}

fn deploy(url: &str, file: &str, yaml: &str) -> (u16, Value) {
    http(
        url,
        "POST",
        "/api/v1/pipelines",
        Some(TOKEN),
        Some(&json!({ "yaml": yaml, "file": file })),
    )
}

/// A pipeline kept busy: a regression of 128 inputs solves a 128 x 128 system for every
/// prediction, about 2.5 ms a row in a debug build, so a micro-batch of 10,000 rows takes
/// tens of seconds, and the pipeline does not look at its stop signal meanwhile.
fn busy_pipeline(input: &str) -> String {
    format!(
        r#"apiVersion: pipelines/v1
kind: Pipeline
metadata: {{ name: busy }}
spec:
  sources:
    - name: readings
      kafka: {{ topic: "{input}", start_from: earliest, group: busy-group }}
      format: json
      schema: production/sensor_reading
      on_error: skip
  models:
    - name: m
      input: readings
      regression: {{ target: failure_rate, features: [temperature, {{ name: machine_id, hash_buckets: 127 }}] }}
"#
    )
}

#[test]
fn hostile_deploys_leave_the_daemon_and_its_other_pipelines_unharmed() {
    let Some(bootstrap) = bootstrap() else {
        return;
    };
    let cases = cases();
    let state = std::env::temp_dir().join(unique("hostile-state"));
    let mut daemon = Daemon::start_env(
        &state,
        free_port(),
        &bootstrap,
        &[
            "--pipeline-env",
            "HOSTILE_",
            "--secret-env",
            "HOSTILE_SECRET_",
            "--check-memory-mib",
            "700",
            "--stop-timeout",
            "3s",
        ],
        &[("HOSTILE_SECRET_PW", SECRET)],
    );
    let url = daemon.url.clone();

    // A pipeline that must keep processing through everything below.
    let input = unique("hostile-input");
    let output = unique("hostile-output");
    let good = copy_yaml("good", "good-group", &input, &output, "skip");
    let (code, body) = deploy(&url, "good.yaml", &good);
    assert_eq!(code, 201, "{body}");
    let mut generator = feed(
        &bootstrap,
        &[
            "--kind",
            "production/sensor_reading",
            "--topic",
            &input,
            "--count",
            "200000",
            "--rate",
            "300",
            "--seed",
            "5",
        ],
    );
    wait_for(
        "the good pipeline to process",
        Duration::from_secs(60),
        || events_in(&url, "good") > 0,
    );
    let before = events_in(&url, "good");

    let mut failures = Vec::new();
    for case in &cases {
        let started = Instant::now();
        let (code, body) = deploy(&url, &case.name, &case.text);
        let text = body.to_string();
        println!(
            "{}: {code} in {} ms",
            case.name,
            started.elapsed().as_millis()
        );
        if code != 422 {
            failures.push(format!("{}: status {code}, want 422: {text}", case.name));
        } else if !text.contains(&case.expect_deploy) {
            failures.push(format!(
                "{}: want `{}` in {text}",
                case.name, case.expect_deploy
            ));
        }
        if text.contains(SECRET) || text.contains(TOKEN) || text.contains("root:x:0:0") {
            failures.push(format!("{}: the reply leaks a secret or a file", case.name));
        }
        if http(&url, "GET", "/healthz", None, None).0 != 200 {
            failures.push(format!("{}: the daemon stopped answering", case.name));
            break;
        }
    }

    // Joining another pipeline's consumer group would split its partitions: refused.
    let thief = copy_yaml(
        "thief",
        "good-group",
        &input,
        &unique("hostile-thief"),
        "skip",
    );
    let (code, body) = deploy(&url, "thief.yaml", &thief);
    assert_eq!(code, 409, "{body}");
    assert!(
        body.to_string().contains("already used by pipeline `good`"),
        "{body}"
    );

    // A busy pipeline is stopped and deleted within a bound, and its late end writes no
    // checkpoint back.
    let busy_input = unique("hostile-busy");
    gen_readings(
        &bootstrap,
        &busy_input,
        &["--count", "12000", "--partitions", "1"],
    );
    let (code, body) = deploy(&url, "busy.yaml", &busy_pipeline(&busy_input));
    assert_eq!(code, 201, "{body}");
    wait_for("the busy pipeline to run", Duration::from_secs(60), || {
        status(&url, "busy")["phase"] == "running"
    });
    std::thread::sleep(Duration::from_secs(2));
    let started = Instant::now();
    let (code, body) = http(&url, "DELETE", "/api/v1/pipelines/busy", Some(TOKEN), None);
    let took = started.elapsed();
    println!(
        "deleting the busy pipeline answered {code} in {} ms",
        took.as_millis()
    );
    assert_eq!(code, 200, "{body}");
    assert!(
        daemon
            .logs()
            .contains("pipeline busy v1: did not stop within 3s; abandoned"),
        "the busy pipeline stopped in time, so this test proves nothing:\n{}",
        daemon.logs()
    );
    wait_for("the abandoned run to end", Duration::from_secs(180), || {
        daemon
            .logs()
            .contains("pipeline busy v1: abandoned run ended")
    });
    let checkpoints: &Path = &state.join("checkpoints/busy");
    assert!(
        !checkpoints.exists(),
        "a deleted pipeline's late end wrote {}",
        checkpoints.display()
    );

    // The good pipeline went on through all of it.
    let after = events_in(&url, "good");
    println!("the good pipeline read {before} events before the hostile deploys, {after} after");
    assert!(after > before, "the good pipeline stopped processing");
    assert_eq!(status(&url, "good")["phase"], "running");
    let metrics = http(&url, "GET", "/metrics", None, None).1.to_string();
    assert!(!metrics.contains(SECRET) && !metrics.contains(TOKEN));
    let peak = daemon.memory_kib("VmHWM").unwrap_or(0);
    println!("daemon peak resident memory: {} MiB", peak / 1024);
    assert!(peak < 500 * 1024, "daemon peak memory {} MiB", peak / 1024);
    let _ = generator.kill();
    let _ = generator.wait();
    // And it still shuts down cleanly, within its bound, even with a busy pipeline (it
    // ignored SIGTERM before): redeploy the busy one, and stop the daemon while it works.
    let (code, body) = deploy(&url, "busy.yaml", &busy_pipeline(&busy_input));
    assert_eq!(code, 201, "{body}");
    wait_for(
        "the busy pipeline to run again",
        Duration::from_secs(60),
        || status(&url, "busy")["phase"] == "running",
    );
    std::thread::sleep(Duration::from_secs(2));
    let started = Instant::now();
    daemon.stop();
    println!(
        "the daemon stopped in {} ms with a busy pipeline",
        started.elapsed().as_millis()
    );
    let abandoned = daemon
        .logs()
        .matches("pipeline busy v1: did not stop within 3s; abandoned")
        .count();
    assert_eq!(abandoned, 2, "the second busy run was not busy at shutdown");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    println!("{} hostile pipelines refused by the daemon", cases.len());
    std::fs::remove_dir_all(&state).ok();
}
