//! Realistic event streams with a known ground truth, for every event schema.
//!
//! The generator is pure and deterministic: the same kind, seed and settings give the same
//! events, byte for byte. Tests check what pipelines and models computed against the truths
//! documented here (and in docs/models.md):
//!
//! - **production/sensor_reading**: `failure_rate` is [`FAILURE_INTERCEPT`] plus
//!   [`FAILURE_COEFFICIENTS`] times (temperature, humidity, pressure, speed, vibration), plus
//!   Gaussian noise with standard deviation [`FAILURE_NOISE_SD`]; 5% of readings have a null
//!   failure rate.
//! - **supply_chain/shipment**: delay past the promise in hours is [`DELAY_INTERCEPT_H`] +
//!   [`DELAY_PER_KM_H`] × distance + [`DELAY_PER_KG_H`] × weight + [`DELAY_PER_PARCEL_H`] ×
//!   parcels + the carrier's effect ([`CARRIER_EFFECT_H`]) + logistic noise of standard
//!   deviation [`DELAY_NOISE_SD_H`]. Because the noise is logistic, whether a shipment is late
//!   (delivered after the promise) is a logistic regression: see [`late_probability`]. The
//!   promised lead time (dispatch to promise) is 24 h + distance / 60 km/h, so it carries
//!   the same information as the distance. The `x-truth` header holds the probability.
//! - **customer/activity**: every customer belongs to one of the [`SEGMENTS`], which fixes
//!   the mix of activities, the spend and the time spent.
//! - **sales/order**, **production/output_count**: see their functions.
//! - **supply_chain/inventory_move**: booked in working hours (06:00 to 22:00 UTC: the clock
//!   of these events skips the nights), with 0.5% injected anomalies: a hundredfold
//!   quantity, a fiftyfold unit cost, or a booking at 3 a.m. The `x-truth` header says which
//!   ([`ANOMALY_KINDS`], or `normal`); the payload does not.
//!
//! Event time starts at `start_ms` and advances by `interval_ms` per event. A fraction of
//! events is moved back in time by less than `disorder_ms` (out of order but on time), a
//! fraction by `late_by_ms` (late for any window shorter than that), and a fraction is
//! replaced by malformed bytes of several kinds.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Normal, Poisson};
use serde_json::{Value, json};

/// Event families the generator knows, by schema reference.
pub const KINDS: [&str; 6] = [
    "production/sensor_reading",
    "production/output_count",
    "sales/order",
    "supply_chain/shipment",
    "supply_chain/inventory_move",
    "customer/activity",
];

/// Failure rate (per 1,000 units) when every sensor reads zero.
pub const FAILURE_INTERCEPT: f64 = -2.85;
/// Failure rate per unit of temperature (°C), humidity (%), pressure (kPa), speed (units/min)
/// and vibration (mm/s).
pub const FAILURE_COEFFICIENTS: [f64; 5] = [0.08, 0.03, -0.01, 0.02, 0.5];
/// Standard deviation of the failure-rate noise.
pub const FAILURE_NOISE_SD: f64 = 0.25;

/// Delay (hours past the promise) of a shipment with no distance, weight or parcels.
pub const DELAY_INTERCEPT_H: f64 = -2.0;
/// Delay per kilometre.
pub const DELAY_PER_KM_H: f64 = 0.004;
/// Delay per kilogram.
pub const DELAY_PER_KG_H: f64 = 0.02;
/// Delay per parcel.
pub const DELAY_PER_PARCEL_H: f64 = 0.5;
/// Carriers and their delay effect in hours (DHL is the baseline).
pub const CARRIER_EFFECT_H: [(&str, f64); 5] = [
    ("DHL", 0.0),
    ("UPS", 1.0),
    ("FEDEX", -0.5),
    ("DPD", 2.0),
    ("GLS", 3.0),
];
/// Standard deviation of the delay noise, hours.
pub const DELAY_NOISE_SD_H: f64 = 1.0;
/// Scale of the logistic delay noise: a logistic distribution of scale `s` has standard
/// deviation `s·π/√3`.
pub const DELAY_NOISE_SCALE_H: f64 = DELAY_NOISE_SD_H * 0.551_328_895_421_792_1; // √3/π

