# shellcheck shell=bash
# Sourced by the benchmark scripts (benches/e2e.sh, benches/rule_writes.sh, benches/directory.sh):
# what they start and stop the same way. Each expects the caller's `log` and `die`, $TMP (made by
# bench_tmp, or the caller's own) and the array PIDS.

# stop_started: every process in PIDS, by pid: SIGTERM (SIGINT for PostgreSQL, its fast
# shutdown; SIGTERM would wait for its clients, and a SIGKILL of the postmaster would leave its
# backends behind), then five seconds' grace each, then SIGKILL.
stop_started() {
    local pid
    for pid in "${PIDS[@]}"; do
        if [[ $pid == "${PG_PID:-}" ]]; then kill -INT "$pid" 2>/dev/null || true; continue; fi
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
}

# bench_tmp NAME LOG...: makes $TMP (ccstream-NAME.XXXXXX) and sets the exit trap: stop what
# PIDS holds, then remove $TMP; on failure print the tail of each LOG (under $TMP) there is and
# keep $TMP.
bench_tmp() {
    local name=$1
    shift
    TMP=$(mktemp -d "${TMPDIR:-/tmp}/ccstream-$name.XXXXXX")
    BENCH_LOGS=("$@")
    trap bench_cleanup EXIT
    trap 'exit 130' INT TERM
}

bench_cleanup() {
    local rc=$? f
    stop_started
    if [[ $rc -ne 0 ]]; then
        for f in "${BENCH_LOGS[@]}"; do
            [[ -f $TMP/$f ]] && { echo "--- tail $TMP/$f ---" >&2; tail -n 30 "$TMP/$f" >&2; }
        done
        log "kept $TMP"
    else
        rm -rf "$TMP"
    fi
}

# free_ports N [GAP]: N distinct free loopback ports in 20000-44989, printed on one line; with
# GAP (e.g. 10000), port+GAP must be free too (SeaweedFS puts its gRPC port there, TESTING.md).
free_ports() {
    python3 - "$1" "${2:-0}" <<'PY'
import random, socket, sys
def free(p):
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", p)); return True
    except OSError:
        return False
    finally:
        s.close()
n, gap = int(sys.argv[1]), int(sys.argv[2])
ports = []
while len(ports) < n:
    p = random.randrange(20000, 44990)
    if all(abs(p - q) > 1 for q in ports) and free(p) and (gap == 0 or free(p + gap)):
        ports.append(p)
print(*ports)
PY
}

# A PostgreSQL server of their own for a shared rule store.
#
# start_postgres: initdb in $TMP/pg, postgres on 127.0.0.1:$PG_PORT (TCP on loopback only, trust
# authentication, no Unix socket), database `ccstream`; never the machine's cluster. initdb and
# postgres refuse to run as root: as root they run as the `postgres` user (setpriv execs, so $!
# is the postmaster's pid). Sets PG_PID (also appended to PIDS, for the caller's cleanup, which
# should stop it with SIGINT, its fast shutdown) and STORE_URL. Needs the caller's log and die,
# and PostgreSQL's server binaries (Debian's postgresql, or PG_BIN=.../bin).
start_postgres() {
    PG_BIN=${PG_BIN:-$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)}
    [[ -x $PG_BIN/initdb && -x $PG_BIN/postgres ]] ||
        die "PostgreSQL server binaries not found (apt-get install postgresql, or set PG_BIN)"
    local as_pg=() i
    mkdir -p "$TMP/pg"
    if [[ $(id -u) == 0 ]]; then
        as_pg=(setpriv --reuid=postgres --regid=postgres --init-groups)
        chmod 711 "$TMP" # the postgres user passes through to its own directory
        chown postgres: "$TMP/pg"
    fi
    "${as_pg[@]}" "$PG_BIN/initdb" -D "$TMP/pg/data" -U postgres -A trust -E UTF8 --locale=C \
        --no-sync >"$TMP/initdb.log" 2>&1 || die "initdb failed: $(tail -n 20 "$TMP/initdb.log")"
    "${as_pg[@]}" "$PG_BIN/postgres" -D "$TMP/pg/data" -p "$PG_PORT" \
        -c listen_addresses=127.0.0.1 -c unix_socket_directories= >"$TMP/postgres.log" 2>&1 &
    PG_PID=$!
    PIDS+=("$PG_PID")
    for i in $(seq 300); do
        "$PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT" && break
        kill -0 "$PG_PID" 2>/dev/null || die "postgres exited"
        [[ $i == 300 ]] && die "postgres not ready within 30 s"
        sleep 0.1
    done
    "$PG_BIN/psql" -w -X -q -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres \
        -c "CREATE DATABASE ccstream" || die "could not create the database"
    STORE_URL=postgres://postgres@127.0.0.1:$PG_PORT/ccstream
    log "postgres on $PG_PORT (pid $PG_PID, $("$PG_BIN/postgres" --version))"
}
