# Sourced by with-broker.sh and with-s3.sh: wait until a server process listens.
# wait_for_port PORT PID LOG NAME TRIES — polls 127.0.0.1:PORT every 0.1 s, TRIES times; if the
# process PID exits first, prints its log LOG and exits 1.
wait_for_port() {
  local port=$1 pid=$2 log=$3 name=$4 tries=$5
  for _ in $(seq 1 "$tries"); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then return 0; fi
    kill -0 "$pid" 2>/dev/null || { echo "$name exited; its log:"; cat "$log"; exit 1; }
    sleep 0.1
  done
}
