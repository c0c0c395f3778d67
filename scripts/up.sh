#!/usr/bin/env bash
#
# Runs the whole system on this machine: MariaDB (scripts/bootstrap-mariadb.sh),
# a release build, then one command server and QUERY_SERVERS query servers in
# the background, until Ctrl-C or SIGTERM, which stops them all cleanly.
#
# usage: scripts/up.sh
#
# Settings, from the environment (the servers read the same variables):
#   HOTEL_DB_HOST/PORT/USER/PASSWORD/NAME   see scripts/bootstrap-mariadb.sh
#   HOTEL_COMMAND_LISTEN_ADDR   (127.0.0.1:50051)  command server, gRPC
#   HOTEL_COMMAND_METRICS_ADDR  (127.0.0.1:9464)   command server, metrics
#   HOTEL_QUERY_LISTEN_ADDR     (127.0.0.1:50052)  first query server, gRPC
#   HOTEL_QUERY_METRICS_ADDR    (127.0.0.1:9465)   first query server, metrics
#   HOTEL_QUERY_DATABASE_PATH   (data/query-server.db, one query server only)
#   QUERY_SERVERS               (1) query servers to run; with more than one,
#                               server K listens on the K-th consecutive port
#                               (gRPC and metrics) and keeps its read model in
#                               data/query-server-K.db
#   HOTEL_UP_STOP_SECONDS       (20) how long the servers get to stop before
#                               they are killed
# HOTEL_DATABASE_URL is set from the HOTEL_DB_* settings, so the command
# server uses the database the bootstrap made ready.

set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
HOTEL_SCRIPT=up
# shellcheck source=scripts/lib/hotel-env.sh
source "$REPO/scripts/lib/hotel-env.sh"
# Relative paths (data/...) are the repository's, whatever the caller's
# directory.
cd "$REPO"

COMMAND_LISTEN=${HOTEL_COMMAND_LISTEN_ADDR:-127.0.0.1:50051}
COMMAND_METRICS=${HOTEL_COMMAND_METRICS_ADDR:-127.0.0.1:9464}
QUERY_LISTEN=${HOTEL_QUERY_LISTEN_ADDR:-127.0.0.1:50052}
QUERY_METRICS=${HOTEL_QUERY_METRICS_ADDR:-127.0.0.1:9465}
QUERY_DB=${HOTEL_QUERY_DATABASE_PATH:-data/query-server.db}
QUERY_SERVERS=${QUERY_SERVERS:-1}
STOP_SECONDS=${HOTEL_UP_STOP_SECONDS:-20}
# How long a server may take to open its gRPC port (migrations run first).
START_SECONDS=60

[[ $QUERY_SERVERS =~ ^[1-9][0-9]*$ ]] ||
    hotel_die "QUERY_SERVERS must be a whole number of at least 1, not '$QUERY_SERVERS'"

PIDS=()    # every server started, the command server first
NAMES=()   # their names, for messages

# --- helpers ----------------------------------------------------------------

