//! File-driven tests of the pipeline language through the `pipectl` binary, run from the
//! repository root as a user would:
//!
//! - every `tests/bad/NAME.yaml` must fail `pipectl validate` with exactly the text of
//!   `tests/bad/NAME.err` (stderr) and exit code 1;
//! - every `pipelines/NAME.yaml` must be valid, and `pipectl plan` must print exactly
//!   `tests/plans/NAME.plan`;
//! - `pipectl schema` must print exactly `schemas/pipeline.schema.json`.
//!
//! The expected files are written by hand or, with `UPDATE_EXPECT=1`, from the current output
//! to be reviewed line by line in the diff before committing (like `insta` or DataFusion's
//! sqllogictest `--complete`).

use std::path::Path;
use std::process::{Command, Output};

mod support;
use support::{root, run_python, unique};

const TEST_SECRET: &str = "s3cr3t-value-42";

fn pipectl(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pipectl"))
        .args(args)
        .current_dir(root())
        // Expected outputs assume these are unset.
        .env_remove("PII_SALT")
        .env_remove("PIPECTL_TEST_SURELY_UNSET_TOPIC")
        .env_remove("PIPECTL_SCHEMAS")
        .env_remove("NOPE")
        // A secret that tests/bad/secrets-and-env.yaml misuses: no output may contain it.
        .env("PIPECTL_TEST_SECRET", TEST_SECRET)
        .output()
        .expect("pipectl runs")
}

