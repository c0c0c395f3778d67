#!/usr/bin/env bash
#
# A paired A/B run, for deciding one change at a time (issue 15's method):
# starts every variant's command server (and a query server subscribed to
# it) on one fresh database, then runs the same load against each variant in
# turn, round after round, each round starting with the next variant, so
# that drift in the machine's load and the growing log fall on all alike.
# Prints each load's rate and the loaded server's CPU time per operation
# (steadier than the rate on a shared machine), then the medians.
#
# usage: scripts/ab.sh VARIANTS_FILE
#   VARIANTS_FILE has one variant a line, fields separated by '|':
#     name|directory of the binaries|command-server flags|query-server flags
#   ('none' as the query-server flags: no query server for that variant),
#   e.g. to compare metrics off and on with this checkout's release build:
#     plain|target/release||
#     metrics|target/release|--metrics-addr 127.0.0.1:0|--metrics-addr 127.0.0.1:0
#
# Settings, from the environment:
#   HOTEL_DB_HOST/PORT/USER/PASSWORD  see scripts/bootstrap-mariadb.sh
#   AB_DB          (hotel_ab) the database, dropped and created
#   AB_ROUNDS      (5) rounds
#   AB_SECONDS     (10) length of each load
#   AB_CONCURRENCY (64)
#   AB_MIX         (book=80,cancel=15,checkin=5) loadgen's --mix; a mix of
#                  queries (e.g. query=100) loads the query servers, and
#                  the CPU measured is theirs
#   AB_FILL        (0) seconds of commands at concurrency 64 before the
#                  rounds, so that queries find reservations
#   AB_URLS        (0) 1: also a load spread over every variant's command
#                  server at once, named "all" (e.g. one server against two)
# Results stay in target/ab/<time>/.

set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
HOTEL_SCRIPT=ab
# shellcheck source=scripts/lib/hotel-env.sh
source "$REPO/scripts/lib/hotel-env.sh"
cd "$REPO"

