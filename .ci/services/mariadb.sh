#!/usr/bin/env bash
# Throwaway MariaDB server (Debian's mariadb-server) for metatide's tests.
#
# Usage: .ci/services/mariadb.sh {start|stop|status|env}
#   start   install mariadb-server if missing (without starting Debian's own service), create
#           the data dir and a test CA + server certificate once, start the server, wait until
#           it accepts logins, print the DSN (idempotent)
#   stop    stop the server this script started (pid file), nothing else (idempotent)
#   status  exit 0 if our server is running and accepting logins
#   env     print the exports tests/services.py reads
#
# Settings (environment):
#   METATIDE_MYSQL_PORT  default 53306 (loopback only)
#   METATIDE_MYSQL_DIR   state dir, default /tmp/metatide-mariadb (data in data/, TLS files in
#                        tls/, server log, pid file and Unix socket here too)
set -euo pipefail

# Test-only account with every privilege: tests create databases and users. Loopback only.
readonly DB_USER="metatide"
readonly DB_PASSWORD="metatide-test"

PORT="${METATIDE_MYSQL_PORT:-53306}"
STATE_DIR="${METATIDE_MYSQL_DIR:-/tmp/metatide-mariadb}"
DATA_DIR="$STATE_DIR/data"
TLS_DIR="$STATE_DIR/tls"
SOCKET="$STATE_DIR/mariadb.sock"
PID_FILE="$STATE_DIR/mariadb.pid"
LOG_FILE="$STATE_DIR/mariadb.log"
DSN="mysql://$DB_USER:$DB_PASSWORD@127.0.0.1:$PORT/"

SERVICE="mariadb.sh"
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

# As root the server runs as the `mysql` OS user (made by the Debian package); otherwise as us.
if [[ $EUID -eq 0 ]]; then
    RUN_AS="mysql"
    ADMIN="root"
else
    RUN_AS="$(id -un)"
    ADMIN="$RUN_AS"
fi

ensure_installed() {
    if [[ -x /usr/sbin/mariadbd && -x /usr/bin/mariadb-install-db && -x /usr/bin/mariadb ]] &&
        command -v openssl >/dev/null 2>&1; then
        return 0
    fi
    [[ $EUID -eq 0 ]] || die "mariadb-server is not installed and we are not root to install it"
    log "installing mariadb-server from Debian"
    # The package would start Debian's own server on port 3306, a second server nobody asked
    # for: a policy-rc.d that refuses service starts (the Debian way) prevents it. An existing
    # policy is left alone.
    local policy=/usr/sbin/policy-rc.d status=0
    if [[ -e "$policy" ]]; then
        apt_install --no-install-recommends mariadb-server mariadb-client openssl || status=$?
    else
        printf '#!/bin/sh\nexit 101\n' >"$policy"
        chmod 755 "$policy"
        apt_install --no-install-recommends mariadb-server mariadb-client openssl || status=$?
        rm -f "$policy"
    fi
    [[ $status -eq 0 ]] || die "apt-get install mariadb-server failed"
    [[ -x /usr/sbin/mariadbd ]] || die "mariadb-server installed but /usr/sbin/mariadbd is missing"
}

# A CA and a server certificate for 127.0.0.1, so the tests exercise TLS for real.
make_tls() {
    [[ -f "$TLS_DIR/server-cert.pem" ]] && return 0
    log "creating a test CA and server certificate in $TLS_DIR"
    local tmp
    tmp="$(mktemp -d "$STATE_DIR/tls.XXXXXX")"
    openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=metatide test CA" \
        -keyout "$tmp/ca-key.pem" -out "$tmp/ca.pem" 2>/dev/null
    openssl req -newkey rsa:2048 -nodes -subj "/CN=127.0.0.1" \
        -keyout "$tmp/server-key.pem" -out "$tmp/server.csr" 2>/dev/null
    printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\n' >"$tmp/san.ext"
    openssl x509 -req -in "$tmp/server.csr" -CA "$tmp/ca.pem" -CAkey "$tmp/ca-key.pem" \
        -CAcreateserial -days 3650 -extfile "$tmp/san.ext" -out "$tmp/server-cert.pem" 2>/dev/null
    rm -f "$tmp/server.csr" "$tmp/san.ext" "$tmp/ca.srl"
    chown -R "$RUN_AS" "$tmp"
    chmod 755 "$tmp"
    rm -rf "$TLS_DIR"
    mv "$tmp" "$TLS_DIR"
}

