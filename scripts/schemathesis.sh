#!/usr/bin/env bash
# Contract test of the HTTP API with schemathesis: starts `logline serve` on a free loopback port
# with a fresh embedded ledger (no authentication), and checks every operation of the OpenAPI
# document it serves (GET /api/openapi.json) against the server itself: no 5xx, and every
# response's status code, content type, headers and body conform to the document.
#
#   scripts/schemathesis.sh            run it (exit 0: no finding; 1: findings or a setup failure)
#
# schemathesis (pinned below) comes from PyPI into a private virtualenv; a failed install is an
# error, never a skip. Reports (JUnit XML, and the server's log) land in $LOGLINE_ST_OUT.
#
# Environment:
#   LOGLINE_ST_VENV          virtualenv for schemathesis       (default: $REPO/target/st-venv)
#   LOGLINE_ST_PYTHON        python used to create the venv    (default: python3)
#   LOGLINE_ST_MAX_EXAMPLES  test cases per operation and phase (default: 250)
#   LOGLINE_ST_SEED          random seed                       (default: 20261120; "random" for none)
#   LOGLINE_ST_OUT           reports directory                 (default: $REPO/target/schemathesis)
#   LOGLINE_ST_SKIP_BUILD    set to 1 to use target/debug/logline as it is
#
# Not tested: GET /api/timeline/stream, an endless Server-Sent Events response that schemathesis
# would wait on until its request timeout.
set -Eeuo pipefail

ST_PKG=schemathesis
ST_VERSION=4.32.5

log() { printf 'schemathesis.sh: %s\n' "$*" >&2; }
die() { printf 'schemathesis.sh: error: %s\n' "$*" >&2; exit 1; }

SCRIPT_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd -P)
REPO=$(cd -- "$SCRIPT_DIR/.." && pwd -P)
cd "$REPO"

