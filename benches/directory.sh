#!/usr/bin/env bash
# The directory of things at scale (issue 18): the release ccstream with THINGS things over
# TYPES thing types and DOMAINS domains, names of 20 bytes (`device-XXXXXXXX-NNNN`).
#
#   benches/directory.sh                       # 1,000,000 things
#   THINGS=10000000 benches/directory.sh       # ten million (about 750 MB of JSON, minutes)
#   DIR_CCSTREAM=/path/to/other/ccstream benches/directory.sh   # another build, to compare
#
# Three starts of one ccstream on a SQLite store of its own (embedded broker, nothing flowing):
#   1. empty: its resident memory once ready, the baseline;
#   2. `directory.import_file` = the generated snapshot: time from start until /readyz answers
#      200, peak RSS over the start (VmHWM), RSS once ready (VmRSS, after 2 s), the store's size;
#   3. a restart that loads the same directory from the store: the same figures.
# Memory per thing = (RSS once ready - the baseline) / THINGS. `MALLOC_ARENA_MAX=2`, as the
# container image sets it. Prints a markdown table and writes benches/directory-report.json
# (REPORT=...).
#
# Needs: cargo, curl, python3. Every process it starts is stopped on exit, by pid.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

THINGS=${THINGS:-1000000}
TYPES=${TYPES:-1000}
DOMAINS=${DOMAINS:-1000}
READY_SECS=${READY_SECS:-900}
REPORT=${REPORT:-$ROOT/benches/directory-report.json}

log() { printf '[directory %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() { log "FAILED: $*"; exit 1; }

# shellcheck source=benches/lib/common.sh
source "$ROOT/benches/lib/common.sh"
PIDS=()
bench_tmp directory ccstream.log

log "building the release binary"
cargo build --release -q -p ccstream -p ccstream-load
TARGET_DIR=$(cargo metadata --format-version 1 --no-deps |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
CCSTREAM=${DIR_CCSTREAM:-$TARGET_DIR/release/ccstream}

log "generating $THINGS things over $TYPES types and $DOMAINS domains"
python3 - "$TMP/directory.json" "$THINGS" "$TYPES" "$DOMAINS" <<'PY'
import sys
path, things, types, domains = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
with open(path, "w") as f:
    f.write('{"domains":[')
    f.write(",".join('{"id":"dom-%04d","parent":"root"}' % d for d in range(domains)))
    f.write('],"things":[')
    for i in range(things):
        if i:
            f.write(",")
        f.write('{"thingName":"device-%08x-%04d","thingType":"type-%04d","domain":"dom-%04d"}'
                % (i, i % 10000, (i * 7) % types, (i * 13) % domains))
    f.write("]}")
PY
JSON_BYTES=$(stat -c %s "$TMP/directory.json")

read -r API_PORT MQTT_PORT < <(free_ports 2)
API=http://127.0.0.1:$API_PORT

# start_ccstream IMPORT: starts ccstream (with directory.import_file when IMPORT is 1), waits
# for /readyz; sets PID and READY (seconds from start to ready).
start_ccstream() {
    local import_line=""
    [[ $1 == 1 ]] && import_line="import_file = \"$TMP/directory.json\""
    cat >"$TMP/ccstream.toml" <<TOML
[api]
listen = "127.0.0.1:$API_PORT"

[store]
url = "sqlite://$TMP/ccstream.db"

[log]
level = "warn"

[mqtt]
embedded = true
embedded_listen = "127.0.0.1:$MQTT_PORT"
url = "mqtt://127.0.0.1:$MQTT_PORT"
client_id = "directory-$$"

[webhook]
outbox_dir = "$TMP/outbox"
dead_letter_dir = "$TMP/dead-letter"

[objects]
dir = "$TMP/observations"
spool_dir = "$TMP/spool"

[directory]
$import_line
TOML
    local started
    started=$(date +%s.%N)
    MALLOC_ARENA_MAX=2 "$CCSTREAM" --config "$TMP/ccstream.toml" >>"$TMP/ccstream.log" 2>&1 &
    PID=$!
    PIDS+=("$PID")
    local n
    for n in $(seq $((READY_SECS * 20))); do
        kill -0 "$PID" 2>/dev/null || die "ccstream exited"
        [[ $(curl -s -o /dev/null -w '%{http_code}' "$API/readyz" || true) == 200 ]] && break
        [[ $n == $((READY_SECS * 20)) ]] && die "ccstream not ready within $READY_SECS s"
        sleep 0.05
    done
    READY=$(python3 -c "print(round($(date +%s.%N) - $started, 2))")
}

kib() { awk -v k="$2" '$1 == k":" {print $2}' "/proc/$1/status"; }

stop_ccstream() {
    kill -TERM "$PID"
    wait "$PID" || die "ccstream exited with $? after SIGTERM"
    PIDS=()
}

log "1/3 empty"
start_ccstream 0
sleep 2
BASE_KIB=$(kib "$PID" VmRSS)
stop_ccstream
rm -f "$TMP"/ccstream.db*

# measure IMPORT: one measured start (see start_ccstream); sets READY, PEAK_KIB and RSS_KIB.
measure() {
    start_ccstream "$1"
    sleep 2
    PEAK_KIB=$(kib "$PID" VmHWM)
    RSS_KIB=$(kib "$PID" VmRSS)
    stop_ccstream
}

log "2/3 import of $((JSON_BYTES / 1024 / 1024)) MiB of JSON"
measure 1
IMPORT_READY=$READY IMPORT_PEAK_KIB=$PEAK_KIB IMPORT_RSS_KIB=$RSS_KIB
STORE_BYTES=$(du -cb "$TMP"/ccstream.db* | tail -n 1 | cut -f1)

log "3/3 restart from the store"
measure 0
LOAD_READY=$READY LOAD_PEAK_KIB=$PEAK_KIB LOAD_RSS_KIB=$RSS_KIB

python3 - "$REPORT" <<PY
import json, sys
things = $THINGS
base, rows = $BASE_KIB, [
    ("import (directory.import_file)", $IMPORT_READY, $IMPORT_PEAK_KIB, $IMPORT_RSS_KIB),
    ("restart (from the store)", $LOAD_READY, $LOAD_PEAK_KIB, $LOAD_RSS_KIB),
]
report = {"things": things, "types": $TYPES, "domains": $DOMAINS, "json_bytes": $JSON_BYTES,
          "store_bytes": $STORE_BYTES, "baseline_rss_kib": base, "starts": []}
print(f"{things:,} things, {$TYPES:,} types, {$DOMAINS:,} domains; snapshot {$JSON_BYTES / 2**20:.0f} MiB of JSON, "
      f"store {$STORE_BYTES / 2**20:.0f} MiB; empty ccstream {base / 1024:.1f} MiB\n")
print("| start | ready after | peak RSS | RSS once ready | bytes per thing | peak / ready |")
print("|---|---|---|---|---|---|")
for name, ready, peak, rss in rows:
    per_thing = (rss - base) * 1024 / things
    print(f"| {name} | {ready:.1f} s | {peak / 1024:.0f} MiB | {rss / 1024:.0f} MiB | "
          f"{per_thing:.0f} | {peak / rss:.2f} |")
    report["starts"].append({"start": name, "ready_secs": ready, "peak_rss_kib": peak,
                             "rss_kib": rss, "bytes_per_thing": per_thing})
with open(sys.argv[1], "w") as f:
    json.dump(report, f, indent=2)
PY
log "report: $REPORT"