[[ $# -eq 1 && -f $1 ]] || hotel_die "usage: scripts/ab.sh VARIANTS_FILE (see the top of this file)"
VARIANTS=$1
DB=${AB_DB:-hotel_ab}
[[ $DB =~ ^[A-Za-z0-9_]+$ ]] || hotel_die "AB_DB must be letters, digits and _, not '$DB'"
ROUNDS=${AB_ROUNDS:-5}
SECONDS_EACH=${AB_SECONDS:-10}
CONCURRENCY=${AB_CONCURRENCY:-64}
MIX=${AB_MIX:-book=80,cancel=15,checkin=5}
FILL=${AB_FILL:-0}
RESULTS=target/ab/$(date -u +%Y%m%d-%H%M%S)
mkdir -p "$RESULTS"
LOADGEN=target/release/loadgen
[[ -x $LOADGEN ]] || cargo build --release -p loadgen
QUERIES=0
if [[ $MIX == *query* || $MIX == *get* || $MIX == *search* || $MIX == *availability* ]]; then
    QUERIES=1
fi
if ((QUERIES)) && [[ ${AB_URLS:-0} == 1 ]]; then
    hotel_die "AB_URLS=1 spreads commands only: use a mix of commands"
fi

CLIENT=$(command -v mariadb || command -v mysql) || hotel_die "no mariadb/mysql client found"
MYSQL_PWD=$HOTEL_DB_PASSWORD "$CLIENT" --protocol=TCP -h"$HOTEL_DB_HOST" -P"$HOTEL_DB_PORT" \
    -u"$HOTEL_DB_USER" -e "DROP DATABASE IF EXISTS \`$DB\`; CREATE DATABASE \`$DB\`"
DATABASE_URL=$(hotel_server_url)/$DB

PIDS=()
trap 'kill "${PIDS[@]}" 2>/dev/null || true; wait 2>/dev/null || true' EXIT

# start NAME COMMAND...: runs a server, waits for its "listening on" line;
# sets ADDR.
start() {
    local name=$1 i
    shift
    # Made before the server starts: the background job opens them only
    # once forked, and a read of a missing file would end the script.
    : >"$RESULTS/$name.out"
    : >"$RESULTS/$name.log"
    "$@" </dev/null >"$RESULTS/$name.out" 2>"$RESULTS/$name.log" &
    PIDS+=("$!")
    for ((i = 0; i < 600; i++)); do
        ADDR=$(sed -n 's/.*listening on //p' "$RESULTS/$name.out" | head -n 1)
        [[ -n $ADDR ]] && return 0
        kill -0 "${PIDS[-1]}" 2>/dev/null || hotel_die "$name exited (log: $RESULTS/$name.log)"
        sleep 0.1
    done
    hotel_die "$name did not listen within 60 s"
}

cpu_ticks() {
    awk '{ print $14 + $15 }' "/proc/$1/stat"
}

declare -A COMMAND_URL QUERY_URL LOADED_PID
NAMES=()
while IFS='|' read -r name bin command_flags query_flags; do
    [[ -z $name || $name == \#* ]] && continue
    NAMES+=("$name")
    # shellcheck disable=SC2086 # the flags are words
    start "command-$name" "$bin/command-server" --listen-addr 127.0.0.1:0 \
        $([[ $command_flags == *--metrics-addr* ]] || echo --metrics-addr off) \
        --database-url "$DATABASE_URL" $command_flags
    COMMAND_URL[$name]=http://$ADDR
    LOADED_PID[$name]=${PIDS[-1]}
    if [[ $query_flags != none ]]; then
        # shellcheck disable=SC2086
        start "query-$name" "$bin/query-server" --listen-addr 127.0.0.1:0 \
            $([[ $query_flags == *--metrics-addr* ]] || echo --metrics-addr off) \
            --command-server-url "${COMMAND_URL[$name]}" \
            --database-path "$RESULTS/read-model-$name.db" $query_flags
        QUERY_URL[$name]=http://$ADDR
        if ((QUERIES)); then
            LOADED_PID[$name]=${PIDS[-1]}
        fi
    fi
done <"$VARIANTS"
((${#NAMES[@]})) || hotel_die "no variants in $VARIANTS"
if [[ ${AB_URLS:-0} == 1 ]]; then
    all=()
    for name in "${NAMES[@]}"; do all+=("${COMMAND_URL[$name]}"); done
    COMMAND_URL[all]=$(IFS=,; echo "${all[*]}")
    NAMES+=(all)
fi

first=${NAMES[0]}
"$LOADGEN" setup --command-url "${COMMAND_URL[$first]}" >/dev/null
if ((FILL > 0)); then
    "$LOADGEN" run --command-url "${COMMAND_URL[$first]}" --concurrency 64 --duration "${FILL}s" \
        --mix book=80,cancel=15,checkin=5 --json >/dev/null
fi

declare -A RATES CPUS
for ((round = 1; round <= ROUNDS; round++)); do
    shift_by=$(((round - 1) % ${#NAMES[@]}))
    for name in "${NAMES[@]:shift_by}" "${NAMES[@]:0:shift_by}"; do
        pid=${LOADED_PID[$name]:-}
        before=0
        if [[ -n $pid ]]; then
            before=$(cpu_ticks "$pid")
        fi
        query=()
        field=commands_per_sec
        if ((QUERIES)); then
            query=(--query-url "${QUERY_URL[$name]}")
            field=queries_per_sec
        fi
        report=$RESULTS/$name-r$round.json
        "$LOADGEN" run --command-url "${COMMAND_URL[$name]}" "${query[@]}" \
            --concurrency "$CONCURRENCY" --duration "${SECONDS_EACH}s" --mix "$MIX" --json >"$report"
        rate=$(sed -n "s/^  \"$field\": \([0-9.eE+-]*\),\{0,1\}\$/\1/p" "$report" | head -n 1)
        cpu=-
        if [[ -n $pid ]]; then
            cpu=$(awk -v t="$(($(cpu_ticks "$pid") - before))" -v hz="$(getconf CLK_TCK)" \
                -v r="$rate" -v s="$SECONDS_EACH" 'BEGIN { printf "%.1f", t / hz * 1e6 / (r * s) }')
        fi
        RATES[$name]+="$rate "
        CPUS[$name]+="$cpu "
        printf 'round %d  %-10s %10.0f/s  %s us CPU/op\n' "$round" "$name" "$rate" "$cpu"
    done
done

median() {
    tr ' ' '\n' | grep -v '^-\{0,1\}$' | sort -g | awk '{ v[NR] = $1 } END {
        if (NR == 0) { print "-"; exit }
        print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}
echo
for name in "${NAMES[@]}"; do
    printf '%-10s median %s/s, %s us CPU/op\n' "$name" \
        "$(median <<<"${RATES[$name]}")" "$(median <<<"${CPUS[$name]}")"
done
hotel_log "results in $RESULTS"
