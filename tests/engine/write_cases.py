#!/usr/bin/env python3
"""Writes the cases of tests/engine/ (pipeline.yaml, input.jsonl, expected/, case.json,
GOLDEN.md). The expected outputs below are derived by hand from the documented semantics
(docs/running.md, docs/models.md), each case's GOLDEN.md says how; nothing here comes from
the engine's output. Run: python3 tests/engine/write_cases.py [DIR] (DIR defaults to this
folder; tests/language.rs writes to a temporary one and compares).
"""
import json
import os
import sys

HERE = sys.argv[1] if len(sys.argv) > 1 else os.path.dirname(os.path.abspath(__file__))
T0 = 1767225600000  # 2026-01-01T00:00:00Z, aligned to minutes
S = 1000
M = 60 * S


def reading(line, machine, t, temp, hum=40.0, fr=1.0, **drop):
    r = {"line_id": line, "machine_id": machine, "ts": t, "temperature": temp,
         "humidity": hum, "pressure": 101.0, "speed": 100.0, "vibration": 1.0,
         "failure_rate": fr}
    return r


def write_case(name, yaml, inputs, expected, golden, options=None):
    d = os.path.join(HERE, name)
    os.makedirs(os.path.join(d, "expected"), exist_ok=True)
    for f in os.listdir(os.path.join(d, "expected")):
        os.remove(os.path.join(d, "expected", f))
    if not expected:
        # Nothing expected (a run that must fail): git keeps no empty folder anyway.
        os.rmdir(os.path.join(d, "expected"))
    with open(os.path.join(d, "pipeline.yaml"), "w") as f:
        f.write(yaml)
    with open(os.path.join(d, "input.jsonl"), "w") as f:
        for m in inputs:
            f.write(json.dumps(m) + "\n")
    for topic, rows in expected.items():
        with open(os.path.join(d, "expected", topic + ".jsonl"), "w") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")
    path = os.path.join(d, "case.json")
    if options:
        with open(path, "w") as f:
            f.write(json.dumps(options) + "\n")
    elif os.path.exists(path):
        os.remove(path)
    with open(os.path.join(d, "GOLDEN.md"), "w") as f:
        f.write(golden.strip() + "\n")


def msg(topic, partition, value, key=None):
    m = {"topic": topic, "partition": partition, "value": value}
    if key is not None:
        m["key"] = key
    return m


SOURCE = """  sources:
    - name: readings
      kafka: {{ topic: in, start_from: earliest }}
      format: json
      schema: production/sensor_reading
{extra}"""


def pipeline(name, extra="", body=""):
    return (f"apiVersion: pipelines/v1\nkind: Pipeline\nmetadata: {{ name: {name} }}\nspec:\n"
            + SOURCE.format(extra=extra) + body)


def filter_project():
    rows = [("L1", "M1", 1, 65.0, 0), ("L1", "M2", 2, 71.5, 1), ("L2", "M3", 3, 80.0, 0),
            ("L2", "M4", 4, 70.0, 1), ("L3", "M5", 5, 99.25, 0), ("L1", "M1", 6, 10.0, 1),
            ("L3", "M6", 7, 70.5, 1), ("L2", "M3", 8, 72.0, 0)]
    write_case(
        "filter-project",
        pipeline("filter-project", body="""  transforms:
    - name: hot
      sql: SELECT line_id, machine_id, ts, temperature * 2 AS double_temp FROM readings WHERE temperature > 70
  sinks:
    - { name: out, from: hot, kafka: { topic: out }, format: json }
"""),
        [msg("in", p, reading(l, m, T0 + s * S, t)) for l, m, s, t, p in rows],
        {"out": [{"line_id": l, "machine_id": m, "ts": T0 + s * S, "double_temp": t * 2}
                 for l, m, s, t, p in rows if t > 70]},
        """By hand: the input rows with `temperature > 70` (five of eight: 71.5, 80.0, 99.25, 70.5,
72.0; 70.0 is not above 70), with `double_temp` = 2 x temperature. The same for any
partitioning and any batch size, since the transform is stateless.""",
        {"any_partitions": True})