/// The probability that a shipment arrives after its promise: the delay's noise is
/// logistic with scale [`DELAY_NOISE_SCALE_H`], so `P(delay > 0) = σ(μ / s)` where `μ` is
/// the delay's mean. In log-odds: `(DELAY_INTERCEPT_H + DELAY_PER_KM_H·distance +
/// DELAY_PER_KG_H·weight + DELAY_PER_PARCEL_H·parcels + carrier effect) / s`. A carrier not in
/// [`CARRIER_EFFECT_H`] has effect 0.
pub fn late_probability(distance_km: f64, weight_kg: f64, parcels: f64, carrier: &str) -> f64 {
    let effect = CARRIER_EFFECT_H
        .iter()
        .find(|(c, _)| *c == carrier)
        .map_or(0.0, |(_, e)| *e);
    let mean = DELAY_INTERCEPT_H
        + DELAY_PER_KM_H * distance_km
        + DELAY_PER_KG_H * weight_kg
        + DELAY_PER_PARCEL_H * parcels
        + effect;
    1.0 / (1.0 + (-mean / DELAY_NOISE_SCALE_H).exp())
}

/// The injected inventory anomalies, as the `x-truth` header names them (`normal` for the
/// rest).
pub const ANOMALY_KINDS: [&str; 3] = ["quantity_x100", "unit_cost_x50", "booked_at_3am"];
/// Share of inventory moves that are anomalies.
pub const ANOMALY_RATE: f64 = 0.005;
/// Name of the header that carries an event's ground truth.
pub const TRUTH_HEADER: &str = "x-truth";

/// Customer segments: name, weights of (page view, search, add to cart, remove from cart,
/// purchase, support contact, review), mean purchase amount (€), mean seconds per event.
pub const SEGMENTS: [(&str, [f64; 7], f64, f64); 4] = [
    (
        "browser",
        [0.70, 0.20, 0.05, 0.02, 0.01, 0.01, 0.01],
        30.0,
        20.0,
    ),
    (
        "bargain_hunter",
        [0.35, 0.35, 0.15, 0.08, 0.05, 0.01, 0.01],
        25.0,
        45.0,
    ),
    (
        "loyal_buyer",
        [0.30, 0.10, 0.25, 0.03, 0.25, 0.02, 0.05],
        180.0,
        60.0,
    ),
    (
        "support_heavy",
        [0.25, 0.10, 0.05, 0.05, 0.05, 0.45, 0.05],
        60.0,
        240.0,
    ),
];

const ACTIVITIES: [&str; 7] = [
    "PAGE_VIEW",
    "SEARCH",
    "ADD_TO_CART",
    "REMOVE_FROM_CART",
    "PURCHASE",
    "SUPPORT_CONTACT",
    "REVIEW",
];
const REGIONS: [&str; 5] = ["NORTH", "SOUTH", "EAST", "WEST", "CENTRAL"];

/// How to generate.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Schema reference, one of [`KINDS`].
    pub kind: String,
    /// Seed of the random generator.
    pub seed: u64,
    /// Event time of the first event, ms since the Unix epoch.
    pub start_ms: i64,
    /// Event time between consecutive events, ms.
    pub interval_ms: f64,
    /// Fraction of events moved back in time by up to `disorder_ms` (on time).
    pub out_of_order: f64,
    /// How far back out-of-order events move, at most.
    pub disorder_ms: i64,
    /// Fraction of events moved back by `late_by_ms`.
    pub late: f64,
    /// How far back late events move.
    pub late_by_ms: i64,
    /// Fraction of events replaced by malformed bytes.
    pub malformed: f64,
}

impl Settings {
    /// Defaults for `kind`: events 100 ms apart from 2026-01-01T00:00:00Z, 10% out of order
    /// by up to 4 s, nothing late or malformed.
    pub fn new(kind: &str, seed: u64) -> Self {
        Self {
            kind: kind.to_string(),
            seed,
            start_ms: 1_767_225_600_000,
            interval_ms: 100.0,
            out_of_order: 0.1,
            disorder_ms: 4_000,
            late: 0.0,
            late_by_ms: 10 * 60_000,
            malformed: 0.0,
        }
    }
}

