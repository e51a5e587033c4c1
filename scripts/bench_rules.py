"""`make bench`, rules part: the whole rule pack over a generated week, flowaudit beside DuckDB.

A week of traffic (BENCH_DAYS days, default 7; BENCH_WEEK_FLOWS flows and BENCH_WEEK_EVENTS
gateway events in all, default 10M and 1M) is generated with `flowaudit generate` and written to
a warehouse with `flowaudit convert --into-warehouse` (one Parquet file and Delta commit per
table and day). Then, RUNS times,
interleaved:
  A. `flowaudit rules run --from D1 --to D7`: every rule over every day (one run per day), as a
     nightly backfill would; wall time of the process, and the sum of the rules' query times from
     its run records;
  B. DuckDB (Python) running the same rule files, rendered for the same windows, over the same
     Parquet files (scripts/duckdb_rules.py --per-day); wall time of the process, and the sum of
     its query times.
  C. the same `rules run` with `--engine ballista://…` on a local cluster (`flowaudit cluster`:
     a scheduler and one executor with 2 slots, on the same 2 cores: this measures the cluster's
     overhead, not a speed-up); BENCH_CLUSTER=0 leaves it out.
  D. DuckDB again, with each rule that reads a summary replaced by the rule as it was over the
     raw tables (fixtures/raw_rules/): DuckDB's own best form of those rules, since it reads a
     summary as a view it computes at every run. Ratios are given against both B and D.
All must return the same number of rows per rule (checked every round).
Usage: python scripts/bench_rules.py BIN OUTDIR
"""
import contextlib
import datetime as dt
import socket
import glob
import json
import os
import shutil
import statistics
import subprocess
import sys
import time

