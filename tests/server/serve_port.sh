# Sourced by the test scripts that run `bigmoe serve`.
# serve_port LOG PID waits until that server is ready and prints its port (or prints the log and
# fails when the server exits or never gets ready).
serve_port() {
  local log=$1 pid=$2 port
  for _ in $(seq 1 300); do
    grep -q "serve: ready" "$log" && break
    kill -0 "$pid" 2>/dev/null || { cat "$log" >&2; return 1; }
    sleep 0.1
  done
  port=$(sed -n 's#.*listening on http://127.0.0.1:\([0-9]*\).*#\1#p' "$log")
  [ -n "$port" ] || { cat "$log" >&2; return 1; }
  echo "$port"
}

# serve_start BIN ARGS... starts `BIN serve ARGS --port 0` in the background with a log of its
# own (a fresh file: no earlier server's "ready" line can be read for it), waits until it is ready
# and sets SERVE_PID and SERVE_PORT. serve_stop_all stops every server started so and removes
# their logs (for the script's EXIT trap).
serve_pids=()
serve_logs=()
serve_start() {
  local bin=$1 log
  shift
  log=$(mktemp)
  serve_logs+=("$log")
  "$bin" serve "$@" --port 0 2> "$log" &
  SERVE_PID=$!
  serve_pids+=("$SERVE_PID")
  SERVE_PORT=$(serve_port "$log" "$SERVE_PID")
}
serve_stop_all() {
  if [ ${#serve_pids[@]} -gt 0 ]; then
    kill "${serve_pids[@]}" 2>/dev/null
    wait "${serve_pids[@]}" 2>/dev/null
  fi
  rm -f "${serve_logs[@]}"
}