const HOUR_MS: i64 = 3_600_000;
const DAY_MS: i64 = 24 * HOUR_MS;
/// Working hours of the warehouses, UTC: 06:00 to 22:00.
const WORK_START_MS: i64 = 6 * HOUR_MS;
const WORK_MS: i64 = 16 * HOUR_MS;

/// Clock time `ts` of a stream that started at `start` mapped onto working hours: the
/// stream's elapsed time runs from 06:00 to 22:00 UTC of each day, then continues at 06:00 of
/// the next (a start outside working hours begins at the next 06:00). Monotonic in `ts`.
pub fn working_hours(start: i64, ts: i64) -> i64 {
    let midnight = start - start.rem_euclid(DAY_MS);
    let done_on_day_one = (start.rem_euclid(DAY_MS) - WORK_START_MS).clamp(0, WORK_MS);
    let elapsed = ts - start + done_on_day_one;
    midnight + elapsed.div_euclid(WORK_MS) * DAY_MS + WORK_START_MS + elapsed.rem_euclid(WORK_MS)
}

/// One generated message.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// Kafka message key (the natural partitioning key of the family).
    pub key: String,
    /// Message value: a JSON object, or malformed bytes.
    pub value: Vec<u8>,
    /// Event time, ms since the Unix epoch (what the `ts` field says, when well-formed).
    pub ts_ms: i64,
    /// Whether the value is deliberately malformed.
    pub malformed: bool,
    /// Whether the event was moved back by `late_by_ms`.
    pub late: bool,
    /// The ground truth a pipeline must not see in the payload, written as the
    /// [`TRUTH_HEADER`] header: which anomaly an inventory move is (or `normal`), a
    /// shipment's probability of being late. `None` for the other kinds.
    pub truth: Option<String>,
}

/// Why the generator cannot start.
#[derive(Debug, thiserror::Error)]
pub enum GenError {
    /// An unknown event kind.
    #[error("unknown event kind `{0}`; known kinds: {known}", known = KINDS.join(", "))]
    UnknownKind(String),
    /// A fraction outside 0..=1.
    #[error("`{0}` must be a fraction between 0 and 1")]
    BadFraction(&'static str),
}

/// An endless, deterministic stream of events.
#[derive(Debug)]
pub struct Generator {
    settings: Settings,
    rng: StdRng,
    n: u64,
    customers: Vec<(String, usize, &'static str)>,
    /// Set by the kind's function: the event's truth.
    truth: Option<String>,
    /// Set by the kind's function when the event's time is not the clock's.
    ts_override: Option<i64>,
}

impl Generator {
    /// A generator for `settings`.
    pub fn new(settings: Settings) -> Result<Self, GenError> {
        if !KINDS.contains(&settings.kind.as_str()) {
            return Err(GenError::UnknownKind(settings.kind.clone()));
        }
        for (name, value) in [
            ("out_of_order", settings.out_of_order),
            ("late", settings.late),
            ("malformed", settings.malformed),
        ] {
            if !(0.0..=1.0).contains(&value) {
                return Err(GenError::BadFraction(name));
            }
        }
        let mut rng = StdRng::seed_from_u64(settings.seed);
        let customers = (0..2000)
            .map(|i| {
                let segment = rng.random_range(0..SEGMENTS.len());
                let region = REGIONS[rng.random_range(0..REGIONS.len())];
                (format!("C{i:05}"), segment, region)
            })
            .collect();
        Ok(Self {
            settings,
            rng,
            n: 0,
            customers,
            truth: None,
            ts_override: None,
        })
    }

    /// The segment index of a customer id (the clustering ground truth).
    pub fn segment_of(&self, customer_id: &str) -> Option<usize> {
        self.customers
            .iter()
            .find(|(id, _, _)| id == customer_id)
            .map(|(_, s, _)| *s)
    }

    fn normal(&mut self, mean: f64, sd: f64) -> f64 {
        Normal::new(mean, sd).map_or(mean, |d| d.sample(&mut self.rng))
    }

    /// A logistic variate of mean 0 and scale `s`.
    fn logistic(&mut self, s: f64) -> f64 {
        let u: f64 = self.rng.random_range(f64::EPSILON..1.0);
        s * (u / (1.0 - u)).ln()
    }

    fn poisson(&mut self, lambda: f64) -> u64 {
        Poisson::new(lambda.max(1e-9)).map_or(0, |d| d.sample(&mut self.rng) as u64)
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.rng.random_range(0..items.len())]
    }

