#!/usr/bin/env bash
# A rolling restart of two chatgate replicas behind nginx, under load, as an
# operator would do it — and a count of what the clients saw.
#
#   scripts/rolling-restart.sh [seconds of load, default 20]
#
# Two replicas share one PostgreSQL database ($CHATGATE_TEST_POSTGRES_URL, an
# admin URL: a database is made and dropped) and sit behind nginx with its
# default upstream settings (max_fails=1 fail_timeout=10s, keep-alive to the
# upstreams). wrk sends bot status lookups through nginx (2 threads, 32
# connections). Each replica is restarted in place, in turn: its replacement
# starts on the same address (listen_reuse_port), then the old one gets
# SIGTERM and drains (shutdown_drain). wrk reports every error and non-2xx
# answer; the script exits non-zero if there was any.
#
# Needs: nginx (apt-get install nginx-light), wrk (apt-get install wrk),
# psql, and a built chatgate (cargo build --release; CHATGATE_BIN overrides).
set -euo pipefail
cd "$(dirname "$0")/.."

duration="${1:-20}"
bin="${CHATGATE_BIN:-target/release/chatgate}"
admin="${CHATGATE_TEST_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
for tool in nginx wrk psql; do
  command -v "$tool" >/dev/null || { echo "$tool is missing (see the top of this script)"; exit 1; }
done
[ -x "$bin" ] || { echo "$bin is missing: cargo build --release"; exit 1; }

dir="$(mktemp -d)"
db="chatgate_rolling_$$"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  [ -f "$dir/nginx.pid" ] && kill "$(cat "$dir/nginx.pid")" 2>/dev/null || true
  psql "$admin" -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1 || true
  rm -rf "$dir"
}
trap cleanup EXIT

psql "$admin" -qc "CREATE DATABASE $db" >/dev/null
db_url="${admin%/*}/$db"
"$bin" keys generate vault > "$dir/vault.key"
"$bin" keys generate signing --out "$dir/signing.pem" >/dev/null
port_of() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
ports=("$(port_of)" "$(port_of)")
lb_port="$(port_of)"

config() { # $1 = port
  cat > "$dir/chatgate-$1.toml" <<EOF
public_url = "http://127.0.0.1:$lb_port"
listen = "127.0.0.1:$1"
listen_reuse_port = true
shutdown_drain = "5s"
log_level = "warn,chatgate::server=info"
[rate_limit]
per_second = 0
[vault]
keys = [{ id = "k1", key_file = "vault.key" }]
[signing]
key_file = "signing.pem"
[[apps]]
id = "support"
origins = ["https://www.contoso.com"]
chat_audience = "https://bot.contoso.com"
host_keys = [{ kid = "h1", alg = "HS256", secret_env = "HOST_SECRET" }]
EOF
}
export HOST_SECRET="rolling-restart-host-secret-of-32-bytes"
export CHATGATE_DATABASE_URL="$db_url"

start() { # $1 = port; prints the pid once the replica answers
  "$bin" serve --config "$dir/chatgate-$1.toml" > /dev/null 2>> "$dir/replica-$1.log" &
  local pid=$!
  for _ in $(seq 1 100); do
    if grep -q "chatgate is serving" "$dir/replica-$1.log" 2>/dev/null && [ "$(grep -c 'chatgate is serving' "$dir/replica-$1.log")" -ge "${2:-1}" ]; then
      echo "$pid"; return
    fi
    sleep 0.1
  done
  echo "a replica on port $1 did not start:" >&2; cat "$dir/replica-$1.log" >&2; exit 1
}

for p in "${ports[@]}"; do config "$p"; done
"$bin" migrate --config "$dir/chatgate-${ports[0]}.toml" 2>/dev/null
secret="$("$bin" bots create --app support --config "$dir/chatgate-${ports[0]}.toml" 2>/dev/null | tail -n1)"
declare -A pid
for p in "${ports[@]}"; do pid[$p]="$(start "$p")"; pids+=("${pid[$p]}"); done

cat > "$dir/nginx.conf" <<EOF
worker_processes 1;
pid $dir/nginx.pid;
error_log $dir/nginx-error.log warn;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path $dir/body; proxy_temp_path $dir/proxy;
  fastcgi_temp_path $dir/fastcgi; uwsgi_temp_path $dir/uwsgi; scgi_temp_path $dir/scgi;
  upstream chatgate {
    server 127.0.0.1:${ports[0]};   # nginx's defaults: max_fails=1 fail_timeout=10s
    server 127.0.0.1:${ports[1]};
    keepalive 32;
  }
  server {
    listen 127.0.0.1:$lb_port;
    location / {
      proxy_pass http://chatgate;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }
  }
}
EOF
nginx -c "$dir/nginx.conf"

echo "load: ${duration}s of GET /v1/users/{id} through nginx, 32 connections; rolling restart after 3 s"
wrk -t2 -c32 -d"${duration}s" -H "Authorization: Bearer $secret" \
  "http://127.0.0.1:$lb_port/v1/users/idp:alice" > "$dir/wrk.txt" &
wrk_pid=$!
sleep 3
for p in "${ports[@]}"; do
  before="$(grep -c 'chatgate is serving' "$dir/replica-$p.log")"
  new="$(start "$p" $((before + 1)))"; pids+=("$new")
  started="$(date +%s.%N)"
  kill -TERM "${pid[$p]}"
  while kill -0 "${pid[$p]}" 2>/dev/null; do sleep 0.05; done
  printf 'replica on port %s restarted in place: the old one stopped %.1f s after SIGTERM\n' "$p" "$(echo "$(date +%s.%N) - $started" | bc)"
  pid[$p]="$new"
  sleep 2
done
wait "$wrk_pid"
cat "$dir/wrk.txt"
echo
grep -h "chatgate stopped\|drained" "$dir"/replica-*.log | sed 's/\x1b\[[0-9;]*m//g' || true
grep -h "upstream\|no live" "$dir/nginx-error.log" || echo "nginx logged no upstream error"
if grep -q "Non-2xx\|Socket errors" "$dir/wrk.txt"; then
  echo "FAILED: clients saw errors during the rolling restart"
  exit 1
fi
echo "ok: no client saw an error during the rolling restart"
