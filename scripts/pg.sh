#!/usr/bin/env bash
# A throwaway PostgreSQL server for turbosession's tests and SQLAlchemy's suite.
#
#   scripts/pg.sh run -- <command...>   start a server, export its URLs, run the
#                                       command, remove the server whatever the
#                                       outcome; exits with the command's status
#   eval "$(scripts/pg.sh start)"       start one for interactive use (prints
#                                       the exports below, nothing else on stdout)
#   scripts/pg.sh stop [DIR]            stop and remove it (DIR defaults to
#                                       $TURBOSESSION_PG_DIR, set by start)
#   scripts/pg.sh install               install PostgreSQL from Debian packages
#                                       (done by start/run when it is missing)
#
# Exported URLs (psycopg 3; role scott/tiger, a superuser of this cluster only):
#   TURBOSESSION_PG_URL      database turbosession, for the project's tests
#   TURBOSESSION_PG_URL_2    database turbosession_2, a second database for
#                            binds, sharding and two-phase commit tests
#   TURBOSESSION_PG_SQLA_URL database test, laid out as SQLAlchemy's
#                            README.unittests.rst asks (schemas test_schema and
#                            test_schema_2, hstore and citext, English text
#                            search); pass it to SQLAlchemy's suite as --dburi
#   TURBOSESSION_PG_DIR      the cluster's folder (what stop removes)
#
# The cluster lives in a fresh temporary folder, listens on 127.0.0.1 only, on a
# free port, with durability off (fsync, full_page_writes, synchronous_commit):
# its data is worthless once the command ends.  As root it runs as the
# ``postgres`` user the Debian package creates, since initdb refuses root.
set -euo pipefail

log() { echo "pg.sh: $*" >&2; }
die() { log "$*"; exit 1; }

# Newest Debian server install (/usr/lib/postgresql/<major>/bin), else a
# pg_ctl on PATH (other distributions, Homebrew).
find_bindir() {
    local dir
    dir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
    if [[ -n "$dir" && -x "$dir/initdb" ]]; then
        echo "$dir"
    elif command -v pg_ctl >/dev/null 2>&1 && command -v initdb >/dev/null 2>&1; then
        dirname "$(command -v pg_ctl)"
    fi
}

install_postgresql() {
    [[ $(id -u) -eq 0 ]] || die "PostgreSQL is not installed; install it (Debian: apt-get install postgresql) or run as root"
    command -v apt-get >/dev/null || die "PostgreSQL is not installed and this is not a Debian-like system"
    log "installing PostgreSQL from Debian packages"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    # postgresql-common first, so that its createcluster.conf can say not to
    # create (and start) the system-wide "main" cluster when the server
    # package is installed: only throwaway clusters are wanted here.
    apt-get install -y -qq --no-install-recommends -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold postgresql-common >&2
    sed -ri 's/^#?\s*create_main_cluster\s*=.*$/create_main_cluster = false/' \
        /etc/postgresql-common/createcluster.conf
    apt-get install -y -qq --no-install-recommends -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold postgresql postgresql-contrib >&2
}

