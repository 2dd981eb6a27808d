#!/usr/bin/env bash
# Rule writes through the RuleLambda API with a large rule set in place (issue 17): the release
# ccstream, RULES rules created first, then COUNT created, COUNT updated and COUNT removed by
# CONNECTIONS concurrent clients (`ccstream-load --mode rule-writes`). After every phase the
# generator waits until every replica's `ccstream_rules_generation` has reached the store's, so
# "applied/s" is the rate at which the writes were taken *and* applied everywhere.
#
#   benches/rule_writes.sh                 # one replica, its SQLite store; 10,000 + 3 x 2,000
#   REPLICAS=2 benches/rule_writes.sh      # two replicas sharing a PostgreSQL of their own;
#                                          # writes go to replica 1, replica 2 applies them
#   RULES=1000 COUNT=500 benches/rule_writes.sh          # smoke test
#
# Each replica runs its embedded MQTT broker (no observations flow: this measures the rule path
# alone). Needs cargo, curl, python3; REPLICAS > 1 needs PostgreSQL's server binaries (Debian's
# postgresql, or PG_BIN=.../bin). Every process it starts is stopped on exit, by pid.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

RULES=${RULES:-10000}
COUNT=${COUNT:-2000}
THING_TYPES=${THING_TYPES:-1000}
CONNECTIONS=${CONNECTIONS:-8}
REPLICAS=${REPLICAS:-1}
REPORT=${REPORT:-$ROOT/benches/rule-writes-report.json}
[[ $REPLICAS =~ ^[1-9]$ ]] || { echo "REPLICAS must be a number from 1 to 9" >&2; exit 2; }

log() { printf '[rule-writes %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() { log "FAILED: $*"; exit 1; }

# shellcheck source=benches/lib/common.sh
source "$ROOT/benches/lib/common.sh"
PIDS=()
bench_tmp rule-writes postgres.log ccstream-{1..9}.log

log "building release binaries"
cargo build --release -q -p ccstream -p ccstream-load
TARGET_DIR=$(cargo metadata --format-version 1 --no-deps |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
CCSTREAM=${RW_CCSTREAM:-$TARGET_DIR/release/ccstream} # RW_CCSTREAM: another build, to compare
LOAD=$TARGET_DIR/release/ccstream-load

# Two free ports per replica (API, embedded broker) and one for PostgreSQL.
read -r -a PORTS < <(free_ports "$((2 * REPLICAS + 1))")
PG_PORT=${PORTS[$((2 * REPLICAS))]}

STORE_URL="sqlite://$TMP/cc-1/ccstream.db"
if [[ $REPLICAS -gt 1 ]]; then
    start_postgres
fi

APIS=() METRICS=() CC_PIDS=()
for i in $(seq "$REPLICAS"); do
    api_port=${PORTS[$((2 * i - 2))]} mqtt_port=${PORTS[$((2 * i - 1))]} dir=$TMP/cc-$i
    mkdir -p "$dir"
    cat >"$TMP/ccstream-$i.toml" <<TOML
[api]
listen = "127.0.0.1:$api_port"

[store]
url = "$STORE_URL"

[log]
level = "warn"

[mqtt]
embedded = true
embedded_listen = "127.0.0.1:$mqtt_port"
url = "mqtt://127.0.0.1:$mqtt_port"
client_id = "rule-writes-$$-$i"

[webhook]
allow_cidrs = ["127.0.0.1/32"]
dead_letter_dir = "$dir/dead-letter"
outbox_dir = "$dir/outbox"

[objects]
sink = "local"
dir = "$dir/observations"
spool_dir = "$dir/spool"
TOML
    MALLOC_ARENA_MAX=2 "$CCSTREAM" --config "$TMP/ccstream-$i.toml" >"$TMP/ccstream-$i.log" 2>&1 &
    pid=$!; PIDS+=("$pid"); CC_PIDS+=("$pid")
    api=http://127.0.0.1:$api_port
    for n in $(seq 600); do
        kill -0 "$pid" 2>/dev/null || die "ccstream replica $i exited"
        [[ $(curl -s -o /dev/null -w '%{http_code}' "$api/readyz" || true) == 200 ]] && break
        [[ $n == 600 ]] && die "ccstream replica $i not ready within 60 s"
        sleep 0.1
    done
    APIS+=("$api"); METRICS+=(--ccstream-metrics "$api/metrics")
    log "replica $i ready on $api_port (pid $pid)"
done

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
before=() ; for pid in "${CC_PIDS[@]}"; do before+=("$(cpu_ticks "$pid")"); done
"$LOAD" --mode rule-writes --api "${APIS[0]}" "${METRICS[@]}" --rules "$RULES" \
    --count "$COUNT" --thing-types "$THING_TYPES" --connections "$CONNECTIONS" \
    --webhook-url "http://127.0.0.1:9/hook" --json "$REPORT"
hz=$(getconf CLK_TCK)
for i in "${!CC_PIDS[@]}"; do
    pid=${CC_PIDS[$i]}
    cpu=$(( $(cpu_ticks "$pid") - ${before[$i]} ))
    log "replica $((i + 1)): $(python3 -c "print(round($cpu / $hz, 2))") s of CPU over the run," \
        "peak RSS $(awk '/VmHWM/ {print $2 / 1024 " MiB"}' "/proc/$pid/status")"
done
log "report: $REPORT"