def tumbling_window():
    ev = [("L1", 5, 70.0), ("L2", 10, 60.0), ("L1", 30, 80.0), ("L1", 65, 90.0),
          ("L2", 50, 65.0), ("L1", 75, 100.0), ("L2", 40, 99.0), ("L2", 130, 50.0)]
    exp = [("L1", 0, 2, 150.0, 80.0), ("L2", 0, 2, 125.0, 65.0), ("L1", 1, 2, 190.0, 100.0),
           ("L2", 2, 1, 50.0, 50.0)]
    write_case(
        "tumbling-window",
        pipeline("tumbling-window", "      event_time: { field: ts, max_out_of_order: 10s }\n", """  transforms:
    - name: per_minute
      window: { tumbling: 1m }
      sql: |
        SELECT line_id, window_start, window_end, count(*) AS n, sum(temperature) AS total,
               max(temperature) AS hottest
        FROM readings GROUP BY line_id, window_start, window_end
  sinks:
    - { name: out, from: per_minute, kafka: { topic: out }, format: json }
"""),
        [msg("in", 0, reading(l, "M", T0 + s * S, t)) for l, s, t in ev],
        {"out": [{"line_id": l, "window_start": T0 + w * M, "window_end": T0 + (w + 1) * M,
                  "n": n, "total": tot, "hottest": mx} for l, w, n, tot, mx in exp]},
        """By hand, from the rule in docs/running.md (a record is late when its window's end is at or
before the largest event time seen before it in its partition minus `max_out_of_order`).
Event times in seconds after 2026-01-01T00:00:00Z, in offset order: L1 5 (70), L2 10 (60),
L1 30 (80), L1 65 (90), L2 50 (65: stream time 65 - 10 = 55 < 60, on time), L1 75 (100),
L2 40 (99: 60 <= 75 - 10, late, dropped), L2 130 (50). The input ends (the run is bounded),
so every window is emitted:

| line | window | n | total | hottest |
|---|---|---|---|---|
| L1 | [0, 60) | 2 | 150 | 80 |
| L2 | [0, 60) | 2 | 125 | 65 |
| L1 | [60, 120) | 2 | 190 | 100 |
| L2 | [120, 180) | 1 | 50 | 50 |

One partition: lateness is decided per partition, so spreading the input over others would
change which record is late.""")


def dead_letters():
    bad_missing = reading("L4", "M", T0 + 3500, 10.0)
    del bad_missing["temperature"]
    lines = [
        msg("in", 0, reading("L1", "M", T0 + 1 * S, 71.0)),
        msg("in", 0, "{\"line_id\": \"L9\", \"machine_id\""),
        msg("in", 1, reading("L2", "M", T0 + 2 * S, 72.0)),
        msg("in", 1, "not json at all"),
        msg("in", 0, reading("L1", "M", T0 + 3 * S, 73.0)),
        msg("in", 1, bad_missing),
        msg("in", 1, reading("L2", "M", T0 + 4 * S, 74.0)),
        msg("in", 0, reading("L3", "M", T0 + 5 * S, 75.0)),
    ]
    good = [("L1", 1, 71.0), ("L2", 2, 72.0), ("L1", 3, 73.0), ("L2", 4, 74.0), ("L3", 5, 75.0)]
    offsets, dl = {0: 0, 1: 0}, []
    for m in lines:
        p = m["partition"]
        o = offsets[p]
        offsets[p] += 1
        v = m["value"]
        if isinstance(v, str) or "temperature" not in v:
            dl.append({"payload": v, "source-partition": str(p), "source-offset": str(o)})
    write_case(
        "dead-letters",
        pipeline("dead-letters", "      on_error: dead_letter\n      dead_letter_topic: bad-readings\n", """  transforms:
    - name: picked
      sql: SELECT line_id, ts, temperature FROM readings
  sinks:
    - { name: out, from: picked, kafka: { topic: out }, format: json }
"""),
        lines,
        {"out": [{"line_id": l, "ts": T0 + s * S, "temperature": t} for l, s, t in good],
         "bad-readings": dl},
        """By hand: three of the eight messages are bad (truncated JSON at partition 0 offset 1,
"not json at all" at partition 1 offset 1, a reading without `temperature` at partition 1
offset 2); they reach the dead-letter topic with their original bytes and origin, the five
others reach the sink projected. Partitions and offsets are part of the result, so the
input stays on its partitions.""")


