#!/usr/bin/env bash
# Throwaway PostgreSQL 15 cluster for metatide's tests.
#
# Usage: .ci/services/postgres.sh {start|stop|status|env}
#   start   install postgresql-15 if missing, create the cluster once, start it, wait
#           until it accepts connections, print the DSN (idempotent)
#   stop    stop the cluster (idempotent)
#   status  exit 0 if the cluster is running and accepting connections
#   env     print the export tests/services.py reads
#
# Settings (environment):
#   METATIDE_PG_PORT  default 55432 (loopback only)
#   METATIDE_PG_DIR   state dir, default /tmp/metatide-pg (cluster in data/, server log
#                     in postgres.log, Unix socket here too); must be reachable by the
#                     `postgres` OS user when run as root
set -euo pipefail

readonly PG_MAJOR=15
readonly PG_BIN="/usr/lib/postgresql/$PG_MAJOR/bin"
# Test-only superuser: tests need CREATE DATABASE; the server is loopback-only.
readonly PG_USER="metatide"
readonly PG_PASSWORD="metatide-test"

PORT="${METATIDE_PG_PORT:-55432}"
STATE_DIR="${METATIDE_PG_DIR:-/tmp/metatide-pg}"
DATA_DIR="$STATE_DIR/data"
LOG_FILE="$STATE_DIR/postgres.log"
DSN="postgresql://$PG_USER:$PG_PASSWORD@127.0.0.1:$PORT/postgres"

SERVICE="postgres.sh"
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

# PostgreSQL refuses to run as root, so as root we act as the `postgres` OS user
# (created by the Debian package); as anyone else we run as ourselves.
as_pg() {
    if [[ $EUID -eq 0 ]]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

ensure_installed() {
    [[ -x "$PG_BIN/postgres" && -x "$PG_BIN/initdb" && -x "$PG_BIN/pg_isready" ]] && return 0
    [[ $EUID -eq 0 ]] || die "postgresql-$PG_MAJOR is not installed and we are not root to install it"
    log "installing postgresql-$PG_MAJOR from Debian"
    # Without this the package creates and starts a default 'main' cluster on port 5432,
    # a second server nobody asked for. Only possible once postgresql-common is there.
    apt_install postgresql-common
    if [[ -f /etc/postgresql-common/createcluster.conf ]]; then
        sed -ri 's/^#?\s*create_main_cluster\s*=.*/create_main_cluster = false/' \
            /etc/postgresql-common/createcluster.conf
    fi
    apt_install "postgresql-$PG_MAJOR"
    [[ -x "$PG_BIN/postgres" ]] || die "postgresql-$PG_MAJOR installed but $PG_BIN/postgres is missing"
}

# The tests of session-independent fingerprints set lc_monetary to this locale on the reading
# role; the server can only use locales the system has generated.
readonly TEST_LOCALE="de_DE.UTF-8"

ensure_test_locale() {
    locale -a 2>/dev/null | grep -qix 'de_DE.utf8' && return 0
    [[ $EUID -eq 0 ]] || die "locale $TEST_LOCALE is missing; as root: localedef -i de_DE -f UTF-8 $TEST_LOCALE"
    [[ -f /usr/share/i18n/locales/de_DE ]] || apt_install locales
    log "generating the locale $TEST_LOCALE (tests set lc_monetary to it)"
    localedef -i de_DE -f UTF-8 "$TEST_LOCALE"
}

running() {
    [[ -f "$DATA_DIR/PG_VERSION" ]] && as_pg "$PG_BIN/pg_ctl" status -D "$DATA_DIR" >/dev/null 2>&1
}

ready() {
    "$PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$PORT" -d postgres -U "$PG_USER"
}

init_cluster() {
    mkdir -p "$STATE_DIR"
    [[ $EUID -eq 0 ]] && chown postgres:postgres "$STATE_DIR"
    chmod 700 "$STATE_DIR"
    # A data dir without PG_VERSION is a half-finished initdb: start over.
    rm -rf "$DATA_DIR"
    local pwfile
    pwfile="$(mktemp)"
    printf '%s\n' "$PG_PASSWORD" >"$pwfile"
    [[ $EUID -eq 0 ]] && chown postgres "$pwfile"
    log "initdb $DATA_DIR (superuser $PG_USER, scram-sha-256)"
    # scram for every connection, socket included, so tests exercise real password auth.
    # --no-sync: a throwaway cluster need not survive a power cut.
    if ! as_pg "$PG_BIN/initdb" -D "$DATA_DIR" -U "$PG_USER" --pwfile="$pwfile" \
        --auth=scram-sha-256 --encoding=UTF8 --locale=C --no-sync >"$STATE_DIR/initdb.log" 2>&1; then
        rm -f "$pwfile"
        cat "$STATE_DIR/initdb.log" >&2
        die "initdb failed"
    fi
    rm -f "$pwfile"
    # Our settings live in a file rewritten at every start (see write_settings).
    echo "include_if_exists = 'metatide.conf'" | as_pg tee -a "$DATA_DIR/postgresql.conf" >/dev/null
}

write_settings() {
    # Rewritten on each start so a changed port or tuning applies to an existing cluster.
    # fsync/synchronous_commit/full_page_writes off: durability is pointless for test data
    # and costs most of the time of DDL-heavy tests. 200 connections: parallel tests + pools.
    as_pg tee "$DATA_DIR/metatide.conf" >/dev/null <<EOF
listen_addresses = '127.0.0.1'
port = $PORT
unix_socket_directories = '$STATE_DIR'
max_connections = 200
fsync = off
synchronous_commit = off
full_page_writes = off
password_encryption = 'scram-sha-256'
EOF
}

cmd_start() {
    ensure_installed
    ensure_test_locale
    if running; then
        log "already running ($DATA_DIR)"
    else
        [[ -f "$DATA_DIR/PG_VERSION" ]] || init_cluster
        write_settings
        log "starting on 127.0.0.1:$PORT, log $LOG_FILE"
        as_pg "$PG_BIN/pg_ctl" start -D "$DATA_DIR" -l "$LOG_FILE" -w -t 60 >/dev/null ||
            die_with_log "pg_ctl start failed"
    fi
    poll 30 ready || die_with_log "PostgreSQL is not accepting connections on 127.0.0.1:$PORT"
    echo "$DSN"
}

cmd_stop() {
    if ! running; then
        log "not running"
        return 0
    fi
    # fast: roll back open sessions and stop now; the data is throwaway anyway.
    as_pg "$PG_BIN/pg_ctl" stop -D "$DATA_DIR" -m fast -w -t 60 >/dev/null
    log "stopped"
}

cmd_status() {
    if running && ready; then
        log "running on 127.0.0.1:$PORT ($DATA_DIR)"
    else
        log "not running"
        return 1
    fi
}

cmd_env() {
    echo "export METATIDE_TEST_PG_DSN=$DSN"
}

dispatch "$@"
