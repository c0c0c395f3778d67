#!/usr/bin/env bash
#
# The benchmark of issue 5 in one command: builds release binaries, starts a
# command server and a query server on a fresh database, measures each figure
# of DESIGN.md's "Performance" next to its reference from the same run, and
# writes BENCHMARKS.md with an SVG chart (docs/benchmarks.svg).
#
# usage: scripts/bench.sh [--quick] [--out FILE]
#   --quick     a seconds-long version with small counts: proves the pieces
#               work, measures nothing worth keeping; writes to
#               target/bench/quick/ unless --out is given
#   --out FILE  where to write the Markdown (default BENCHMARKS.md; the
#               chart goes to docs/benchmarks.svg, or beside FILE with --out)
#
# What it runs, in order (each load is loadgen, over gRPC on loopback):
#   sysbench oltp_write_only, 16 threads then 1 thread, then oltp_insert
#     with 1 thread (one durable commit after another), on the same MariaDB
#     (database sbtest: prepare, run, cleanup); installed from Debian when
#     missing
#   commands/s at concurrency 1, 16 and 64 (book=80,cancel=15,checkin=5),
#     then 64 spread over two command servers on the same database, then
#     64 on one again (the two are compared with the mean of the ones
#     before and after them)
#   queries/s at concurrency 64 (GetReservation, GetAvailability,
#     SearchAvailability in equal shares, then each alone), then the echo
#     service (Health/Check) at 64, and at 1 (with oltp_insert: the floor
#     of one client's commands)
#   projection lag at half the concurrency-64 command rate
#   the cost of metrics and of tracing: commands/s and queries/s (mix, c64)
#     against servers with metrics off, metrics on, and metrics on plus
#     tracing sampled at 10 % (exported to `loadgen otlp-sink`), alternated
#     over BENCH_OBS_ROUNDS rounds, with the CPU time the loaded server
#     used per operation
#   catch-up: the log filled to >= 200,000 events, then a fresh query
#     server replays it, three times (the median replay is reported, with
#     the highest peak RSS)
#   peak RSS (VmHWM) of both servers
# Raw results stay in target/bench/<time>/ (JSON per load, sysbench output,
# server logs).
#
# Settings, from the environment:
#   HOTEL_DB_HOST/PORT/USER/PASSWORD   see scripts/bootstrap-mariadb.sh
#   BENCH_DB               (hotel_bench) the database, dropped and created
#   BENCH_SECONDS          (10; 2 with --quick) length of each load
#   BENCH_CATCHUP_EVENTS   (200000; 3000 with --quick)
#   BENCH_OBS_ROUNDS       (5; 1 with --quick) rounds of the metrics and
#                          tracing cost comparison
#   BENCH_SETTLE_SECONDS   (5; 0 with --quick) pause between the command
#                          loads and the query loads: the write burst's
#                          aftermath (MariaDB's flushing and purge, the
#                          projector's last commits and checkpoint) took
#                          13-15 % off a query load started at once

set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
HOTEL_SCRIPT=bench
# shellcheck source=scripts/lib/hotel-env.sh
source "$REPO/scripts/lib/hotel-env.sh"
cd "$REPO"

COMMAND_LINE="scripts/bench.sh${*:+ $*}"
QUICK=0
OUT=''
while (($#)); do
    case $1 in
        --quick) QUICK=1 ;;
        --out)
            [[ $# -ge 2 ]] || hotel_die "--out needs a file name"
            OUT=$2
            shift
            ;;
        -h | --help)
            # The comment at the top of this file, up to the first code line.
            awk 'NR > 2 && /^#/ { sub(/^# ?/, ""); print; next } NR > 2 { exit }' "$0"
            exit 0
            ;;
        *) hotel_die "unknown argument '$1' (try --help)" ;;
    esac
    shift
done

BENCH_DB=${BENCH_DB:-hotel_bench}
[[ $BENCH_DB =~ ^[A-Za-z0-9_]+$ ]] || hotel_die "BENCH_DB must be letters, digits and _, not '$BENCH_DB'"
if ((QUICK)); then
    LOAD_SECONDS=${BENCH_SECONDS:-2}
    CATCHUP_EVENTS=${BENCH_CATCHUP_EVENTS:-3000}
    CATCHUP_RUNS=1
    SYSBENCH_SECONDS=3
    SYSBENCH_ROWS=1000
    OBS_ROUNDS=1
    SETTLE_SECONDS=${BENCH_SETTLE_SECONDS:-0}
    RESULTS=target/bench/quick
    OUT=${OUT:-$RESULTS/BENCHMARKS.md}