fn files(dir: &str, ext: &str) -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir(root().join(dir))
        .expect("directory exists")
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == ext))
        .map(|p| {
            p.strip_prefix(root())
                .expect("under root")
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    out.sort();
    assert!(!out.is_empty(), "no .{ext} files in {dir}");
    out
}

/// Compares `actual` with the expected file, or rewrites it under `UPDATE_EXPECT=1`.
/// Returns a description of the mismatch.
fn expect_file(expected: &Path, actual: &str) -> Option<String> {
    if std::env::var_os("UPDATE_EXPECT").is_some() {
        std::fs::write(expected, actual).expect("write expected file");
        return None;
    }
    let want = std::fs::read_to_string(expected).unwrap_or_default();
    if want == actual {
        return None;
    }
    let mut diff = format!("{} differs:\n", expected.display());
    for (i, (w, a)) in want.lines().zip(actual.lines()).enumerate() {
        if w != a {
            diff.push_str(&format!(
                "  line {}:\n    want: {w}\n    got:  {a}\n",
                i + 1
            ));
            break;
        }
    }
    if want.lines().count() != actual.lines().count() {
        diff.push_str(&format!(
            "  want {} lines, got {}\n",
            want.lines().count(),
            actual.lines().count()
        ));
    }
    Some(diff)
}

#[test]
fn bad_pipelines_report_exactly_the_expected_errors() {
    let mut failures = Vec::new();
    for file in files("tests/bad", "yaml") {
        let out = pipectl(&["validate", &file]);
        if out.status.code() != Some(1) {
            failures.push(format!("{file}: exit {:?}, want 1", out.status.code()));
        }
        if !out.stdout.is_empty() {
            failures.push(format!("{file}: printed on stdout"));
        }
        let stderr = String::from_utf8_lossy(&out.stderr);
        if stderr.contains(TEST_SECRET) {
            failures.push(format!("{file}: a secret's value is in the output"));
        }
        let expected = root().join(&file).with_extension("err");
        if let Some(diff) = expect_file(&expected, &stderr) {
            failures.push(diff);
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn the_acceptance_example_reports_three_located_errors_in_one_run() {
    let out = pipectl(&["validate", "tests/bad/three-errors.yaml"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let errors: Vec<&str> = stderr.lines().filter(|l| l.contains(": error: ")).collect();
    assert_eq!(errors.len(), 3, "{stderr}");
    assert!(errors[0].starts_with("tests/bad/three-errors.yaml:15:29: error: spec.transforms[0].sql: No field named tempreature"));
    assert!(errors[1].starts_with("tests/bad/three-errors.yaml:20:14: error: spec.transforms[1].sql: unknown input `readngs`, did you mean `readings`?"));
    assert!(errors[2].starts_with("tests/bad/three-errors.yaml:28:9: error: spec.models[0].regression.half_lfe: unknown field `half_lfe`, did you mean `half_life`?"));
}

#[test]
fn every_example_pipeline_is_valid() {
    let examples = files("pipelines", "yaml");
    let mut args = vec!["validate"];
    args.extend(examples.iter().map(String::as_str));
    let out = pipectl(&args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        stdout.lines().filter(|l| l.contains(": valid")).count(),
        examples.len()
    );
    // A directory stands for its YAML files, in name order.
    let out = pipectl(&["validate", "pipelines"]);
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout), stdout);
}

#[test]
fn plans_match_their_snapshots() {
    let mut failures = Vec::new();
    for file in files("pipelines", "yaml") {
        let out = pipectl(&["plan", &file]);
        if !out.status.success() {
            failures.push(format!("{file}: {}", String::from_utf8_lossy(&out.stderr)));
            continue;
        }
        let name = Path::new(&file)
            .file_stem()
            .expect("stem")
            .to_string_lossy()
            .into_owned();
        let expected = root().join("tests/plans").join(format!("{name}.plan"));
        if let Some(diff) = expect_file(&expected, &String::from_utf8_lossy(&out.stdout)) {
            failures.push(diff);
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn failure_rate_plan_shows_filter_projection_and_schema() {
    let out = pipectl(&["plan", "pipelines/line-failure-forecast.yaml"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    let clean = &text[text.find("transform clean").expect("clean")..];
    let clean = &clean[..clean.find("\n\n").expect("end of node")];
    assert!(
        clean.contains("Projection: upper(btrim(readings.line_id)) AS line_id"),
        "{clean}"
    );
    assert!(
        clean.contains("Filter: readings.failure_rate IS NOT NULL"),
        "{clean}"
    );
    assert!(
        clean.contains("TableScan: readings projection=["),
        "{clean}"
    );
    assert!(clean.contains("  output:\n    line_id: Utf8"), "{clean}");
}

#[test]
fn committed_json_schema_is_current() {
    let out = pipectl(&["schema"]);
    assert!(out.status.success());
    let expected = root().join("schemas/pipeline.schema.json");
    if let Some(diff) = expect_file(&expected, &String::from_utf8_lossy(&out.stdout)) {
        panic!("{diff}\nrun `pipectl schema > schemas/pipeline.schema.json` and commit it");
    }
    // It is a real JSON Schema that knows the language.
    let schema: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("pipectl schema prints JSON");
    assert_eq!(schema["title"], "Pipeline");
    let text = out.stdout.escape_ascii().to_string();
    for word in [
        "half_life",
        "max_out_of_order",
        "on_error",
        "exactly_once",
        "tumbling",
    ] {
        assert!(text.contains(word), "schema lacks {word}");
    }
}

#[test]
fn deep_nesting_is_refused_with_a_clear_message() {
    let dir = std::env::temp_dir().join(format!("pipectl-deep-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    for (name, text) in [
        (
            "flow.yaml",
            format!("{}{}", "[".repeat(10_000), "]".repeat(10_000)),
        ),
        (
            "block.yaml",
            (0..1_000)
                .map(|i| format!("{}k:\n", " ".repeat(i)))
                .collect(),
        ),
    ] {
        let path = dir.join(name);
        std::fs::write(&path, text).expect("write");
        let out = pipectl(&["validate", path.to_str().expect("utf-8 path")]);
        assert_eq!(out.status.code(), Some(1), "{name}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("nesting is deeper than"),
            "{name}: {stderr}"
        );
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn usage_errors_exit_2() {
    assert_eq!(pipectl(&["validate"]).status.code(), Some(2));
    assert_eq!(pipectl(&["frobnicate"]).status.code(), Some(2));
    let out = pipectl(&["validate", "pipelines/no-such-file.yaml"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cannot read pipelines/no-such-file.yaml")
    );
    // One unreadable file among valid ones still exits 2, after checking the others.
    let out = pipectl(&["validate", "pipelines/line-throughput.yaml", "nope.yaml"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stdout).contains("line-throughput.yaml: valid"));
}

#[test]
fn the_demo_runs_on_the_in_process_broker_and_prints_live_results() {
    let out = pipectl(&["demo", "--duration", "20s"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}\n{}",
        stdout,
        String::from_utf8_lossy(&out.stderr)
    );
    // Every example shows a record of one of its sinks in the last status: a pipeline's
    // line (`name in …`) is followed by its sinks' newest records, indented.
    let last = stdout.rsplit("── ").next().expect("a status");
    let mut examples = 0;
    for entry in std::fs::read_dir(root().join("pipelines")).expect("pipelines/") {
        let path = entry.expect("an entry").path();
        let text = std::fs::read_to_string(&path).expect("readable");
        let Some(name) = text
            .lines()
            .find_map(|l| l.trim().strip_prefix("name: "))
            .map(str::trim)
        else {
            continue;
        };
        examples += 1;
        let mut lines = last
            .lines()
            .skip_while(|l| !l.starts_with(&format!("{name} ")));
        assert!(
            lines.next().is_some(),
            "{name} is not in the status:\n{last}"
        );
        assert!(
            lines.next().is_some_and(|l| l.starts_with("    ")),
            "{name} showed no output in 20 s:\n{last}"
        );
    }
    assert!(examples >= 7, "{examples} examples");
    // A window result, a model prediction and a masked analytics record reached their topics.
    for topic in [
        "maintenance.line_health_1m:",
        "maintenance.failure_predictions:",
        "analytics.customer_activity:",
    ] {
        assert!(
            stdout.contains(topic),
            "no live result from {topic}\n{stdout}"
        );
    }
    assert!(stdout.contains("demo: stopped after"), "{stdout}");
}

#[test]
fn the_security_page_lists_every_allowed_kafka_property() {
    let page = std::fs::read_to_string(root().join("docs/security.md")).expect("docs/security.md");
    let missing: Vec<&str> = spec::kafka::ALLOWED
        .iter()
        .map(|p| p.name)
        .filter(|name| !page.contains(&format!("| `{name}` |")))
        .collect();
    assert!(
        missing.is_empty(),
        "docs/security.md does not list {missing:?}"
    );
    let rows = page.lines().filter(|l| l.starts_with("| `")).count();
    assert!(rows >= spec::kafka::ALLOWED.len());
}

/// Every file under `dir`, relative, sorted.
fn tree(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).expect("readable").flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if let Ok(rel) = path.strip_prefix(dir) {
                out.push(rel.to_string_lossy().into_owned());
            }
        }
    }
    out.sort();
    out
}

#[test]
fn the_engine_cases_are_what_their_script_writes() {
    let dir = std::env::temp_dir().join(unique("engine-cases"));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let script = root().join("tests/engine/write_cases.py");
    run_python(&[script.as_os_str(), dir.as_os_str()]);
    let committed = root().join("tests/engine");
    let written = tree(&dir);
    assert!(written.len() >= 30, "{written:?}");
    for file in &written {
        assert!(
            std::fs::read(dir.join(file)).ok() == std::fs::read(committed.join(file)).ok(),
            "tests/engine/{file} differs from what tests/engine/write_cases.py writes: run it and commit the result"
        );
    }
    // And no case is there that the script does not write.
    let cases: Vec<String> = tree(&committed)
        .into_iter()
        .filter(|f| f.ends_with("pipeline.yaml"))
        .collect();
    for case in cases {
        assert!(
            written.contains(&case),
            "tests/engine/{case} is not written by the script"
        );
    }
    std::fs::remove_dir_all(&dir).ok();
}
