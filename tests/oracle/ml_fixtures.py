"""Writes the datasets and expected results that crates/ml/tests/oracle.rs checks against.

The expected values come from scikit-learn and numpy, independent of the engine:

  ols.json       LinearRegression on 3,000 rows of 5 features of very different scales and
                 offsets (one offset by 1e6), y linear plus noise.
  ridge.json     the closed form of the scale-free ridge on the same data:
                 beta = (Sxx + rho * diag(Sxx))^-1 Sxy with centred co-moments, solved by numpy.
  welford.json   mean and variance of 10,000 values offset by 1e9, by numpy (two-pass).
  kmeans.json    8,000 points from 4 separated segments in 6 dimensions (different scales),
                 1% replaced by outliers 8 standard deviations from their segment's centre;
                 true segments, outlier flags, and scikit-learn KMeans(k=4, n_init=10) centres.

Run: $(scripts/python-env) tests/oracle/ml_fixtures.py   (rewrites crates/ml/tests/fixtures/)
"""

import json
import pathlib

import numpy as np
from sklearn.cluster import KMeans
from sklearn.linear_model import LinearRegression

OUT = pathlib.Path(__file__).resolve().parents[2] / "crates" / "ml" / "tests" / "fixtures"
rng = np.random.default_rng(20261128)

n, d = 3000, 5
X = np.column_stack([
    rng.normal(70, 8, n),            # temperature-like
    rng.uniform(30, 60, n),          # humidity-like
    rng.normal(300, 20, n),          # pressure-like
    rng.normal(1e6, 3, n),           # a large offset: tests numerical stability
    rng.gamma(2.0, 1.5, n),          # skewed
])
beta = np.array([0.08, 0.03, -0.01, 0.5, 0.7])
y = 2.0 + X @ beta + rng.normal(0, 0.25, n)

ols = LinearRegression().fit(X, y)
xc = X - X.mean(axis=0)
yc = y - y.mean()
sxx = xc.T @ xc
sxy = xc.T @ yc
rho = 0.1
ridge_beta = np.linalg.solve(sxx + rho * np.diag(np.diag(sxx)), sxy)
ridge_intercept = y.mean() - X.mean(axis=0) @ ridge_beta

OUT.mkdir(parents=True, exist_ok=True)
data = {"x": X.tolist(), "y": y.tolist()}
(OUT / "ols.json").write_text(json.dumps({
    **data,
    "coefficients": ols.coef_.tolist(),
    "intercept": float(ols.intercept_),
}))
(OUT / "ridge.json").write_text(json.dumps({
    **data,
    "rho": rho,
    "coefficients": ridge_beta.tolist(),
    "intercept": float(ridge_intercept),
}))
v = 1e9 + rng.normal(0, 1, 10_000)
(OUT / "welford.json").write_text(json.dumps({
    "values": v.tolist(),
    "mean": float(np.mean(v)),
    "variance": float(np.var(v)),
}))
centers = np.array([
    [0, 0, 0, 0, 0, 0],
    [40, 5, -30, 10, 0, 200],
    [-35, 20, 25, -15, 8, 100],
    [10, -25, 40, 30, -12, 300],
], dtype=float)
spread = np.array([2.0, 1.0, 3.0, 1.5, 0.5, 10.0])
m = 8000
labels = rng.integers(0, 4, m)
points = centers[labels] + rng.normal(0, 1, (m, 6)) * spread
outlier = rng.random(m) < 0.01
direction = rng.normal(0, 1, (m, 6))
direction /= np.linalg.norm(direction, axis=1, keepdims=True)
points[outlier] = centers[labels[outlier]] + 8.0 * direction[outlier] * spread * np.sqrt(6)
km = KMeans(n_clusters=4, n_init=10, random_state=0).fit(points)
(OUT / "kmeans.json").write_text(json.dumps({
    "x": points.tolist(),
    "labels": labels.tolist(),
    "outlier": outlier.tolist(),
    "sklearn_centers": km.cluster_centers_.tolist(),
}))
print(f"wrote {OUT}")
