//! Model states survive serialisation exactly: a state written in the middle of a stream,
//! read back and fed the rest equals the state that saw the whole stream without a break,
//! bit for bit (the checkpoints of the runtime rely on it).

use ml::{KMeans, KMeansConfig, PageHinkley, RegressionState, Welford};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// CBOR, the runtime's checkpoint encoding.
fn round_trip<T: Serialize + DeserializeOwned>(value: &T) -> T {
    let mut bytes = Vec::new();
    ciborium::into_writer(value, &mut bytes).expect("encode");
    ciborium::from_reader(bytes.as_slice()).expect("decode")
}

/// Deterministic rows: a linear target with noise, features far from zero in one column.
fn rows(n: usize) -> Vec<(Vec<f64>, f64)> {
    let mut s: u64 = 42;
    let mut next = move || {
        s = s
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (s >> 11) as f64 / (1u64 << 53) as f64
    };
    (0..n)
        .map(|_| {
            let x = vec![next() * 10.0, 1e9 + next(), next() - 0.5];
            let y = 3.0 * x[0] - 2.0 * (x[1] - 1e9) + 0.5 * x[2] + next() * 0.1;
            (x, y)
        })
        .collect()
}

#[test]
fn regression_state_resumes_exactly() {
    let data = rows(1000);
    let mut whole = RegressionState::new(3);
    let mut first = RegressionState::new(3);
    for (i, (x, y)) in data.iter().enumerate() {
        whole.decay_to(i as i64 * 1000, 600_000.0);
        whole.update(x, *y, 1.0);
        if i < 400 {
            first.decay_to(i as i64 * 1000, 600_000.0);
            first.update(x, *y, 1.0);
        }
    }
    let mut resumed = round_trip(&first);
    assert_eq!(resumed, first);
    for (i, (x, y)) in data.iter().enumerate().skip(400) {
        resumed.decay_to(i as i64 * 1000, 600_000.0);
        resumed.update(x, *y, 1.0);
    }
    assert_eq!(resumed, whole);
    assert_eq!(resumed.solve(0.0), whole.solve(0.0));
}

#[test]
fn kmeans_resumes_exactly_while_seeding_and_after() {
    let config = KMeansConfig {
        k: 3,
        seed_sample: 50,
        seed_tries: 3,
        seed_trim: 0.0,
        half_life_ms: Some(60_000.0),
        reseed_below: 0.01,
        standardize: true,
        random_seed: 7,
        scored: Vec::new(),
    };
    let data: Vec<Vec<f64>> = rows(600)
        .into_iter()
        .enumerate()
        .map(|(i, (x, _))| vec![x[0] + (i % 3) as f64 * 20.0, x[2]])
        .collect();
    let batches: Vec<&[Vec<f64>]> = data.chunks(20).collect();
    // Break once inside the seed sample (batch 1 of 20 rows) and once after seeding.
    for cut in [1, 10] {
        let mut whole = KMeans::new(2, config.clone());
        let mut resumed = KMeans::new(2, config.clone());
        for (b, rows) in batches.iter().enumerate() {
            whole.update(rows, b as i64 * 1000);
            if b == cut {
                resumed = round_trip(&resumed);
            }
            resumed.update(rows, b as i64 * 1000);
        }
        assert!(whole.is_seeded());
        assert_eq!(resumed, whole, "cut at batch {cut}");
    }
}

#[test]
fn welford_and_page_hinkley_round_trip() {
    let mut w = Welford::default();
    let mut ph = PageHinkley::new(5.0, 0.01);
    for (i, (x, _)) in rows(100).iter().enumerate() {
        w.update(x[1], 1.0 + i as f64 / 100.0);
        ph.update(x[0]);
    }
    assert_eq!(round_trip(&w), w);
    assert_eq!(round_trip(&ph), ph);
}
