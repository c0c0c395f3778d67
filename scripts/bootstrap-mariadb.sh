#!/usr/bin/env bash
#
# Makes sure a MariaDB answers on HOTEL_DB_HOST:HOTEL_DB_PORT and that the
# project's own user can log in to it over TCP with global privileges (the
# tests create and drop databases of their own, hotel_t_*). Safe to run again
# and again: each run does only what is missing.
#
# usage: scripts/bootstrap-mariadb.sh          check / bring up, print the URL
#        scripts/bootstrap-mariadb.sh stop     stop the project-local instance
#                                              of HOTEL_DB_PORT (never the
#                                              system's MariaDB)
#
# Settings, from the environment:
#   HOTEL_DB_HOST      (127.0.0.1)   HOTEL_DB_USER      (hotel)
#   HOTEL_DB_PORT      (3306)        HOTEL_DB_PASSWORD  (hotel)
#   HOTEL_DB_NAME      (hotel)       HOTEL_DATA_DIR     (<repo>/data)
#   HOTEL_DB_SOCKET    (an extra unix socket to try for the admin login)
#   HOTEL_DB_WAIT_SECONDS (60: how long a server we start may take to answer)
#
# The steps, each taken only when the one before is not enough:
#   a. The project user logs in over TCP and has global privileges: done.
#   b. A server answers: create the user as an admin, which is root over TCP
#      with an empty password, else root over the unix socket (a fresh Debian
#      MariaDB lets root in only that way).
#   c. Nothing answers: install MariaDB if it is missing, start the system's
#      server (default 127.0.0.1:3306 only) or else a project-local instance
#      in HOTEL_DATA_DIR/mariadb-PORT, wait for it, then step b.
# The one line on stdout, at the end, names the server and gives the
# DATABASE URL; all else goes to stderr.

set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
HOTEL_SCRIPT=bootstrap-mariadb
# shellcheck source=scripts/lib/hotel-env.sh
source "$REPO/scripts/lib/hotel-env.sh"

# Not USER/HOST: USER is the login's own variable.
DB_HOST=$HOTEL_DB_HOST
DB_PORT=$HOTEL_DB_PORT
DB_USER=$HOTEL_DB_USER
DB_PASS=$HOTEL_DB_PASSWORD
DB_NAME=$HOTEL_DB_NAME
[[ $DB_PORT =~ ^[0-9]+$ ]] || hotel_die "HOTEL_DB_PORT must be a port number, not '$DB_PORT'"

WAIT_SECONDS=${HOTEL_DB_WAIT_SECONDS:-60}

