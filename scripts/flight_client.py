#!/usr/bin/env python3
"""Independent Flight SQL clients for the tests: ADBC (adbc-driver-flightsql) and pyarrow.flight.

Each mode connects the way an analyst's tool would, tries what the issue names (a query,
metadata, a prepared statement with a parameter, a rejected write, rejected credentials) and
prints what it saw as JSON; the Rust test decides what is right.

    flight_client.py adbc URI USER PASSWORD [--token TOKEN] [--tls-root CERT.pem]
    flight_client.py pyarrow URI USER PASSWORD [--tls-root CERT.pem]

Hostile clients (each bounded in count and time, loopback only):

    flight_client.py attack URI USER:PASSWORD[,USER:PASSWORD…] --sql SQL
        one client per USER:PASSWORD, all sending SQL at the same moment; what each got
    flight_client.py caps URI USER PASSWORD --prepared N --param-bytes B
        N+1 open prepared statements, a parameter of B bytes, two rows of parameters, the
        issue's runaway query, then an ordinary query
    flight_client.py brute URI USER PASSWORD --tries N --lockout S
        N wrong passwords, the right one at once, the right one again after S seconds
    flight_client.py siege URI USER PASSWORD --sql SQL --clients N --stop FILE --max-seconds S
        rounds of N concurrent clients sending SQL until FILE exists (or S seconds pass)
"""
import argparse
import json
import sys


def err(f):
    try:
        f()
    except Exception as e:  # the message is what the test looks at
        return f"{type(e).__name__}: {e}"
    return None


def adbc(a):
    import adbc_driver_flightsql.dbapi as fs
    from adbc_driver_flightsql import DatabaseOptions

    def connect(**kw):
        opts = dict(kw)
        if a.tls_root:
            opts[DatabaseOptions.TLS_ROOT_CERTS.value] = open(a.tls_root).read()
        return fs.connect(a.uri, db_kwargs=opts)

    out = {}
    with connect(username=a.user, password=a.password) as conn:
        cur = conn.cursor()
        cur.execute("SELECT count(*) AS n FROM flows")
        out["flows"] = cur.fetch_arrow_table().to_pylist()
        cur.execute(
            "SELECT dst_country, count(*) AS n FROM flows "
            "WHERE dst_country IS NOT NULL GROUP BY dst_country ORDER BY n DESC, dst_country"
        )
        out["by_country"] = cur.fetch_arrow_table().to_pylist()
        cur.execute("SELECT code, name, eea FROM countries WHERE code = ?", parameters=("DE",))
        out["prepared"] = cur.fetch_arrow_table().to_pylist()
        cur.execute("SELECT code FROM countries WHERE eea = ? AND code < ? ORDER BY code",
                    parameters=(True, "C"))
        out["prepared2"] = cur.fetch_arrow_table().to_pylist()
        objs = conn.adbc_get_objects(depth="tables").read_all().to_pylist()
        out["catalogs"] = [c["catalog_name"] for c in objs]
        out["tables"] = sorted(
            t["table_name"]
            for c in objs
            for s in c["catalog_db_schemas"] or []
            for t in s["db_schema_tables"] or []
        )
        out["flows_columns"] = conn.adbc_get_table_schema("flows").names
        info = conn.adbc_get_info()
        out["info"] = {k: v for k, v in info.items() if isinstance(v, (str, int, bool))}
        out["write_error"] = err(lambda: cur.execute("DROP TABLE flows"))
        out["insert_error"] = err(lambda: cur.execute("INSERT INTO countries VALUES ('XX', 'x', true)"))
        out["copy_error"] = err(lambda: cur.execute("COPY (SELECT 1) TO '/tmp/flowaudit-copy.csv'"))
        cur.close()
    out["bad_password"] = err(lambda: connect(username=a.user, password=a.password + "x").cursor().execute("SELECT 1"))

    def with_token(tok):
        conn = connect(**{DatabaseOptions.AUTHORIZATION_HEADER.value: f"Bearer {tok}"})
        cur = conn.cursor()
        cur.execute("SELECT 1 AS one")
        return cur.fetch_arrow_table().to_pylist()

    if a.token:
        out["token_query"] = with_token(a.token)
        out["bad_token"] = err(lambda: with_token(a.token + "x"))
    print(json.dumps(out, default=str))


