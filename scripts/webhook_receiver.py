"""A local HTTP receiver for webhook tests: accepts POSTs on 127.0.0.1:PORT, answers 503 to the
first FAIL requests (a receiver that is down, then recovers), and appends each accepted body as
one line to OUT, and its Idempotency-Key header as one line to OUT.keys. Prints "listening" once
ready.

  webhook_receiver.py PORT OUT [FAIL]
"""
import http.server
import sys

port, out = int(sys.argv[1]), sys.argv[2]
fail = int(sys.argv[3]) if len(sys.argv) > 3 else 0
seen = {"n": 0}


class Handler(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        seen["n"] += 1
        if seen["n"] <= fail:
            self.send_response(503)
            self.end_headers()
            return
        with open(out, "ab") as f:
            f.write(body.replace(b"\n", b" ") + b"\n")
        with open(out + ".keys", "a") as f:
            f.write(self.headers.get("Idempotency-Key", "") + "\n")
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


server = http.server.HTTPServer(("127.0.0.1", port), Handler)
print("listening", flush=True)
server.serve_forever()
