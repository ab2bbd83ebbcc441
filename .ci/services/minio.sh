#!/usr/bin/env bash
# Throwaway MinIO (S3-compatible) server for metatide's tests.
#
# Usage: .ci/services/minio.sh {build|start|stop|status|env}
#   build   compile the pinned MinIO release from the Go module proxy (cached per version)
#   start   build if needed, start on 127.0.0.1:$METATIDE_S3_PORT, wait for /minio/health/live
#   stop    stop the server this script started (pid file), nothing else
#   status  exit 0 if our server is running and healthy
#   env     print the exports tests/services.py reads
#
# Settings (environment):
#   METATIDE_S3_PORT          S3 API port, default 59000
#   METATIDE_S3_CONSOLE_PORT  web console port, default 59001
#   METATIDE_S3_DIR           state dir, default /tmp/metatide-minio
#                             (objects in data/, plus minio.pid and minio.log)
#   METATIDE_CACHE_DIR        default ~/.cache/metatide (binary + shared Go caches)
set -euo pipefail

# MinIO's release tags (RELEASE.<date>) are not semver, so the module proxy only knows
# them as pseudo-versions. This is RELEASE.2025-09-07T16-13-09Z (commit 07c3a429bfed), the
# newest release the proxy serves: RELEASE.2025-10-15T17-29-55Z answers 403 there, and it
# only changed docs on top of this one.
readonly MINIO_MODULE="github.com/minio/minio"
readonly MINIO_VERSION="v0.0.0-20250907161309-07c3a429bfed"
readonly MINIO_RELEASE="RELEASE.2025-09-07T16-13-09Z"
readonly MINIO_COMMIT="07c3a429bfed433e49018cb0f78a52145d4bedeb"

# Test-only credentials: the server is loopback-only and thrown away.
readonly ROOT_USER="metatide-admin"
readonly ROOT_PASSWORD="metatide-admin-secret"

PORT="${METATIDE_S3_PORT:-59000}"
CONSOLE_PORT="${METATIDE_S3_CONSOLE_PORT:-59001}"
STATE_DIR="${METATIDE_S3_DIR:-/tmp/metatide-minio}"
CACHE_DIR="${METATIDE_CACHE_DIR:-$HOME/.cache/metatide}"
DATA_DIR="$STATE_DIR/data"
PID_FILE="$STATE_DIR/minio.pid"
LOG_FILE="$STATE_DIR/minio.log"
BIN_DIR="$CACHE_DIR/minio/$MINIO_VERSION"
BIN="$BIN_DIR/minio"

SERVICE="minio.sh"
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

find_go() {
    # A fresh shell (CI) may not have /usr/local/go/bin on PATH.
    if command -v go >/dev/null 2>&1; then
        command -v go
    elif [[ -x /usr/local/go/bin/go ]]; then
        echo /usr/local/go/bin/go
    else
        die "no Go toolchain found (need go >= 1.24 on PATH or /usr/local/go/bin/go)"
    fi
}

cmd_build() {
    if [[ -x "$BIN" ]]; then
        log "cached: $BIN"
        return 0
    fi
    mkdir -p "$BIN_DIR"
    # Serialise concurrent builds (e.g. two CI steps) of the same version.
    exec 9>"$BIN_DIR/.lock"
    flock 9
    if [[ -x "$BIN" ]]; then
        exec 9>&-
        log "cached: $BIN"
        return 0
    fi
    local go_bin tmp_bin start end
    go_bin="$(find_go)"
    tmp_bin="$(mktemp -d "$BIN_DIR/.build.XXXXXX")"
    log "building $MINIO_MODULE@$MINIO_VERSION ($MINIO_RELEASE) with $("$go_bin" version)"
    start=$(date +%s)
    # GOTOOLCHAIN=local: never download a toolchain (only the module proxy is reachable).
    # Caches live under $CACHE_DIR/go so repeated builds are fast and shared with other tools.
    # GOFLAGS is cleared so the caller's environment cannot change the build.
    # The -X flags reproduce what MinIO's own build stamps, so `minio --version` is honest.
    if ! env GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS= \
        GOMODCACHE="$CACHE_DIR/go/mod" GOCACHE="$CACHE_DIR/go/build" GOBIN="$tmp_bin" \
        "$go_bin" install -trimpath \
        -ldflags="-s -w \
-X github.com/minio/minio/cmd.Version=${MINIO_RELEASE#RELEASE.} \
-X github.com/minio/minio/cmd.CopyrightYear=${MINIO_RELEASE:8:4} \
-X github.com/minio/minio/cmd.ReleaseTag=$MINIO_RELEASE \
-X github.com/minio/minio/cmd.CommitID=$MINIO_COMMIT \
-X github.com/minio/minio/cmd.ShortCommitID=${MINIO_COMMIT:0:12}" \
        "$MINIO_MODULE@$MINIO_VERSION"; then
        rm -rf "$tmp_bin"
        die "go install $MINIO_MODULE@$MINIO_VERSION failed"
    fi
    end=$(date +%s)
    # Rename into place last, so a half-written binary is never taken as cached.
    mv "$tmp_bin/minio" "$BIN"
    rm -rf "$tmp_bin"
    # Release the lock now: a server started next must not inherit and hold it.
    exec 9>&-
    log "built $BIN in $((end - start))s"
}

