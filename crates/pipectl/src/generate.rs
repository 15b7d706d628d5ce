//! `pipectl gen`: write generated events to Kafka.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use connectors::{KafkaSink, OutRecord, Sink as _, create_topic};
use formats::avro::AvroCodec;
use formats::json::JsonDecoder;
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

/// Generated events as Kafka records: keyed by their natural key, with the event time as the
/// message timestamp.
pub fn records(events: &[generator::Event]) -> Vec<OutRecord<'_>> {
    events
        .iter()
        .map(|e| OutRecord {
            key: Some(e.key.as_bytes()),
            value: &e.value,
            timestamp: Some(e.ts_ms),
            partition: None,
        })
        .collect()
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
    /// Avro encoding (with the event schema) instead of JSON.
    pub avro: Option<AvroEncoding>,
    /// The field of each event that keys its message, instead of the kind's natural key.
    pub key: Option<String>,
}

/// Turns generated JSON events into Avro messages of the same event.
#[derive(Debug)]
pub struct AvroEncoding {
    pub json: JsonDecoder,
    pub codec: AvroCodec,
}

impl AvroEncoding {
    /// The same encoding, framed with the id `registry` gives the event schema under
    /// `subject` (registering it if needed).
    pub fn registered(
        self,
        registry: &connectors::registry::Registry,
        subject: &str,
    ) -> Result<Self, String> {
        let id = registry
            .register(subject, self.codec.avro_json())
            .map_err(|e| e.to_string())?;
        Ok(Self {
            json: self.json,
            codec: self
                .codec
                .with_framing(formats::avro::Framing::Confluent { schema_id: id }),
        })
    }

    /// Re-encodes `events` in place: well-formed ones as Avro, malformed ones as a truncated
    /// Avro message (always undecodable: the reader runs out of bytes).
    fn encode(
        &mut self,
        events: &mut [generator::Event],
    ) -> Result<(), Box<dyn std::error::Error>> {
        let good: Vec<&[u8]> = events
            .iter()
            .filter(|e| !e.malformed)
            .map(|e| e.value.as_slice())
            .collect();
        let decoded = self.json.decode(&good)?;
        if let Some(e) = decoded.errors.first() {
            return Err(format!("generated event does not fit its schema: {}", e.message).into());
        }
        let mut avro = self.codec.encode_rows(&decoded.batch)?.into_iter();
        let template = self
            .codec
            .encode_rows(&decoded.batch.slice(0, decoded.batch.num_rows().min(1)))?;
        for e in events.iter_mut() {
            if e.malformed {
                let full = template.first().cloned().unwrap_or_else(|| vec![2, 0]);
                e.value = full[..full.len() / 2].to_vec();
            } else if let Some(bytes) = avro.next() {
                e.value = bytes;
            }
        }
        Ok(())
    }
}

/// Keys each event by its `field` (as text); a malformed event, or one without it, keeps
/// its key.
fn rekey(events: &mut [generator::Event], field: &str) {
    for e in events {
        let Ok(serde_json::Value::Object(v)) = serde_json::from_slice(&e.value) else {
            continue;
        };
        match v.get(field) {
            Some(serde_json::Value::String(s)) => e.key = s.clone(),
            Some(serde_json::Value::Null) | None => {}
            Some(other) => e.key = other.to_string(),
        }
    }
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
pub async fn generate(args: GenArgs) -> Result<GenReport, Box<dyn std::error::Error>> {
    let mut avro = args.avro;
    let args = GenArgs { avro: None, ..args };
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
        let mut events: Vec<generator::Event> = (0..n).map(|_| generator.next_event()).collect();
        if let Some(field) = &args.key {
            rekey(&mut events, field);
        }
        if let Some(avro) = avro.as_mut() {
            avro.encode(&mut events)?;
        }
        if events.iter().any(|e| e.truth.is_some()) {
            // The ground truth travels in a header, outside the payload pipelines read.
            let with_truth: Vec<(OutRecord<'_>, connectors::RecordHeaders)> = records(&events)
                .into_iter()
                .zip(&events)
                .map(|(r, e)| {
                    let truth = e
                        .truth
                        .as_ref()
                        .map(|t| (generator::TRUTH_HEADER.to_string(), t.as_bytes().to_vec()));
                    (r, truth.into_iter().collect())
                })
                .collect();
            sink.send_with_headers(&with_truth).await?;
            sink.settle().await?;
        } else {
            sink.send_all(&records(&events), &[]).await?;
        }
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