addr_host() { local h=${1%:*}; h=${h#[}; printf '%s' "${h%]}"; }
addr_port() { printf '%s' "${1##*:}"; }

# The same address with its port moved up by $2 (the K-th query server).
addr_plus() {
    local host=${1%:*} port=${1##*:}
    [[ $port =~ ^[0-9]+$ ]] || hotel_die "not a host:port address: '$1'"
    printf '%s:%s' "$host" "$((port + $2))"
}

is_metrics_off() { [[ ${1,,} == off || -z $1 ]]; }

# Waits until ADDR accepts TCP connections, or gives up early if the server
# (PID) has exited; then returns 1.
wait_for_listen() {
    local addr=$1 pid=$2 host port i
    host=$(addr_host "$addr")
    port=$(addr_port "$addr")
    # Port 0 means "any free port": nothing to wait for here.
    [[ $port == 0 ]] && return 0
    for ((i = 0; i < START_SECONDS * 5; i++)); do
        kill -0 "$pid" 2>/dev/null || return 1
        # shellcheck disable=SC2016 # $0 and $1 are the inner shell's
        timeout 1 bash -c 'exec 3<>"/dev/tcp/$0/$1"' "$host" "$port" 2>/dev/null && return 0
        sleep 0.2
    done
    return 1
}

# Starts one server in the background, in a session of its own (setsid): a
# Ctrl-C in the terminal then reaches this script only, and the servers get
# exactly one SIGTERM, from stop_all, in the order it chooses.
start() {
    local name=$1
    shift
    hotel_log "starting $name: $*"
    setsid "$@" </dev/null &
    PIDS+=("$!")
    NAMES+=("$name")
}

# Stops the servers with the given indexes in PIDS, together: SIGTERM for a
# graceful shutdown, SIGKILL for any still running after STOP_SECONDS.
# shellcheck disable=SC2317 # run from the EXIT trap
stop_group() {
    local i deadline=$((SECONDS + STOP_SECONDS)) running
    for i in "$@"; do
        if kill -0 "${PIDS[i]}" 2>/dev/null; then
            hotel_log "stopping ${NAMES[i]} (pid ${PIDS[i]})"
            kill -TERM "${PIDS[i]}" 2>/dev/null || true
        fi
    done
    while ((SECONDS < deadline)); do
        running=0
        for i in "$@"; do
            kill -0 "${PIDS[i]}" 2>/dev/null && running=1
        done
        ((running)) || break
        sleep 0.2
    done
    for i in "$@"; do
        if kill -0 "${PIDS[i]}" 2>/dev/null; then
            hotel_log "${NAMES[i]} did not stop within ${STOP_SECONDS}s: killing it"
            kill -KILL "${PIDS[i]}" 2>/dev/null || true
        fi
        wait "${PIDS[i]}" 2>/dev/null || true
    done
}

# Stops every server started: the query servers first, so that they do not
# log the command server's going away, then the command server.
# shellcheck disable=SC2317 # run from the EXIT trap
stop_all() {
    # A second Ctrl-C must not cut the shutdown short and leave servers
    # behind; stop_group's SIGKILL bounds the wait instead.
    trap '' INT TERM
    local i query=()
    for ((i = 1; i < ${#PIDS[@]}; i++)); do
        query+=("$i")
    done
    ((${#query[@]} == 0)) || stop_group "${query[@]}"
    ((${#PIDS[@]} == 0)) || stop_group 0
}

# --- main -------------------------------------------------------------------

command -v cargo >/dev/null ||
    hotel_die "cargo was not found: install Rust (https://rustup.rs, or your package manager), then run this again"

hotel_section "database"
bash "$REPO/scripts/bootstrap-mariadb.sh"
HOTEL_DATABASE_URL=$(hotel_database_url)
export HOTEL_DATABASE_URL

hotel_section "cargo build --release --workspace --bins"
cargo build --release --workspace --bins

# From here on, whatever ends this script (Ctrl-C, SIGTERM, a server that
# fails to start, an error) stops the servers it started.
trap stop_all EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

hotel_section "starting the servers"
mkdir -p data

start command-server target/release/command-server \
    --listen-addr "$COMMAND_LISTEN" --metrics-addr "$COMMAND_METRICS"
wait_for_listen "$COMMAND_LISTEN" "${PIDS[0]}" ||
    hotel_die "command-server did not start listening on $COMMAND_LISTEN (see its log above)"

SUMMARY=("command-server  gRPC $COMMAND_LISTEN  metrics $(is_metrics_off "$COMMAND_METRICS" && echo off || echo "http://$COMMAND_METRICS/metrics")")
for ((k = 1; k <= QUERY_SERVERS; k++)); do
    if ((QUERY_SERVERS == 1)); then
        name='query-server'
        db=$QUERY_DB
    else
        name=query-server-$k
        db=data/query-server-$k.db
    fi
    listen=$(addr_plus "$QUERY_LISTEN" $((k - 1)))
    if is_metrics_off "$QUERY_METRICS"; then
        metrics=off
    else
        metrics=$(addr_plus "$QUERY_METRICS" $((k - 1)))
    fi
    start "$name" target/release/query-server \
        --listen-addr "$listen" --metrics-addr "$metrics" \
        --database-path "$db" --command-server-url "http://$COMMAND_LISTEN"
    SUMMARY+=("$name  gRPC $listen  metrics $([[ $metrics == off ]] && echo off || echo "http://$metrics/metrics")  read model $db")
done
for ((i = 1; i < ${#PIDS[@]}; i++)); do
    wait_for_listen "$(addr_plus "$QUERY_LISTEN" $((i - 1)))" "${PIDS[i]}" ||
        hotel_die "${NAMES[i]} did not start listening (see its log above)"
done

hotel_section "running"
{
    printf '  %s\n' "${SUMMARY[@]}"
    printf '  database        %s\n' "mysql://$HOTEL_DB_USER:***@$HOTEL_DB_HOST:$HOTEL_DB_PORT/$HOTEL_DB_NAME"
    printf '\nTry:\n'
    printf '  grpcurl -plaintext %s list\n' "$COMMAND_LISTEN" "$(addr_plus "$QUERY_LISTEN" 0)"
    printf '\nCtrl-C stops them all.\n'
} >&2

# Wait until a server exits by itself (then stop the rest and pass its exit
# code on) or a signal arrives (the traps above).
status=0
wait -n "${PIDS[@]}" || status=$?
for ((i = 0; i < ${#PIDS[@]}; i++)); do
    if ! kill -0 "${PIDS[i]}" 2>/dev/null; then
        hotel_log "${NAMES[i]} exited (status $status); stopping the others"
        break
    fi
done
# A server that exits, even with 0, ends the whole run: report it as a failure.
((status != 0)) || status=1
exit "$status"
