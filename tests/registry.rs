//! The Confluent wire format against a live schema registry (Apicurio Registry, started by
//! `scripts/schema-registry` in scripts/gate) and a real broker, with an independent client:
//! confluent-kafka's AvroSerializer and AvroDeserializer (tests/oracle/registry_client.py),
//! and DuckDB for the expected windows.

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use connectors::read_all;
use serde_json::Value;

mod support;
use support::{bootstrap, registry_url, root, run_python, unique};

const READING: &str = r#"{"type": "record", "name": "Reading", "namespace": "test", "fields": [
  {"name": "line", "type": "string"},
  {"name": "ts", "type": {"type": "long", "logicalType": "timestamp-millis"}},
  {"name": "value", "type": "double"},
  {"name": "note", "type": ["null", "string"], "default": null}]}"#;

fn pipeline(name: &str, topic: &str) -> String {
    format!(
        r#"apiVersion: pipelines/v1
kind: Pipeline
metadata: {{ name: {name} }}
spec:
  sources:
    - name: readings
      kafka: {{ topic: {topic}, start_from: earliest }}
      format: avro_confluent
      schema: reg/reading
      event_time: {{ field: ts }}
      on_error: dead_letter
  transforms:
    - name: per_minute
      window: {{ tumbling: 1m }}
      sql: SELECT line, window_start, window_end, count(*) AS n, sum(value) AS total, count(note) AS notes FROM readings GROUP BY line, window_start, window_end
  sinks:
    - {{ name: json_out, from: per_minute, kafka: {{ topic: {topic}.json }}, format: json }}
    - {{ name: avro_out, from: per_minute, kafka: {{ topic: {topic}.avro }}, format: avro_confluent }}
"#
    )
}

/// Time allowed for one child process of these tests: a hang fails the test, saying where.
const CHILD_LIMIT: &str = "120";

fn pipectl_run(dir: &Path, file: &Path, bootstrap: &str, registry: &str) -> Output {
    Command::new("timeout")
        .args(["-k", "5", CHILD_LIMIT])
        .arg(env!("CARGO_BIN_EXE_pipectl"))
        .arg("run")
        .arg(file)
        .arg("--schemas")
        .arg(dir.join("schemas"))
        .args(["--bootstrap", bootstrap, "--until-idle", "3s", "--quiet"])
        .args(["--schema-registry", registry])
        .current_dir(root())
        .output()
        .expect("pipectl runs")
}

