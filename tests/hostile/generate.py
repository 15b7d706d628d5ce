#!/usr/bin/env python3
"""Writes the generated hostile pipelines of this folder (the ones too long to write by hand).

Run from anywhere: python3 tests/hostile/generate.py [DIR] (DIR defaults to this folder;
tests/hostile.rs writes to a temporary one and compares). Each file starts with `# expect: TEXT`
(what `pipectl validate` and a deploy must say); `# expect-deploy: TEXT` where the daemon's
answer differs (its check runs in a child process under a budget). tests/hostile.rs checks that
the committed files are what this script writes.
"""
import os

import sys

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = sys.argv[1] if len(sys.argv) > 1 else HERE

HEAD = """apiVersion: pipelines/v1
kind: Pipeline
metadata:
  name: {name}
spec:
  sources:
    - name: readings
      kafka: {{ topic: hostile.readings }}
      format: json
      schema: production/sensor_reading
"""


def sql_case(name, comment, expect, sql, expect_deploy=None):
    lines = [f"# {comment}", f"# expect: {expect}"]
    if expect_deploy:
        lines.append(f"# expect-deploy: {expect_deploy}")
    body = HEAD.format(name=name) + "  transforms:\n    - name: t\n      sql: |\n"
    body += "".join(f"        {line}\n" for line in sql)
    return "\n".join(lines) + "\n" + body


def write(file, text):
    with open(os.path.join(OUT, file), "w") as f:
        f.write(text)


def main():
    write("sum-of-300-terms.yaml", sql_case(
        "sum-of-300-terms",
        "A 4 KB sum of 300 terms overflowed the daemon's stack (it aborted, even on a dry run).",
        "an expression nests more than 256 deep",
        ["SELECT temperature"] + ["  + temperature"] * 299 + ["  AS x FROM readings"]))
    write("or-3000.yaml", sql_case(
        "or-3000",
        "3,000 ORs within the size limit: a deep expression tree.",
        "an expression nests more than 256 deep",
        ["SELECT line_id FROM readings WHERE temperature = 1"] + ["  OR temperature = 1"] * 2999))
    write("or-10000.yaml", sql_case(
        "or-10000",
        "10,000 ORs aborted the daemon.",
        "over the limit of 65536",
        ["SELECT line_id FROM readings WHERE temperature = 1"] + ["  OR temperature = 1"] * 9999))
    write("union-1000.yaml", sql_case(
        "union-1000",
        "1,000 UNION ALL branches within the size limit.",
        "SELECT blocks",
        ["SELECT line_id FROM readings"] + ["UNION ALL SELECT line_id FROM readings"] * 999))
    write("union-2000.yaml", sql_case(
        "union-2000",
        "2,000 UNION ALL branches aborted the daemon.",
        "over the limit of 65536",
        ["SELECT line_id FROM readings"] + ["UNION ALL SELECT line_id FROM readings"] * 1999))
    write("join-300.yaml", sql_case(
        "join-300",
        "300 JOINs planned for minutes.",
        "more than 32 tables",
        ["SELECT r0.line_id FROM readings r0"]
        + [f"JOIN readings r{i} ON r0.line_id = r{i}.line_id" for i in range(1, 300)]))
    write("folded-constants.yaml", sql_case(
        "folded-constants",
        "400 calls that each fold to a 1 MB constant: 400 MB while planning. pipectl refuses "
        "the result; the daemon's check child runs out of its memory budget first.",
        "fold to a value",
        ["SELECT line_id"] + [f"  , repeat('x', 1000000) AS a{i}" for i in range(400)]
        + ["FROM readings"],
        expect_deploy="exceeded its budget"))
    values = ", ".join(f"v{i}" for i in range(10000))
    write("one-hot-10000.yaml",
          "# A one-hot feature of 10,000 values took 850 MB and a full core.\n"
          "# expect: over the limit of 128\n"
          + HEAD.format(name="one-hot-10000")
          + "  models:\n    - name: m\n      input: readings\n      regression:\n"
          + "        target: failure_rate\n"
          + f"        features: [temperature, {{ name: machine_id, one_hot: [{values}] }}]\n")


if __name__ == "__main__":
    main()