# Our server: a minio server, started from our pid file.
our_pid() { pid_from_file "$PID_FILE" "minio server"; }

healthy() {
    if command -v curl >/dev/null 2>&1; then
        curl -fsS -o /dev/null --max-time 2 "http://127.0.0.1:$PORT/minio/health/live" 2>/dev/null
    else
        # No curl on this machine: one HTTP/1.0 request over bash's /dev/tcp.
        local status
        # shellcheck disable=SC2016  # $1 expands in the inner bash, on purpose
        status="$(timeout 2 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$1" &&
            printf "GET /minio/health/live HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n" >&3 &&
            head -n 1 <&3' _ "$PORT" 2>/dev/null)" || return 1
        [[ "$status" == "HTTP/1."?" 200"* ]]
    fi
}

cmd_start() {
    local pid
    if pid="$(our_pid)"; then
        if healthy; then
            log "already running (pid $pid) on 127.0.0.1:$PORT"
            echo "http://127.0.0.1:$PORT"
            return 0
        fi
    else
        cmd_build
        mkdir -p "$DATA_DIR"
        # Do not clobber some other process on our port with a confusing bind error.
        if healthy; then
            die "something not started by this script already answers on 127.0.0.1:$PORT"
        fi
        log "starting $BIN on 127.0.0.1:$PORT (console 127.0.0.1:$CONSOLE_PORT), log $LOG_FILE"
        # MINIO_CI_CD: allow a data dir on the root drive; no update checks or call-home
        # (no internet here). setsid detaches it from the caller's job control and signals.
        MINIO_ROOT_USER="$ROOT_USER" MINIO_ROOT_PASSWORD="$ROOT_PASSWORD" \
            MINIO_CI_CD=on MINIO_UPDATE=off MINIO_CALLHOME_ENABLE=off \
            setsid "$BIN" server --quiet \
            --address "127.0.0.1:$PORT" --console-address "127.0.0.1:$CONSOLE_PORT" \
            "$DATA_DIR" >>"$LOG_FILE" 2>&1 </dev/null &
        pid=$!
        echo "$pid" >"$PID_FILE"
    fi
    poll 30 healthy_or_exited "$pid" && healthy ||
        die_with_log "MinIO did not become healthy on 127.0.0.1:$PORT"
    log "ready (pid $pid)"
    echo "http://127.0.0.1:$PORT"
}

# Ends the wait for health early when the server has died (a bind error, a bad flag).
healthy_or_exited() { healthy || ! kill -0 "$1" 2>/dev/null; }

cmd_stop() {
    local pid
    if pid="$(our_pid)"; then
        stop_pid "$pid" 15
    else
        log "not running"
    fi
    rm -f "$PID_FILE"
}

cmd_status() {
    local pid
    if pid="$(our_pid)" && healthy; then
        log "running (pid $pid) on 127.0.0.1:$PORT"
    else
        log "not running"
        return 1
    fi
}

cmd_env() {
    echo "export METATIDE_TEST_S3_ENDPOINT=127.0.0.1:$PORT"
    echo "export METATIDE_TEST_S3_ACCESS_KEY=$ROOT_USER"
    echo "export METATIDE_TEST_S3_SECRET_KEY=$ROOT_PASSWORD"
}

dispatch "$@"