fn client(args: &[&str]) -> Value {
    let out = Command::new("timeout")
        .args(["-k", "5", CHILD_LIMIT])
        .arg(support::test_python())
        .arg(root().join("tests/oracle/registry_client.py"))
        .args(args)
        .output()
        .expect("python runs");
    assert!(
        out.status.success(),
        "registry_client.py {args:?} (exit {:?}, 124: over {CHILD_LIMIT} s): {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.lines().last().unwrap_or_default()).expect("a JSON report")
}

fn setup(name: &str) -> (std::path::PathBuf, String) {
    let dir = std::env::temp_dir().join(unique(name));
    std::fs::create_dir_all(dir.join("schemas/reg")).expect("dir");
    std::fs::write(dir.join("schemas/reg/reading.avsc"), READING).expect("schema");
    (dir, unique(name).replace('.', "-"))
}

/// Events written with two schemas (the declared one, and an evolved one with a field
/// removed, one added with a default and a double narrowed to a float) give the windows
/// DuckDB computes; the Avro sink's records, decoded by Confluent's deserializer through
/// the registry, equal the JSON sink's; an unknown schema id and an unreadable writer schema
/// are dead-lettered with their reasons.
#[test]
fn evolved_writer_schemas_are_resolved_and_sinks_register_theirs() {
    let (Some(bootstrap), Some(registry)) = (bootstrap(), registry_url()) else {
        return;
    };
    let (dir, topic) = setup("registry");
    let name = format!("reg-{}", support::nanos() % 1_000_000_000);
    let file = dir.join("p.yaml");
    std::fs::write(&file, pipeline(&name, &topic)).expect("pipeline");
    let events = dir.join("events.jsonl");
    let events = events.to_str().expect("path");
    let produced = client(&[
        "produce",
        "--bootstrap",
        &bootstrap,
        "--registry",
        &registry,
        "--topic",
        &topic,
        "--events",
        events,
        "--count",
        "3000",
    ]);
    assert_eq!(produced["produced"], 3002);
    let out = pipectl_run(&dir, &file, &bootstrap, &registry);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("3002 in"), "{stderr}");
    assert!(stderr.contains("2 dead-lettered"), "{stderr}");
    let report = client(&[
        "check",
        "--bootstrap",
        &bootstrap,
        "--registry",
        &registry,
        "--events",
        events,
        "--json-topic",
        &format!("{topic}.json"),
        "--avro-topic",
        &format!("{topic}.avro"),
    ]);
    eprintln!("registry test: {report}");
    assert!(report["expected"].as_u64().unwrap_or(0) >= 40, "{report}");
    assert_eq!(report["json_rows"], report["expected"], "{report}");
    assert_eq!(report["json_equals_duckdb"], true, "{report}");
    assert_eq!(report["avro_equals_json"], true, "{report}");
    let ids = report["avro_schema_ids"].as_array().expect("ids");
    assert!(
        ids.len() == 1 && ids[0].as_u64().unwrap_or(0) > 0,
        "the Avro sink writes the id the registry gave it: {report}"
    );
    let letters = read_all(
        &bootstrap,
        &format!("{name}.readings.dead_letter"),
        Duration::from_secs(60),
    )
    .expect("dead letters");
    let reasons: Vec<String> = letters
        .iter()
        .map(|m| {
            m.headers
                .iter()
                .find(|(k, _)| k == "error")
                .map(|(_, v)| v.clone())
                .unwrap_or_default()
        })
        .collect();
    assert_eq!(reasons.len(), 2, "{reasons:?}");
    assert!(
        reasons[0].contains("schema id 999999: not in the registry"),
        "{reasons:?}"
    );
    let bad = produced["bad_schema_id"].as_u64().expect("id");
    assert!(
        reasons[1].contains(&format!(
            "schema id {bad}: its writer schema cannot be read as the declared one: field `value`: the writer's string cannot be read as the declared double"
        )),
        "{reasons:?}"
    );
}

/// A sink whose schema the registry refuses under BACKWARD compatibility stops the run
/// before it starts, with the located error of the registry check `pipectl run` makes
/// first.
#[test]
fn a_sink_schema_the_registry_refuses_stops_the_run_at_start() {
    let (Some(bootstrap), Some(registry)) = (bootstrap(), registry_url()) else {
        return;
    };
    let (dir, topic) = setup("registry-refused");
    let subject = format!("{topic}.avro-value");
    let reg = client_of(&registry);
    // An earlier version with a field the sink's rows do not have: under BACKWARD the
    // sink's schema (which cannot read it: its fields have no defaults) is incompatible.
    set_backward(&registry, &subject);
    reg.register(
        &subject,
        r#"{"type":"record","name":"Old","fields":[{"name":"other","type":"string"}]}"#,
    )
    .expect("registers the old version");
    // The source topic exists (empty): the run gets as far as its sinks.
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(connectors::create_topic(&bootstrap, &topic, 1))
        .expect("topic");
    let file = dir.join("p.yaml");
    std::fs::write(&file, pipeline("reg-refused", &topic)).expect("pipeline");
    let out = pipectl_run(&dir, &file, &bootstrap, &registry);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "error: spec.sinks[1].format: the registry would refuse this sink's schema under subject `{subject}` as incompatible"
        )),
        "{stderr}"
    );
}

/// The engine's registry client, for the tests' own registrations and lookups.
fn client_of(url: &str) -> connectors::registry::Registry {
    connectors::registry::Registry::new(connectors::registry::RegistryConfig {
        url: url.to_string(),
        auth: None,
        timeout: Duration::from_secs(10),
    })
}

