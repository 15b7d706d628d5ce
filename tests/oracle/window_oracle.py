"""Independent oracle for tumbling-window results over sensor readings, computed with DuckDB.

Input: a JSON-lines file of the raw Kafka messages of the input topic, one object per message:
{"partition": P, "offset": O, "payload_b64": "..."} (exactly what the broker holds).

It decides validity with its own reading of the schema (not the engine's decoder), applies
the lateness rule of the engine's documentation with a DuckDB window function, and
aggregates with DuckDB:

  a record is late for its window when the window's end is at or before the largest event
  time seen earlier in the same partition (in offset order) minus max_out_of_order.

Output: --windows gets one JSON object per window row, ordered by window_end then line_id;
--invalid gets the [partition, offset] of every message that is not a valid reading.
"""

import argparse
import base64
import datetime
import json
import os
import tempfile

import duckdb

NUMBERS = ("temperature", "humidity", "pressure", "speed", "vibration")


def parse_ts(value):
    """Event time in ms: an integer, or an RFC 3339 string."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        try:
            t = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
        if t.tzinfo is None:
            t = t.replace(tzinfo=datetime.timezone.utc)
        return int(t.timestamp() * 1000)
    return None


def is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def reading(payload):
    """The reading as a tuple, or None if the message is not a valid sensor reading."""
    try:
        obj = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(obj, dict):
        return None
    if not isinstance(obj.get("line_id"), str) or not isinstance(obj.get("machine_id"), str):
        return None
    ts = parse_ts(obj.get("ts"))
    if ts is None:
        return None
    if not all(is_number(obj.get(k)) for k in NUMBERS):
        return None
    rate = obj.get("failure_rate")
    if rate is not None and not is_number(rate):
        return None
    return (obj["line_id"], ts, *(float(obj[k]) for k in NUMBERS), None if rate is None else float(rate))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--input", required=True)
    ap.add_argument("--size-ms", type=int, required=True)
    ap.add_argument("--allowed-ms", type=int, required=True)
    ap.add_argument("--windows", required=True)
    ap.add_argument("--invalid", required=True)
    args = ap.parse_args()

    rows, invalid = [], []
    with open(args.input) as f:
        for line in f:
            m = json.loads(line)
            r = reading(base64.b64decode(m["payload_b64"]))
            if r is None:
                invalid.append([m["partition"], m["offset"]])
            else:
                rows.append((m["partition"], m["offset"], *r))

    con = duckdb.connect()
    columns = ["partition", "offset", "line_id", "ts", *NUMBERS, "failure_rate"]
    # Bulk load through a JSON-lines file (row-by-row inserts are far slower). repr() of a
    # Python float round-trips exactly, and so does DuckDB's DOUBLE parse of it.
    with tempfile.NamedTemporaryFile("w", suffix=".jsonl", delete=False) as tmp:
        for r in rows:
            tmp.write(json.dumps(dict(zip(columns, r))) + "\n")
    con.execute(
        """CREATE TABLE ev AS SELECT * FROM read_json(?, format = 'newline_delimited', columns = {
             'partition': 'INTEGER', 'offset': 'BIGINT', 'line_id': 'VARCHAR', 'ts': 'BIGINT',
             'temperature': 'DOUBLE', 'humidity': 'DOUBLE', 'pressure': 'DOUBLE',
             'speed': 'DOUBLE', 'vibration': 'DOUBLE', 'failure_rate': 'DOUBLE'})""",
        [tmp.name],
    )
    os.unlink(tmp.name)
    result = con.execute(
        """
        WITH ordered AS (
            SELECT *, max(ts) OVER (PARTITION BY partition ORDER BY "offset"
                                    ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS stream_time,
                   (ts // $size) * $size AS ws
            FROM ev
        ),
        kept AS (
            SELECT * FROM ordered
            WHERE stream_time IS NULL OR ws + $size > stream_time - $allowed
        )
        SELECT line_id, ws AS window_start, ws + $size AS window_end,
               count(*) AS readings, count(failure_rate) AS rated,
               sum(temperature) AS sum_temperature, avg(temperature) AS avg_temperature,
               min(pressure) AS min_pressure, max(vibration) AS max_vibration,
               avg(failure_rate) AS avg_failure_rate,
               (SELECT count(*) FROM ordered) - (SELECT count(*) FROM kept) AS late_total
        FROM kept
        GROUP BY line_id, ws
        ORDER BY window_end, line_id
        """,
        {"size": args.size_ms, "allowed": args.allowed_ms},
    )
    names = [d[0] for d in result.description]
    with open(args.windows, "w") as out:
        for row in result.fetchall():
            out.write(json.dumps(dict(zip(names, row))) + "\n")
    with open(args.invalid, "w") as out:
        json.dump(sorted(invalid), out)


if __name__ == "__main__":
    main()
