"""`make bench`, ad hoc SQL part: first-row and full-result latency of typical analyst queries
over the benchmark week, through the shell and Flight SQL, beside DuckDB on the same files.

The week is the one bench_rules.py builds (reused when present). For each query, RUNS times,
interleaved:
  shell   `flowaudit sql -c Q --format csv`, a new process each time (what an analyst's script
          pays): first row = the first data line on stdout, full = end of output.
  flight  pyarrow.flight against one running `flowaudit serve --no-scheduler --flight`, after a
          basic-auth handshake: first row = GetFlightInfo + DoGet up to the first batch, full =
          every batch read.
  duckdb  DuckDB (Python), in process, views over the same Parquet opened once (the warm
          counterpart of flight): first row = the first record batch, full = the whole Arrow
          table.
  duckdb-cold  the same with a new connection and views each time (the counterpart of shell,
          without the process start).
flowaudit's shell and server get `[sql] threads` = BENCH_SQL_THREADS (default: every core, as
DuckDB uses), not the product's default of half the cores, so that both engines have the same
machine; BENCH_SQL_THREADS=1 measures that default.
Row counts of all four must agree (checked every round). Medians are written to
OUTDIR/sql/results.json and printed.
Usage: python scripts/bench_sql.py BIN OUTDIR
"""
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import duckdb
import pyarrow.flight as flight

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_rules import FIRST, ROOT, build_week  # noqa: E402
from duckdb_rules import setup  # noqa: E402
from flight_client import any_command  # noqa: E402

RUNS = int(os.environ.get("BENCH_RUNS", "5"))
# flowaudit's query threads: every core by default, as DuckDB has.
THREADS = int(os.environ.get("BENCH_SQL_THREADS", str(os.cpu_count() or 1)))
DAY = str(FIRST.replace(day=FIRST.day + 3))

QUERIES = {
    "egress_by_country": "SELECT dst_country, count(*) AS flows, sum(bytes) AS bytes FROM flows "
                         "WHERE dst_zone = 'external' GROUP BY dst_country ORDER BY bytes DESC",
    "denials_by_employee": "SELECT e.name, g.data_category, count(*) AS n FROM gateway_events g "
                           "JOIN employees e ON e.employee_id = g.employee_id WHERE g.decision = 'deny' "
                           "GROUP BY e.name, g.data_category ORDER BY n DESC, e.name, g.data_category LIMIT 20",
    "hourly_egress_one_day": "SELECT date_trunc('hour', ts) AS hour, sum(bytes) AS bytes FROM flows "
                             f"WHERE date = '{DAY}' AND dst_zone = 'external' GROUP BY 1 ORDER BY 1",
    "one_event": "SELECT * FROM gateway_events WHERE event_id = 'ev-2026-11-18-0067312'",
    "one_host_one_day": "SELECT ts, dst_ip, dst_port, bytes FROM flows "
                        f"WHERE date = '{DAY}' AND src_ip = '10.20.1.10' ORDER BY ts",
    "one_day_of_flows": f"SELECT ts, src_ip, dst_ip, bytes FROM flows WHERE date = '{DAY}'",
}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def shell(bin_, cfg, wh, policy, q):
    t = time.perf_counter()
    p = subprocess.Popen([bin_, "--config", cfg, "sql", "--warehouse", wh, "--policy", policy, "-c", q, "--format", "csv"],
                         stdout=subprocess.PIPE, text=True, env={**os.environ, "FLOWAUDIT_LOG": "warn"})
    p.stdout.readline()  # header
    first = None
    rows = 0
    for _ in p.stdout:
        if first is None:
            first = time.perf_counter() - t
        rows += 1
    if p.wait() != 0:
        sys.exit(f"flowaudit sql failed on {q}")
    full = time.perf_counter() - t
    return first if first is not None else full, full, rows