    /// The next event.
    pub fn next_event(&mut self) -> Event {
        let s = &self.settings;
        let mut ts = s.start_ms + (self.n as f64 * s.interval_ms) as i64;
        let (late_frac, ooo_frac, disorder, late_by, malformed_frac) = (
            s.late,
            s.out_of_order,
            s.disorder_ms,
            s.late_by_ms,
            s.malformed,
        );
        self.n += 1;
        let roll: f64 = self.rng.random();
        let late = roll < late_frac;
        if late {
            ts -= late_by;
        } else if roll < late_frac + ooo_frac && disorder > 0 {
            ts -= self.rng.random_range(0..disorder);
        }
        let (key, value) = match self.settings.kind.as_str() {
            "production/sensor_reading" => self.sensor_reading(ts),
            "production/output_count" => self.output_count(ts),
            "sales/order" => self.order(ts),
            "supply_chain/shipment" => self.shipment(ts),
            "supply_chain/inventory_move" => self.inventory_move(ts),
            _ => self.activity(ts),
        };
        let ts = self.ts_override.take().unwrap_or(ts);
        let truth = self.truth.take();
        let malformed = self.rng.random::<f64>() < malformed_frac;
        let value = if malformed {
            self.malform(&value)
        } else {
            serde_json::to_vec(&value).unwrap_or_default()
        };
        Event {
            key,
            value,
            ts_ms: ts,
            malformed,
            late,
            truth,
        }
    }

    /// Malformed bytes of several kinds, each of which a decoder must reject.
    fn malform(&mut self, value: &Value) -> Vec<u8> {
        let text = serde_json::to_string(value).unwrap_or_default();
        match self.rng.random_range(0..4) {
            // Truncated.
            0 => text.as_bytes()[..text.len() / 2].to_vec(),
            // Not JSON at all.
            1 => b"\x00\x01garbage \xff".to_vec(),
            // The event time is not a time.
            2 => {
                let mut v = value.clone();
                v["ts"] = json!("not a timestamp");
                serde_json::to_vec(&v).unwrap_or_default()
            }
            // A required field is missing.
            _ => {
                let mut v = value.clone();
                if let Some(o) = v.as_object_mut() {
                    o.remove("ts");
                }
                serde_json::to_vec(&v).unwrap_or_default()
            }
        }
    }

    fn sensor_reading(&mut self, ts: i64) -> (String, Value) {
        let line = self.rng.random_range(1..=8);
        let machine = self.rng.random_range(1..=4);
        let line_id = format!("L{line:02}");
        // Each line runs a little hotter or faster than the others.
        let temperature = self.normal(66.0 + line as f64, 8.0);
        let humidity = self.rng.random_range(30.0..60.0);
        let pressure = self.normal(300.0, 20.0);
        let speed = self.rng.random_range(80.0..160.0) + line as f64;
        let vibration = self.normal(3.0, 0.8).max(0.0);
        let x = [temperature, humidity, pressure, speed, vibration];
        let signal: f64 = FAILURE_INTERCEPT
            + FAILURE_COEFFICIENTS
                .iter()
                .zip(x)
                .map(|(b, v)| b * v)
                .sum::<f64>();
        let failure_rate = if self.rng.random::<f64>() < 0.05 {
            Value::Null
        } else {
            json!(signal + self.normal(0.0, FAILURE_NOISE_SD))
        };
        (
            line_id.clone(),
            json!({
                "line_id": line_id,
                "machine_id": format!("L{line:02}-M{machine}"),
                "ts": ts,
                "temperature": temperature,
                "humidity": humidity,
                "pressure": pressure,
                "speed": speed,
                "vibration": vibration,
                "failure_rate": failure_rate,
            }),
        )
    }

