"""Independent oracle for regression models over sensor readings: ordinary least squares by
scikit-learn over every valid reading, per key.

Input: a JSON-lines file of the raw Kafka messages of the input topic, one object per message:
{"partition": P, "offset": O, "payload_b64": "..."} (exactly what the broker holds).

A reading is learnt when it is a JSON object whose target and features are all finite
numbers (a reading without a target is predicted, not learnt; docs/models.md). Output
(--out): {KEY: {"samples": N, "intercept": B0, "coefficients": {FEATURE: B}}}, KEY being
the value of --key, or "" for one global model without --key.
"""

import argparse
import base64
import json
import math

import numpy as np
from sklearn.linear_model import LinearRegression


def finite(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--input", required=True)
    ap.add_argument("--key")
    ap.add_argument("--target", required=True)
    ap.add_argument("--features", required=True, help="comma-separated")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    features = a.features.split(",")
    rows = {}
    with open(a.input) as f:
        for line in f:
            m = json.loads(line)
            try:
                obj = json.loads(base64.b64decode(m["payload_b64"]).decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError):
                continue
            if not isinstance(obj, dict):
                continue
            values = [obj.get(c) for c in features + [a.target]]
            if not all(finite(v) for v in values):
                continue
            key = obj.get(a.key, "") if a.key else ""
            rows.setdefault(key, []).append(values)
    out = {}
    for key, data in rows.items():
        data = np.array(data, dtype=float)
        x, y = data[:, :-1], data[:, -1]
        fit = LinearRegression().fit(x, y)
        out[key] = {
            "samples": len(y),
            "intercept": float(fit.intercept_),
            "coefficients": {c: float(b) for c, b in zip(features, fit.coef_)},
        }
    with open(a.out, "w") as f:
        json.dump(out, f)


if __name__ == "__main__":
    main()
