//! The update path of the incremental models: rows per second per core.
//!
//! `cargo bench -p ml` (release build). Regression: one Welford/Chan update of the co-moment
//! matrix per row, for 4, 16 and 64 features (solving is not on the per-row path unless a
//! prediction is asked for; `solve` is measured separately). k-means: assigning and folding a
//! mini-batch of 1,000 rows, for k = 4 and 16 over 8 features.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use ml::{KMeans, KMeansConfig, RegressionState};

fn rows(n: usize, d: usize) -> Vec<Vec<f64>> {
    // A cheap deterministic generator: no dependency on rand for a benchmark.
    let mut s: u64 = 0x2545_f491_4f6c_dd1d;
    (0..n)
        .map(|_| {
            (0..d)
                .map(|_| {
                    s ^= s << 13;
                    s ^= s >> 7;
                    s ^= s << 17;
                    (s >> 11) as f64 / (1u64 << 53) as f64 * 100.0
                })
                .collect()
        })
        .collect()
}

fn regression(c: &mut Criterion) {
    let mut group = c.benchmark_group("regression_update");
    for d in [4usize, 16, 64] {
        let data = rows(10_000, d);
        let ys: Vec<f64> = data.iter().map(|r| r.iter().sum::<f64>() * 0.1).collect();
        group.throughput(Throughput::Elements(data.len() as u64));
        group.bench_with_input(BenchmarkId::from_parameter(d), &d, |b, &d| {
            b.iter(|| {
                let mut s = RegressionState::new(d);
                for (x, y) in data.iter().zip(&ys) {
                    s.update(x, *y, 1.0);
                }
                s
            });
        });
    }
    group.finish();
    let mut group = c.benchmark_group("regression_solve");
    for d in [4usize, 16, 64] {
        let data = rows(1_000, d);
        let mut s = RegressionState::new(d);
        for x in &data {
            s.update(x, x[0] * 2.0 + 1.0, 1.0);
        }
        group.bench_with_input(BenchmarkId::from_parameter(d), &d, |b, _| {
            b.iter(|| s.solve(1e-6))
        });
    }
    group.finish();
}

fn kmeans(c: &mut Criterion) {
    let mut group = c.benchmark_group("kmeans_minibatch_update");
    let d = 8;
    for k in [4usize, 16] {
        let seed = rows(1_000, d);
        let batch = rows(1_000, d);
        let mut model = KMeans::new(
            d,
            KMeansConfig {
                k,
                seed_sample: 1_000,
                seed_tries: 1,
                seed_trim: 0.0,
                half_life_ms: None,
                reseed_below: 0.0,
                standardize: false,
                random_seed: 1,
                scored: Vec::new(),
            },
        );
        model.update(&seed, 0);
        group.throughput(Throughput::Elements(batch.len() as u64));
        group.bench_with_input(BenchmarkId::from_parameter(k), &k, |b, _| {
            b.iter(|| {
                let mut m = model.clone();
                m.update(&batch, 1);
                m
            });
        });
    }
    group.finish();
}

criterion_group!(benches, regression, kmeans);
criterion_main!(benches);