def any_command(type_name, field1):
    """A protobuf Any holding a message whose field 1 is the string `field1`."""
    def ld(tag, b):
        n, out = len(b), bytearray([tag << 3 | 2])
        while True:
            out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
            n >>= 7
            if not n:
                break
        return bytes(out) + b

    inner = ld(1, field1.encode())
    return ld(1, f"type.googleapis.com/arrow.flight.protocol.sql.{type_name}".encode()) + ld(2, inner)


def pyarrow_mode(a):
    import pyarrow.flight as flight

    kw = {}
    if a.tls_root:
        kw["tls_root_certs"] = open(a.tls_root, "rb").read()
    client = flight.FlightClient(a.uri, **kw)
    out = {}
    out["bad_password"] = err(lambda: client.authenticate_basic_token(a.user, a.password + "x"))
    header = client.authenticate_basic_token(a.user, a.password)
    opts = flight.FlightCallOptions(headers=[header])

    def query(sql, options):
        desc = flight.FlightDescriptor.for_command(any_command("CommandStatementQuery", sql))
        info = client.get_flight_info(desc, options)
        return client.do_get(info.endpoints[0].ticket, options).read_all()

    t = query("SELECT gateway_id, count(*) AS n FROM gateway_events GROUP BY gateway_id ORDER BY gateway_id", opts)
    out["schema"] = [f"{f.name}:{f.type}" for f in t.schema]
    out["by_gateway"] = t.to_pylist()
    out["write_error"] = err(lambda: query("DELETE FROM flows", opts))
    bad = flight.FlightCallOptions(headers=[(b"authorization", b"Bearer not-a-token")])
    out["bad_token"] = err(lambda: query("SELECT 1", bad))
    out["no_auth"] = err(lambda: query("SELECT 1", flight.FlightCallOptions()))
    print(json.dumps(out, default=str))


def pyarrow_query(uri, user, password, sql):
    """Handshake, then run `sql` to the end; the table, or raises."""
    import pyarrow.flight as flight

    client = flight.FlightClient(uri)
    try:
        header = client.authenticate_basic_token(user, password)
        opts = flight.FlightCallOptions(headers=[header])
        desc = flight.FlightDescriptor.for_command(any_command("CommandStatementQuery", sql))
        info = client.get_flight_info(desc, opts)
        return client.do_get(info.endpoints[0].ticket, opts).read_all()
    finally:
        client.close()


