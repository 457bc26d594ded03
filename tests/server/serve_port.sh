# Sourced by the test scripts that start `bigmoe serve --port 0 ... 2> LOG &`:
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
