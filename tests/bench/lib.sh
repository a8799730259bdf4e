# Shared by the benchmark scripts (sourced, after `work` is set): processes started in their own process
# groups, pinned to one CPU, and killed with everything they started when the script ends.

started=()   # process groups we started and have not reaped yet, for the trap
server_pid=  # the last one started

cleanup() {
  local pid
  for pid in "${started[@]}"; do
    kill -KILL -- "-$pid" 2>/dev/null || true
  done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Starts "$@" in its own process group (setsid keeps the pid) pinned to CPU $1, output to $2; its pid in
# $server_pid.
spawn() {
  local cpu=$1 log=$2
  shift 2
  setsid taskset -c "$cpu" "$@" >"$log" 2>&1 &
  started+=("$!")
  server_pid=$!
}

# Stops the last server started: TERM, up to 10 s to exit, then KILL whatever is left of its process
# group (children such as socat's per-client processes).
stop_server() {
  kill -TERM "$server_pid" 2>/dev/null || true
  for _ in $(seq 100); do
    kill -0 "$server_pid" 2>/dev/null || break
    sleep 0.1
  done
  kill -KILL -- "-$server_pid" 2>/dev/null || true   # the leader is not reaped yet, so the group is ours
  wait "$server_pid" 2>/dev/null || true
  local pid kept=()
  for pid in "${started[@]}"; do            # reaped: its pid may be reused, so the trap must forget it
    [ "$pid" = "$server_pid" ] || kept+=("$pid")
  done
  started=("${kept[@]}")
}

# Waits up to 10 s until something listens on 127.0.0.1:$1; else shows the logs named after it and fails.
wait_port() {
  local port=$1
  shift
  for _ in $(seq 200); do
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && return 0
    sleep 0.05
  done
  echo "${0##*/}: nothing listens on port $port:" >&2
  cat "$@" >&2
  exit 1
}