# A project-local instance lives in one folder: data, socket, pid file, log.
# The path is made absolute because mariadbd runs from another directory.
DATA_DIR=$(realpath -m "${HOTEL_DATA_DIR:-$REPO/data}")
LOCAL_DIR=$DATA_DIR/mariadb-$DB_PORT
LOCAL_PID=$LOCAL_DIR/mariadbd.pid
LOCAL_LOG=$LOCAL_DIR/mariadbd.log
LOCAL_SOCK=$LOCAL_DIR/mysqld.sock
# A unix socket path must fit in 108 bytes; a deeply nested checkout would
# not, so then the socket goes to /tmp instead.
if ((${#LOCAL_SOCK} > 100)); then
    LOCAL_SOCK=${TMPDIR:-/tmp}/hotel-mariadb-$DB_PORT.sock
fi

# Where Debian's MariaDB puts its socket.
SYSTEM_SOCKETS=(/run/mysqld/mysqld.sock /var/run/mysqld/mysqld.sock)

CLIENT=''         # the mariadb (or mysql) command-line client
ADMIN=()          # the client command that logs in as an admin
ADMIN_DESC=''

# --- small helpers ----------------------------------------------------------

is_local_host() {
    case $DB_HOST in 127.* | localhost | ::1) return 0 ;; *) return 1 ;; esac
}

# Is the setting the stock 127.0.0.1:3306, which the system's server serves?
is_default_address() {
    [[ $DB_PORT == 3306 ]] && [[ $DB_HOST == 127.0.0.1 || $DB_HOST == localhost ]]
}

# Does anything accept a TCP connection on DB_HOST:DB_PORT? (bash's /dev/tcp,
# so that no extra tool is needed; bounded, so a firewall cannot hang us.)
tcp_open() {
    # shellcheck disable=SC2016 # $0 and $1 are the inner shell's
    timeout 3 bash -c 'exec 3<>"/dev/tcp/$0/$1"' "$DB_HOST" "$DB_PORT" 2>/dev/null
}

# Waits up to $1 seconds for the port to open. With a pid as $2, gives up at
# once if that process dies (a server that failed to start).
wait_for_tcp() {
    local seconds=$1 pid=${2:-} i
    for ((i = 0; i < seconds; i++)); do
        tcp_open && return 0
        if [[ -n $pid ]] && ! kill -0 "$pid" 2>/dev/null; then
            return 1
        fi
        sleep 1
    done
    tcp_open
}

# Runs SQL as the project user over TCP: never a prompt, never a long wait.
user_sql() {
    "$CLIENT" --connect-timeout=5 --batch --skip-column-names \
        --protocol=TCP -h"$DB_HOST" -P"$DB_PORT" \
        -u"$DB_USER" --password="$DB_PASS" -e "$1"
}

# Step a's test: the user logs in and holds ALL PRIVILEGES ON *.*. A user
# that logs in with lesser grants is not enough: the tests create databases.
user_ready() {
    local grants
    grants=$(user_sql 'SHOW GRANTS' 2>/dev/null) || return 1
    grep -q 'GRANT ALL PRIVILEGES ON \*\.\* TO' <<<"$grants"
}

# SQL string literal and identifier quoting, for names and passwords that
# come from the environment.
sql_string() {
    local s=${1//\\/\\\\}
    printf "'%s'" "${s//\'/\'\'}"
}
sql_ident() {
    # shellcheck disable=SC2016 # literal backquotes
    printf '`%s`' "${1//\`/\`\`}"
}

# --- installing -------------------------------------------------------------

install_packages() {
    if ((EUID != 0)); then
        hotel_die "MariaDB is not installed here and only root can install it. Install it, e.g.:
    sudo apt-get install -y mariadb-server mariadb-client
then run this script again."
    fi
    command -v apt-get >/dev/null ||
        hotel_die "no apt-get on this machine: install $* with its package manager, then run this script again"
    hotel_log "installing $* with apt-get"
    apt-get update -q >&2
    # 9>&-: the package may start its service, which must not inherit the
    # lock (see main).
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" >&2 9>&-
}

find_client() {
    command -v mariadb || command -v mysql
}

find_server() {
    local p
    for p in "$(command -v mariadbd || true)" /usr/sbin/mariadbd /usr/sbin/mysqld; do
        [[ -n $p && -x $p ]] && { printf '%s\n' "$p"; return 0; }
    done
    return 1
}

find_install_db() {
    command -v mariadb-install-db || command -v mysql_install_db
}

# --- step b: the admin login and the user -------------------------------------

# try_admin CHECK_PORT DESCRIPTION COMMAND...: if COMMAND logs in, it becomes
# the admin command. With CHECK_PORT=yes the server must also be the one on
# DB_PORT (a unix socket might belong to another server on this machine).
try_admin() {
    local check_port=$1 desc=$2 port
    shift 2
    port=$("$@" --connect-timeout=5 --batch --skip-column-names \
        -e 'SELECT @@port' 2>/dev/null </dev/null) || return 1
    if [[ $check_port == yes && $port != "$DB_PORT" ]]; then
        return 1
    fi
    ADMIN=("$@")
    ADMIN_DESC=$desc
}

find_admin() {
    local sock me
    me=$(id -un)

    # root over TCP with an empty password: this machine's MariaDB, and many
    # developers' and CI's.
    try_admin no "root over TCP" \
        "$CLIENT" --protocol=TCP -h"$DB_HOST" -P"$DB_PORT" -uroot --password= &&
        return 0

    # Else over a unix socket, which needs the server to be on this machine.
    # A fresh Debian MariaDB lets root in only this way (unix_socket
    # authentication: the login's OS user must be root).
    is_local_host || return 1
    for sock in "$LOCAL_SOCK" ${HOTEL_DB_SOCKET:+"$HOTEL_DB_SOCKET"} "${SYSTEM_SOCKETS[@]}"; do
        [[ -S $sock ]] || continue
        if ((EUID == 0)); then
            try_admin yes "root over $sock" \
                "$CLIENT" --protocol=SOCKET -S"$sock" -uroot && return 0
        else
            # A project-local instance set up by a non-root user names its
            # socket-authenticated admin after that user.
            try_admin yes "$me over $sock" \
                "$CLIENT" --protocol=SOCKET -S"$sock" -u"$me" && return 0
            if command -v sudo >/dev/null; then
                try_admin yes "root over $sock (sudo)" \
                    sudo -n "$CLIENT" --protocol=SOCKET -S"$sock" -uroot && return 0
            fi
        fi
    done
    return 1
}

# The SQL that sets the user up, as it is or as it is to be. Also printed for
# the admin to run by hand when this script finds no admin login.
user_setup_sql() {
    local u p h sql=''
    u=$(sql_string "$DB_USER")
    p=$(sql_string "$DB_PASS")
    # 'localhost' for socket logins, '127.0.0.1' for TCP on loopback (with
    # skip-name-resolve 'localhost' does not match TCP), '%' for the rest.
    # The explicit hosts also beat an anonymous ''@'localhost' account, which
    # would otherwise shadow '%'.
    for h in localhost 127.0.0.1 %; do
        sql+="CREATE USER IF NOT EXISTS $u@'$h' IDENTIFIED BY $p;"$'\n'
        # The password from the environment wins over an older one.
        sql+="ALTER USER $u@'$h' IDENTIFIED BY $p;"$'\n'
        sql+="GRANT ALL PRIVILEGES ON *.* TO $u@'$h' WITH GRANT OPTION;"$'\n'
    done
    sql+="CREATE DATABASE IF NOT EXISTS $(sql_ident "$DB_NAME");"$'\n'
    printf '%s' "$sql"
}

create_user() {
    if ! find_admin; then
        hotel_die "a server answers on $DB_HOST:$DB_PORT, but neither root over TCP (empty password) nor root over a unix socket could log in, so the user '$DB_USER' cannot be created from here. Run this as an admin of that server:
$(user_setup_sql)"
    fi
    hotel_log "creating user '$DB_USER' and database '$DB_NAME' as $ADMIN_DESC"
    # On stdin, not on the command line, so the password stays out of ps.
    user_setup_sql | "${ADMIN[@]}" --connect-timeout=5 --batch
}

# --- step c: bringing a server up ---------------------------------------------

start_system_server() {
    local server=$1
    if ((EUID != 0)); then
        hotel_log "not root, so the system's MariaDB cannot be started from here"
        return 1
    fi
    if [[ ! -e /etc/mysql/my.cnf || ! -d /var/lib/mysql/mysql ]]; then
        hotel_log "no configured system MariaDB (/etc/mysql/my.cnf, /var/lib/mysql)"
        return 1
    fi
    hotel_log "starting the system's MariaDB"
    # Its pid file and socket go to /run/mysqld, which a reboot empties, and
    # mariadbd (running as mysql) must be able to write there.
    install -d -o mysql -g mysql -m 755 /run/mysqld
    if [[ -d /run/systemd/system ]]; then
        systemctl start mariadb >&2 9>&- || true
    else
        # How this kind of machine starts it. --pidfile makes the "already
        # running?" test look at the system server only, not at a
        # project-local mariadbd that may be running on another port.
        start-stop-daemon --start --oknodo --background \
            --pidfile /run/mysqld/mysqld.pid --exec "$server" >&2 9>&- || true
    fi
    wait_for_tcp "$WAIT_SECONDS" && return 0
    if [[ -x /etc/init.d/mariadb ]]; then
        hotel_log "not up yet; trying the init script"
        service mariadb start >&2 9>&- || true
        wait_for_tcp 30 && return 0
    fi
    hotel_log "the system's MariaDB did not answer (see /var/log/mysql/error.log)"
    return 1
}

start_local_server() {
    local server=$1 install_db pid as_user=() socket_user=()

    install_db=$(find_install_db) || hotel_die "mariadb-install-db not found: install mariadb-server"
    mkdir -p "$LOCAL_DIR"

    if ((EUID == 0)); then
        # mariadbd refuses to run as root; it runs as the mysql user, which
        # must be able to reach and write the folder.
        id mysql >/dev/null 2>&1 || hotel_die "there is no 'mysql' user: install mariadb-server"
        as_user=(--user=mysql)
        chown -R mysql:mysql "$LOCAL_DIR"
        runuser -u mysql -- test -w "$LOCAL_DIR" ||
            hotel_die "the mysql user cannot write $LOCAL_DIR (a parent folder is closed to it, /root for one). Point HOTEL_DATA_DIR at a folder it can reach, e.g. HOTEL_DATA_DIR=/var/tmp/hotel"
    else
        # Run by a plain user: that user, over the socket, is the admin.
        socket_user=(--auth-root-socket-user="$(id -un)")
    fi

    if [[ ! -d $LOCAL_DIR/mysql ]]; then
        hotel_log "initialising a project-local MariaDB in $LOCAL_DIR"
        # --no-defaults: the system's my.cnf names its own datadir, port,
        # socket and log, none of which are ours. Root logs in over the
        # socket only, so the instance has no password-less TCP admin.
        if ! "$install_db" --no-defaults "${as_user[@]}" --datadir="$LOCAL_DIR" \
            --auth-root-authentication-method=socket "${socket_user[@]}" \
            --skip-test-db >"$LOCAL_DIR/install.log" 2>&1; then
            tail -n 20 "$LOCAL_DIR/install.log" >&2
            hotel_die "mariadb-install-db failed; its log is $LOCAL_DIR/install.log"
        fi
    fi

    hotel_log "starting a project-local MariaDB on $DB_HOST:$DB_PORT (log: $LOCAL_LOG)"
    local bind=127.0.0.1
    [[ $DB_HOST == ::1 ]] && bind=::1
    # setsid: its own session, so a Ctrl-C meant for the caller does not stop
    # the database. stdout/stderr to the log: it must not hold the caller's
    # pipe open. 9>&-: nor our lock.
    setsid "$server" --no-defaults "${as_user[@]}" \
        --datadir="$LOCAL_DIR" \
        --port="$DB_PORT" --bind-address="$bind" \
        --socket="$LOCAL_SOCK" --pid-file="$LOCAL_PID" \
        --skip-name-resolve \
        --character-set-server=utf8mb4 --collation-server=utf8mb4_general_ci \
        </dev/null >>"$LOCAL_LOG" 2>&1 9>&- &
    pid=$!

    if ! wait_for_tcp "$WAIT_SECONDS" "$pid"; then
        tail -n 20 "$LOCAL_LOG" >&2
        kill "$pid" 2>/dev/null || true
        hotel_die "the project-local MariaDB did not answer within ${WAIT_SECONDS}s; its log is $LOCAL_LOG"
    fi
}

# Nothing answers on DB_HOST:DB_PORT: bring a server up there.
bring_up_server() {
    local server
    is_local_host ||
        hotel_die "nothing answers on $DB_HOST:$DB_PORT, and that is not this machine: start that server, or set HOTEL_DB_HOST/HOTEL_DB_PORT to one that runs"

    if ! server=$(find_server); then
        install_packages mariadb-server mariadb-client
        server=$(find_server) || hotel_die "mariadbd still not found after installing mariadb-server"
        # Debian's package starts its service on install where it can.
        tcp_open && return 0
    fi

    if is_default_address && start_system_server "$server"; then
        return 0
    fi
    start_local_server "$server"
}

# --- stop -------------------------------------------------------------------

stop_local_server() {
    local pid i
    if [[ ! -f $LOCAL_PID ]]; then
        hotel_log "no project-local MariaDB for port $DB_PORT is running (no $LOCAL_PID)"
        return 0
    fi
    pid=$(<"$LOCAL_PID")
    # Only a mariadbd with our datadir: a stale pid file may name a pid that
    # now belongs to something else.
    if ! tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "--datadir=$LOCAL_DIR"; then
        hotel_log "the project-local MariaDB for port $DB_PORT is not running (stale $LOCAL_PID)"
        return 0
    fi
    hotel_log "stopping the project-local MariaDB on port $DB_PORT (pid $pid)"
    kill -TERM "$pid"
    for ((i = 0; i < WAIT_SECONDS; i++)); do
        kill -0 "$pid" 2>/dev/null || { hotel_log "stopped"; return 0; }
        sleep 1
    done
    hotel_die "pid $pid still runs after ${WAIT_SECONDS}s"
}

# --- main -------------------------------------------------------------------

report() {
    local info version datadir where
    info=$(user_sql 'SELECT @@version, @@datadir')
    version=${info%%$'\t'*}
    datadir=${info#*$'\t'}
    if [[ ${datadir%/} == "$LOCAL_DIR" ]]; then
        where="project-local MariaDB $version (datadir $LOCAL_DIR; stop it with HOTEL_DB_PORT=$DB_PORT scripts/bootstrap-mariadb.sh stop)"
    else
        where="MariaDB $version (datadir ${datadir%/})"
    fi
    printf 'bootstrap-mariadb: using %s on %s:%s; DATABASE URL %s\n' \
        "$where" "$DB_HOST" "$DB_PORT" "$(hotel_database_url)"
}

main() {
    case ${1:-} in
        '') ;;
        stop)
            stop_local_server
            return
            ;;
        -h | --help)
            sed -n '2,/^$/s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"
            return
            ;;
        *) hotel_die "unknown argument '$1' (try --help)" ;;
    esac

    # One bootstrap per port at a time (two test runs starting together must
    # not both start a server). Skipped where flock is missing.
    # Whatever this script starts is handed the lock's fd 9 closed (9>&-), or
    # a server started here would hold the lock for as long as it runs.
    if command -v flock >/dev/null &&
        exec 9>>"${TMPDIR:-/tmp}/hotel-bootstrap-mariadb-$DB_PORT-$(id -u).lock"; then
        flock -w 180 9 || hotel_die "another bootstrap for port $DB_PORT still runs"
    fi

    if ! CLIENT=$(find_client); then
        # The client alone: a server may be answering already (another
        # machine's, a container's), and it is all steps a and b need.
        install_packages mariadb-client
        CLIENT=$(find_client) || hotel_die "no mariadb client even after installing mariadb-client"
    fi

    # a. Already set up?
    if user_ready; then
        hotel_log "user '$DB_USER' logs in on $DB_HOST:$DB_PORT"
    else
        # c. Nothing answers: bring a server up first.
        if ! tcp_open; then
            hotel_log "nothing answers on $DB_HOST:$DB_PORT"
            bring_up_server
        fi
        # b. Create the user as an admin.
        create_user
        user_ready ||
            hotel_die "user '$DB_USER' was created but still cannot log in over TCP on $DB_HOST:$DB_PORT with global privileges"
    fi
    user_sql "CREATE DATABASE IF NOT EXISTS $(sql_ident "$DB_NAME")"
    report
}

main "$@"
