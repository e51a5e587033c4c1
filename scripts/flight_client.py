#!/usr/bin/env python3
"""Independent Flight SQL clients for the tests: ADBC (adbc-driver-flightsql) and pyarrow.flight.

Each mode connects the way an analyst's tool would, tries what the issue names (a query,
metadata, a prepared statement with a parameter, a rejected write, rejected credentials) and
prints what it saw as JSON; the Rust test decides what is right.

    flight_client.py adbc URI USER PASSWORD [--token TOKEN] [--tls-root CERT.pem]
    flight_client.py pyarrow URI USER PASSWORD [--tls-root CERT.pem]
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


def main():
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["adbc", "pyarrow"])
    p.add_argument("uri")
    p.add_argument("user")
    p.add_argument("password")
    p.add_argument("--token")
    p.add_argument("--tls-root")
    a = p.parse_args()
    {"adbc": adbc, "pyarrow": pyarrow_mode}[a.mode](a)


if __name__ == "__main__":
    sys.exit(main())
