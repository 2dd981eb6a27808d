#!/usr/bin/env bash
# Search index catch-up: how fast the release ccstream indexes a backlog the spool kept while
# OpenSearch was away, and its CPU per document doing it.
#
#   benches/search_catchup.sh                 # COUNT=200000 observations of 1,000 things
#
#   1. Mosquitto and ccstream (local sink, no rules) with search.url at a port where nothing
#      listens yet: OpenSearch is down (connection refused), and the indexer retries.
#   2. ccstream-load publishes COUNT observations (QoS 1, as fast as the broker takes them);
#      the script waits until ccstream_search_records_behind says every one is in the spool.
#   3. ccstream is stopped (SIGTERM: the batches are stored, the files stay in the spool for the
#      index) and started again with ccstream-load --mode receive serving the _bulk stand-in on
#      that port (OpenSearch is back): the new process reads the whole backlog from the spool.
#      The catch-up runs from the first to the last bulk request; ccstream's CPU is the new
#      process's, from its start until ccstream_search_records_behind is 0 (start-up included).
#
# Prints one JSON line: documents, seconds, documents/s, ccstream CPU µs per document.
# Needs what benches/e2e.sh needs (cargo, mosquitto, curl, python3). OpenSearch itself cannot be
# installed here: the stand-in answers every action created, so this measures ccstream's side.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
COUNT=${COUNT:-200000}
THINGS=${THINGS:-1000}
CCSTREAM_BIN=${CCSTREAM_BIN:-}

log() { printf '[catchup %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() { log "FAILED: $*"; exit 1; }
command -v mosquitto >/dev/null || die "mosquitto not found (scripts/setup-test-deps.sh)"

PIDS=()
TMP=$(mktemp -d "${TMPDIR:-/tmp}/ccstream-catchup.XXXXXX")
cleanup() {
    local rc=$?
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do
        for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
    done
    [[ $rc -ne 0 ]] && { tail -n 30 "$TMP/ccstream.log" >&2 || true; }
    rm -rf "$TMP"
}
trap cleanup EXIT

log "building release binaries"
cargo build --release -q -p ccstream -p ccstream-load
TARGET_DIR=$(cargo metadata --format-version 1 --no-deps |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
CCSTREAM=${CCSTREAM_BIN:-$TARGET_DIR/release/ccstream}
LOAD=$TARGET_DIR/release/ccstream-load

read -r MQTT_PORT API_PORT BULK_PORT < <(python3 - <<'EOF'
import socket
ports = []
for _ in range(3):
    s = socket.socket(); s.bind(("127.0.0.1", 0)); ports.append(s); 
print(*[s.getsockname()[1] for s in ports])
EOF
)
wait_port() {
    for _ in $(seq 300); do
        (echo >/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0
        sleep 0.1
    done
    die "nothing listens on $1"
}
metric() { # the value of one series of ccstream's /metrics (0 when absent)
    curl -s "http://127.0.0.1:$API_PORT/metrics" |
        awk -v s="$1" '$1 == s { v = $2 } END { print (v == "" ? 0 : v) }'
}
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }

printf 'listener %s 127.0.0.1\nallow_anonymous true\nmax_queued_messages 1000000\nmax_inflight_messages 1000\n' \
    "$MQTT_PORT" >"$TMP/mosquitto.conf"
mosquitto -c "$TMP/mosquitto.conf" >"$TMP/mosquitto.log" 2>&1 &
PIDS+=($!)
wait_port "$MQTT_PORT"

cat >"$TMP/ccstream.toml" <<EOF
[api]
listen = "127.0.0.1:$API_PORT"
[mqtt]
embedded = false
url = "mqtt://127.0.0.1:$MQTT_PORT"
client_id = "catchup"
inflight = 1000
[objects]
sink = "local"
dir = "$TMP/objects"
spool_dir = "$TMP/spool"
[search]
url = "http://127.0.0.1:$BULK_PORT"
backoff_initial_ms = 100
backoff_max_ms = 500
EOF
start_ccstream() {
    MALLOC_ARENA_MAX=2 "$CCSTREAM" --config "$TMP/ccstream.toml" >>"$TMP/ccstream.log" 2>&1 &
    CC_PID=$!; PIDS+=("$CC_PID")
    for _ in $(seq 300); do
        [[ $(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$API_PORT/readyz") == 200 ]] && return
        sleep 0.1
    done
    die "ccstream not ready"
}
start_ccstream

log "OpenSearch down: publishing $COUNT observations"
"$LOAD" --broker "mqtt://127.0.0.1:$MQTT_PORT" --things "$THINGS" --count "$COUNT" \
    --no-progress --fire-ratio 0 >"$TMP/publish.txt"
for _ in $(seq 1200); do
    behind=$(metric ccstream_search_records_behind)
    [[ ${behind%.*} -ge $COUNT ]] && break
    sleep 0.1
done
[[ ${behind%.*} -ge $COUNT ]] || die "only $behind observations behind"
log "$behind observations wait in the spool; restarting ccstream with OpenSearch back"
kill -TERM "$CC_PID"
while kill -0 "$CC_PID" 2>/dev/null; do sleep 0.1; done
"$LOAD" --mode receive --receiver "127.0.0.1:$BULK_PORT" --count "$COUNT" --drain-secs 10 \
    --no-progress --json "$TMP/receive.json" >/dev/null &
RECV_PID=$!; PIDS+=("$RECV_PID")
wait_port "$BULK_PORT"
start_ccstream
wait "$RECV_PID"
for _ in $(seq 600); do
    [[ $(metric ccstream_search_records_behind) == 0 ]] && break
    sleep 0.1
done
cpu0=0
cpu1=$(cpu_ticks "$CC_PID")
hz=$(getconf CLK_TCK)
python3 - "$TMP/receive.json" "$cpu0" "$cpu1" "$hz" "$COUNT" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
cpu_s = (int(sys.argv[3]) - int(sys.argv[2])) / int(sys.argv[4])
docs = r.get("search_documents") or 0
print(json.dumps({
    "observations": int(sys.argv[5]),
    "documents": docs,
    "catch_up_s": round(r["duration_s"], 3),
    "documents_per_s": round(r["rate_per_s"]),
    "ccstream_cpu_s": round(cpu_s, 2),
    "ccstream_cpu_us_per_document": round(cpu_s * 1e6 / docs, 2) if docs else None,
}))
EOF
