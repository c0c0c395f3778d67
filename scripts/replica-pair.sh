#!/usr/bin/env bash
#
# A replicated MariaDB on this machine, to try a failover by hand
# (docs/failover.md): a primary and a replica mariadbd with GTID
# replication, semi-synchronous (AFTER_SYNC) unless --async, each with its
# own datadir, port and socket. The machine's own MariaDB is not touched.
#
# usage: scripts/replica-pair.sh start [--async]  initialise (first time) and
#                                                  start both, replicating;
#                                                  prints the DATABASE URL
#        scripts/replica-pair.sh status            roles, GTID positions,
#                                                  semi-sync state
#        scripts/replica-pair.sh kill-primary      kill -9 the primary
#        scripts/replica-pair.sh promote           promote the replica (the
#                                                  steps of docs/failover.md)
#        scripts/replica-pair.sh stop              stop both, keep their files
#        scripts/replica-pair.sh clean             stop both, remove their files
#
# Settings, from the environment:
#   HOTEL_PAIR_DIR           (<repo>/data/replica-pair)
#   HOTEL_PAIR_PRIMARY_PORT  (3307)   HOTEL_PAIR_REPLICA_PORT  (3308)
#   HOTEL_DB_USER, HOTEL_DB_PASSWORD, HOTEL_DB_NAME as for bootstrap-mariadb.sh
#
# root logs in over TCP without a password on both servers: a sandbox for
# this machine only (they listen on 127.0.0.1). The command server's user
# is created on the primary and replicated.

set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
HOTEL_SCRIPT=replica-pair
# shellcheck source=scripts/lib/hotel-env.sh
source "$REPO/scripts/lib/hotel-env.sh"

PAIR_DIR=$(realpath -m "${HOTEL_PAIR_DIR:-$REPO/data/replica-pair}")
PRIMARY_PORT=${HOTEL_PAIR_PRIMARY_PORT:-3307}
REPLICA_PORT=${HOTEL_PAIR_REPLICA_PORT:-3308}
WAIT_SECONDS=60

find_program() {
    local name=$1 p
    shift
    for p in "$(command -v "$name" || true)" "$@"; do
        [[ -n $p && -x $p ]] && { printf '%s\n' "$p"; return 0; }
    done
    hotel_die "$name not found: install mariadb-server (scripts/bootstrap-mariadb.sh does)"
}

SERVER=$(find_program mariadbd /usr/sbin/mariadbd /usr/sbin/mysqld)
INSTALL_DB=$(find_program mariadb-install-db /usr/bin/mariadb-install-db /usr/bin/mysql_install_db)
CLIENT=$(find_program mariadb /usr/bin/mariadb /usr/bin/mysql)

# mariadbd refuses root unless told; in this sandbox it may run as root.
AS_USER=()
((EUID == 0)) && AS_USER=(--user=root)

sql() { # PORT SQL...
    local port=$1
    shift
    "$CLIENT" --connect-timeout=5 --batch --skip-column-names --protocol=TCP \
        -h127.0.0.1 -P"$port" -uroot --password= -e "$*"
}

# One field of SHOW SLAVE STATUS (empty on a server that replicates nothing).
slave_field() { # PORT FIELD
    "$CLIENT" --connect-timeout=5 --protocol=TCP -h127.0.0.1 -P"$1" -uroot --password= \
        -e 'SHOW SLAVE STATUS\G' | awk -v field="$2:" '$1 == field {print $2}'
}

running() { # NAME
    local pid_file=$PAIR_DIR/$1/mysqld.pid
    [[ -f $pid_file ]] && kill -0 "$(<"$pid_file")" 2>/dev/null
}