/// `PUT /config/{subject}` with BACKWARD, over plain HTTP.
fn set_backward(registry: &str, subject: &str) {
    let out = Command::new("curl")
        .args(["-sf", "-X", "PUT", "-H", "Content-Type: application/json"])
        .arg(format!("{registry}/config/{subject}"))
        .args(["-d", r#"{"compatibility":"BACKWARD"}"#])
        .output()
        .expect("curl runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `pipectl gen --format avro_confluent --schema-registry URL` writes messages Confluent's
/// deserializer decodes through the registry: the event schema registered under
/// `<topic>-value`, its id in every message.
#[test]
fn gen_writes_messages_a_confluent_consumer_decodes() {
    let (Some(bootstrap), Some(registry)) = (bootstrap(), registry_url()) else {
        return;
    };
    let topic = unique("registry-gen").replace('.', "-");
    let out = Command::new(env!("CARGO_BIN_EXE_pipectl"))
        .args([
            "gen",
            "--kind",
            "production/sensor_reading",
            "--count",
            "250",
        ])
        .args([
            "--topic",
            &topic,
            "--partitions",
            "2",
            "--format",
            "avro_confluent",
        ])
        .args(["--bootstrap", &bootstrap, "--schema-registry", &registry])
        .current_dir(root())
        .output()
        .expect("pipectl gen runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report = client(&[
        "decode",
        "--bootstrap",
        &bootstrap,
        "--registry",
        &registry,
        "--topic",
        &topic,
    ]);
    assert_eq!(report["count"], 250, "{report}");
    let ids = report["schema_ids"].as_array().expect("ids");
    assert!(
        ids.len() == 1 && ids[0].as_u64().unwrap_or(0) > 0,
        "{report}"
    );
    let first = &report["first"];
    for field in ["line_id", "ts", "temperature"] {
        assert!(first.get(field).is_some(), "no `{field}` in {first}");
    }
}

/// `pipectl validate --schema-registry` reads each `avro_confluent` source's topic's latest
/// writer schema as the declared one, and asks whether each `avro_confluent` sink's schema
/// could be registered, reporting both with file:line:col; without the option the file is
/// valid.
#[test]
fn validate_checks_sources_and_sinks_against_the_registry() {
    let Some(registry) = registry_url() else {
        return;
    };
    let (dir, topic) = setup("registry-validate");
    let reg = client_of(&registry);
    let writer = r#"{"type":"record","name":"Reading","fields":[{"name":"line","type":"string"},{"name":"ts","type":"long"},{"name":"value","type":"string"}]}"#;
    let id = reg
        .register(&format!("{topic}-value"), writer)
        .expect("registers");
    let sink_subject = format!("{topic}.avro-value");
    set_backward(&registry, &sink_subject);
    reg.register(
        &sink_subject,
        r#"{"type":"record","name":"Old","fields":[{"name":"other","type":"string"}]}"#,
    )
    .expect("registers the old version");
    let file = dir.join("p.yaml");
    let text = pipeline("reg-validate", &topic);
    std::fs::write(&file, &text).expect("pipeline");
    let validate = |with_registry: bool| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_pipectl"));
        c.arg("validate")
            .arg(&file)
            .arg("--schemas")
            .arg(dir.join("schemas"));
        if with_registry {
            c.args(["--schema-registry", &registry]);
        }
        c.output().expect("pipectl runs")
    };
    let plain = validate(false);
    assert_eq!(
        plain.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&plain.stderr)
    );
    let out = validate(true);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    // Positions by hand: `schema:` is on line 9 with its value at column 15; the Avro sink
    // is line 18, its format where `avro_confluent }` starts.
    let f = file.display();
    assert!(
        stderr.contains(&format!(
            "{f}:9:15: error: spec.sources[0].schema: the registry's latest schema of subject `{topic}-value` (version 1, id {id}) cannot be read as `reg/reading`: field `value`: the writer's string cannot be read as the declared double"
        )),
        "{stderr}"
    );
    let line = text.lines().nth(17).expect("line 18");
    let col = line.find("avro_confluent }").expect("format") + 1;
    assert!(
        stderr.contains(&format!(
            "{f}:18:{col}: error: spec.sinks[1].format: the registry would refuse this sink's schema under subject `{sink_subject}` as incompatible"
        )),
        "{stderr}"
    );
    assert!(stderr.contains(": 2 errors"), "{stderr}");
}

/// A registry of the test's own (the shared one must stay up), keeping its data on disk so
/// that a restart keeps every schema; stopped when dropped.
struct OwnRegistry {
    env: Vec<(String, String)>,
}

impl OwnRegistry {
    fn new(port: u16, dir: &Path) -> Self {
        let env = vec![
            ("REGISTRY_PORT".to_string(), port.to_string()),
            ("REGISTRY_MGMT_PORT".to_string(), (port + 1).to_string()),
            (
                "REGISTRY_RUN_DIR".to_string(),
                dir.join("run").display().to_string(),
            ),
            (
                "REGISTRY_DATA_DIR".to_string(),
                dir.join("data").display().to_string(),
            ),
        ];
        let r = Self { env };
        r.script("start");
        r
    }

    fn script(&self, command: &str) -> String {
        let out = Command::new(root().join("scripts/schema-registry"))
            .arg(command)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .output()
            .expect("scripts/schema-registry runs");
        assert!(
            out.status.success(),
            "schema-registry {command}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

impl Drop for OwnRegistry {
    fn drop(&mut self) {
        let _ = Command::new(root().join("scripts/schema-registry"))
            .arg("stop")
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .output();
    }
}

fn free_port_pair() -> u16 {
    for _ in 0..100 {
        let p = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a port");
        if p < u16::MAX && std::net::TcpListener::bind(("127.0.0.1", p + 1)).is_ok() {
            return p;
        }
    }
    panic!("no two free ports in a row")
}

/// The registry stops mid-run: messages of an id already seen keep flowing (it is cached);
/// messages of a new id wait, retried, until the registry is back; nothing is lost or
/// dead-lettered.
#[test]
fn a_registry_restart_mid_run_loses_nothing() {
    let (Some(bootstrap), Some(_)) = (bootstrap(), registry_url()) else {
        return;
    };
    let dir = std::env::temp_dir().join(unique("registry-restart"));
    let own = OwnRegistry::new(free_port_pair(), &dir);
    let registry = own.script("url");
    let topic = unique("registry-restart").replace('.', "-");
    let out_topic = format!("{topic}.out");
    // Phase A: 400 readings with the declared schema, registered by `pipectl gen`.
    let generated = Command::new(env!("CARGO_BIN_EXE_pipectl"))
        .args([
            "gen",
            "--kind",
            "production/sensor_reading",
            "--count",
            "400",
        ])
        .args([
            "--topic",
            &topic,
            "--partitions",
            "1",
            "--format",
            "avro_confluent",
        ])
        .args(["--bootstrap", &bootstrap, "--schema-registry", &registry])
        .current_dir(root())
        .output()
        .expect("gen runs");
    assert!(
        generated.status.success(),
        "{}",
        String::from_utf8_lossy(&generated.stderr)
    );
    // A second version, registered now, that the pipeline has not seen yet.
    let declared = std::fs::read_to_string(root().join("schemas/production/sensor_reading.avsc"))
        .expect("schema");
    let mut v2: Value = serde_json::from_str(&declared).expect("json");
    v2["fields"]
        .as_array_mut()
        .expect("fields")
        .push(serde_json::json!({"name": "shift", "type": "string", "default": "day"}));
    let v2_file = dir.join("v2.avsc");
    std::fs::write(&v2_file, v2.to_string()).expect("v2");
    let reg = client_of(&registry);
    let v2_id = reg
        .register(&format!("{topic}-value"), &v2.to_string())
        .expect("registers v2");
    let file = dir.join("p.yaml");
    std::fs::write(
        &file,
        format!(
            r#"apiVersion: pipelines/v1
kind: Pipeline
metadata: {{ name: reg-restart }}
spec:
  sources:
    - name: readings
      kafka: {{ topic: {topic}, start_from: earliest }}
      format: avro_confluent
      schema: production/sensor_reading
      on_error: dead_letter
  transforms:
    - name: lines
      sql: SELECT line_id, machine_id FROM readings
  sinks:
    - {{ name: out, from: lines, kafka: {{ topic: {out_topic} }}, format: json }}
"#
        ),
    )
    .expect("pipeline");
    let run = Command::new("timeout")
        .args(["-k", "5", CHILD_LIMIT])
        .arg(env!("CARGO_BIN_EXE_pipectl"))
        .arg("run")
        .arg(&file)
        .args(["--bootstrap", &bootstrap, "--until-idle", "20s", "--quiet"])
        .args(["--schema-registry", &registry])
        .current_dir(root())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("pipectl run starts");
    let count = |t: &str| {
        read_all(&bootstrap, t, Duration::from_secs(30))
            .map(|m| m.len())
            .unwrap_or(0)
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while count(&out_topic) < 400 {
        assert!(
            std::time::Instant::now() < deadline,
            "phase A not processed"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    // The registry goes down; 300 messages of the new id arrive; it comes back 3 s later.
    own.script("stop");
    let script = root().join("tests/oracle/registry_client.py");
    run_python(&[
        script.as_os_str(),
        "framed".as_ref(),
        "--bootstrap".as_ref(),
        bootstrap.as_ref(),
        "--topic".as_ref(),
        topic.as_ref(),
        "--schema-file".as_ref(),
        v2_file.as_os_str(),
        "--id".as_ref(),
        v2_id.to_string().as_ref(),
        "--count".as_ref(),
        "300".as_ref(),
    ]);
    std::thread::sleep(Duration::from_secs(3));
    own.script("start");
    let out = run.wait_with_output().expect("pipectl run ends");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("700 in"), "{stderr}");
    assert!(stderr.contains("0 errors"), "{stderr}");
    assert_eq!(count(&out_topic), 700, "{stderr}");
}

/// `subject_strategy: record_name` and `topic_record_name` register a sink's schema under
/// the record's name (the sink's, made an Avro name) and `<topic>-<record>`, not under
/// `<topic>-value`.
#[test]
fn sinks_register_under_the_subject_their_strategy_names() {
    let (Some(bootstrap), Some(registry)) = (bootstrap(), registry_url()) else {
        return;
    };
    let (dir, topic) = setup("registry-subjects");
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(connectors::create_topic(&bootstrap, &topic, 1))
        .expect("topic");
    // Sink names unique to this run, so that their record-name subjects are new.
    let n = support::nanos() % 1_000_000_000;
    let (by_record, by_topic_record) = (format!("rec_{n}"), format!("toprec_{n}"));
    let yaml = pipeline("reg-subjects", &topic).replace(
        &format!(
            "    - {{ name: avro_out, from: per_minute, kafka: {{ topic: {topic}.avro }}, format: avro_confluent }}\n"
        ),
        &format!(
            "    - {{ name: {by_record}, from: per_minute, kafka: {{ topic: {topic}.a }}, format: avro_confluent, subject_strategy: record_name }}\n    - {{ name: {by_topic_record}, from: per_minute, kafka: {{ topic: {topic}.b }}, format: avro_confluent, subject_strategy: topic_record_name }}\n"
        ),
    );
    assert!(yaml.contains("record_name"), "{yaml}");
    let file = dir.join("p.yaml");
    std::fs::write(&file, yaml).expect("pipeline");
    let out = pipectl_run(&dir, &file, &bootstrap, &registry);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let reg = client_of(&registry);
    let record = format!("rec_{n}");
    assert!(reg.latest(&record).is_ok(), "no subject `{record}`");
    let topic_record = format!("{topic}.b-toprec_{n}");
    assert!(
        reg.latest(&topic_record).is_ok(),
        "no subject `{topic_record}`"
    );
    for absent in [format!("{topic}.a-value"), format!("{topic}.b-value")] {
        assert!(
            matches!(
                reg.latest(&absent),
                Err(connectors::registry::RegistryError::NotFound(_))
            ),
            "`{absent}` should not exist"
        );
    }
}