def skip_bad_records():
    lines = [msg("in", 0, reading("L1", "M", T0 + 1 * S, 71.0)), msg("in", 1, "{broken"),
             msg("in", 1, reading("L2", "M", T0 + 2 * S, 72.0)), msg("in", 0, "[]"),
             msg("in", 2, reading("L3", "M", T0 + 3 * S, 73.0))]
    write_case(
        "skip-bad-records",
        pipeline("skip-bad-records", "      on_error: skip\n", """  transforms:
    - name: picked
      sql: SELECT line_id, temperature FROM readings
  sinks:
    - { name: out, from: picked, kafka: { topic: out }, format: json }
"""),
        lines,
        {"out": [{"line_id": "L1", "temperature": 71.0}, {"line_id": "L2", "temperature": 72.0},
                 {"line_id": "L3", "temperature": 73.0}]},
        """By hand: `on_error: skip` drops the two bad messages (`{broken`, and `[]`, which is not an
object) and keeps the three readings. Stateless: any partitioning.""",
        {"any_partitions": True})


def fail_on_bad_record():
    lines = [msg("in", 0, reading("L1", "M", T0 + 1 * S, 71.0)),
             msg("in", 0, reading("L1", "M", T0 + 2 * S, 72.0)),
             msg("in", 0, "garbage"),
             msg("in", 0, reading("L1", "M", T0 + 3 * S, 73.0))]
    write_case(
        "fail-on-bad-record",
        pipeline("fail-on-bad-record", body="""  sinks:
    - { name: out, from: readings, kafka: { topic: out }, format: json }
"""),
        lines,
        {},
        """By hand: `on_error: fail` is the default: the run stops at the bad message, naming its
topic, partition and offset (partition 0, offset 2).""",
        {"error": "bad record in in partition 0 offset 2", "restarts": False})


def hopping_window():
    ev = [("L1", 10), ("L2", 30), ("L1", 70), ("L1", 130)]
    exp = [("L1", -1, 1), ("L1", 0, 2), ("L1", 1, 2), ("L1", 2, 1), ("L2", -1, 1), ("L2", 0, 1)]
    write_case(
        "hopping-window",
        pipeline("hopping-window", "      event_time: { field: ts }\n", """  transforms:
    - name: per_two_minutes
      window: { hopping: { size: 2m, slide: 1m } }
      sql: SELECT line_id, window_start, window_end, count(*) AS n FROM readings GROUP BY line_id, window_start, window_end
  sinks:
    - { name: out, from: per_two_minutes, kafka: { topic: out }, format: json }
"""),
        [msg("in", 0, reading(l, "M", T0 + s * S, 50.0)) for l, s in ev],
        {"out": [{"line_id": l, "window_start": T0 + w * M, "window_end": T0 + (w + 2) * M, "n": n}
                 for l, w, n in exp]},
        """By hand: windows of two minutes starting every minute (epoch-aligned), so an event at t
falls in the windows starting at floor(t / 1m) - 1m and floor(t / 1m). Events (seconds after
2026-01-01T00:00:00Z) in offset order: L1 10, L2 30, L1 70, L1 130; stream time only grows,
so none is late.

| line | window (minutes) | n |
|---|---|---|
| L1 | [-1, 1) | 1 |
| L1 | [0, 2) | 2 (10, 70) |
| L1 | [1, 3) | 2 (70, 130) |
| L1 | [2, 4) | 1 |
| L2 | [-1, 1) | 1 |
| L2 | [0, 2) | 1 |""")


def session_window():
    ev = [("L1", 0), ("L2", 10), ("L1", 20), ("L1", 45), ("L2", 50), ("L1", 100)]
    exp = [("L1", 0, 75, 3), ("L1", 100, 130, 1), ("L2", 10, 40, 1), ("L2", 50, 80, 1)]
    write_case(
        "session-window",
        pipeline("session-window", "      event_time: { field: ts }\n", """  transforms:
    - name: sessions
      window: { session: { gap: 30s } }
      sql: SELECT line_id, window_start, window_end, count(*) AS n FROM readings GROUP BY line_id, window_start, window_end
  sinks:
    - { name: out, from: sessions, kafka: { topic: out }, format: json }
"""),
        [msg("in", 0, reading(l, "M", T0 + s * S, 50.0)) for l, s in ev],
        {"out": [{"line_id": l, "window_start": T0 + a * S, "window_end": T0 + b * S, "n": n}
                 for l, a, b, n in exp]},
        """By hand: a session per line is [first event, last event + gap) and an event within the
gap of a session extends it (docs/running.md). Seconds after 2026-01-01T00:00:00Z: L1 0, 20,
45 (each within 30 s of the previous) then 100 (55 s later: a new session); L2 10, then 50
(40 s later: a new session).

| line | session | n |
|---|---|---|
| L1 | [0, 75) | 3 |
| L1 | [100, 130) | 1 |
| L2 | [10, 40) | 1 |
| L2 | [50, 80) | 1 |""")