else
    LOAD_SECONDS=${BENCH_SECONDS:-10}
    CATCHUP_EVENTS=${BENCH_CATCHUP_EVENTS:-200000}
    CATCHUP_RUNS=3
    SYSBENCH_SECONDS=10
    SYSBENCH_ROWS=10000
    OBS_ROUNDS=${BENCH_OBS_ROUNDS:-5}
    SETTLE_SECONDS=${BENCH_SETTLE_SECONDS:-5}
    RESULTS=target/bench/$(date -u +%Y%m%d-%H%M%S)
    OUT=${OUT:-BENCHMARKS.md}
fi
[[ $SETTLE_SECONDS =~ ^[0-9]+$ ]] ||
    hotel_die "BENCH_SETTLE_SECONDS must be a whole number, not '$SETTLE_SECONDS'"
if [[ $OUT == BENCHMARKS.md ]]; then
    CHART=docs/benchmarks.svg
else
    CHART=$(dirname "$OUT")/benchmarks.svg
fi
rm -rf "$RESULTS"
mkdir -p "$RESULTS/meta"

LOADGEN=target/release/loadgen
PIDS=()   # servers started here, stopped at exit
NAMES=()
ADDR=''   # set by start
PID=''

# --- helpers ----------------------------------------------------------------

# SQL as the project user; the password goes through the environment, not
# the command line.
sql() {
    MYSQL_PWD=$HOTEL_DB_PASSWORD "$CLIENT" --protocol=TCP -h"$HOTEL_DB_HOST" -P"$HOTEL_DB_PORT" \
        -u"$HOTEL_DB_USER" --batch --skip-column-names -e "$1"
}

# start NAME COMMAND...: runs a server in the background, stdout (its
# "listening on" line) and stderr (its log) to files in RESULTS, and waits
# until it listens; its address is then in ADDR and its pid in PID. (Not
# called in $(...): the pid list must stay in this shell.)
start() {
    local name=$1 i addr
    shift
    # Made before the server starts: the background job opens them only
    # once forked, and a read of a missing file would end the script.
    : >"$RESULTS/$name.out"
    : >"$RESULTS/$name.log"
    "$@" </dev/null >"$RESULTS/$name.out" 2>"$RESULTS/$name.log" &
    PIDS+=("$!")
    NAMES+=("$name")
    for ((i = 0; i < 600; i++)); do
        addr=$(sed -n 's/.*listening on //p' "$RESULTS/$name.out" | head -n 1)
        if [[ -n $addr ]]; then
            ADDR=$addr
            PID=${PIDS[-1]}
            return 0
        fi
        if ! kill -0 "${PIDS[-1]}" 2>/dev/null; then
            tail -n 20 "$RESULTS/$name.log" >&2
            hotel_die "$name exited before listening (log: $RESULTS/$name.log)"
        fi
        sleep 0.1
    done
    hotel_die "$name did not listen within 60 s (log: $RESULTS/$name.log)"
}

# SIGTERM to every server started here, SIGKILL after 20 s.
# shellcheck disable=SC2317 # run from the EXIT trap
stop_all() {
    local i deadline=$((SECONDS + 20))
    for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
        kill -TERM "${PIDS[i]}" 2>/dev/null || true
    done
    for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
        while kill -0 "${PIDS[i]}" 2>/dev/null && ((SECONDS < deadline)); do
            sleep 0.2
        done
        if kill -0 "${PIDS[i]}" 2>/dev/null; then
            hotel_log "${NAMES[i]} did not stop within 20 s: killing it"
            kill -KILL "${PIDS[i]}" 2>/dev/null || true
        fi
        reap "${PIDS[i]}" "${NAMES[i]}"
    done
    PIDS=()
}

