//! How often a pipeline commits, and where its state lives, by its sinks' delivery, its
//! `commit_every` and the runner's checkpoint interval.

use std::time::Duration;

use planner::PipelinePlan;
use runtime::{RunConfig, commit_interval, state_in_kafka};

const AVSC: &str = r#"{"type":"record","name":"Click","fields":[{"name":"user","type":"string"}]}"#;

async fn plan(delivery: &str, commit_every: &str) -> PipelinePlan {
    let dir = std::env::temp_dir().join(format!(
        "commits-test-{}-{delivery}-{}",
        std::process::id(),
        commit_every.len()
    ));
    std::fs::create_dir_all(dir.join("web")).expect("dir");
    std::fs::write(dir.join("web/click.avsc"), AVSC).expect("schema");
    let yaml = format!(
        "apiVersion: pipelines/v1\nkind: Pipeline\nmetadata: {{ name: t }}\nspec:\n{commit_every}  sources:\n    - {{ name: clicks, kafka: {{ topic: t }}, format: json, schema: web/click }}\n  sinks:\n    - {{ name: out, from: clicks, kafka: {{ topic: o }}, format: json, delivery: {delivery} }}\n"
    );
    let registry = event_schema::SchemaRegistry::new(&dir);
    let planned = planner::check("t.yaml", &yaml, &registry, &|_: &str| None).await;
    std::fs::remove_dir_all(&dir).ok();
    match planned {
        (_, Some(p)) => p,
        (doc, None) => panic!("{:?}", doc.diagnostics()),
    }
}

#[tokio::test]
async fn exactly_once_commits_every_second_with_state_in_kafka_unless_told_otherwise() {
    let config = RunConfig::new("b");
    let mut flagged = RunConfig::new("b");
    flagged.checkpoint_interval = Some(Duration::from_millis(500));

    let eo = plan("exactly_once", "").await;
    assert!(state_in_kafka(&eo, &config));
    assert_eq!(commit_interval(&eo, &config), Duration::from_secs(1));
    assert_eq!(commit_interval(&eo, &flagged), Duration::from_millis(500));

    let alo = plan("at_least_once", "").await;
    assert!(!state_in_kafka(&alo, &config));
    assert_eq!(commit_interval(&alo, &config), Duration::from_secs(10));
    assert_eq!(commit_interval(&alo, &flagged), Duration::from_millis(500));

    // The pipeline's own setting wins over the runner's.
    let own = plan("exactly_once", "  commit_every: 250ms\n").await;
    assert_eq!(commit_interval(&own, &flagged), Duration::from_millis(250));
    let own = plan("at_least_once", "  commit_every: 2m\n").await;
    assert_eq!(commit_interval(&own, &config), Duration::from_secs(120));
}