# Runs a server binary as the cluster's owner: ``postgres`` when we are root.
as_owner() {
    if [[ $(id -u) -eq 0 ]]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

admin_sql() {  # admin_sql DATABASE SQL
    "$BINDIR/psql" -X -q -v ON_ERROR_STOP=1 -h "$DIR/sock" -p "$PORT" -U postgres -d "$1" -c "$2" >&2
}

setup_databases() {
    admin_sql postgres "CREATE ROLE scott LOGIN SUPERUSER PASSWORD 'tiger'"
    local db
    for db in turbosession turbosession_2 test; do
        admin_sql postgres "CREATE DATABASE $db OWNER scott ENCODING 'UTF8' TEMPLATE template0"
    done
    # What SQLAlchemy's suite expects of its database (README.unittests.rst).
    admin_sql test "SET ROLE scott;
        CREATE SCHEMA test_schema; CREATE SCHEMA test_schema_2;
        CREATE EXTENSION hstore; CREATE EXTENSION citext"
    admin_sql postgres "ALTER DATABASE test SET default_text_search_config = 'pg_catalog.english'"
}

start_server() {
    BINDIR=$(find_bindir)
    if [[ -z "$BINDIR" ]]; then
        install_postgresql
        BINDIR=$(find_bindir)
        [[ -n "$BINDIR" ]] || die "PostgreSQL installed but initdb not found"
    fi
    DIR=$(mktemp -d "${TMPDIR:-/tmp}/turbosession-pg.XXXXXX")
    mkdir "$DIR/sock"
    echo "$BINDIR" >"$DIR/bindir"
    [[ $(id -u) -eq 0 ]] && chown -R postgres: "$DIR"
    local pwfile="$DIR/pw"
    echo postgres >"$pwfile"
    as_owner "$BINDIR/initdb" -D "$DIR/data" -U postgres -E UTF8 --locale=C \
        --auth-local=trust --auth-host=scram-sha-256 --pwfile="$pwfile" --no-sync >"$DIR/initdb.log" 2>&1 \
        || { cat "$DIR/initdb.log" >&2; die "initdb failed"; }
    # Durability off: this data is thrown away.  Two-phase commit needs
    # max_prepared_transactions; pytest-xdist workers each hold connections
    # (SQLAlchemy's suite makes one database per worker).
    cat >>"$DIR/data/postgresql.conf" <<EOF
listen_addresses = '127.0.0.1'
unix_socket_directories = '$DIR/sock'
fsync = off
full_page_writes = off
synchronous_commit = off
max_connections = 300
max_prepared_transactions = 100
max_locks_per_transaction = 256
log_min_messages = warning
EOF
    local attempt
    for attempt in 1 2 3 4 5; do
        PORT=$(free_port)
        if as_owner "$BINDIR/pg_ctl" -D "$DIR/data" -l "$DIR/server.log" -w -t 60 \
            -o "-p $PORT" start >/dev/null; then
            break
        fi
        log "server did not start on port $PORT (attempt $attempt)"
        tail -n 5 "$DIR/server.log" >&2 || true
        PORT=
    done
    [[ -n "$PORT" ]] || die "could not start PostgreSQL"
    setup_databases || die "could not create the test databases"
    local base="postgresql+psycopg://scott:tiger@127.0.0.1:$PORT"
    export TURBOSESSION_PG_DIR="$DIR"
    export TURBOSESSION_PG_URL="$base/turbosession"
    export TURBOSESSION_PG_URL_2="$base/turbosession_2"
    export TURBOSESSION_PG_SQLA_URL="$base/test"
    log "PostgreSQL $("$BINDIR/postgres" --version | awk "{print \$3}") at $base (folder $DIR)"
}

print_exports() {
    local name
    for name in TURBOSESSION_PG_DIR TURBOSESSION_PG_URL TURBOSESSION_PG_URL_2 TURBOSESSION_PG_SQLA_URL; do
        printf 'export %s=%q\n' "$name" "${!name}"
    done
}

stop_server() {  # stop_server DIR: stops the server if it runs, removes DIR
    local dir=$1
    [[ -n "$dir" && -d "$dir" && $(basename "$dir") == turbosession-pg.* ]] \
        || die "not a cluster folder of this script: '$dir'"
    if [[ -f "$dir/data/postmaster.pid" ]]; then
        local bindir
        bindir=$(cat "$dir/bindir" 2>/dev/null || find_bindir)
        as_owner "$bindir/pg_ctl" -D "$dir/data" -m fast -w -t 30 stop >/dev/null 2>&1 \
            || as_owner "$bindir/pg_ctl" -D "$dir/data" -m immediate -w stop >/dev/null 2>&1 \
            || log "could not stop the server in $dir"
    fi
    rm -rf "$dir"
    log "stopped and removed $dir"
}

# Removes a half-made or finished cluster when the script exits.
cleanup() {
    if [[ -n "${DIR:-}" ]]; then
        stop_server "$DIR"
    fi
}

cmd=${1:-}
shift || true
case "$cmd" in
    run)
        [[ "${1:-}" == "--" ]] && shift
        [[ $# -gt 0 ]] || die "usage: $0 run -- <command...>"
        trap cleanup EXIT
        start_server
        trap 'exit 130' INT
        trap 'exit 143' TERM
        status=0
        "$@" || status=$?
        exit "$status"
        ;;
    start)
        trap cleanup EXIT  # only if starting fails: the server is kept below
        start_server
        trap - EXIT
        print_exports
        ;;
    stop)
        stop_server "${1:-${TURBOSESSION_PG_DIR:-}}"
        ;;
    install)
        install_postgresql
        ;;
    *)
        sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0" >&2
        exit 2
        ;;
esac
