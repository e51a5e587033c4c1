"""Run rule files with DuckDB over a flowaudit warehouse and policy folder: the same SQL the
rules run in flowaudit, for the differential test and the benchmark.

  duckdb_rules.py [--per-day] WAREHOUSE POLICY FROM TO RULE.sql [RULE.sql …]

FROM and TO are RFC 3339 instants. Prints one JSON object: rule id → {"rows": [...], "ms": t}.
With --per-day the window is cut into UTC days, each run separately (as `flowaudit rules run
--from --to` does); rows of all days are listed and ms summed.
The warehouse tables are views over the Parquet files their Delta logs list (Hive-partitioned), the policy CSV files and
networks.toml become tables, the summaries (queries/summaries/*.sql) views of their definitions,
and basis_for(country, ts) is a macro over transfer_bases.
"""
import datetime as dt
import decimal
import json
import os
import re
import sys
import time
import tomllib
import urllib.parse

import duckdb


def live_files(table_dir):
    """The data files a Delta table's JSON commits leave live (each `add` makes a file live, each
    `remove` ends it), in commit order: what any Delta reader reads, and no stray file."""
    log = os.path.join(table_dir, "_delta_log")
    if not os.path.isdir(log):
        return []
    live = {}
    for name in sorted(n for n in os.listdir(log) if re.fullmatch(r"\d{20}\.json", n)):
        with open(os.path.join(log, name)) as f:
            for line in f:
                if not line.strip():
                    continue
                a = json.loads(line)
                if "add" in a:
                    live[urllib.parse.unquote(a["add"]["path"])] = True
                elif "remove" in a:
                    live.pop(urllib.parse.unquote(a["remove"]["path"]), None)
    return [os.path.join(table_dir, p) for p in live]


def setup(con, wh, policy):
    con.execute("SET TimeZone = 'UTC'")
    tables = set()
    for t in ["gateway_events", "flows", "quarantine"]:
        files = live_files(os.path.join(wh, t))
        if files:
            tables.add(t)
            listed = ", ".join("'" + f.replace("'", "''") + "'" for f in files)
            con.execute(f"""CREATE VIEW {t} AS SELECT * FROM read_parquet([{listed}],
                hive_partitioning = true, hive_types = {{'date': VARCHAR, 'hour': VARCHAR}})""")
    # Summaries: flowaudit keeps them per day; here each is the view its definition is.
    summaries = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "queries", "summaries")
    for name in sorted(os.listdir(summaries)):
        if not name.endswith(".sql"):
            continue
        with open(os.path.join(summaries, name)) as f:
            sql = f.read()
        # A summary of a table the warehouse does not have yet is left out, as that table is.
        if re.search(r"\bFROM (\w+)", sql)[1] in tables:
            con.execute(f"CREATE VIEW {name[:-4]} AS {sql}")
    csv = {
        "countries": "{'code': 'VARCHAR', 'name': 'VARCHAR', 'eea': 'BOOLEAN'}",
        "transfer_bases": "{'country': 'VARCHAR', 'basis': 'VARCHAR', 'scope': 'VARCHAR', 'valid_from': 'DATE', 'valid_to': 'DATE', 'reference': 'VARCHAR'}",
        "employees": "{'employee_id': 'VARCHAR', 'name': 'VARCHAR', 'role': 'VARCHAR', 'home_country': 'VARCHAR', 'allowed_locations': 'VARCHAR', 'allowed_categories': 'VARCHAR', 'valid_from': 'DATE', 'valid_to': 'DATE'}",
        "approvals": "{'ticket': 'VARCHAR', 'employee_id': 'VARCHAR', 'data_categories': 'VARCHAR', 'destination_country': 'VARCHAR', 'valid_from': 'DATE', 'valid_to': 'DATE', 'approver': 'VARCHAR'}",
    }
    for name, cols in csv.items():
        con.execute(f"CREATE TABLE {name} AS SELECT * FROM read_csv('{policy}/{name}.csv', header = true, columns = {cols})")
    with open(os.path.join(policy, "networks.toml"), "rb") as f:
        n = tomllib.load(f)
    con.execute("CREATE TABLE gateways (gateway_id VARCHAR, ip VARCHAR, country VARCHAR, expected_interval_s BIGINT)")
    for g in n.get("gateways", []):
        for ip in g["ips"]:
            con.execute("INSERT INTO gateways VALUES (?, ?, ?, ?)", [g["id"], ip, g.get("country"), g["expected_interval_s"]])
    con.execute("CREATE TABLE exporters (exporter VARCHAR, format VARCHAR, expected_interval_s BIGINT, sequenced BOOLEAN)")
    for e in n.get("exporters", []):
        con.execute("INSERT INTO exporters VALUES (?, ?, ?, ?)", [e["id"], e["format"], e["expected_interval_s"], e.get("sequenced", False)])
    # The gaps ingest recorded live in the Delta logs' commit info, which DuckDB does not read:
    # an empty table with flowaudit's columns (the benchmark's warehouse has none).
    con.execute("""CREATE TABLE ingest_gaps (topic VARCHAR, "partition" INTEGER, first_offset BIGINT,
        last_offset BIGINT, missing_offsets BIGINT, reason VARCHAR, writer VARCHAR, table_name VARCHAR,
        version BIGINT, recorded_at TIMESTAMPTZ)""")
    con.execute("""CREATE MACRO basis_for(c, t) AS (
        SELECT first(b.basis) FROM transfer_bases b
        WHERE b.country = c AND b.valid_from <= CAST(t AS DATE)
          AND (b.valid_to IS NULL OR CAST(t AS DATE) <= b.valid_to))""")