# Waits for a stopped server and records an unclean exit: a server must exit
# 0 on SIGTERM (a crash at shutdown once hid here, see common/src/server.rs).
BAD_EXITS=()
reap() {
    local status=0
    wait "$1" 2>/dev/null || status=$?
    if ((status != 0)); then
        hotel_log "$2 exited with status $status on SIGTERM (log: $RESULTS/$2.log)"
        BAD_EXITS+=("$2: $status")
    fi
}

# Stops the servers started after the first N (the echo server, once the
# command and query servers are the first two).
stop_all_but() {
    local keep=$1 i
    for ((i = ${#PIDS[@]} - 1; i >= keep; i--)); do
        kill -TERM "${PIDS[i]}" 2>/dev/null || true
        reap "${PIDS[i]}" "${NAMES[i]}"
        unset 'PIDS[i]' 'NAMES[i]'
    done
}

# CPU time a running process has used (user and system), in clock ticks.
cpu_ticks() {
    awk '{ print $14 + $15 }' "/proc/$1/stat"
}

# Peak resident memory (VmHWM, KiB) of a running process.
peak_rss() {
    awk '/^VmHWM:/ { print $2 }' "/proc/$1/status"
}

# A number field at the top level of a loadgen JSON report.
json_number() {
    sed -n "s/^  \"$2\": \([0-9.eE+-]*\),\{0,1\}\$/\1/p" "$1" | head -n 1
}

# One line per load, from its JSON report.
said() {
    hotel_log "$1: $(json_number "$2" "$3") $3"
}

ensure_sysbench() {
    command -v sysbench >/dev/null && return 0
    ((EUID == 0)) ||
        hotel_die "sysbench is not installed and only root can install it: sudo apt-get install -y sysbench"
    command -v apt-get >/dev/null || hotel_die "no apt-get here: install sysbench with this system's package manager"
    hotel_log "installing sysbench from Debian's packages"
    if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -q sysbench >&2; then
        apt-get update -q >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q sysbench >&2
    fi
}

# --- main -------------------------------------------------------------------

hotel_section "database"
bash scripts/bootstrap-mariadb.sh
CLIENT=$(command -v mariadb || command -v mysql) || hotel_die "no mariadb/mysql client found"
SERVER_URL=$(hotel_server_url)

hotel_section "cargo build --release --workspace --bins"
cargo build --release --workspace --bins

hotel_section "sysbench"
ensure_sysbench

{
    date -u '+%Y-%m-%d %H:%M UTC' >"$RESULTS/meta/date"
    commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
    if [[ -n $(git status --porcelain --untracked-files=no 2>/dev/null) ]]; then
        commit="$commit (with uncommitted changes)"
    fi
    printf '%s\n' "$commit" >"$RESULTS/meta/commit"
    nproc >"$RESULTS/meta/nproc"
    sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1 >"$RESULTS/meta/cpu"
    free -h >"$RESULTS/meta/memory"
    sql 'SELECT VERSION()' >"$RESULTS/meta/mariadb"
    printf '%s\n' "$COMMAND_LINE" >"$RESULTS/meta/command"
}
LOAD_AT_START=$(cut -d' ' -f1-3 /proc/loadavg)

trap stop_all EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

sql 'DROP DATABASE IF EXISTS sbtest; CREATE DATABASE sbtest'
SYSBENCH=(sysbench oltp_write_only --db-driver=mysql
    --mysql-host="$HOTEL_DB_HOST" --mysql-port="$HOTEL_DB_PORT"
    --mysql-user="$HOTEL_DB_USER" --mysql-password="$HOTEL_DB_PASSWORD" --mysql-db=sbtest
    --tables=4 --table-size="$SYSBENCH_ROWS" --time="$SYSBENCH_SECONDS")
"${SYSBENCH[@]}" prepare >"$RESULTS/sysbench-prepare.txt"
"${SYSBENCH[@]}" --threads=16 run >"$RESULTS/sysbench.txt"
# One thread: the reference of one client's commands (issue 15).
"${SYSBENCH[@]}" --threads=1 run >"$RESULTS/sysbench-1.txt"
# One durable single-row commit after another from one thread: with the
# echo at one client below, the floor of one client's commands.
"${SYSBENCH[@]/oltp_write_only/oltp_insert}" --threads=1 run >"$RESULTS/sysbench-insert-1.txt"
"${SYSBENCH[@]}" cleanup >/dev/null
sql 'DROP DATABASE IF EXISTS sbtest'
hotel_log "sysbench, 16 threads: $(grep -m1 'transactions:' "$RESULTS/sysbench.txt" | sed 's/^ *//')"
hotel_log "sysbench, 1 thread: $(grep -m1 'transactions:' "$RESULTS/sysbench-1.txt" | sed 's/^ *//')"
hotel_log "sysbench oltp_insert, 1 thread: $(grep -m1 'transactions:' "$RESULTS/sysbench-insert-1.txt" | sed 's/^ *//')"

hotel_section "servers (database $BENCH_DB)"
sql "DROP DATABASE IF EXISTS \`$BENCH_DB\`; CREATE DATABASE \`$BENCH_DB\`"
start command-server target/release/command-server \
    --listen-addr 127.0.0.1:0 --metrics-addr off \
    --database-url "$SERVER_URL/$BENCH_DB"
COMMAND_URL=http://$ADDR
COMMAND_PID=$PID
start query-server target/release/query-server \
    --listen-addr 127.0.0.1:0 --metrics-addr off \
    --command-server-url "$COMMAND_URL" --database-path "$RESULTS/read-model.db"
QUERY_URL=http://$ADDR
QUERY_PID=$PID
hotel_log "command server $COMMAND_URL (pid $COMMAND_PID), query server $QUERY_URL (pid $QUERY_PID)"
"$LOADGEN" setup --command-url "$COMMAND_URL"

hotel_section "commands/s at concurrency 1, 16, 64 (${LOAD_SECONDS}s each)"
for concurrency in 1 16 64; do
    "$LOADGEN" run --command-url "$COMMAND_URL" --concurrency "$concurrency" \
        --duration "${LOAD_SECONDS}s" --mix book=80,cancel=15,checkin=5 --json \
        >"$RESULTS/commands-c$concurrency.json"
    said "concurrency $concurrency" "$RESULTS/commands-c$concurrency.json" commands_per_sec
done

hotel_section "commands/s at concurrency 64 over two command servers on one database"
start command-server-2 target/release/command-server \
    --listen-addr 127.0.0.1:0 --metrics-addr off \
    --database-url "$SERVER_URL/$BENCH_DB"
SECOND_URL=http://$ADDR
"$LOADGEN" run --command-url "$COMMAND_URL,$SECOND_URL" --concurrency 64 \
    --duration "${LOAD_SECONDS}s" --mix book=80,cancel=15,checkin=5 --json \
    >"$RESULTS/commands-c64-two.json"
said "two instances" "$RESULTS/commands-c64-two.json" commands_per_sec
stop_all_but 2
# One server again: with the first load at 64, it brackets the two (every
# load grows the log, and a later load runs on a larger one).
"$LOADGEN" run --command-url "$COMMAND_URL" --concurrency 64 \
    --duration "${LOAD_SECONDS}s" --mix book=80,cancel=15,checkin=5 --json \
    >"$RESULTS/commands-c64-after.json"
said "one instance again" "$RESULTS/commands-c64-after.json" commands_per_sec

hotel_section "queries/s at concurrency 64, then the echo service at 64 and at 1"
hotel_log "settling for ${SETTLE_SECONDS}s after the command loads"
sleep "$SETTLE_SECONDS"
"$LOADGEN" run --command-url "$COMMAND_URL" --query-url "$QUERY_URL" --concurrency 64 \
    --duration "${LOAD_SECONDS}s" --mix query=100 --json >"$RESULTS/queries-c64.json"
said "queries" "$RESULTS/queries-c64.json" queries_per_sec
# Each query alone too: their costs differ by far more than the transport's.
for query in get availability search; do
    "$LOADGEN" run --command-url "$COMMAND_URL" --query-url "$QUERY_URL" --concurrency 64 \
        --duration "${LOAD_SECONDS}s" --mix "$query=1" --seed 200 --json \
        >"$RESULTS/queries-$query-c64.json"
    said "$query alone" "$RESULTS/queries-$query-c64.json" queries_per_sec
done
start echo-server "$LOADGEN" echo-server --listen 127.0.0.1:0
"$LOADGEN" echo --url "http://$ADDR" --concurrency 64 --duration "${LOAD_SECONDS}s" --json \
    >"$RESULTS/echo-c64.json"
hotel_log "echo: $(grep -m1 '"per_sec"' "$RESULTS/echo-c64.json" | sed 's/[^0-9.]//g') per_sec"
# One client too: with sysbench oltp_insert at one thread, the floor of one
# client's commands (a durable commit, then a call).
"$LOADGEN" echo --url "http://$ADDR" --concurrency 1 --duration "${LOAD_SECONDS}s" --json \
    >"$RESULTS/echo-c1.json"
hotel_log "echo, one client: $(grep -m1 '"per_sec"' "$RESULTS/echo-c1.json" | sed 's/[^0-9.]//g') per_sec"
stop_all_but 2

# Lag after the query loads (which write nothing) and before the metrics and
# tracing rounds, on the database the command rate was measured on: after
# those rounds have grown the log several times over, half that rate was the
# whole of what the writer could still do (run AC: 2,617/s asked, 2,394-2,624/s
# the rounds' own rate), and the lag measured queueing, not projection. Not
# before the query loads: its many small commits left them slower (run AD).
hotel_section "projection lag at half the concurrency-64 command rate"
MAX_RATE=$(json_number "$RESULTS/commands-c64.json" commands_per_sec)
LAG_RATE=$(awk -v r="${MAX_RATE:-0}" 'BEGIN { h = r / 2; printf "%.0f", (h < 1 ? 1 : h) }')
"$LOADGEN" lag --command-url "$COMMAND_URL" --query-url "$QUERY_URL" --rate "$LAG_RATE" \
    --duration "${LOAD_SECONDS}s" --json >"$RESULTS/lag.json"
hotel_log "lag at $LAG_RATE/s: p50 and p99 in $RESULTS/lag.json"

hotel_section "the cost of metrics, then of tracing (sampled at 10 %), ${OBS_ROUNDS} rounds"
# Three variants of each server side by side on the same database: plain
# (metrics and tracing off: the servers above), metrics on, and metrics on
# with tracing exported to loadgen's counting OTLP sink. Loads alternate
# between them, round after round, each round starting with the next
# variant, so that drift in the machine's load and the growing log fall on
# all three alike; the report takes each cost as the median of the rounds'
# own ratios (a variant against its reference in the same round).
start otlp-sink "$LOADGEN" otlp-sink --listen 127.0.0.1:0
OTLP_URL=http://$ADDR
OTLP_INDEX=$((${#PIDS[@]} - 1))
start command-server-metrics target/release/command-server \
    --listen-addr 127.0.0.1:0 --metrics-addr 127.0.0.1:0 \
    --database-url "$SERVER_URL/$BENCH_DB"
declare -A OBS_COMMAND_URLS=([plain]=$COMMAND_URL [metrics]=http://$ADDR)
declare -A OBS_COMMAND_PIDS=([plain]=$COMMAND_PID [metrics]=$PID)
start command-server-traced target/release/command-server \
    --listen-addr 127.0.0.1:0 --metrics-addr 127.0.0.1:0 \
    --otlp-endpoint "$OTLP_URL" --trace-sample-ratio 0.1 \
    --database-url "$SERVER_URL/$BENCH_DB"
OBS_COMMAND_URLS[traced]=http://$ADDR
OBS_COMMAND_PIDS[traced]=$PID
start query-server-metrics target/release/query-server \
    --listen-addr 127.0.0.1:0 --metrics-addr 127.0.0.1:0 \
    --command-server-url "${OBS_COMMAND_URLS[metrics]}" --database-path "$RESULTS/read-model-metrics.db"
declare -A OBS_QUERY_URLS=([plain]=$QUERY_URL [metrics]=http://$ADDR)
declare -A OBS_QUERY_PIDS=([plain]=$QUERY_PID [metrics]=$PID)
start query-server-traced target/release/query-server \
    --listen-addr 127.0.0.1:0 --metrics-addr 127.0.0.1:0 \
    --otlp-endpoint "$OTLP_URL" --trace-sample-ratio 0.1 \
    --command-server-url "${OBS_COMMAND_URLS[traced]}" --database-path "$RESULTS/read-model-traced.db"
OBS_QUERY_URLS[traced]=http://$ADDR
OBS_QUERY_PIDS[traced]=$PID
getconf CLK_TCK >"$RESULTS/obs-clock-ticks"
OBS_VARIANTS=(plain metrics traced)
for ((round = 1; round <= OBS_ROUNDS; round++)); do
    # Each round starts with another variant: the log grows with every
    # load, and a fixed order would give the last variant the largest one.
    shift_by=$(((round - 1) % 3))
    ORDER=("${OBS_VARIANTS[@]:shift_by}" "${OBS_VARIANTS[@]:0:shift_by}")
    for variant in "${ORDER[@]}"; do
        before=$(cpu_ticks "${OBS_COMMAND_PIDS[$variant]}")
        "$LOADGEN" run --command-url "${OBS_COMMAND_URLS[$variant]}" --concurrency 64 \
            --duration "${LOAD_SECONDS}s" --mix book=80,cancel=15,checkin=5 --json \
            >"$RESULTS/obs-commands-$variant-r$round.json"
        echo $(($(cpu_ticks "${OBS_COMMAND_PIDS[$variant]}") - before)) \
            >"$RESULTS/obs-commands-$variant-r$round.cpu"
        said "commands, $variant, round $round" "$RESULTS/obs-commands-$variant-r$round.json" commands_per_sec
    done
    for variant in "${ORDER[@]}"; do
        before=$(cpu_ticks "${OBS_QUERY_PIDS[$variant]}")
        "$LOADGEN" run --command-url "${OBS_COMMAND_URLS[$variant]}" \
            --query-url "${OBS_QUERY_URLS[$variant]}" --concurrency 64 \
            --duration "${LOAD_SECONDS}s" --mix query=100 --json \
            >"$RESULTS/obs-queries-$variant-r$round.json"
        echo $(($(cpu_ticks "${OBS_QUERY_PIDS[$variant]}") - before)) \
            >"$RESULTS/obs-queries-$variant-r$round.cpu"
        said "queries, $variant, round $round" "$RESULTS/obs-queries-$variant-r$round.json" queries_per_sec
    done
done
# The sink says at exit how many spans it was sent: proof that tracing was on.
stop_all_but $((OTLP_INDEX + 1))
stop_all_but "$OTLP_INDEX"
sed -n 's/^received \([0-9]*\) spans.*/\1/p' "$RESULTS/otlp-sink.out" >"$RESULTS/obs-spans"
hotel_log "the OTLP sink received $(cat "$RESULTS/obs-spans") spans"

hotel_section "catch-up over >= $CATCHUP_EVENTS events"
"$LOADGEN" catchup --command-url "$COMMAND_URL" --events "$CATCHUP_EVENTS" \
    --runs "$CATCHUP_RUNS" --query-server-bin target/release/query-server --json >"$RESULTS/catchup.json"
said "catch-up" "$RESULTS/catchup.json" events_per_sec

peak_rss "$COMMAND_PID" >"$RESULTS/rss-command-server.kib"
peak_rss "$QUERY_PID" >"$RESULTS/rss-query-server.kib"
stop_all
LOAD_AT_END=$(cut -d' ' -f1-3 /proc/loadavg)
cat >"$RESULTS/meta/note" <<EOF
The machine is shared: other engineers built and tested on the same $(nproc) cores while this ran
(load average over 1, 5 and 15 minutes: $LOAD_AT_START at the start, $LOAD_AT_END at the end), and
the load generator, both servers and MariaDB share them too. Absolute figures move with that load;
the ratios against references measured minutes apart in the same run are the figures to compare.
EOF
printf '%s\n' "$LOAD_AT_START" >"$RESULTS/meta/load"

hotel_section "report"
"$LOADGEN" report --dir "$RESULTS" --out "$OUT" --chart "$CHART"
sed -n '/^## Against the targets/,/^!\[/p' "$OUT" | sed '$d' >&2
hotel_log "raw results in $RESULTS"
if ((${#BAD_EXITS[@]})); then
    hotel_die "servers did not exit cleanly: ${BAD_EXITS[*]}"
fi
