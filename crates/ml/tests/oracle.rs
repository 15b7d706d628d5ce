//! The models against independent oracles: scikit-learn and numpy results written by
//! `tests/oracle/ml_fixtures.py` into `tests/fixtures/`.

use ml::{RegressionState, Welford};
use serde_json::Value;

/// The package directory, read when the test runs: a build cache shared by checkouts at
/// different paths may hold a test binary compiled in another checkout, so the compile-time
/// `env!("CARGO_MANIFEST_DIR")` can name a directory that does not exist here.
fn manifest_dir() -> String {
    std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_string())
}

fn fixture(name: &str) -> Value {
    let path = format!("{}/tests/fixtures/{name}", manifest_dir());
    serde_json::from_str(&std::fs::read_to_string(&path).expect("fixture")).expect("json")
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_f64().expect("number"))
        .collect()
}

fn rows(v: &Value) -> (Vec<Vec<f64>>, Vec<f64>) {
    let x = v["x"].as_array().expect("x").iter().map(floats).collect();
    (x, floats(&v["y"]))
}

fn relative(a: f64, b: f64) -> f64 {
    (a - b).abs() / a.abs().max(b.abs()).max(f64::MIN_POSITIVE)
}

fn learn(x: &[Vec<f64>], y: &[f64]) -> RegressionState {
    let mut s = RegressionState::new(x[0].len());
    for (row, target) in x.iter().zip(y) {
        s.update(row, *target, 1.0);
    }
    s
}

#[test]
fn least_squares_equals_scikit_learn() {
    let f = fixture("ols.json");
    let (x, y) = rows(&f);
    let sol = learn(&x, &y).solve(0.0).expect("solves");
    assert!(!sol.raised);
    for (got, want) in sol.coefficients.iter().zip(floats(&f["coefficients"])) {
        assert!(
            relative(*got, want) < 1e-8,
            "coefficient {got} vs sklearn {want}"
        );
    }
    let want = f["intercept"].as_f64().expect("intercept");
    assert!(
        relative(sol.intercept, want) < 1e-8,
        "intercept {} vs sklearn {want}",
        sol.intercept
    );
}

#[test]
fn scale_free_ridge_equals_the_closed_form() {
    let f = fixture("ridge.json");
    let (x, y) = rows(&f);
    let rho = f["rho"].as_f64().expect("rho");
    let sol = learn(&x, &y).solve(rho).expect("solves");
    for (got, want) in sol.coefficients.iter().zip(floats(&f["coefficients"])) {
        assert!(
            relative(*got, want) < 1e-8,
            "coefficient {got} vs numpy {want}"
        );
    }
    let want = f["intercept"].as_f64().expect("intercept");
    assert!(relative(sol.intercept, want) < 1e-8);
}

#[test]
fn merging_four_partitions_equals_one_pass() {
    let f = fixture("ols.json");
    let (x, y) = rows(&f);
    let whole = learn(&x, &y);
    let mut parts: Vec<RegressionState> =
        (0..4).map(|_| RegressionState::new(x[0].len())).collect();
    for (i, (row, target)) in x.iter().zip(&y).enumerate() {
        parts[(i * 7 + i / 13) % 4].update(row, *target, 1.0);
    }
    let mut merged = RegressionState::new(x[0].len());
    for p in &parts {
        merged.merge(p);
    }
    assert_eq!(merged.samples(), whole.samples());
    assert!(relative(merged.weight(), whole.weight()) < 1e-12);
    for (a, b) in merged.means().iter().zip(whole.means().iter()) {
        assert!(relative(*a, *b) < 1e-12, "mean {a} vs {b}");
    }
    let k = x[0].len() + 1;
    for i in 0..k {
        for j in 0..k {
            let (a, b) = (merged.comoment(i, j), whole.comoment(i, j));
            // Off-diagonal co-moments of nearly independent variables are near zero; compare
            // against the scale of the diagonal.
            let scale = (whole.comoment(i, i) * whole.comoment(j, j)).sqrt();
            assert!((a - b).abs() <= 1e-12 * scale, "C[{i}][{j}] {a} vs {b}");
        }
    }
    let (m, w) = (
        merged.solve(0.0).expect("solves"),
        whole.solve(0.0).expect("solves"),
    );
    for (a, b) in m.coefficients.iter().zip(&w.coefficients) {
        assert!(relative(*a, *b) < 1e-9, "{a} vs {b}");
    }
}

#[test]
fn one_half_life_ages_a_sample_to_half_weight() {
    let mut s = RegressionState::new(1);
    s.decay_to(1_000, 3_600_000.0);
    s.update(&[1.0], 2.0, 1.0);
    s.decay_to(1_000 + 3_600_000, 3_600_000.0);
    assert!((s.weight() - 0.5).abs() < 1e-12, "{}", s.weight());
}

