#!/usr/bin/env bash
# Runs the fuzz targets of fuzz/ (cargo fuzz, libFuzzer) from the committed corpus.
#
#   scripts/fuzz.sh                     every target for 30 s (what .ci/run does)
#   scripts/fuzz.sh --seconds 3600 observation_bytes
#                                       one target for an hour (a campaign, README "Fuzzing")
#   scripts/fuzz.sh --cpu-seconds 3600 spool_frames
#                                       until the target has used an hour of CPU (on a machine
#                                       that also does other work, a wall-clock hour is less)
#   scripts/fuzz.sh --merge ...         afterwards, add to fuzz/corpus/<target> the inputs that
#                                       reached new edges (libFuzzer -merge=1 on edges alone,
#                                       not hit counts: a few hundred small files per target)
#   FUZZ_LOGS=dir scripts/fuzz.sh ...   keep each target's libFuzzer log in dir
#
# Each target writes what it finds to a scratch directory, so the committed corpus only
# changes with --merge. A crash, a failed property (a panic), a timeout or an out-of-memory
# stops the run; the input is in fuzz/artifacts/<target>/ and `fuzz/target/.../<target> <file>`
# replays it. Targets build with the nightly toolchain, no sanitizer (ccstream forbids unsafe
# code; libFuzzer's coverage guidance is what finds panics) and debug assertions on (overflow
# checks).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

seconds=30
cpu_seconds=0
merge=false
targets=()
while (($#)); do
    case "$1" in
        --seconds) seconds="$2"; shift 2 ;;
        --cpu-seconds) cpu_seconds="$2"; shift 2 ;;
        --merge) merge=true; shift ;;
        -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
        *) targets+=("$1"); shift ;;
    esac
done

log() { printf 'fuzz: %s\n' "$*"; }

# With a CPU budget, wall-clock time is only a backstop.
if ((cpu_seconds > 0)); then
    seconds=$((cpu_seconds * 10))
fi

if ! rustup run nightly rustc --version >/dev/null 2>&1; then
    log "installing the nightly toolchain"
    rustup toolchain install nightly --profile minimal
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    log "installing cargo-fuzz"
    cargo install cargo-fuzz --version 0.13.2 --locked
fi

flags=(-s none -a --fuzz-dir fuzz)
cargo +nightly fuzz build "${flags[@]}"
bin_dir=fuzz/target/x86_64-unknown-linux-gnu/release
if ((${#targets[@]} == 0)); then
    mapfile -t targets < <(cargo +nightly fuzz list --fuzz-dir fuzz)
fi

# Targets that read raw JSON bytes get the JSON dictionary.
dict_for() {
    case "$1" in
        observation_bytes|scanner_differential|rule_attributes) echo "-dict=fuzz/dict/json.dict" ;;
        find_query) echo "-dict=fuzz/dict/find.dict" ;;
    esac
}

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
for target in "${targets[@]}"; do
    corpus=fuzz/corpus/$target
    mkdir -p "$corpus" "fuzz/artifacts/$target" "$scratch/$target"
    if ((cpu_seconds > 0)); then budget="${cpu_seconds}s of CPU"; else budget="${seconds}s"; fi
    log "$target: $budget from $(find "$corpus" -type f | wc -l) corpus inputs"
    # shellcheck disable=SC2046
    "$bin_dir/$target" "$scratch/$target" "$corpus" \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -max_len=8192 \
        -print_final_stats=1 -artifact_prefix="fuzz/artifacts/$target/" \
        $(dict_for "$target") >"$scratch/$target.log" 2>&1 &
    pid=$!
    budget_spent=false
    cpu=0
    while kill -0 "$pid" 2>/dev/null; do
        # utime + stime of the fuzzer, in clock ticks (proc(5), fields 14 and 15).
        if stat=$(cat "/proc/$pid/stat" 2>/dev/null); then
            read -r -a fields <<<"${stat##*) }"
            cpu=$(((fields[11] + fields[12]) / $(getconf CLK_TCK)))
        fi
        if ((cpu_seconds > 0 && cpu >= cpu_seconds)); then
            budget_spent=true
            kill -INT "$pid" 2>/dev/null || true
        fi
        sleep 1
    done
    rc=0
    wait "$pid" || rc=$?
    # libFuzzer exits 72 when interrupted: here, when its CPU budget is spent.
    if ((rc != 0)) && ! { $budget_spent && ((rc == 72)); }; then
        tail -n 60 "$scratch/$target.log"
        cp "$scratch/$target.log" "fuzz/artifacts/$target/"
        log "$target: FAILED (input and log in fuzz/artifacts/$target/)"
        exit 1
    fi
    log "$target: ${cpu}s of CPU"
    if [[ -n "${FUZZ_LOGS:-}" ]]; then
        mkdir -p "$FUZZ_LOGS" && cp "$scratch/$target.log" "$FUZZ_LOGS/"
    fi
    # The last status line and the final stats: executions, coverage, corpus.
    grep -E '^#[0-9]+.*(DONE|pulse|NEW|REDUCE)' "$scratch/$target.log" | tail -n 1 || true
    grep -E '^stat::(number_of_executed_units|average_exec_per_sec|peak_rss_mb)' "$scratch/$target.log" | tr '\n' ' ' || true
    echo
    if $merge; then
        if ! "$bin_dir/$target" -merge=1 -use_counters=0 -artifact_prefix="fuzz/artifacts/$target/" \
            "$corpus" "$scratch/$target" >"$scratch/$target.merge.log" 2>&1; then
            tail -n 30 "$scratch/$target.merge.log"
            log "$target: merge FAILED"
            exit 1
        fi
        log "$target: corpus now $(find "$corpus" -type f | wc -l) inputs"
    fi
done
log "all targets passed"