def together(jobs):
    """Run the callables at the same moment (a barrier), each in its thread; their outcomes."""
    import threading

    barrier = threading.Barrier(len(jobs))
    out = [None] * len(jobs)

    def run(i, job):
        barrier.wait(timeout=60)
        try:
            out[i] = {"ok": job()}
        except Exception as e:
            out[i] = {"error": f"{type(e).__name__}: {e}"}

    threads = [threading.Thread(target=run, args=(i, j)) for i, j in enumerate(jobs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    return out


def attack(a):
    clients = [c.split(":", 1) for c in a.user.split(",")]

    def job(user, password):
        return lambda: pyarrow_query(a.uri, user, password, a.sql).num_rows

    outcomes = together([job(u, p) for u, p in clients])
    print(json.dumps([dict(o, user=u) for o, (u, _) in zip(outcomes, clients)], default=str))


def caps(a):
    import adbc_driver_flightsql.dbapi as fs

    out = {}
    with fs.connect(a.uri, db_kwargs={"username": a.user, "password": a.password}) as conn:
        cursors = []
        errors = []
        for i in range(a.prepared + 1):
            cur = conn.cursor()
            cursors.append(cur)
            e = err(lambda: cur.adbc_prepare(f"SELECT {i} AS n"))
            if e:
                errors.append(e)
        out["prepared_opened"] = a.prepared + 1 - len(errors)
        out["prepared_errors"] = errors
        for cur in cursors:
            cur.close()
        cur = conn.cursor()
        # After closing them, preparing works again.
        out["prepared_after_close"] = err(lambda: cur.adbc_prepare("SELECT 1 AS n"))
        cur.close()
        cur = conn.cursor()
        out["big_parameter"] = err(lambda: (cur.execute("SELECT length(?) AS n", parameters=("x" * a.param_bytes,)),
                                            cur.fetch_arrow_table()))
        cur.close()
        cur = conn.cursor()
        out["two_rows"] = err(lambda: cur.executemany("SELECT ? AS n", [(1,), (2,)]))
        cur.close()
        cur = conn.cursor()
        out["runaway"] = err(lambda: (cur.execute(
            "select repeat('x', 400000000) || repeat('y', 400000000) from countries limit 3"),
            cur.fetch_arrow_table()))
        cur.close()
        cur = conn.cursor()
        cur.execute("SELECT length(?) AS n", parameters=("x" * 1000,))
        out["small_parameter"] = cur.fetch_arrow_table().to_pylist()
        cur.execute("SELECT count(*) AS n FROM countries")
        out["ordinary"] = cur.fetch_arrow_table().to_pylist()
        cur.close()
    print(json.dumps(out, default=str))


def brute(a):
    import time
    import pyarrow.flight as flight

    def login(password):
        client = flight.FlightClient(a.uri)
        try:
            client.authenticate_basic_token(a.user, password)
            return "ok"
        finally:
            client.close()

    out = {"wrong": [err(lambda i=i: login(f"{a.password}-wrong-{i}")) for i in range(a.tries)]}
    out["right_during_lockout"] = err(lambda: login(a.password))
    time.sleep(a.lockout)
    out["right_after_lockout"] = err(lambda: login(a.password))
    out["query_after_lockout"] = pyarrow_query(a.uri, a.user, a.password, "SELECT 1 AS one").to_pylist()
    print(json.dumps(out, default=str))


def siege(a):
    import os
    import time

    start = time.monotonic()
    rounds, outcomes, stopped_by = 0, {}, "time"
    while time.monotonic() - start < a.max_seconds:
        if os.path.exists(a.stop):
            stopped_by = "file"
            break
        for o in together([lambda: pyarrow_query(a.uri, a.user, a.password, a.sql).num_rows] * a.clients):
            key = o.get("error", "ok")
            # Group the messages by their first words (the numbers in them vary).
            key = key.split(" (")[0][:160]
            outcomes[key] = outcomes.get(key, 0) + 1
        rounds += 1
    print(json.dumps({"rounds": rounds, "outcomes": outcomes, "stopped_by": stopped_by}))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["adbc", "pyarrow", "attack", "caps", "brute", "siege"])
    p.add_argument("uri")
    p.add_argument("user")
    p.add_argument("password", nargs="?", default="")
    p.add_argument("--token")
    p.add_argument("--tls-root")
    p.add_argument("--sql")
    p.add_argument("--prepared", type=int, default=3)
    p.add_argument("--param-bytes", type=int, default=1 << 20)
    p.add_argument("--tries", type=int, default=3)
    p.add_argument("--lockout", type=float, default=3.0)
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--stop")
    p.add_argument("--max-seconds", type=float, default=120.0)
    a = p.parse_args()
    {"adbc": adbc, "pyarrow": pyarrow_mode, "attack": attack, "caps": caps, "brute": brute,
     "siege": siege}[a.mode](a)


if __name__ == "__main__":
    sys.exit(main())
