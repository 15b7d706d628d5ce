//! `pipectl gen`: write generated events to Kafka.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use connectors::{KafkaSink, OutRecord, create_topic};
use generator::{Generator, Settings};

/// The topic the example pipelines read for each kind.
pub fn default_topic(kind: &str) -> Option<&'static str> {
    Some(match kind {
        "production/sensor_reading" => "production.sensor_readings",
        "production/output_count" => "production.output_counts",
        "sales/order" => "sales.orders",
        "supply_chain/shipment" => "logistics.shipments",
        "supply_chain/inventory_move" => "logistics.inventory_moves",
        "customer/activity" => "customer.activity",
        _ => return None,
    })
}

/// What to generate and where.
#[derive(Debug)]
pub struct GenArgs {
    pub bootstrap: String,
    pub settings: Settings,
    pub count: u64,
    pub topic: String,
    pub partitions: i32,
    pub rate: Option<f64>,
    pub quiet: bool,
}

/// Counts of what was written.
#[derive(Debug, Default)]
pub struct GenReport {
    pub events: u64,
    pub malformed: u64,
    pub late: u64,
}

/// Writes `count` events, at `rate` per second if given. Batches of up to 5,000 are written
/// and acknowledged before the next.
pub async fn generate(args: &GenArgs) -> Result<GenReport, Box<dyn std::error::Error>> {
    create_topic(&args.bootstrap, &args.topic, args.partitions).await?;
    let sink = KafkaSink::new(&args.bootstrap, &args.topic, &BTreeMap::new(), Vec::new())?;
    let mut generator = Generator::new(args.settings.clone())?;
    let mut report = GenReport::default();
    let started = Instant::now();
    let mut last_print = Instant::now();
    let batch_size: u64 = match args.rate {
        Some(r) if r > 0.0 => (r / 10.0).clamp(1.0, 5_000.0) as u64,
        _ => 5_000,
    };
    while report.events < args.count {
        let n = batch_size.min(args.count - report.events);
        let events: Vec<generator::Event> = (0..n).map(|_| generator.next_event()).collect();
        let records: Vec<OutRecord<'_>> = events
            .iter()
            .map(|e| OutRecord {
                key: Some(e.key.as_bytes()),
                value: &e.value,
                timestamp: Some(e.ts_ms),
            })
            .collect();
        sink.send_all(&records, &[]).await?;
        report.events += n;
        report.malformed += events.iter().filter(|e| e.malformed).count() as u64;
        report.late += events.iter().filter(|e| e.late).count() as u64;
        if let Some(rate) = args.rate.filter(|r| *r > 0.0) {
            let due = Duration::from_secs_f64(report.events as f64 / rate);
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                tokio::time::sleep(wait).await;
            }
        }
        if !args.quiet && last_print.elapsed() > Duration::from_secs(1) {
            eprintln!("gen: {} of {} events written", report.events, args.count);
            last_print = Instant::now();
        }
    }
    Ok(report)
}
