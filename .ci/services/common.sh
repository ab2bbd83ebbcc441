# Shared by the throwaway test servers' scripts (postgres.sh, mariadb.sh, minio.sh); sourced,
# never run. Each script sets SERVICE (its log prefix) and LOG_FILE (its server's log) first,
# defines cmd_<command> for each of its commands, and ends with `dispatch "$@"`.

log() { printf '%s: %s\n' "$SERVICE" "$*" >&2; }
die() {
    log "error: $*"
    exit 1
}

# Dies with the server log's last lines, which usually say why a start failed.
die_with_log() {
    tail -n 30 "$LOG_FILE" >&2 || true
    die "$* (see $LOG_FILE)"
}

# apt_install [apt-get options] PACKAGE...
apt_install() {
    # Try without `apt-get update` first: it is slow and usually unnecessary.
    DEBIAN_FRONTEND=noninteractive apt-get install -y "$@" ||
        { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y "$@"; }
}

# pid_from_file PID_FILE COMMAND_LINE_PATTERN: prints the recorded pid if that process is
# alive and its command line matches, which guards against a pid reused after a reboot.
pid_from_file() {
    local pid_file="$1" pattern="$2" pid
    [[ -f "$pid_file" ]] || return 1
    pid="$(cat "$pid_file")"
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    kill -0 "$pid" 2>/dev/null || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q -- "$pattern" || return 1
    echo "$pid"
}

# stop_pid PID SECONDS: SIGTERM, then SIGKILL if the process outlives the grace period.
stop_pid() {
    local pid="$1" seconds="$2" i
    kill -TERM "$pid"
    for ((i = 0; i < seconds * 10; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        log "pid $pid ignored SIGTERM for ${seconds}s; sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    log "stopped (pid $pid)"
}

# poll SECONDS COMMAND...: true as soon as COMMAND succeeds (tried every 0.1 s), false when
# the time is up.
poll() {
    local seconds="$1" i
    shift
    for ((i = 0; i < seconds * 10; i++)); do
        "$@" && return 0
        sleep 0.1
    done
    return 1
}

# dispatch ARGS...: runs cmd_<ARGS[0]>; the script's commands are its cmd_ functions.
dispatch() {
    if [[ -n "${1:-}" ]] && declare -F "cmd_$1" >/dev/null; then
        "cmd_$1"
        return
    fi
    local commands
    commands="$(declare -F | sed -n 's/^declare -f cmd_//p' | paste -sd '|')"
    echo "usage: $0 {$commands}" >&2
    exit 2
}