init_data() {
    # A data dir without the marker file is a half-finished install: start over.
    [[ -f "$DATA_DIR/.metatide-ready" ]] && return 0
    rm -rf "$DATA_DIR"
    mkdir -p "$DATA_DIR"
    chown "$RUN_AS" "$DATA_DIR"
    log "mariadb-install-db $DATA_DIR"
    # --no-defaults: nothing from /etc/mysql applies; the admin logs in over the socket only.
    if ! mariadb-install-db --no-defaults --user="$RUN_AS" --datadir="$DATA_DIR" \
        --auth-root-authentication-method=socket --skip-test-db \
        >"$STATE_DIR/install-db.log" 2>&1; then
        cat "$STATE_DIR/install-db.log" >&2
        die "mariadb-install-db failed"
    fi
    touch "$DATA_DIR/.metatide-ready"
}

# Our server: a mariadbd with our data dir.
our_pid() { pid_from_file "$PID_FILE" "--datadir=$DATA_DIR"; }

admin_sql() {
    mariadb --no-defaults --socket="$SOCKET" -u "$ADMIN" --batch --skip-column-names -e "$1"
}

accepts_logins() {
    mariadb --no-defaults --protocol=TCP -h 127.0.0.1 -P "$PORT" -u "$DB_USER" \
        -p"$DB_PASSWORD" --connect-timeout=2 -e "SELECT 1" >/dev/null 2>&1
}

start_server() {
    log "starting on 127.0.0.1:$PORT, log $LOG_FILE"
    # Durability settings off: test data is thrown away and fsyncs dominate DDL-heavy tests.
    # Caches sized for the 10,000-table benchmark catalog. setsid detaches it from the
    # caller's job control.
    setsid /usr/sbin/mariadbd --no-defaults --user="$RUN_AS" --datadir="$DATA_DIR" \
        --bind-address=127.0.0.1 --port="$PORT" --socket="$SOCKET" --pid-file="$PID_FILE" \
        --log-error="$LOG_FILE" --skip-name-resolve --skip-log-bin \
        --character-set-server=utf8mb4 --max-connections=200 \
        --innodb-buffer-pool-size=256M --innodb-flush-log-at-trx-commit=0 \
        --innodb-doublewrite=0 --innodb-flush-method=nosync \
        --table-open-cache=12000 --table-definition-cache=12000 --open-files-limit=65535 \
        --ssl-ca="$TLS_DIR/ca.pem" --ssl-cert="$TLS_DIR/server-cert.pem" \
        --ssl-key="$TLS_DIR/server-key.pem" </dev/null >/dev/null 2>&1 &
    poll 30 admin_answers || die_with_log "mariadbd did not start"
}

admin_answers() {
    [[ -S "$SOCKET" ]] && our_pid >/dev/null && admin_sql "SELECT 1" >/dev/null 2>&1
}

ensure_account() {
    # Idempotent: the test account exists with the documented password and every privilege.
    admin_sql "CREATE USER IF NOT EXISTS '$DB_USER'@'127.0.0.1' IDENTIFIED BY '$DB_PASSWORD';
        ALTER USER '$DB_USER'@'127.0.0.1' IDENTIFIED BY '$DB_PASSWORD';
        GRANT ALL PRIVILEGES ON *.* TO '$DB_USER'@'127.0.0.1' WITH GRANT OPTION;"
}

cmd_start() {
    ensure_installed
    local pid
    if pid="$(our_pid)"; then
        log "already running (pid $pid)"
    else
        mkdir -p "$STATE_DIR"
        chown "$RUN_AS" "$STATE_DIR"
        chmod 755 "$STATE_DIR"
        if accepts_logins; then
            die "something not started by this script already answers on 127.0.0.1:$PORT"
        fi
        make_tls
        init_data
        start_server
        ensure_account
    fi
    poll 30 accepts_logins || die_with_log "MariaDB is not accepting logins on 127.0.0.1:$PORT"
    echo "$DSN"
}

cmd_stop() {
    local pid
    if ! pid="$(our_pid)"; then
        log "not running"
        return 0
    fi
    stop_pid "$pid" 30
}

cmd_status() {
    local pid
    if pid="$(our_pid)" && accepts_logins; then
        log "running (pid $pid) on 127.0.0.1:$PORT ($DATA_DIR)"
    else
        log "not running"
        return 1
    fi
}

cmd_env() {
    echo "export METATIDE_TEST_MYSQL_DSN=$DSN"
    echo "export METATIDE_TEST_MYSQL_CA=$TLS_DIR/ca.pem"
}

dispatch "$@"