#[test]
fn welford_on_values_offset_by_1e9_matches_numpy() {
    let f = fixture("welford.json");
    let mut w = Welford::default();
    for v in floats(&f["values"]) {
        w.update(v, 1.0);
    }
    let mean = f["mean"].as_f64().expect("mean");
    let variance = f["variance"].as_f64().expect("variance");
    assert!(
        relative(w.mean(), mean) < 1e-9,
        "mean {} vs numpy {mean}",
        w.mean()
    );
    assert!(
        relative(w.variance(), variance) < 1e-9,
        "variance {} vs numpy {variance}",
        w.variance()
    );
}

/// Adjusted Rand index of two labellings (Hubert and Arabie).
fn adjusted_rand_index(a: &[usize], b: &[usize]) -> f64 {
    let ka = a.iter().max().map_or(0, |m| m + 1);
    let kb = b.iter().max().map_or(0, |m| m + 1);
    let mut table = vec![vec![0f64; kb]; ka];
    for (x, y) in a.iter().zip(b) {
        table[*x][*y] += 1.0;
    }
    let c2 = |n: f64| n * (n - 1.0) / 2.0;
    let index: f64 = table.iter().flatten().map(|n| c2(*n)).sum();
    let rows: f64 = table.iter().map(|r| c2(r.iter().sum())).sum();
    let cols: f64 = (0..kb).map(|j| c2(table.iter().map(|r| r[j]).sum())).sum();
    let expected = rows * cols / c2(a.len() as f64);
    (index - expected) / ((rows + cols) / 2.0 - expected)
}

/// Area under the ROC curve of `scores` for `positives` (ties count half).
fn auc(scores: &[f64], positives: &[bool]) -> f64 {
    let (mut wins, mut pairs) = (0.0, 0.0);
    for (s, p) in scores.iter().zip(positives) {
        if !p {
            continue;
        }
        for (t, q) in scores.iter().zip(positives) {
            if *q {
                continue;
            }
            pairs += 1.0;
            wins += if s > t {
                1.0
            } else if s == t {
                0.5
            } else {
                0.0
            };
        }
    }
    wins / pairs
}

#[test]
fn kmeans_finds_the_segments_scikit_learn_finds_and_scores_outliers() {
    let f = fixture("kmeans.json");
    let x: Vec<Vec<f64>> = f["x"].as_array().expect("x").iter().map(floats).collect();
    let truth: Vec<usize> = f["labels"]
        .as_array()
        .expect("labels")
        .iter()
        .map(|v| v.as_u64().expect("label") as usize)
        .collect();
    let outlier: Vec<bool> = f["outlier"]
        .as_array()
        .expect("outlier")
        .iter()
        .map(|v| v.as_bool().expect("flag"))
        .collect();
    let sklearn: Vec<Vec<f64>> = f["sklearn_centers"]
        .as_array()
        .expect("centers")
        .iter()
        .map(floats)
        .collect();
    let mut model = ml::KMeans::new(
        6,
        ml::KMeansConfig {
            k: 4,
            seed_sample: 500,
            seed_tries: 5,
            seed_trim: 0.0,
            half_life_ms: None,
            reseed_below: 0.0,
            standardize: false,
            random_seed: 42,
            scored: Vec::new(),
        },
    );
    for (i, batch) in x.chunks(100).enumerate() {
        model.update(batch, i as i64);
    }
    assert_eq!(model.samples(), x.len() as u64);
    let assignments: Vec<ml::Assignment> =
        x.iter().map(|p| model.assign(p).expect("seeded")).collect();
    let labels: Vec<usize> = assignments.iter().map(|a| a.cluster).collect();
    let ari = adjusted_rand_index(&labels, &truth);
    assert!(ari >= 0.98, "ARI {ari}");
    // Each of our centres is within 1e-3 of one of scikit-learn's.
    for c in 0..4 {
        let ours = model.center_in_input_units(c);
        let nearest = sklearn
            .iter()
            .map(|s| {
                s.iter()
                    .zip(&ours)
                    .map(|(a, b)| (a - b).abs())
                    .fold(0.0, f64::max)
            })
            .fold(f64::INFINITY, f64::min);
        assert!(
            nearest < 1e-3,
            "centre {c} is {nearest} from scikit-learn's"
        );
    }
    let scores: Vec<f64> = assignments.iter().map(|a| a.outlier_score).collect();
    let area = auc(&scores, &outlier);
    assert!(area >= 0.99, "outlier AUC {area}");
}