def late_dead_letter():
    ev = [("L1", 10, 1.0), ("L1", 130, 2.0), ("L1", 20, 3.0), ("L1", 190, 4.0)]
    write_case(
        "late-dead-letter",
        pipeline("late-dead-letter", "      event_time: { field: ts }\n", """  transforms:
    - name: per_minute
      window: { tumbling: 1m, on_late: dead_letter }
      sql: SELECT line_id, window_start, window_end, sum(temperature) AS total FROM readings GROUP BY line_id, window_start, window_end
  sinks:
    - { name: out, from: per_minute, kafka: { topic: out }, format: json }
"""),
        [msg("in", 0, reading(l, "M", T0 + s * S, t)) for l, s, t in ev],
        {"out": [{"line_id": "L1", "window_start": T0, "window_end": T0 + M, "total": 1.0},
                 {"line_id": "L1", "window_start": T0 + 2 * M, "window_end": T0 + 3 * M, "total": 2.0},
                 {"line_id": "L1", "window_start": T0 + 3 * M, "window_end": T0 + 4 * M, "total": 4.0}],
         "late-dead-letter.readings.dead_letter": [
             {"payload": reading("L1", "M", T0 + 20 * S, 3.0), "source-partition": "0",
              "source-offset": None}]},
        """By hand: one-minute windows, no allowed disorder. In offset order: 10 s (window 0),
130 s (window 2; stream time 130 s), 20 s (its window [0, 60 s) ends at or before 130 s: late,
and with `on_late: dead_letter` written as JSON to the source's dead-letter topic,
`<pipeline>.<source>.dead_letter`, with its partition), 190 s (window 3). Windows: [0, 1m)
total 1, [2m, 3m) total 2, [3m, 4m) total 4.""")


def regression():
    pts = [(10, 1), (20, 5), (15, 2), (30, 10), (25, 3), (40, 8)]
    rows = [(i, t, h, 3 * t - 2 * h + 5) for i, (t, h) in enumerate(pts)]
    preds = [{"event_time": T0 + (i + 1) * S, "prediction": (None if i < 3 else float(y)),
              "actual": float(y), "model_version": i} for i, t, h, y in rows]
    write_case(
        "regression",
        pipeline("regression", "      event_time: { field: ts }\n", """  models:
    - name: m
      input: readings
      regression: { target: failure_rate, features: [temperature, humidity] }
  transforms:
    - name: predicted
      sql: SELECT event_time, prediction, actual, model_version FROM m.predictions
    - name: learnt
      sql: SELECT samples, intercept, coefficients FROM m.snapshots
  sinks:
    - { name: predictions, from: predicted, kafka: { topic: predictions }, format: json }
    - { name: snapshots, from: learnt, kafka: { topic: snapshots }, format: json }
"""),
        [msg("in", 0, reading("L1", "M", T0 + (i + 1) * S, float(t), float(h), float(y)))
         for i, t, h, y in rows],
        {"predictions": preds,
         "snapshots": [{"samples": 6, "intercept": 5.0,
                        "coefficients": {"temperature": 3.0, "humidity": -2.0}}]},
        """By hand: failure_rate = 3 temperature - 2 humidity + 5 exactly, on six points of which the
first three are not collinear. Prequential (docs/models.md): each row is predicted with the
model before it, then learnt; no prediction before features + 1 = 3 samples; from the fourth
row the least-squares fit of the rows before is exact, so the prediction equals the actual.
`model_version` counts the updates before the row. The one snapshot, at the end of the
bounded input, has 6 samples, intercept 5 and coefficients 3 and -2. One global model and one
partition: the order of rows is the input's.""")


