#!/usr/bin/env python3
"""Write the starting corpus of every fuzz target into OUT/<target>/ (default fuzz/seeds).

The seeds are the repository's own inputs (fixtures/samples, fixtures/rules, fixtures/geoip,
queries/, the generator's output when GEN_DIR names a `flowaudit generate` directory) and
hand-written hostile ones: deep nesting, huge numbers, NaN, invalid UTF-8, overlong strings,
nanosecond timestamps, duplicate keys, nested and conflicting ranges, Delta log commits
that no writer made. `make fuzz` starts from the committed corpus (fuzz/corpus, which began
as these seeds and was minimised with `cargo afl cmin`); this script documents where it came
from and rebuilds it. Standard library only.
"""
import hashlib
import json
import os
import pathlib
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
OUT = pathlib.Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "fuzz" / "seeds"
GEN_DIR = os.environ.get("GEN_DIR")


def put(target, name, data):
    d = OUT / target
    d.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    (d / name).write_bytes(data)


def lines(path, limit=None):
    out = [l for l in pathlib.Path(path).read_bytes().split(b"\n") if l.strip()]
    return out[:limit] if limit else out


def hostile_json(good: dict, target):
    """Variants of one good record that a hostile or broken producer sends."""
    enc = lambda d: json.dumps(d).encode()
    k = next(iter(good))
    seeds = {
        "empty": b"",
        "whitespace": b" \t\r\n",
        "null": b"null",
        "array": b"[1,2,3]",
        "string": b'"{}"',
        "object-empty": b"{}",
        "truncated": enc(good)[:-7],
        "trailing": enc(good) + b"{}",
        "bom": b"\xef\xbb\xbf" + enc(good),
        "invalid-utf8": enc(good).replace(b'"', b'"\xff', 1),
        "invalid-utf8-value": enc({**good, k: "x"}).replace(b'"x"', b'"\xc3\x28"'),
        "lone-surrogate": enc({**good, k: "x"}).replace(b'"x"', b'"\\ud800"'),
        "nul": enc({**good, k: "a\u0000b"}),
        "deep-array": enc({**good, k: 0}).replace(b"0", b"[" * 5000 + b"]" * 5000, 1),
        "deep-object": b'{"a":' * 3000 + b"1" + b"}" * 3000,
        "huge-int": enc({**good, k: 0}).replace(b": 0", b": 123456789012345678901234567890", 1),
        "huge-exp": enc({**good, k: 0}).replace(b": 0", b": 1e400", 1),
        "neg-zero": enc({**good, k: 0}).replace(b": 0", b": -0.0", 1),
        "nan": enc({**good, k: 0}).replace(b": 0", b": NaN", 1),
        "infinity": enc({**good, k: 0}).replace(b": 0", b": -Infinity", 1),
        "overlong": enc({**good, k: "x" * 5000}),
        "duplicate-key": enc(good)[:-1] + b", " + json.dumps(k).encode() + b': "again"}',
        "all-null": enc({key: None for key in good}),
        "all-objects": enc({key: {"a": [1]} for key in good}),
        "all-bools": enc({key: True for key in good}),
        "all-floats": enc({key: 1.5 for key in good}),
        "all-negative": enc({key: -9223372036854775808 for key in good}),
        "all-u64max": enc({key: 18446744073709551615 for key in good}),
        "many-lines": b"\n".join([enc(good)] * 13),
    }
    for name, data in seeds.items():
        put(target, f"hostile-{name}", data)


def gateway():
    files = sorted(ROOT.glob("fixtures/rules/*/gateway_events.jsonl"))
    good = None
    for f in files:
        for i, l in enumerate(lines(f, 3)):
            put("gateway", f"{f.parent.name}-{i}", l)
            good = good or json.loads(l)
    if GEN_DIR:
        put("gateway", "generated", b"\n".join(lines(pathlib.Path(GEN_DIR) / "gateway.jsonl", 40)))
    hostile_json(good, "gateway")
    for name, ts in {
        "ts-nanos": "2026-11-21T10:00:00.123456789Z",
        "ts-year-10000": "+10000-01-01T00:00:00Z",
        "ts-year-0": "0000-01-01T00:00:00Z",
        "ts-offset": "2026-11-21T10:00:00+14:00",
        "ts-leap-second": "2026-06-30T23:59:60Z",
        "ts-space": "2026-11-21 10:00:00Z",
        "ts-epoch": 1795255200,
        "ts-epoch-ns": 1795255200123456789,
    }.items():
        put("gateway", name, json.dumps({**good, "ts": ts}))
    for name, ip in {
        "ip-zone": "fe80::1%eth0",
        "ip-port": "31.12.0.7:443",
        "ip-mapped": "::ffff:31.12.0.7",
        "ip-octal": "031.012.0.7",
        "ip-enclave": "10.20.0.1",
    }.items():
        put("gateway", name, json.dumps({**good, "dst_ip": ip}))
    put("gateway", "enum-case", json.dumps({**good, "action": "EXPORT", "employee_country": "de"}))
    put("gateway", "records-float", json.dumps({**good, "records": 10.0}))