start_server() { # NAME PORT SERVER_ID OPTIONS...
    local name=$1 port=$2 id=$3 dir=$PAIR_DIR/$1 i
    shift 3
    if running "$name"; then
        hotel_log "$name already runs on :$port"
        return 0
    fi
    # Semi-synchronous settings on both: either server can take either role.
    setsid "$SERVER" --no-defaults "${AS_USER[@]}" \
        --datadir="$dir/data" --port="$port" --bind-address=127.0.0.1 \
        --socket="$dir/mysqld.sock" --pid-file="$dir/mysqld.pid" \
        --log-error="$dir/error.log" --server-id="$id" \
        --skip-name-resolve --log-bin=mariadb-bin --binlog-format=ROW \
        --log-slave-updates=ON --gtid-strict-mode=ON --skip-slave-start \
        --sync-binlog=1 --innodb-flush-log-at-trx-commit=1 \
        --character-set-server=utf8mb4 --collation-server=utf8mb4_general_ci \
        --rpl-semi-sync-master-wait-point=AFTER_SYNC \
        --rpl-semi-sync-master-timeout=10000 \
        "$@" </dev/null >/dev/null 2>&1 &
    for ((i = 0; i < WAIT_SECONDS * 5; i++)); do
        sql "$port" 'SELECT 1' >/dev/null 2>&1 && { hotel_log "$name up on 127.0.0.1:$port"; return 0; }
        sleep 0.2
    done
    tail -n 20 "$dir/error.log" >&2
    hotel_die "$name did not answer on :$port within ${WAIT_SECONDS}s (log: $dir/error.log)"
}