abspath() { case $1 in /*) printf '%s\n' "$1" ;; *) printf '%s/%s\n' "$PWD" "$1" ;; esac; }

VENV=$(abspath "${LOGLINE_ST_VENV:-$REPO/target/st-venv}")
PYTHON=${LOGLINE_ST_PYTHON:-python3}
MAX_EXAMPLES=${LOGLINE_ST_MAX_EXAMPLES:-250}
SEED=${LOGLINE_ST_SEED:-20261120}
OUT=$(abspath "${LOGLINE_ST_OUT:-$REPO/target/schemathesis}")
BIN="$REPO/target/debug/logline"

[[ $MAX_EXAMPLES =~ ^[1-9][0-9]*$ ]] || die "LOGLINE_ST_MAX_EXAMPLES must be a positive integer, got '$MAX_EXAMPLES'"
[[ $SEED == random || $SEED =~ ^[0-9]+$ ]] || die "LOGLINE_ST_SEED must be an integer or 'random', got '$SEED'"

T0=$SECONDS

# --- schemathesis --------------------------------------------------------------------------

st_ok() { # the pinned version is installed and runs
    [[ -x $VENV/bin/st ]] && "$VENV/bin/st" --version 2>/dev/null | grep -qF "version $ST_VERSION"
}

ensure_schemathesis() {
    if st_ok; then
        log "$ST_PKG $ST_VERSION already installed in $VENV"
        return 0
    fi
    mkdir -p -- "$(dirname -- "$VENV")"
    if [[ ! -e $VENV ]]; then
        command -v "$PYTHON" >/dev/null 2>&1 || die "python not found ('$PYTHON'); set LOGLINE_ST_PYTHON"
        log "creating virtualenv $VENV with $("$PYTHON" --version 2>&1)"
        "$PYTHON" -m venv -- "$VENV" ||
            die "'$PYTHON -m venv $VENV' failed (on Debian/Ubuntu: apt-get install python3-venv)"
    elif [[ ! -x $VENV/bin/python ]]; then
        die "$VENV exists but is not a usable virtualenv; delete it or set LOGLINE_ST_VENV"
    fi
    log "installing $ST_PKG==$ST_VERSION into $VENV ..."
    local t0=$SECONDS out
    if ! out=$("$VENV/bin/python" -m pip install --disable-pip-version-check --no-input \
        --progress-bar off "$ST_PKG==$ST_VERSION" 2>&1); then
        printf '%s\n' "$out" | tail -n 25 >&2
        die "pip could not install $ST_PKG==$ST_VERSION into $VENV (output above): the API contract test cannot run"
    fi
    st_ok || die "$ST_PKG $ST_VERSION does not run from $VENV/bin/st after installing it"
    log "installed $ST_PKG==$ST_VERSION in $((SECONDS - t0))s"
}

ensure_schemathesis

# --- the server --------------------------------------------------------------------------------

if [[ ${LOGLINE_ST_SKIP_BUILD:-0} != 1 ]]; then
    log "cargo build"
    cargo build --bin logline >&2 || die "cargo build failed"
fi
[[ -x $BIN ]] || die "$BIN is missing (build it with cargo build)"

mkdir -p -- "$OUT"
DATA=$(mktemp -d "${TMPDIR:-/tmp}/logline-st.XXXXXX")
SERVER_LOG="$OUT/server.log"
SERVER_PID=

cleanup() {
    if [[ -n $SERVER_PID ]] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill -TERM "$SERVER_PID" 2>/dev/null || true
        for _ in $(seq 1 50); do
            kill -0 "$SERVER_PID" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
    fi
    rm -rf -- "$DATA"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Port 0: the kernel picks a free port and the server prints the one it got; no race with
# another process taking a port we probed. No JWT key (loopback, single user), embedded store.
(
    unset LOGLINE_JWT_SECRET LOGLINE_JWT_PUBLIC_KEY LOGLINE_DATABASE_URL LOGLINE_BIND
    export LOGLINE_LOG=${LOGLINE_LOG:-warn}
    exec "$BIN" serve --bind 127.0.0.1:0 --data-dir "$DATA/ledger"
) >"$OUT/server.stdout" 2>"$SERVER_LOG" &
SERVER_PID=$!

BASE=
for _ in $(seq 1 300); do
    BASE=$(sed -n 's#^logline listening on \(http://127\.0\.0\.1:[0-9][0-9]*\)$#\1#p' "$OUT/server.stdout" 2>/dev/null | head -n 1)
    [[ -n $BASE ]] && break
    kill -0 "$SERVER_PID" 2>/dev/null || { tail -n 30 "$SERVER_LOG" >&2; die "logline serve exited while starting (log above)"; }
    sleep 0.1
done
[[ -n $BASE ]] || die "logline serve did not report its address within 30s (log: $SERVER_LOG)"

http_ok() { # http_ok URL: true on a 2xx
    "$VENV/bin/python" - "$1" <<'EOF'
import sys, urllib.request
try:
    with urllib.request.urlopen(sys.argv[1], timeout=2) as r:
        sys.exit(0 if 200 <= r.status < 300 else 1)
except Exception:
    sys.exit(1)
EOF
}
ready=
for _ in $(seq 1 100); do
    if http_ok "$BASE/healthz"; then ready=1; break; fi
    kill -0 "$SERVER_PID" 2>/dev/null || { tail -n 30 "$SERVER_LOG" >&2; die "logline serve exited while starting (log above)"; }
    sleep 0.2
done
[[ -n $ready ]] || die "$BASE/healthz did not answer 2xx within 20s (log: $SERVER_LOG)"
log "logline serve is up at $BASE (data dir $DATA)"

# --- the run --------------------------------------------------------------------------------

# schemathesis has no serializer for NDJSON request bodies: the document declares them as a
# string, so send the generated string as it is (the text/plain serializer).
HOOKS="$OUT/hooks.py"
cat >"$HOOKS" <<'EOF'
import schemathesis

schemathesis.serializer.alias("application/x-ndjson", "text/plain")
EOF

CHECKS=not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,response_schema_conformance
seed_args=()
[[ $SEED == random ]] || seed_args=(--seed "$SEED")

# One worker: with two, hypothesis parses lambda sources from two threads at once, which trips a
# CPython 3.11 bug ("AST constructor recursion depth mismatch") and errors the run at random.
log "running $ST_PKG $ST_VERSION: checks $CHECKS; up to $MAX_EXAMPLES cases per operation and phase"
rm -f -- "$OUT/junit.xml"
set +e
(
    cd "$OUT" # keeps any stray state schemathesis writes out of the work tree
    SCHEMATHESIS_HOOKS="$HOOKS" "$VENV/bin/st" run "$BASE/api/openapi.json" \
        --checks "$CHECKS" \
        --exclude-path /api/timeline/stream \
        --max-examples "$MAX_EXAMPLES" \
        "${seed_args[@]}" \
        --workers 1 \
        --request-timeout 10 \
        --generation-database none \
        --no-color \
        --report junit --report-junit-path "$OUT/junit.xml"
)
rc=$?
set -e

if ! kill -0 "$SERVER_PID" 2>/dev/null; then
    tail -n 30 "$SERVER_LOG" >&2
    die "logline serve died during the run (log above)"
fi
# What the run exercised, from the server's own request counter.
"$VENV/bin/python" - "$BASE/metrics" <<'EOF' >&2 || log "(could not read $BASE/metrics)"
import re, sys, urllib.request
text = urllib.request.urlopen(sys.argv[1], timeout=5).read().decode()
seen = {}
for m in re.finditer(r'^logline_http_requests_total\{route="([^"]*)",method="([^"]*)",status="(\d+)"\} (\d+)$', text, re.M):
    route, method, status, n = m.groups()
    if status == "405":
        continue  # schemathesis probes every undocumented method once
    seen.setdefault(f"{method} {route}", []).append(f"{status}x{n}")
print("schemathesis.sh: responses by route (status x count):")
for k in sorted(seen):
    print(f"  {k:32} {' '.join(sorted(seen[k]))}")
EOF
if grep -q 'internal error' "$SERVER_LOG"; then
    log "the server logged internal errors (see $SERVER_LOG):"
    grep 'internal error' "$SERVER_LOG" | head -n 5 >&2
fi

# One closing line in the plain "N passed, N failed" form: operations (and the stateful run).
tally=
if [[ -s $OUT/junit.xml ]]; then
    tally=$("$VENV/bin/python" - "$OUT/junit.xml" <<'EOF' || true
import sys, xml.etree.ElementTree as ET
root = ET.parse(sys.argv[1]).getroot()
suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
total = sum(int(s.get("tests", 0)) for s in suites)
failed = sum(int(s.get("failures", 0)) + int(s.get("errors", 0)) for s in suites)
skipped = sum(int(s.get("skipped", 0)) for s in suites)
print(f"schemathesis: {total - failed - skipped} passed, {failed} failed" + (f", {skipped} skipped" if skipped else ""))
EOF
    )
fi

if ((rc != 0)); then
    [[ -z $tally ]] || printf '%s\n' "$tally"
    die "FAILED: schemathesis found responses that break the API contract (exit $rc; findings above, JUnit report $OUT/junit.xml, server log $SERVER_LOG) after $((SECONDS - T0))s"
fi
log "passed: the API conforms to its OpenAPI document ($((SECONDS - T0))s)"
[[ -z $tally ]] || printf '%s\n' "$tally"
