#!/usr/bin/env bash
# How orgsync's memory spreads over a 3-master Redis Cluster.
#
#   bash scripts/cluster-memory.sh [UPDATES] [SHARDS] [WORKERS]   (defaults 100000 3 3)
#
# Starts a private 3-master Cluster (redis-server and redis-cli on PATH, ports
# from ORGSYNC_CLUSTER_PORT, default 17101..17103), the fake Truto and the
# real binaries; enqueues UPDATES updates (700-byte bodies, 100 accounts, one
# organization each) as run "mem" while no worker runs, reads each master's
# memory (the backlog), then runs WORKERS worker processes with --shards
# SHARDS until the run is done and reads it again (what is retained). Prints
# a Markdown table; everything it started is stopped at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-100000}
SHARDS=${2:-3}
WORKERS=${3:-3}
BASE=${ORGSYNC_CLUSTER_PORT:-17101}
PORTS=("$BASE" $((BASE + 1)) $((BASE + 2)))
TMP=$(mktemp -d)
BIN="$TMP/bin"
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  for port in "${PORTS[@]}"; do redis-cli -p "$port" shutdown nosave >/dev/null 2>&1 || true; done
  rm -rf "$TMP"
}
trap cleanup EXIT

mkdir -p "$BIN"
go build -o "$BIN/" ./cmd/worker ./cmd/enqueue ./cmd/fake-truto

for port in "${PORTS[@]}"; do
  mkdir -p "$TMP/$port"
  redis-server --port "$port" --bind 127.0.0.1 --cluster-enabled yes --cluster-config-file "$TMP/$port/nodes.conf" \
    --dir "$TMP/$port" --save "" --appendonly no --daemonize yes --logfile "$TMP/$port/log"
done
for port in "${PORTS[@]}"; do
  until redis-cli -p "$port" ping >/dev/null 2>&1; do sleep 0.1; done
done
redis-cli --cluster create "${PORTS[@]/#/127.0.0.1:}" --cluster-replicas 0 --cluster-yes >/dev/null
for port in "${PORTS[@]}"; do
  until redis-cli -p "$port" cluster info | grep -q 'cluster_state:ok'; do sleep 0.1; done
done
URL="redis-cluster://127.0.0.1:${PORTS[0]},127.0.0.1:${PORTS[1]},127.0.0.1:${PORTS[2]}"

TOKEN=measure-token-0123456789
printf '%s\n' "$TOKEN" > "$TMP/token"
FAKE=127.0.0.1:$((BASE + 10))
"$BIN/fake-truto" --addr "$FAKE" --token-file "$TMP/token" --token-limit 0 --account-limit 0 >/dev/null 2>"$TMP/fake.log" &
PIDS+=($!)

used() { redis-cli -p "$1" info memory | awk -F: '/^used_memory:/ {print $2+0}'; }
keys() { redis-cli -p "$1" dbsize; }
declare -A BASELINE
for port in "${PORTS[@]}"; do BASELINE[$port]=$(used "$port"); done

worker() {
  REDIS_URL=$URL TRUTO_API_TOKEN_FILE="$TMP/token" exec "$BIN/worker" --base-url "http://$FAKE" --shards "$SHARDS" \
    --admin-addr "" --account-rate 0 --token-rate 0 --concurrency 50 --log-level warn "$@"
}

# The shard count is recorded by a worker: start one, let it record, stop it.
worker 2>"$TMP/w0.log" &
w=$!
until REDIS_URL=$URL "$BIN/enqueue" stats 2>/dev/null | grep -q "\"shards\": *$SHARDS"; do sleep 0.2; done
kill -TERM "$w"; wait "$w" || true

BODY=$(head -c 700 /dev/zero | tr '\0' 'x')
awk -v n="$N" -v body="$BODY" 'BEGIN { for (i = 0; i < n; i++)
  printf "{\"id\":\"org-%07d\",\"integrated_account_id\":\"acct-%03d\",\"body\":{\"remote_data\":{\"seq\":%d,\"note\":\"%s\"}},\"idempotency_key\":\"k-%07d\"}\n", i, i % 100, i, body, i }' \
  > "$TMP/updates.ndjson"
start=$(date +%s.%N)
REDIS_URL=$URL "$BIN/enqueue" bulk "$TMP/updates.ndjson" --run mem >/dev/null
enq=$(printf "%.1f" "$(echo "$(date +%s.%N) - $start" | bc)")

row() {
  local what=$1 total=0
  declare -A mem
  for port in "${PORTS[@]}"; do mem[$port]=$(( $(used "$port") - BASELINE[$port] )); total=$((total + mem[$port])); done
  local max=0
  for port in "${PORTS[@]}"; do (( mem[$port] > max )) && max=${mem[$port]}; done
  printf '| %s | %s | %.1f MiB | %s | %.0f %% |\n' "$what" \
    "$(for port in "${PORTS[@]}"; do printf '%.1f MiB (%s keys) ' "$(echo "${mem[$port]}/1048576" | bc -l)" "$(keys "$port")"; done)" \
    "$(echo "$total/1048576" | bc -l)" "$(echo "$total/$N" | bc)" "$(echo "100*$max/$total" | bc -l)"
}

echo "| phase | per master (above an empty cluster) | total | bytes per update | fullest master's share |"
echo "|---|---|---|---|---|"
row "$N updates waiting (enqueued in ${enq} s, shards $SHARDS)"

start=$(date +%s)
for i in $(seq 1 "$WORKERS"); do worker 2>"$TMP/w$i.log" & PIDS+=($!); done
REDIS_URL=$URL "$BIN/enqueue" runs status mem --wait --timeout 30m > "$TMP/status.json" || true
took=$(( $(date +%s) - start ))
for p in "${PIDS[@]:1}"; do kill -TERM "$p" 2>/dev/null || true; done
wait "${PIDS[@]:1}" 2>/dev/null || true
row "after the run ($WORKERS workers, ${took} s)"
echo
echo "run: $(tail -1 "$TMP/status.json")"
for port in "${PORTS[@]}"; do
  echo "master $port: $(redis-cli -p "$port" info stats | awk -F: '/total_commands_processed/ {print $2}' | tr -d '\r') commands"
done