    fn output_count(&mut self, ts: i64) -> (String, Value) {
        let line = self.rng.random_range(1..=8);
        let machine = self.rng.random_range(1..=4);
        let produced = self.poisson(110.0 + 5.0 * line as f64);
        // Line L08 has a worn tool: five times the reject rate.
        let p = if line == 8 { 0.05 } else { 0.01 };
        let rejected = (0..produced)
            .filter(|_| self.rng.random::<f64>() < p)
            .count();
        let hour = ts.div_euclid(3_600_000).rem_euclid(24);
        let shift = match hour {
            6..=13 => "EARLY",
            14..=21 => "LATE",
            _ => "NIGHT",
        };
        let line_id = format!("L{line:02}");
        (
            line_id.clone(),
            json!({
                "line_id": line_id,
                "machine_id": format!("L{line:02}-M{machine}"),
                "sku": format!("P{:03}", self.rng.random_range(1..=20)),
                "ts": ts,
                "interval_s": 60,
                "units_produced": produced,
                "units_rejected": rejected,
                "shift": shift,
            }),
        )
    }

    /// Orders: SKU popularity falls with its number; quantity is 1 + Poisson(1.5 + 2 × promo
    /// + 0.05 × discount %).
    fn order(&mut self, ts: i64) -> (String, Value) {
        let sku_n = (self.rng.random::<f64>().powi(2) * 50.0) as u32 + 1;
        let sku = format!("S{sku_n:03}");
        let base_price = 5.0 + (sku_n as f64 * 7.3) % 95.0;
        let discount = *[0.0, 0.0, 0.0, 5.0, 10.0, 20.0]
            .get(self.rng.random_range(0..6))
            .unwrap_or(&0.0);
        let promo = discount >= 10.0;
        let quantity = 1 + self.poisson(1.5 + if promo { 2.0 } else { 0.0 } + 0.05 * discount);
        let customer = self.rng.random_range(0..self.customers.len());
        let (customer_id, _, region) = self.customers[customer].clone();
        let channel = self.pick(&["WEB", "WEB", "STORE", "MARKETPLACE", "B2B"]);
        (
            sku.clone(),
            json!({
                "order_id": format!("O{:08}", self.n),
                "ts": ts,
                "customer_id": customer_id,
                "sku": sku,
                "region": region,
                "channel": channel,
                "quantity": quantity,
                "unit_price": (base_price * self.normal(1.0, 0.02) * 100.0).round() / 100.0,
                "discount_pct": discount,
                "promo": promo,
            }),
        )
    }

    fn shipment(&mut self, ts: i64) -> (String, Value) {
        let (carrier, effect) = CARRIER_EFFECT_H[self.rng.random_range(0..CARRIER_EFFECT_H.len())];
        let distance = self.rng.random_range(20.0..900.0);
        let weight = self.rng.random_range(0.5..80.0);
        let parcels = self.rng.random_range(1..=6);
        let delay_h = DELAY_INTERCEPT_H
            + DELAY_PER_KM_H * distance
            + DELAY_PER_KG_H * weight
            + DELAY_PER_PARCEL_H * parcels as f64
            + effect
            + self.logistic(DELAY_NOISE_SCALE_H);
        self.truth = Some(format!(
            "{:.6}",
            late_probability(distance, weight, parcels as f64, carrier)
        ));
        let hour_ms = 3_600_000.0;
        // `ts` is when the delivery was confirmed: work the other times back from it.
        let promised = ts - (delay_h * hour_ms) as i64;
        let transit_h = 24.0 + distance / 60.0;
        let dispatched = promised - (transit_h * hour_ms) as i64;
        let failed = self.rng.random::<f64>() < 0.03;
        let id = format!("SH{:08}", self.n);
        (
            id.clone(),
            json!({
                "shipment_id": id,
                "ts": ts,
                "carrier": carrier,
                "origin": self.pick(&["WH-HAM", "WH-FRA", "WH-MUC", "WH-BER"]),
                "destination": self.pick(&["MUC", "CGN", "STR", "DUS", "LEJ", "NUE", "HAJ"]),
                "distance_km": distance,
                "weight_kg": weight,
                "parcels": parcels,
                "dispatched_ts": dispatched,
                "promised_delivery_ts": promised,
                "actual_delivery_ts": if failed { Value::Null } else { json!(ts) },
            }),
        )
    }