def flows():
    good = None
    for f in sorted(ROOT.glob("fixtures/rules/*/flows.jsonl")):
        for i, l in enumerate(lines(f, 2)):
            put("flow_flowaudit", f"{f.parent.name}-{i}", l)
            good = good or json.loads(l)
    if GEN_DIR:
        put("flow_flowaudit", "generated", b"\n".join(lines(pathlib.Path(GEN_DIR) / "flows.jsonl", 40)))
    hostile_json(good, "flow_flowaudit")
    put("flow_flowaudit", "ts-end-before", json.dumps({**good, "ts_end": "1970-01-01T00:00:00Z"}))
    put("flow_flowaudit", "protocol-number", json.dumps({**good, "protocol": 300}))
    put("flow_flowaudit", "port-negative", json.dumps({**good, "src_port": -1, "dst_port": 65536}))

    g = None
    for i, l in enumerate(lines(ROOT / "fixtures/samples/goflow2.jsonl")):
        put("flow_goflow2", f"sample-{i}", l)
        g = g or json.loads(l)
    hostile_json(g, "flow_goflow2")
    for name, v in {
        "ns-zero": 0,
        "ns-ms": 1795255200123,
        "ns-seconds": 1795255200,
        "ns-max": 9223372036854775807,
        "ns-u64": 18446744073709551615,
        "ns-string": "2026-11-21T10:00:00.123456789Z",
        "ns-float": 1.7952552e18,
    }.items():
        put("flow_goflow2", name, json.dumps({**g, "time_flow_start_ns": v, "time_received_ns": v}))
    put("flow_goflow2", "type-number", json.dumps({**g, "type": 3}))
    put("flow_goflow2", "dst-as-max", json.dumps({**g, "dst_as": 4294967296}))

    z = None
    for i, l in enumerate(lines(ROOT / "fixtures/samples/zeek_conn.jsonl")):
        put("flow_zeek", f"sample-{i}", l)
        z = z or json.loads(l)
    hostile_json(z, "flow_zeek")
    for name, v in {
        "ts-ns": 1795255200123456789,
        "ts-ms": 1795255200123,
        "ts-negative": -1.5,
        "ts-tiny": 5e-324,
        "ts-huge": 1e308,
        "ts-max-int": 9223372036854775807,
    }.items():
        put("flow_zeek", name, json.dumps({**z, "ts": v}))
    for name, v in {"dur-huge": 1e308, "dur-int-max": 9223372036854775807, "dur-neg": -1}.items():
        put("flow_zeek", name, json.dumps({**z, "duration": v}))