def interval_join():
    a = [("L1", 0), ("L2", 10), ("L1", 200)]
    b = [("L1", 30), ("L1", 100), ("L2", 5), ("L2", 80), ("L1", 230)]
    pairs = [(l, sa, sb) for l, sa in a for lb, sb in b if l == lb and abs(sa - sb) <= 60]
    write_case(
        "interval-join",
        f"""apiVersion: pipelines/v1
kind: Pipeline
metadata: {{ name: interval-join }}
spec:
  sources:
    - name: a
      kafka: {{ topic: a, start_from: earliest }}
      format: json
      schema: production/sensor_reading
      event_time: {{ field: ts, max_out_of_order: 5m }}
    - name: b
      kafka: {{ topic: b, start_from: earliest }}
      format: json
      schema: production/sensor_reading
      event_time: {{ field: ts, max_out_of_order: 5m }}
  transforms:
    - name: pairs
      join: {{ within: 1m }}
      sql: |
        SELECT a.line_id, a.ts AS a_ts, b.ts AS b_ts FROM a JOIN b
        ON a.line_id = b.line_id AND b.ts BETWEEN a.ts - INTERVAL '1' MINUTE AND a.ts + INTERVAL '1' MINUTE
  sinks:
    - {{ name: out, from: pairs, kafka: {{ topic: out }}, format: json }}
""",
        [msg("a", 0, reading(l, "M", T0 + s * S, 1.0)) for l, s in a]
        + [msg("b", 0, reading(l, "M", T0 + s * S, 1.0)) for l, s in b],
        {"out": [{"line_id": l, "a_ts": T0 + sa * S, "b_ts": T0 + sb * S} for l, sa, sb in pairs]},
        """By hand: every pair of an `a` and a `b` row of the same line whose event times are at most
one minute apart meets exactly once, whichever side arrives first (docs/running.md); with
`max_out_of_order: 5m` no row is dropped before its partners arrive. Seconds after
2026-01-01T00:00:00Z: a = L1 0, L2 10, L1 200; b = L1 30, L1 100, L2 5, L2 80, L1 230.
Pairs: (L1 0, 30), (L2 10, 5), (L1 200, 230); L1 0 and 100 are 100 s apart, L2 10 and 80
are 70 s apart.""")


def lookup_join():
    table = [msg("lines", 0, reading("L1", "press-1", T0, 0.0), key="L1"),
             msg("lines", 0, reading("L2", "press-2", T0, 0.0), key="L2"),
             msg("lines", 0, reading("L3", "press-3", T0, 0.0), key="L3"),
             msg("lines", 0, reading("L1", "press-1b", T0, 0.0), key="L1"),
             msg("lines", 0, None, key="L2")]
    stream = [msg("in", 0, reading(l, "M", T0 + s * S, t)) for l, s, t in
              [("L1", 1, 50.0), ("L2", 2, 60.0), ("L3", 3, 70.0), ("L4", 4, 80.0)]]
    write_case(
        "lookup-join",
        """apiVersion: pipelines/v1
kind: Pipeline
metadata: { name: lookup-join }
spec:
  sources:
    - name: lines
      kafka: { topic: lines, start_from: earliest }
      format: json
      schema: production/sensor_reading
      table: { key: line_id }
    - name: readings
      kafka: { topic: in, start_from: earliest }
      format: json
      schema: production/sensor_reading
  transforms:
    - name: enriched
      sql: |
        SELECT r.line_id, r.temperature, l.machine_id AS press
        FROM readings r JOIN lines l ON r.line_id = l.line_id
  sinks:
    - { name: out, from: enriched, kafka: { topic: out }, format: json }
""",
        table + stream,
        {"out": [{"line_id": "L1", "temperature": 50.0, "press": "press-1b"},
                 {"line_id": "L3", "temperature": 70.0, "press": "press-3"}]},
        """By hand: the table keeps the latest row per `line_id` in offset order: L1 is replaced by
press-1b, L2 is deleted by its tombstone (a key without a value), L3 stays. Stream rows join
the table as it is when they are processed (docs/running.md): with micro-batches of 10,000
the whole table (listed first) is read in the first turn, before any reading, so L1 and L3
join and L2 and L4 find nothing. Smaller batches interleave table and stream differently
and may join a reading with an older table, by definition of a lookup join: the case runs
with one batch size, and no stops.""",
        {"batches": [10000], "restarts": False})