    /// Inventory moves; 0.5% are anomalies: a hundredfold quantity (a fiftyfold cost instead
    /// where the quantity is 0), a fiftyfold cost, or a booking at 3 a.m.
    fn inventory_move(&mut self, ts: i64) -> (String, Value) {
        let warehouse = self
            .pick(&["WH-HAM", "WH-FRA", "WH-MUC", "WH-BER"])
            .to_string();
        let move_type = self.pick(&[
            "RECEIPT",
            "PICK",
            "PICK",
            "PICK",
            "TRANSFER",
            "ADJUSTMENT",
            "RETURN",
        ]);
        let mut quantity: i64 = match move_type {
            "RECEIPT" => 50 + self.poisson(150.0) as i64,
            "PICK" => 1 + self.poisson(3.0) as i64,
            "TRANSFER" => 10 + self.poisson(20.0) as i64,
            "ADJUSTMENT" => self.rng.random_range(-5..=5),
            _ => 1 + self.poisson(1.0) as i64,
        };
        let mut unit_cost = self.rng.random_range(2.0..40.0);
        let arrival = working_hours(self.settings.start_ms, ts);
        self.ts_override = Some(arrival);
        // The booking time: the arrival's, except for a 3 a.m. booking of the same day.
        let mut ts = arrival;
        let mut truth = "normal";
        if self.rng.random::<f64>() < ANOMALY_RATE {
            let mut kind = self.rng.random_range(0..ANOMALY_KINDS.len());
            if kind == 0 && quantity == 0 {
                // A hundredfold zero is no anomaly: the cost is wrong instead.
                kind = 1;
            }
            truth = ANOMALY_KINDS[kind];
            match kind {
                0 => quantity *= 100,
                1 => unit_cost *= 50.0,
                _ => ts = ts - ts.rem_euclid(DAY_MS) + 3 * HOUR_MS,
            }
        }
        self.truth = Some(truth.to_string());
        let bin = |rng: &mut StdRng| {
            format!(
                "A{:02}-{:02}",
                rng.random_range(1..30),
                rng.random_range(1..10)
            )
        };
        let from = (move_type != "RECEIPT").then(|| bin(&mut self.rng));
        let to = (move_type != "PICK").then(|| bin(&mut self.rng));
        (
            warehouse.clone(),
            json!({
                "move_id": format!("M{:08}", self.n),
                "ts": ts,
                "warehouse_id": warehouse,
                "sku": format!("S{:03}", self.rng.random_range(1..=50)),
                "move_type": move_type,
                "from_location": from,
                "to_location": to,
                "quantity": quantity,
                "unit_cost": (unit_cost * 100.0_f64).round() / 100.0,
                "operator_id": format!("OP{:03}", self.rng.random_range(1..=40)),
            }),
        )
    }

    fn activity(&mut self, ts: i64) -> (String, Value) {
        let i = self.rng.random_range(0..self.customers.len());
        let (customer_id, segment, region) = self.customers[i].clone();
        let (_, weights, mean_amount, mean_seconds) = SEGMENTS[segment];
        let mut roll: f64 = self.rng.random::<f64>() * weights.iter().sum::<f64>();
        let mut activity = ACTIVITIES[0];
        for (a, w) in ACTIVITIES.iter().zip(weights) {
            if roll < w {
                activity = a;
                break;
            }
            roll -= w;
        }
        let amount = match activity {
            "PURCHASE" | "ADD_TO_CART" | "REMOVE_FROM_CART" => {
                json!(
                    (self.normal(mean_amount, mean_amount * 0.2).max(1.0) * 100.0).round() / 100.0
                )
            }
            _ => Value::Null,
        };
        let duration = self.normal(mean_seconds, mean_seconds * 0.25).max(1.0);
        let logged_in = self.rng.random::<f64>() < 0.6;
        (
            customer_id.clone(),
            json!({
                "event_id": format!("E{:09}", self.n),
                "ts": ts,
                "customer_id": customer_id,
                "email": if logged_in { json!(format!("{}@example.com", customer_id.to_lowercase())) } else { Value::Null },
                "session_id": format!("{customer_id}-{}", ts / 1_800_000),
                "activity": activity,
                "device": self.pick(&["WEB", "IOS", "ANDROID", "STORE_KIOSK"]),
                "region": region,
                "sku": if activity == "SEARCH" { Value::Null } else { json!(format!("S{:03}", self.rng.random_range(1..=50))) },
                "amount": amount,
                "duration_s": duration,
            }),
        )
    }
}

impl Iterator for Generator {
    type Item = Event;