def flight_run(client, opts, q):
    t = time.perf_counter()
    info = client.get_flight_info(flight.FlightDescriptor.for_command(any_command("CommandStatementQuery", q)), opts)
    reader = client.do_get(info.endpoints[0].ticket, opts)
    first = None
    rows = 0
    while True:
        try:
            chunk = reader.read_chunk()
        except StopIteration:
            break
        if chunk.data is None:
            continue
        if first is None and chunk.data.num_rows:
            first = time.perf_counter() - t
        rows += chunk.data.num_rows
    full = time.perf_counter() - t
    return first if first is not None else full, full, rows


def duck_run(con, q):
    t = time.perf_counter()
    reader = con.sql(q).to_arrow_reader(2048)
    first = None
    rows = 0
    for b in reader:
        if first is None and b.num_rows:
            first = time.perf_counter() - t
        rows += b.num_rows
    full = time.perf_counter() - t
    return first if first is not None else full, full, rows


def duck_cold(wh, policy, q):
    t = time.perf_counter()
    con = duckdb.connect()
    setup(con, wh, policy)
    first, full, rows = duck_run(con, q)
    setup_s = time.perf_counter() - t - full
    con.close()
    return first + setup_s, full + setup_s, rows


def main(bin_, out):
    wh = build_week(bin_, os.path.join(out, "rules"))
    policy = os.path.join(ROOT, "fixtures/policy")
    port = free_port()
    cfg = tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False)
    cfg.write(f'[sql]\nthreads = {THREADS}\n\n[[flight.users]]\nname = "bench"\npassword = "bench"\n')
    cfg.close()
    server = subprocess.Popen([bin_, "--config", cfg.name, "serve", "--no-scheduler", "--flight", f"127.0.0.1:{port}",
                               "--warehouse", wh, "--policy", policy],
                              stderr=subprocess.PIPE, text=True, env={**os.environ, "FLOWAUDIT_LOG": "info"})
    for line in server.stderr:
        if "Flight SQL listening" in line:
            break
    else:
        sys.exit("flowaudit serve --flight did not start")
    # Keep reading its log so that the server never blocks on a full pipe.
    threading.Thread(target=lambda: [None for _ in server.stderr], daemon=True).start()
    client = flight.FlightClient(f"grpc://127.0.0.1:{port}")
    opts = flight.FlightCallOptions(headers=[client.authenticate_basic_token("bench", "bench")])
    warm = duckdb.connect()
    setup(warm, wh, policy)
    results = {}
    try:
        for name, q in QUERIES.items():
            samples = {k: ([], []) for k in ["shell", "flight", "duckdb", "duckdb-cold"]}
            for i in range(RUNS + 1):  # the first round warms the page cache and is dropped
                got = {
                    "shell": shell(bin_, cfg.name, wh, policy, q),
                    "flight": flight_run(client, opts, q),
                    "duckdb": duck_run(warm, q),
                    "duckdb-cold": duck_cold(wh, policy, q),
                }
                rows = {k: v[2] for k, v in got.items()}
                if len(set(rows.values())) != 1:
                    sys.exit(f"{name}: row counts differ: {rows}")
                if i == 0:
                    continue
                for k, (first, full, _) in got.items():
                    samples[k][0].append(first)
                    samples[k][1].append(full)
            results[name] = {"rows": rows["duckdb"]} | {
                k: {"first_ms": round(statistics.median(f) * 1000, 1), "full_ms": round(statistics.median(a) * 1000, 1)}
                for k, (f, a) in samples.items()
            }
            r = results[name]
            print(f"{name} ({r['rows']} rows): " + ", ".join(
                f"{k} {r[k]['first_ms']}/{r[k]['full_ms']} ms" for k in samples), flush=True)
    finally:
        server.terminate()
        server.wait()
        os.unlink(cfg.name)
    os.makedirs(os.path.join(out, "sql"), exist_ok=True)
    with open(os.path.join(out, "sql", "results.json"), "w") as f:
        json.dump({"runs": RUNS, "threads": THREADS, "queries": QUERIES, "results": results}, f, indent=2)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