def duration(s):
    m = re.fullmatch(r"(\d+)([smhd])", s.strip())
    return dt.timedelta(seconds=int(m[1]) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[m[2]])


def render(text, start, end):
    header = dict(re.findall(r"^-- (\w+): (.*)$", text, re.M))
    sql = "\n".join(l for l in text.splitlines() if not l.startswith("--"))
    hist = start - duration(header["history"]) if "history" in header else start
    lit = lambda t: f"TIMESTAMPTZ '{t.strftime('%Y-%m-%d %H:%M:%S.%f')}+00'"
    for k, v in {"history_from_date": str(hist.date()), "history_from": lit(hist),
                 "from_date": str(start.date()), "to_date": str(end.date()),
                 "from": lit(start), "to": lit(end)}.items():
        sql = sql.replace("{{" + k + "}}", v)
    return header["id"], sql


def plain(v):
    if isinstance(v, dt.datetime):
        return v.astimezone(dt.timezone.utc).isoformat()
    if isinstance(v, (dt.date,)):
        return v.isoformat()
    if isinstance(v, decimal.Decimal):
        return int(v) if v == v.to_integral_value() else float(v)
    return v


def main():
    args = sys.argv[1:]
    per_day = args[0] == "--per-day"
    if per_day:
        args = args[1:]
    wh, policy, start, end = args[:4]
    start = dt.datetime.fromisoformat(start.replace("Z", "+00:00"))
    end = dt.datetime.fromisoformat(end.replace("Z", "+00:00"))
    con = duckdb.connect()
    setup(con, wh, policy)
    windows = [(start, end)]
    if per_day:
        windows = []
        d = start
        while d < end:
            windows.append((d, min(d + dt.timedelta(days=1), end)))
            d += dt.timedelta(days=1)
    out = {}
    for a, b in windows:
        for path in args[4:]:
            rid, sql = render(open(path).read(), a, b)
            t = time.perf_counter()
            table = con.sql(sql).to_arrow_table()
            rows = [{c: plain(v) for c, v in r.items()} for r in table.to_pylist()]
            o = out.setdefault(rid, {"rows": [], "ms": 0.0})
            o["rows"] += rows
            o["ms"] += (time.perf_counter() - t) * 1000
    print(json.dumps(out))


if __name__ == "__main__":
    main()