    fn next(&mut self) -> Option<Event> {
        Some(self.next_event())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_events() {
        for kind in KINDS {
            let a: Vec<Event> = Generator::new(Settings::new(kind, 7))
                .expect("kind")
                .take(50)
                .collect();
            let b: Vec<Event> = Generator::new(Settings::new(kind, 7))
                .expect("kind")
                .take(50)
                .collect();
            assert_eq!(a, b, "{kind}");
            let c: Vec<Event> = Generator::new(Settings::new(kind, 8))
                .expect("kind")
                .take(50)
                .collect();
            assert_ne!(a, c, "{kind}");
        }
    }

    #[test]
    fn fractions_are_honoured() {
        let mut s = Settings::new("production/sensor_reading", 1);
        s.late = 0.02;
        s.malformed = 0.01;
        let events: Vec<Event> = Generator::new(s).expect("kind").take(20_000).collect();
        let late = events.iter().filter(|e| e.late).count();
        let bad = events.iter().filter(|e| e.malformed).count();
        assert!((300..500).contains(&late), "{late}");
        assert!((130..270).contains(&bad), "{bad}");
        // Well-formed events are JSON objects whose ts is the event's time.
        for e in events.iter().filter(|e| !e.malformed).take(100) {
            let v: Value = serde_json::from_slice(&e.value).expect("json");
            assert_eq!(v["ts"].as_i64(), Some(e.ts_ms));
        }
    }

    /// The sensor ground truth, checked by ordinary least squares on the generated rows:
    /// the normal equations solved by Gaussian elimination (derivation by hand, not the
    /// engine's code).
    #[test]
    #[allow(clippy::needless_range_loop)] // matrix algebra reads best with indices
    fn sensor_failure_rate_follows_the_documented_linear_law() {
        let mut g = Generator::new(Settings::new("production/sensor_reading", 3)).expect("kind");
        let mut xtx = [[0.0f64; 6]; 6];
        let mut xty = [0.0f64; 6];
        let mut n = 0;
        while n < 20_000 {
            let e = g.next_event();
            let v: Value = serde_json::from_slice(&e.value).expect("json");
            let Some(y) = v["failure_rate"].as_f64() else {
                continue;
            };
            let x = [
                1.0,
                v["temperature"].as_f64().unwrap_or_default(),
                v["humidity"].as_f64().unwrap_or_default(),
                v["pressure"].as_f64().unwrap_or_default(),
                v["speed"].as_f64().unwrap_or_default(),
                v["vibration"].as_f64().unwrap_or_default(),
            ];
            for i in 0..6 {
                for j in 0..6 {
                    xtx[i][j] += x[i] * x[j];
                }
                xty[i] += x[i] * y;
            }
            n += 1;
        }
        // Gaussian elimination with partial pivoting.
        let mut a = xtx;
        let mut b = xty;
        for col in 0..6 {
            let pivot = (col..6)
                .max_by(|&i, &j| a[i][col].abs().total_cmp(&a[j][col].abs()))
                .unwrap_or(col);
            a.swap(col, pivot);
            b.swap(col, pivot);
            for row in col + 1..6 {
                let f = a[row][col] / a[col][col];
                for k in col..6 {
                    a[row][k] -= f * a[col][k];
                }
                b[row] -= f * b[col];
            }
        }
        let mut beta = [0.0f64; 6];
        for row in (0..6).rev() {
            let s: f64 = (row + 1..6).map(|k| a[row][k] * beta[k]).sum();
            beta[row] = (b[row] - s) / a[row][row];
        }
        assert!(
            (beta[0] - FAILURE_INTERCEPT).abs() < 0.2,
            "intercept {}",
            beta[0]
        );
        for (i, truth) in FAILURE_COEFFICIENTS.iter().enumerate() {
            assert!(
                (beta[i + 1] - truth).abs() < 0.01,
                "coefficient {i}: {} vs {truth}",
                beta[i + 1]
            );
        }
    }

    /// Working hours, by hand: a stream that starts at midnight begins at 06:00; 16 hours
    /// later it is 06:00 of the next day; a start at 15:00 stays 15:00 and 7 hours later is
    /// 06:00 of the next day; a start at 23:00 begins at the next 06:00.
    #[test]
    fn the_inventory_clock_skips_the_nights() {
        let day0 = 1_767_225_600_000; // 2026-01-01T00:00:00Z
        assert_eq!(working_hours(day0, day0), day0 + 6 * HOUR_MS);
        assert_eq!(
            working_hours(day0, day0 + 16 * HOUR_MS),
            day0 + 30 * HOUR_MS
        );
        let at15 = day0 + 15 * HOUR_MS;
        assert_eq!(working_hours(at15, at15), at15);
        assert_eq!(working_hours(at15, at15 + 7 * HOUR_MS), day0 + 30 * HOUR_MS);
        let at23 = day0 + 23 * HOUR_MS;
        assert_eq!(working_hours(at23, at23), day0 + 30 * HOUR_MS);
        let mut last = i64::MIN;
        for t in (0..200).map(|i| day0 + i * 1_234_567) {
            let w = working_hours(day0, t);
            assert!(w >= last, "monotonic");
            assert!((6..22).contains(&(w.rem_euclid(DAY_MS) / HOUR_MS)), "{w}");
            last = w;
        }
    }

    /// Every inventory move says in its truth whether and how it is an anomaly, and the
    /// payload agrees: normal moves are booked in working hours, 3 a.m. bookings at 3 a.m.
    #[test]
    fn inventory_truth_names_each_injected_anomaly() {
        let mut s = Settings::new("supply_chain/inventory_move", 5);
        s.interval_ms = 5_000.0; // 20,000 moves over several days and nights
        let events: Vec<Event> = Generator::new(s).expect("kind").take(20_000).collect();
        let mut kinds = std::collections::BTreeMap::new();
        for e in &events {
            let truth = e.truth.as_deref().expect("a truth");
            *kinds.entry(truth).or_insert(0) += 1;
            let v: Value = serde_json::from_slice(&e.value).expect("json");
            let hour = v["ts"].as_i64().expect("ts").rem_euclid(DAY_MS) / HOUR_MS;
            if truth == "booked_at_3am" {
                assert_eq!(hour, 3);
            } else {
                assert!((6..22).contains(&hour), "{truth} at {hour}h");
                assert_eq!(v["ts"].as_i64(), Some(e.ts_ms));
            }
        }
        let anomalies: usize = ANOMALY_KINDS
            .iter()
            .map(|k| kinds.get(k).copied().unwrap_or(0))
            .sum();
        // 0.5% of 20,000 = 100 expected; a binomial sd of 10.
        assert!((60..140).contains(&anomalies), "{kinds:?}");
        assert_eq!(anomalies + kinds["normal"], events.len(), "{kinds:?}");
    }

    /// The late truth: the header's probability is `late_probability` of the payload, and
    /// shipments are late (delivered after the promise) at that rate: in each fifth of the
    /// probability range, the observed share is within 0.015 of the mean probability
    /// (50,000 shipments; the binomial sd of a fifth is under 0.005).
    #[test]
    fn shipments_are_late_with_the_documented_logistic_probability() {
        let events = Generator::new(Settings::new("supply_chain/shipment", 9))
            .expect("kind")
            .take(50_000);
        let mut bins = [(0.0f64, 0.0f64, 0u32); 5];
        for e in events {
            let v: Value = serde_json::from_slice(&e.value).expect("json");
            let p = late_probability(
                v["distance_km"].as_f64().expect("distance"),
                v["weight_kg"].as_f64().expect("weight"),
                v["parcels"].as_f64().expect("parcels"),
                v["carrier"].as_str().expect("carrier"),
            );
            let said: f64 = e.truth.as_deref().expect("truth").parse().expect("number");
            assert!((said - p).abs() < 1e-6, "{said} vs {p}");
            let late = v["ts"].as_i64() > v["promised_delivery_ts"].as_i64();
            let b = &mut bins[((p * 5.0) as usize).min(4)];
            b.0 += p;
            b.1 += f64::from(u8::from(late));
            b.2 += 1;
        }
        for (i, (p, late, n)) in bins.iter().enumerate() {
            if *n < 1000 {
                continue;
            }
            let (p, late) = (p / f64::from(*n), late / f64::from(*n));
            assert!(
                (p - late).abs() < 0.015,
                "fifth {i}: predicted {p:.3}, observed {late:.3} of {n}"
            );
        }
    }
}