RUNS = int(os.environ.get("BENCH_RUNS", "5"))
DAYS = int(os.environ.get("BENCH_DAYS", "7"))
FLOWS = int(os.environ.get("BENCH_WEEK_FLOWS", "10000000"))
EVENTS = int(os.environ.get("BENCH_WEEK_EVENTS", "1000000"))
FIRST = dt.date(2026, 11, 15)
PY = sys.executable
HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def sh(cmd, **kw):
    t = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if p.returncode != 0:
        sys.exit(f"{cmd} failed ({p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
    return time.perf_counter() - t, p.stdout


def build_week(bin_, out):
    wh = os.path.join(out, "warehouse")
    stamp = os.path.join(out, f"week-{DAYS}-{FLOWS}-{EVENTS}.done")
    if os.path.exists(stamp):
        return wh
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    policy = os.path.join(ROOT, "fixtures/policy")
    geoip = os.path.join(ROOT, "fixtures/geoip/ranges.csv")
    for i in range(DAYS):
        day = FIRST + dt.timedelta(days=i)
        inp = os.path.join(out, "input", str(day))
        t, _ = sh([bin_, "generate", "--date", str(day), "--seed", str(100 + i), "--events", str(EVENTS // DAYS),
                   "--flows", str(FLOWS // DAYS), "--out", inp, "--policy", policy, "--geoip", geoip])
        print(f"  generated {day} in {t:.1f} s", flush=True)
        for table, f in [("gateway_events", "gateway.jsonl"), ("flows", "flows.jsonl")]:
            sh([bin_, "convert", "--input", os.path.join(inp, f), "--table", table,
                "--out", os.path.join(inp, f"{table}.parquet"), "--policy", policy, "--geoip", geoip,
                "--into-warehouse", wh, "--partition", f"{day}/00"])
        shutil.rmtree(inp)
    open(stamp, "w").close()
    return wh


def free_port():
    with contextlib.closing(socket.socket()) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_cluster(bin_, wh, policy, logdir):
    """A scheduler and one executor on 127.0.0.1 with the client's policy and no GeoIP database
    (as the embedded arm's `rules run`: the policy fingerprints must match); returns (engine URL,
    processes)."""
    sp, ep = free_port(), free_port()
    while ep + 1 == sp:
        ep = free_port()
    common = ["--warehouse", wh, "--policy", policy]
    env = {**os.environ, "FLOWAUDIT_LOG": "info"}
    logs = [open(os.path.join(logdir, f"{n}.log"), "w") for n in ("scheduler", "executor")]
    procs = [subprocess.Popen([bin_, "cluster", "scheduler", "--bind", f"127.0.0.1:{sp}", *common],
                              stdout=logs[0], stderr=logs[0], env=env)]
    time.sleep(2)
    procs.append(subprocess.Popen([bin_, "cluster", "executor", "--scheduler", f"127.0.0.1:{sp}",
                                   "--bind", f"127.0.0.1:{ep}", "--slots", "2", "--work-dir",
                                   os.path.join(logdir, "executor-work"), *common],
                                  stdout=logs[1], stderr=logs[1], env=env))
    deadline = time.time() + 60
    while "Executor registration succeed" not in open(os.path.join(logdir, "executor.log")).read():
        if time.time() > deadline or any(p.poll() is not None for p in procs):
            sys.exit("the cluster did not start: see " + logdir)
        time.sleep(0.2)
    return f"ballista://127.0.0.1:{sp}", procs


def run_flowaudit(bin_, wh, policy, last, engine=None):
    """One `rules run` over the week with a fresh alert store: (wall s, queries s, rows, ms per rule)."""
    for d in ["_alerts", "_runs", "alerts"]:
        shutil.rmtree(os.path.join(wh, d), ignore_errors=True)
    cmd = [bin_, "rules", "run", "--warehouse", wh, "--policy", policy, "--rules-dir",
           os.path.join(ROOT, "queries"), "--from", str(FIRST), "--to", str(last)]
    if engine:
        cmd += ["--engine", engine]
    t, _ = sh(cmd, env={**os.environ, "FLOWAUDIT_LOG": "warn"})
    runs = [json.loads(l) for l in open(os.path.join(wh, "_runs", "runs.jsonl"))]
    q = sum(x["millis"] for run in runs for x in run["rules"]) / 1000
    rows, ms = {}, {}
    for run in runs:
        for x in run["rules"]:
            rows[x["id"]] = rows.get(x["id"], 0) + x["rows"]
            ms[x["id"]] = ms.get(x["id"], 0) + x["millis"]
    return t, q, rows, ms


def run_duckdb(wh, policy, end, files, wall, q, per_rule, rows_fa, what):
    """One round of DuckDB over the rule `files`: its wall and query times appended to `wall`
    and `q`, each rule's to `per_rule`; stops if a rule's row count is not flowaudit's."""
    t, so = sh([PY, os.path.join(HERE, "duckdb_rules.py"), "--per-day", wh, policy,
                f"{FIRST}T00:00:00Z", f"{end}T00:00:00Z", *files])
    res = json.loads(so)
    wall.append(t)
    q.append(sum(v["ms"] for v in res.values()) / 1000)
    for k, v in res.items():
        per_rule.setdefault(k, []).append(v["ms"])
    rows = {k: len(v["rows"]) for k, v in res.items()}
    if rows != rows_fa:
        sys.exit(f"row counts differ: flowaudit {rows_fa} {what} {rows}")


def main(bin_, out):
    out = os.path.join(out, "rules")
    print(f"rules bench: {DAYS} days, {FLOWS} flows, {EVENTS} gateway events; {RUNS} rounds", flush=True)
    wh = build_week(bin_, out)
    policy = os.path.join(ROOT, "fixtures/policy")
    rules = sorted(glob.glob(os.path.join(ROOT, "queries", "*.sql")))
    raw = {os.path.basename(p): p for p in glob.glob(os.path.join(ROOT, "fixtures", "raw_rules", "*.sql"))}
    raw_rules = [raw.get(os.path.basename(p), p) for p in rules]
    last = FIRST + dt.timedelta(days=DAYS - 1)
    end = FIRST + dt.timedelta(days=DAYS)
    fa_wall, fa_q, dk_wall, dk_q, cl_wall, cl_q = [], [], [], [], [], []
    engine, procs = None, []
    if os.environ.get("BENCH_CLUSTER", "1") != "0":
        engine, procs = start_cluster(bin_, wh, policy, out)
    per_rule_fa, per_rule_dk, per_rule_raw = {}, {}, {}
    raw_wall, raw_q = [], []
    for r in range(RUNS):
        # flowaudit: a fresh alert store each round, so every round raises the same alerts.
        t, q, rows_fa, ms_fa = run_flowaudit(bin_, wh, policy, last)
        for k, v in ms_fa.items():
            per_rule_fa.setdefault(k, []).append(v)
        fa_wall.append(t)
        fa_q.append(q)
        if engine:
            t, q, rows_cl, _ = run_flowaudit(bin_, wh, policy, last, engine)
            if rows_cl != rows_fa:
                sys.exit(f"row counts differ: embedded {rows_fa} cluster {rows_cl}")
            cl_wall.append(t)
            cl_q.append(q)
        for files, wall, qs, per_rule, what in [(rules, dk_wall, dk_q, per_rule_dk, "duckdb"),
                                               (raw_rules, raw_wall, raw_q, per_rule_raw, "duckdb over the raw rules")]:
            run_duckdb(wh, policy, end, files, wall, qs, per_rule, rows_fa, what)
        cluster = f", cluster {cl_wall[-1]:.2f} s (queries {cl_q[-1]:.2f} s)" if engine else ""
        print(f"  round {r + 1}: flowaudit {fa_wall[-1]:.2f} s (queries {fa_q[-1]:.2f} s), "
              f"DuckDB {dk_wall[-1]:.2f} s (queries {dk_q[-1]:.2f} s), "
              f"DuckDB raw rules {raw_wall[-1]:.2f} s (queries {raw_q[-1]:.2f} s){cluster}; rows {sum(rows_fa.values())}", flush=True)
    for p in procs:
        p.terminate()
        p.wait()
    m = statistics.median
    summary = {
        "days": DAYS, "flows": FLOWS, "events": EVENTS, "runs": RUNS,
        "flowaudit_wall_s": m(fa_wall), "flowaudit_queries_s": m(fa_q),
        "duckdb_wall_s": m(dk_wall), "duckdb_queries_s": m(dk_q),
        "ratio_wall": m(fa_wall) / m(dk_wall), "ratio_queries": m(fa_q) / m(dk_q),
        "duckdb_raw_rules_wall_s": m(raw_wall), "duckdb_raw_rules_queries_s": m(raw_q),
        "ratio_wall_raw_rules": m(fa_wall) / m(raw_wall), "ratio_queries_raw_rules": m(fa_q) / m(raw_q),
        "per_rule_ms": {k: {"flowaudit": m(per_rule_fa[k]), "duckdb": m(per_rule_dk[k]),
                            "duckdb_raw_rule": m(per_rule_raw[k])} for k in per_rule_fa},
        "rows": rows_fa,
    }
    if engine:
        summary.update({"cluster_wall_s": m(cl_wall), "cluster_queries_s": m(cl_q),
                        "cluster_over_embedded_wall": m(cl_wall) / m(fa_wall),
                        "cluster_over_embedded_queries": m(cl_q) / m(fa_q)})
    print(json.dumps(summary, indent=2))
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
