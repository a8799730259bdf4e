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
