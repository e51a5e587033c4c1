#!/usr/bin/env bash
# Start an S3-API server (moto, a real HTTP server process) on 127.0.0.1:$PORT with the bucket
# flowaudit-test, run the given command with FLOWAUDIT_TEST_S3 and the standard AWS variables
# pointing at it, then stop the server.
# Usage: scripts/with-s3.sh PORT command [args…]
set -euo pipefail
. "$(dirname "$0")/wait-for-port.sh"
port=$1; shift
venv=${VENV:-.venv}
log=$(mktemp -t moto.XXXXXX.log)
"$venv/bin/moto_server" -H 127.0.0.1 -p "$port" >"$log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null || true' EXIT
wait_for_port "$port" "$pid" "$log" moto_server 200
export AWS_ENDPOINT_URL="http://127.0.0.1:$port" AWS_ALLOW_HTTP=true AWS_REGION=us-east-1 \
  AWS_ACCESS_KEY_ID=flowaudit-test AWS_SECRET_ACCESS_KEY=flowaudit-test
"$venv/bin/python" -c 'import boto3,os; boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"]).create_bucket(Bucket="flowaudit-test")'
echo "moto S3 server on 127.0.0.1:$port (pid $pid, log $log), bucket flowaudit-test"
export FLOWAUDIT_TEST_S3="s3://flowaudit-test"
"$@"
