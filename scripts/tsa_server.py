#!/usr/bin/env python3
"""A local RFC 3161 Time-Stamping Authority for the tests: `openssl ts -reply` behind HTTP.

    tsa_server.py DIR [PORT]

On first use DIR gets a CA (ca.pem, ca.key) and a TSA certificate issued by it with the critical
timeStamping extended key usage (tsa.pem, tsa.key), and the `openssl ts` configuration. Then it
answers POSTs of `application/timestamp-query` on 127.0.0.1:PORT (0: any free port) with the
`application/timestamp-reply` that `openssl ts -reply` makes, and prints `listening PORT` once
it accepts connections. Nothing here reaches the network beyond loopback.
"""
import http.server
import os
import subprocess
import sys
import tempfile

CONFIG = """\
[ tsa ]
default_tsa = tsa_config1

[ tsa_config1 ]
dir = {dir}
serial = $dir/serial
crypto_device = builtin
signer_cert = $dir/tsa.pem
certs = $dir/tsa.pem
signer_key = $dir/tsa.key
signer_digest = sha256
default_policy = 1.3.6.1.4.1.55555.1
other_policies = 1.3.6.1.4.1.55555.2
digests = sha256, sha384, sha512
accuracy = secs:1
ordering = yes
tsa_name = yes
ess_cert_id_chain = no
ess_cert_id_alg = sha256
"""


def openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_ca(d):
    if os.path.exists(os.path.join(d, "tsa.pem")):
        return
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", "ca.key", "-out", "ca.pem", "-days", "3650", "-subj", "/CN=flowaudit test TSA CA",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=d)
    openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", "tsa.key", "-out", "tsa.csr", "-subj", "/CN=flowaudit test TSA", cwd=d)
    with open(os.path.join(d, "tsa.ext"), "w") as f:
        f.write("basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n"
                "extendedKeyUsage=critical,timeStamping\n")
    openssl("x509", "-req", "-in", "tsa.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", "tsa.pem", "-days", "3650", "-extfile", "tsa.ext", cwd=d)
    with open(os.path.join(d, "serial"), "w") as f:
        f.write("01\n")
    with open(os.path.join(d, "tsa.cnf"), "w") as f:
        f.write(CONFIG.format(dir=d))


def main():
    d = os.path.abspath(sys.argv[1])
    port = int(sys.argv[2]) if len(sys.argv) > 2 else 0
    os.makedirs(d, exist_ok=True)
    make_ca(d)

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            n = int(self.headers.get("Content-Length", "0"))
            query = self.rfile.read(n)
            with tempfile.TemporaryDirectory() as t:
                q, r = os.path.join(t, "q.tsq"), os.path.join(t, "r.tsr")
                with open(q, "wb") as f:
                    f.write(query)
                p = subprocess.run(["openssl", "ts", "-reply", "-config", os.path.join(d, "tsa.cnf"),
                                    "-queryfile", q, "-out", r], capture_output=True)
                if p.returncode != 0:
                    self.send_response(400)
                    self.end_headers()
                    self.wfile.write(p.stderr)
                    return
                with open(r, "rb") as f:
                    body = f.read()
            self.send_response(200)
            self.send_header("Content-Type", "application/timestamp-reply")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass

    srv = http.server.HTTPServer(("127.0.0.1", port), Handler)
    print(f"listening {srv.server_address[1]}", flush=True)
    srv.serve_forever()


if __name__ == "__main__":
    main()