def clustering():
    pts = [(10, 10), (100, 100), (11, 10), (101, 99), (10, 11), (99, 100), (12, 12), (100, 101)]
    write_case(
        "clustering",
        pipeline("clustering", "      event_time: { field: ts }\n", """  models:
    - name: m
      input: readings
      clustering: { k: 2, features: [temperature, humidity], seed_sample: 4, standardize: false }
  transforms:
    - name: assigned
      sql: SELECT event_time, cluster_id IS NULL AS unassigned FROM m.predictions
    - name: learnt
      sql: SELECT samples, cardinality(centroids) AS clusters FROM m.snapshots
  sinks:
    - { name: out, from: assigned, kafka: { topic: out }, format: json }
    - { name: snapshots, from: learnt, kafka: { topic: snapshots }, format: json }
"""),
        [msg("in", 0, reading("L", "M", T0 + i * S, float(t), float(h))) for i, (t, h) in
         enumerate(pts)],
        {"out": [{"event_time": T0 + i * S, "unassigned": i < 4} for i in range(8)],
         "snapshots": [{"samples": 8, "clusters": 2}]},
        """By hand (docs/models.md): the first `seed_sample` = 4 rows of a key are buffered and get no
assignment; once 4 rows are in, k-means++ seeds the 2 clusters and every later row is
assigned. The final snapshot of the bounded input has learnt all 8 rows, with 2 centroids.
Which cluster id each group gets depends on the seeding's random draw, so the case checks
assignment or not, not the ids. Every row is assigned, then learnt, before the next, so
the result does not depend on micro-batch boundaries: it runs with every batch size. The
stops restore the model mid-seeding.""")


def partition_tasks():
    # (partition, line, seconds, temperature), in offset order within each partition.
    ev = [(0, "L1", 5, 70.0), (1, "L2", 15, 60.0), (2, "L3", 1, 20.0), (0, "L4", 10, 50.0),
          (1, "L2", 50, 65.0), (0, "L1", 65, 90.0), (2, "L3", 59, 30.0), (1, "L2", 70, 75.0),
          (0, "L1", 130, 10.0), (2, "L3", 61, 40.0), (0, "L4", 40, 99.0)]
    exp = [("L1", 0, 1, 70.0, 70.0), ("L1", 1, 1, 90.0, 90.0), ("L1", 2, 1, 10.0, 10.0),
           ("L4", 0, 1, 50.0, 50.0), ("L2", 0, 2, 125.0, 65.0), ("L2", 1, 1, 75.0, 75.0),
           ("L3", 0, 2, 50.0, 30.0), ("L3", 1, 1, 40.0, 40.0)]
    write_case(
        "partition-tasks",
        pipeline("partition-tasks", "      key: line_id\n      event_time: { field: ts, max_out_of_order: 10s }\n", """  transforms:
    - name: per_minute
      window: { tumbling: 1m }
      sql: |
        SELECT line_id AS line, window_start, window_end, count(*) AS n,
               sum(temperature) AS total, max(temperature) AS hottest
        FROM readings GROUP BY line_id, window_start, window_end
  sinks:
    - { name: out, from: per_minute, kafka: { topic: out }, format: json }
"""),
        [msg("in", p, reading(l, "M", T0 + s * S, t), key=l) for p, l, s, t in ev],
        {"out": [{"line": l, "window_start": T0 + w * M, "window_end": T0 + (w + 1) * M,
                  "n": n, "total": tot, "hottest": mx} for l, w, n, tot, mx in exp]},
        """By hand, as tumbling-window (docs/running.md), per partition. The source declares `key:
line_id` and the window groups by it, so the pipeline runs as one task per partition (3),
which the case checks. Partition 0 holds L1 and L4, partition 1 L2, partition 2 L3; event
times in seconds after 2026-01-01T00:00:00Z. Partition 0 in offset order: L1 5 (70), L4 10
(50), L1 65 (90), L1 130 (10), L4 40 (99: its window ends at 60 <= 130 - 10, late,
dropped). Partition 1: L2 15 (60), 50 (65), 70 (75). Partition 2: L3 1 (20), 59 (30), 61
(40). The input ends, so every window is emitted:

| line | window | n | total | hottest |
|---|---|---|---|---|
| L1 | [0, 60) | 1 | 70 | 70 |
| L1 | [60, 120) | 1 | 90 | 90 |
| L1 | [120, 180) | 1 | 10 | 10 |
| L4 | [0, 60) | 1 | 50 | 50 |
| L2 | [0, 60) | 2 | 125 | 65 |
| L2 | [60, 120) | 1 | 75 | 75 |
| L3 | [0, 60) | 2 | 50 | 30 |
| L3 | [60, 120) | 1 | 40 | 40 |

The stops restore each task from its own checkpoint.""",
        {"tasks": 3})


if __name__ == "__main__":
    for case in [filter_project, tumbling_window, dead_letters, skip_bad_records,
                 fail_on_bad_record, hopping_window, session_window, late_dead_letter,
                 regression, interval_join, lookup_join, clustering, partition_tasks]:
        case()
