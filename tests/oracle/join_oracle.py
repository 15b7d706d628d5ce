"""Independent oracle for the repartitioned interval join: every pair of sensor readings of
topics A and B with the same machine and event times at most --within-ms apart, computed
with DuckDB from the raw Kafka messages of both topics (JSON lines of
{"partition", "offset", "payload_b64"}; every message is a valid reading, none late).

Output: --out gets one JSON object per pair, sorted.
"""

import argparse
import base64
import json
import os
import tempfile

import duckdb


def load(con, name, path):
    with tempfile.NamedTemporaryFile("w", suffix=".jsonl", delete=False) as tmp:
        with open(path) as f:
            for line in f:
                m = json.loads(line)
                r = json.loads(base64.b64decode(m["payload_b64"]))
                tmp.write(json.dumps({"machine_id": r["machine_id"], "ts": r["ts"],
                                      "temperature": r["temperature"]}) + "\n")
    con.execute(
        f"""CREATE TABLE {name} AS SELECT * FROM read_json(?, format = 'newline_delimited',
            columns = {{'machine_id': 'VARCHAR', 'ts': 'BIGINT', 'temperature': 'DOUBLE'}})""",
        [tmp.name],
    )
    os.unlink(tmp.name)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--a", required=True)
    ap.add_argument("--b", required=True)
    ap.add_argument("--within-ms", type=int, required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    con = duckdb.connect()
    load(con, "a", args.a)
    load(con, "b", args.b)
    result = con.execute(
        """
        SELECT a.machine_id, a.ts AS a_ts, b.ts AS b_ts,
               a.temperature AS a_temperature, b.temperature AS b_temperature
        FROM a JOIN b ON a.machine_id = b.machine_id
         AND b.ts BETWEEN a.ts - $within AND a.ts + $within
        ORDER BY 1, 2, 3, 4, 5
        """,
        {"within": args.within_ms},
    )
    names = [d[0] for d in result.description]
    with open(args.out, "w") as out:
        for row in result.fetchall():
            out.write(json.dumps(dict(zip(names, row))) + "\n")


if __name__ == "__main__":
    main()
