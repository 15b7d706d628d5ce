//! `pipectl run`: one pipeline in the foreground with a live status line.

use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use runtime::{RunConfig, Runner, Stats};

/// Formats a watermark for the status line.
fn watermark_text(ms: i64) -> String {
    if ms == i64::MIN || ms == i64::MAX {
        return "-".into();
    }
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_else(|| "-".into())
}

/// Runs `plan` until the config's stop condition or Ctrl-C, printing a status line every
/// second (on a terminal, in place) and a summary at the end.
pub async fn run(
    plan: &planner::PipelinePlan,
    config: RunConfig,
    quiet: bool,
) -> Result<(), Box<dyn std::error::Error>> {
    let stats = Arc::new(Stats::default());
    let config_kafka_state = runtime::state_in_kafka(plan, &config);
    let runner = Runner::new(plan, config, stats.clone()).await?;
    for w in runner.warnings() {
        eprintln!("warning: {w}");
    }
    let shown = runner.warnings().len();
    let (tasks, kafka_state) = (runner.tasks(), config_kafka_state);
    match (
        runtime::single_task_reason(plan, config_kafka_state),
        runner.tasks(),
    ) {
        (Some(why), _) => eprintln!("running as one task over every partition: {why}"),
        (None, 1) => eprintln!("running as one task (the input has one partition)"),
        (None, n) => eprintln!("running as {n} tasks, one per input partition"),
    }
    for n in &plan.nodes {
        if let planner::NodeKind::Sink(s) = &n.kind
            && let Some(x) = &s.exchange
        {
            let by = match x.by.as_slice() {
                [] => "to partition 0".to_string(),
                by => format!("by {}", by.join(", ")),
            };
            eprintln!(
                "repartitioning {} {by} for {} through topic {}",
                x.carries, x.feeds, s.topic
            );
        }
    }
    let started = Instant::now();
    let status = {
        let stats = stats.clone();
        tokio::spawn(async move {
            let tty = std::io::stderr().is_terminal();
            let mut last = (0u64, 0u64, Instant::now());
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                if quiet {
                    continue;
                }
                let i = stats.events_in.load(Ordering::Relaxed);
                let o = stats.events_out.load(Ordering::Relaxed);
                let dt = last.2.elapsed().as_secs_f64().max(1e-3);
                let mut line = format!(
                    "in {i} ({:.0}/s)  out {o} ({:.0}/s)  errors {}  dead-lettered {}  late {}  watermark {}  lag {}",
                    (i - last.0) as f64 / dt,
                    (o - last.1) as f64 / dt,
                    stats.errors.load(Ordering::Relaxed),
                    stats.dead_lettered.load(Ordering::Relaxed),
                    stats.late.load(Ordering::Relaxed),
                    watermark_text(stats.watermark_ms.load(Ordering::Relaxed)),
                    match stats.lag.load(Ordering::Relaxed) {
                        l if l < 0 => "-".to_string(),
                        l => l.to_string(),
                    },
                );
                let kafka_errors = stats.kafka_errors.load(Ordering::Relaxed);
                if kafka_errors > 0 {
                    let last_error = stats
                        .last_kafka_error
                        .lock()
                        .ok()
                        .and_then(|e| e.clone())
                        .unwrap_or_default();
                    line.push_str(&format!(
                        "  kafka errors {kafka_errors} (last: {last_error})"
                    ));
                }
                last = (i, o, Instant::now());
                let mut err = std::io::stderr();
                if tty {
                    let _ = write!(err, "\r\x1b[2K{line}");
                } else {
                    let _ = writeln!(err, "{line}");
                }
                let _ = err.flush();
            }
        })
    };
    let result = runner.run(runtime::stop_signal()).await;
    status.abort();
    let _ = status.await;
    if std::io::stderr().is_terminal() && !quiet {
        eprintln!();
    }
    let summary = result?;
    for w in summary.warnings.iter().skip(shown) {
        eprintln!("warning: {w}");
    }
    eprintln!(
        "done in {:.1}s: {} in, {} out, {} errors, {} dead-lettered, {} late",
        started.elapsed().as_secs_f64(),
        stats.events_in.load(Ordering::Relaxed),
        stats.events_out.load(Ordering::Relaxed),
        stats.errors.load(Ordering::Relaxed),
        stats.dead_lettered.load(Ordering::Relaxed),
        stats.late.load(Ordering::Relaxed),
    );
    let exchanged = plan.nodes.iter().any(|n| match &n.kind {
        planner::NodeKind::Sink(s) => s.exchange.is_some(),
        _ => false,
    });
    if exchanged {
        let (mut through, mut replayed) = (0u64, 0u64);
        if let Ok(views) = stats.tasks.lock() {
            for v in views.values() {
                through += v
                    .detail
                    .sinks
                    .iter()
                    .filter(|(name, _)| name.ends_with(".repartition.write"))
                    .map(|(_, m)| m.records)
                    .sum::<u64>();
                replayed += v.detail.replayed.values().sum::<u64>();
            }
        }
        eprintln!(
            "repartitions: {through} rows written between tasks, {replayed} sent again after a restart and dropped"
        );
    }
    let ran: Vec<String> = stats
        .tasks
        .lock()
        .map(|t| t.keys().map(usize::to_string).collect())
        .unwrap_or_default();
    if tasks > 1 || kafka_state {
        eprintln!(
            "tasks run here: {}; {} rebalances; state: {} bytes written, {} bytes restored in {:.2}s",
            if ran.is_empty() {
                "none".to_string()
            } else {
                ran.join(", ")
            },
            stats.rebalances.load(Ordering::Relaxed),
            stats.state_bytes.load(Ordering::Relaxed),
            stats.restored_bytes.load(Ordering::Relaxed),
            stats.restore_micros.load(Ordering::Relaxed) as f64 / 1e6,
        );
    }
    Ok(())
}