cmd_start() {
    local semi=ON
    [[ ${1:-} == --async ]] && semi=OFF
    mkdir -p "$PAIR_DIR/primary" "$PAIR_DIR/replica"
    local fresh=no
    if [[ ! -d $PAIR_DIR/primary/data/mysql ]]; then
        hotel_log "initialising $PAIR_DIR/primary/data"
        "$INSTALL_DB" --no-defaults "${AS_USER[@]}" --datadir="$PAIR_DIR/primary/data" \
            --auth-root-authentication-method=normal --skip-test-db --skip-name-resolve \
            >"$PAIR_DIR/install.log" 2>&1 ||
            hotel_die "mariadb-install-db failed; see $PAIR_DIR/install.log"
        rm -rf "$PAIR_DIR/replica/data"
        cp -a "$PAIR_DIR/primary/data" "$PAIR_DIR/replica/data"
        fresh=yes
    fi
    start_server primary "$PRIMARY_PORT" 1 \
        --rpl-semi-sync-master-enabled="$semi" --rpl-semi-sync-slave-enabled="$semi"
    # A replica's master side turns on once it has a replica of its own.
    start_server replica "$REPLICA_PORT" 2 --read-only=ON \
        --rpl-semi-sync-master-enabled=OFF --rpl-semi-sync-slave-enabled="$semi"
    if [[ $fresh == yes ]]; then
        sql "$REPLICA_PORT" "CHANGE MASTER TO MASTER_HOST = '127.0.0.1', MASTER_PORT = $PRIMARY_PORT,
            MASTER_USER = 'root', MASTER_PASSWORD = '', MASTER_USE_GTID = slave_pos,
            MASTER_CONNECT_RETRY = 1"
        sql "$REPLICA_PORT" 'START SLAVE'
        local u p
        u=$(printf "'%s'" "${HOTEL_DB_USER//\'/\'\'}")
        p=$(printf "'%s'" "${HOTEL_DB_PASSWORD//\'/\'\'}")
        sql "$PRIMARY_PORT" "CREATE USER IF NOT EXISTS $u@'127.0.0.1' IDENTIFIED BY $p;
            GRANT ALL PRIVILEGES ON *.* TO $u@'127.0.0.1';
            CREATE DATABASE IF NOT EXISTS \`$HOTEL_DB_NAME\`"
    elif [[ -n $(sql "$REPLICA_PORT" 'SHOW SLAVE STATUS') ]]; then
        sql "$REPLICA_PORT" 'START SLAVE'
    fi
    printf 'replica-pair: primary 127.0.0.1:%s, replica 127.0.0.1:%s (%s); DATABASE URL %s\n' \
        "$PRIMARY_PORT" "$REPLICA_PORT" "$([[ $semi == ON ]] && echo semi-synchronous || echo asynchronous)" \
        "mysql://$(hotel_urlencode "$HOTEL_DB_USER"):$(hotel_urlencode "$HOTEL_DB_PASSWORD")@127.0.0.1:$PRIMARY_PORT/$HOTEL_DB_NAME"
}

cmd_status() {
    local name port
    for name in primary replica; do
        port=$PRIMARY_PORT
        [[ $name == replica ]] && port=$REPLICA_PORT
        if ! running "$name"; then
            printf '%s (:%s): down\n' "$name" "$port"
            continue
        fi
        printf '%s (:%s): read_only=%s gtid_current_pos=%s semi_sync_master=%s replicating (IO/SQL)=%s\n' \
            "$name" "$port" \
            "$(sql "$port" 'SELECT @@read_only')" \
            "$(sql "$port" 'SELECT @@gtid_current_pos')" \
            "$(sql "$port" "SELECT VARIABLE_VALUE FROM information_schema.GLOBAL_STATUS WHERE VARIABLE_NAME = 'RPL_SEMI_SYNC_MASTER_STATUS'")" \
            "$(slave_field "$port" Slave_IO_Running)/$(slave_field "$port" Slave_SQL_Running)"
    done
}

stop_server() { # NAME [SIGNAL]
    local name=$1 signal=${2:-TERM} pid i
    running "$name" || return 0
    pid=$(<"$PAIR_DIR/$name/mysqld.pid")
    kill -"$signal" "$pid"
    for ((i = 0; i < WAIT_SECONDS * 5; i++)); do
        kill -0 "$pid" 2>/dev/null || { hotel_log "$name stopped"; return 0; }
        sleep 0.2
    done
    hotel_die "$name (pid $pid) still runs"
}

# The promotion of docs/failover.md, on the replica.
cmd_promote() {
    running replica || hotel_die "the replica is not running"
    sql "$REPLICA_PORT" 'STOP SLAVE IO_THREAD; START SLAVE SQL_THREAD'
    local received waited
    received=$(slave_field "$REPLICA_PORT" Gtid_IO_Pos)
    if [[ -n $received ]]; then
        hotel_log "applying everything received, up to $received"
        waited=$(sql "$REPLICA_PORT" "SELECT MASTER_GTID_WAIT('$received', $WAIT_SECONDS)")
        [[ $waited == 0 ]] || hotel_die "the replica did not apply $received within ${WAIT_SECONDS}s"
    fi
    sql "$REPLICA_PORT" 'STOP SLAVE; RESET SLAVE ALL; SET GLOBAL read_only = OFF'
    hotel_log "the replica on :$REPLICA_PORT is the primary now (GTID $(sql "$REPLICA_PORT" 'SELECT @@gtid_current_pos'))"
    printf 'replica-pair: new primary; DATABASE URL %s\n' \
        "mysql://$(hotel_urlencode "$HOTEL_DB_USER"):$(hotel_urlencode "$HOTEL_DB_PASSWORD")@127.0.0.1:$REPLICA_PORT/$HOTEL_DB_NAME"
}

case ${1:-} in
    start) cmd_start "${2:-}" ;;
    status) cmd_status ;;
    kill-primary) stop_server primary KILL ;;
    promote) cmd_promote ;;
    stop) stop_server replica; stop_server primary ;;
    clean) stop_server replica; stop_server primary; rm -rf "$PAIR_DIR" ;;
    -h | --help | '') sed -n '2,/^$/s/^# \{0,1\}//p' "${BASH_SOURCE[0]}" ;;
    *) hotel_die "unknown command '$1' (try --help)" ;;
esac
