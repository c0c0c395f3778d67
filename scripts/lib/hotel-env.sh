# shellcheck shell=bash
#
# Shared by scripts/bootstrap-mariadb.sh, scripts/up.sh and scripts/test.sh
# (sourced, not run). It holds the one copy of the database settings and their
# defaults, so that the database the bootstrap prepares is the database the
# servers and the tests are pointed at.

# The database settings. Each can be overridden from the environment.
HOTEL_DB_HOST=${HOTEL_DB_HOST:-127.0.0.1}
HOTEL_DB_PORT=${HOTEL_DB_PORT:-3306}
HOTEL_DB_USER=${HOTEL_DB_USER:-hotel}
HOTEL_DB_PASSWORD=${HOTEL_DB_PASSWORD:-hotel}
HOTEL_DB_NAME=${HOTEL_DB_NAME:-hotel}

# Messages go to stderr so that stdout carries only what a script promises
# to print there. HOTEL_SCRIPT names the script in each line.
hotel_log() {
    printf '%s: %s\n' "${HOTEL_SCRIPT:-${0##*/}}" "$*" >&2
}

hotel_die() {
    hotel_log "error: $*"
    exit 1
}

# A clear header between the long stretches of cargo output.
hotel_section() {
    printf '\n==> %s\n' "$*" >&2
}

# Percent-encodes one URL component, so that a password such as 'p@ss:w/rd'
# still gives a URL that sqlx parses.
hotel_urlencode() {
    # Byte by byte (LC_ALL=C), so that a non-ASCII character becomes its
    # UTF-8 bytes, each percent-encoded.
    local LC_ALL=C
    local s=$1 out='' c i
    for ((i = 0; i < ${#s}; i++)); do
        c=${s:i:1}
        case $c in
            [a-zA-Z0-9.~_-]) out+=$c ;;
            *) out+=$(printf '%%%02X' "'$c") ;;
        esac
    done
    printf '%s' "$out"
}

# The URL of the server alone, without a database: what the tests get, since
# they create and drop databases of their own.
hotel_server_url() {
    local host=$HOTEL_DB_HOST
    # An IPv6 literal needs brackets in a URL.
    [[ $host == *:* ]] && host="[$host]"
    printf 'mysql://%s:%s@%s:%s' \
        "$(hotel_urlencode "$HOTEL_DB_USER")" \
        "$(hotel_urlencode "$HOTEL_DB_PASSWORD")" \
        "$host" "$HOTEL_DB_PORT"
}

# The URL of the project's database: what the command server gets.
hotel_database_url() {
    printf '%s/%s' "$(hotel_server_url)" "$(hotel_urlencode "$HOTEL_DB_NAME")"
}