def geoip():
    csv = (ROOT / "fixtures/geoip/ranges.csv").read_text()
    put("geoip_csv", "fixture", csv)
    for name, text in {
        "nested-v4": "1.0.0.0,1.0.1.255,AU,13335\n1.0.0.128,1.0.0.128,NZ,\n1.0.0.0,1.0.0.255,JP\n",
        "nested-v6": "2001:db8::,2001:db8::ffff,DE,\n2001:db8::10,2001:db8::10,FR,\n",
        "conflict": "1.0.0.0,1.0.0.255,AU\n1.0.0.0,1.0.0.255,NZ\n",
        "partial-overlap": "1.0.0.0,1.0.0.255,AU\n1.0.0.128,1.0.1.0,NZ\n",
        "whole-space": "0.0.0.0,255.255.255.255,ZZ\n::,ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff,-\n",
        "mixed-family": "1.0.0.0,::1,AU\n",
        "backwards": "1.0.0.255,1.0.0.0,AU\n",
        "quoted-header": '"start_ip","end_ip","country"\n"1.0.0.0","1.0.0.255","au"\n',
        "asn-prefix": "1.0.0.0,1.0.0.255,AU,AS13335,extra,cols\n",
        "asn-huge": "1.0.0.0,1.0.0.255,AU,99999999999\n",
        "country-long": "1.0.0.0,1.0.0.255,AUS\n",
        "crlf": "start_ip,end_ip,country\r\n1.0.0.0,1.0.0.255,AU\r\n",
        "comments-only": "# nothing\n\n   \n",
        "bom": "\ufeffstart_ip,end_ip,country\n1.0.0.0,1.0.0.255,AU\n",
        "mapped": "::ffff:1.0.0.0,::ffff:1.0.0.255,AU\n",
        "no-columns": "1.0.0.0\n",
    }.items():
        put("geoip_csv", name, text)
    put("geoip_csv", "invalid-utf8", b"1.0.0.0,1.0.0.255,A\xff\n")
    mmdb = (ROOT / "fixtures/geoip/test.mmdb").read_bytes()
    put("geoip_mmdb", "fixture", mmdb)
    marker = b"\xab\xcd\xefMaxMind.com"
    m = mmdb.find(marker)
    put("geoip_mmdb", "truncated-data", mmdb[: max(1, m // 2)] + mmdb[m:])
    put("geoip_mmdb", "metadata-only", mmdb[m:])
    put("geoip_mmdb", "no-metadata", mmdb[:m])
    put("geoip_mmdb", "flipped", bytes(b ^ 0xFF if i % 97 == 0 else b for i, b in enumerate(mmdb)))


def delta_commit(adds, meta=True, extra=()):
    """One Delta log commit file as flowaudit writes it (commitInfo, adds, txn)."""
    out = []
    info = {"timestamp": 1795255200000, "operation": "WRITE", "operationParameters": {"mode": "Append"}}
    if meta:
        info["flowaudit"] = {"writer": "host-1-0000abcd", "topic": "gw", "partition": 0,
                             "covers_first_offset": 0, "covers_last_offset": 9, "messages": 10,
                             "schema_version": 1, "geoip_sha256": None}
    out.append({"commitInfo": info})
    for i, over in enumerate(adds):
        a = {"path": f"date=2026-11-21/hour=10/part-{i:05}.parquet",
             "partitionValues": {"date": "2026-11-21", "hour": "10"}, "size": 4096,
             "modificationTime": 1795255200000, "dataChange": True, "stats": "{\"numRecords\":10}",
             "tags": {"flowaudit.sha256": "ab" * 32, "flowaudit.rows": "10",
                      "flowaudit.first_offset": "0", "flowaudit.last_offset": "9",
                      "flowaudit.min_event_time": "2026-11-21T10:00:00Z",
                      "flowaudit.max_event_time": "2026-11-21T10:59:59Z"}}
        a.update(over)
        out.append({"add": a})
    out.extend(extra)
    out.append({"txn": {"appId": "flowaudit:gateway_events:gw:0", "version": 9}})
    return ("\n".join(json.dumps(x, separators=(",", ":"), ensure_ascii=False) for x in out) + "\n").encode()


def delta_log():
    good = delta_commit([{}, {"path": "date=2026-11-21/hour=11/part-x.parquet"}])
    put("delta_log", "valid", good)
    put("delta_log", "empty", b"")
    put("delta_log", "torn-tail", good[:-40])
    put("delta_log", "no-commit-info", delta_commit([{}], meta=False))
    put("delta_log", "add-then-remove", delta_commit([{}], extra=[{"remove": {"path": "date=2026-11-21/hour=10/part-00000.parquet", "dataChange": True}}]))
    put("delta_log", "duplicate-add", delta_commit([{}, {}]))
    put("delta_log", "percent-path", delta_commit([{"path": "date=2026-11-21/hour=10/a%20b%zz%2.parquet"}]))
    put("delta_log", "bad-tags", delta_commit([{"tags": {"flowaudit.rows": "-1", "flowaudit.first_offset": "x"}}]))
    put("delta_log", "no-tags", delta_commit([{"tags": None}]))
    put("delta_log", "extremes", delta_commit([{"size": -9223372036854775808, "tags": {"flowaudit.rows": "9223372036854775807", "flowaudit.first_offset": "-9223372036854775808", "flowaudit.last_offset": "9223372036854775807"}}]))
    put("delta_log", "unicode", delta_commit([{"path": "date=\u2028/hour=\u0000/\U0001F600.parquet"}]))
    put("delta_log", "invalid-utf8", good.replace(b"host-1", b"host\xff1", 1))
    put("delta_log", "deep", b'{"add":' + b"[" * 4000 + b"]" * 4000 + b"}\n")
    put("delta_log", "crlf", good.replace(b"\n", b"\r\n"))
    put("delta_log", "not-objects", b"[]\n1\n\"add\"\nnull\n")


def rules():
    for f in sorted(ROOT.glob("queries/*.sql")):
        put("rule_header", f.name, f.read_bytes())
    text = (ROOT / "queries/gateway_bypass.sql").read_text()
    head, _, body = text.partition("\nSELECT")
    def key(k, v):
        return re.sub(rf"^-- {k}:.*$", f"-- {k}: {v}", text, count=1, flags=re.M)

    variants = {
        "lookback-huge": key("lookback", "99999999999999999d"),
        "lookback-years": key("lookback", "1000000000d"),
        "history-huge": key("history", "1000000000d"),
        "schedule-step-huge": key("schedule", "1-5/4294967295 * * * *"),
        "schedule-never": key("schedule", "0 0 31 2 *"),
        "schedule-list": key("schedule", "0,59 0-23/7 1-31 */2 0,7"),
        "crlf": text.replace("\n", "\r\n"),
        "no-query": head + "\n",
        "continuation-first": "--   continued\n" + text,
        "duplicate-key": text.replace("-- lookback:", "-- severity: low\n-- lookback:", 1),
        "placeholders": text + "\n-- {{from}} {{to}} {{history_from}} {{{{to}}}}\n",
        "bom": "\ufeff" + text,
        "id-unicode": text.replace("-- id: gateway_bypass", "-- id: g\u00e4teway", 1),
    }
    for name, t in variants.items():
        put("rule_header", f"hostile-{name}", t)
    put("rule_header", "hostile-invalid-utf8", text.encode().replace(b"title:", b"title: \xff", 1))


def sql():
    for f in sorted(ROOT.glob("queries/*.sql")):
        put("sql_check", f.name, f.read_bytes())
    doc = (ROOT / "docs/sql.md").read_text()
    blocks = [b.split("```", 1)[0] for b in doc.split("```sql")[1:]]
    for i, b in enumerate(blocks):
        put("sql_check", f"docs-sql-{i}", b)
    for name, s in {
        "drop": "DROP TABLE flows",
        "insert": "INSERT INTO flows VALUES (1)",
        "select-into": "SELECT * INTO t FROM flows",
        "copy": "COPY flows TO '/tmp/x.parquet'",
        "external": "CREATE EXTERNAL TABLE x STORED AS PARQUET LOCATION '/etc'",
        "set": "SET datafusion.execution.target_partitions = 1",
        "explain-insert": "EXPLAIN ANALYZE INSERT INTO flows SELECT * FROM flows",
        "explain-explain": "EXPLAIN EXPLAIN SELECT 1",
        "cte-delete": "WITH x AS (SELECT 1) DELETE FROM flows",
        "two": "SELECT 1; DROP VIEW v",
        "placeholders": "SELECT ? , $1, ?, $2 FROM flows WHERE src_ip = ? AND (SELECT ?) > 0",
        "deep-parens": "SELECT " + "(" * 2000 + "1" + ")" * 2000,
        "deep-subquery": "SELECT * FROM " + "(SELECT * FROM " * 200 + "flows" + ") t" * 200,
        "deep-case": "SELECT " + "CASE WHEN 1 THEN " * 300 + "1" + " END" * 300,
        "long-ident": "SELECT " + "a" * 100000,
        "huge-number": "SELECT 1" + "0" * 400 + ", 1e99999, -9223372036854775809",
        "nul": "SELECT '\u0000'",
        "comment-tricks": "SELECT 1 /* ; DROP TABLE flows */ -- ; DELETE",
        "describe": "DESCRIBE flows",
        "show": "SHOW COLUMNS FROM flows",
        "values": "VALUES (1, 'a'), (2, 'b')",
        "unicode": "SELECT '\U0001F600' AS \"\u00e9\"",
    }.items():
        put("sql_check", f"hostile-{name}", s)
    put("sql_check", "hostile-invalid-utf8", b"SELECT '\xff'")


if __name__ == "__main__":
    gateway()
    flows()
    geoip()
    delta_log()
    rules()
    sql()
    for d in sorted(OUT.iterdir()):
        print(f"{d.name}: {len(list(d.iterdir()))} seeds")
