#!/usr/bin/env bash
# Runs every cargo-fuzz target for SECONDS each (default 60), corpora seeded from the
# repository's examples; exits non-zero naming each target that crashed (or hung) and the
# input file that did it. Needs the nightly toolchain and `cargo install --locked cargo-fuzz`.
# Not part of CI (see fuzz/README.md).
#
#   scripts/fuzz.sh [SECONDS]
#
# Builds go to $CARGO_TARGET_DIR when set, else fuzz/target.
set -euo pipefail

secs=${1:-60}
case $secs in '' | *[!0-9]*) echo "usage: scripts/fuzz.sh [SECONDS]" >&2; exit 2 ;; esac
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

targets=(law_parse span_parse span_strict query_spec proof_verify ndjson_ingest)

# Seeds: the example laws, every JSON span and query_ledger call the docs and golden
# transcripts show, and a few proof-shaped byte strings. Existing corpus files are kept.
python3 - "$root" <<'PY'
import json, os, re, sys, glob, hashlib
root = sys.argv[1]
corpus = os.path.join(root, "fuzz", "corpus")
def put(target, data):
    d = os.path.join(corpus, target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, "seed-" + hashlib.sha1(data).hexdigest()[:16]), "wb") as f:
        f.write(data)
for law in glob.glob(os.path.join(root, "ledger/tests/laws/*.law")):
    put("law_parse", open(law, "rb").read())
texts = [open(p, encoding="utf-8").read() for p in
         [os.path.join(root, "README.md"), os.path.join(root, "server/tests/offline_golden.txt")]
         + glob.glob(os.path.join(root, "docs/*.md"))]
spans, queries = [], []
for text in texts:
    for m in re.finditer(r"\{.*\}", text):
        s = m.group(0)
        for end in range(len(s), 0, -1):  # the longest prefix that is one JSON object
            if s[end - 1] != "}":
                continue
            try:
                v = json.loads(s[:end])
            except ValueError:
                continue
            if isinstance(v, dict) and ("who" in v or "did" in v):
                spans.append(s[:end])
            elif isinstance(v, dict) and v.get("type") in ("inclusion", "consistency"):
                put("proof_verify", s[:end])
            elif isinstance(v, dict) and ({"entity_type", "where", "output", "latest_only"} & v.keys()):
                queries.append(s[:end])
            break
for s in spans:
    put("span_parse", s)
    put("span_strict", s)
    put("ndjson_ingest", s + "\n")
put("ndjson_ingest", "\n".join(spans) + "\n")
put("ndjson_ingest", "\n".join(spans[:3]) + "\nnot json\n\n" + "\n".join(spans[3:6]) + "\n")
for q in queries:
    put("query_spec", q)
put("query_spec", '{"entity_type":"contract","status":"valid","output":"count"}')
for n in (1, 2, 7, 33, 64):
    for mode in (0, 1):
        put("proof_verify", bytes([n, mode] + [(i * 37 + n) % 256 for i in range(96)]))
PY

failed=()
for t in "${targets[@]}"; do
  artifacts="$root/fuzz/artifacts/$t"
  mkdir -p "$artifacts" "$root/fuzz/corpus/$t"
  log="$root/fuzz/artifacts/$t.log"
  before=$(find "$artifacts" -type f | wc -l)
  echo "fuzz: $t for ${secs}s"
  if cargo +nightly fuzz run "$t" "$root/fuzz/corpus/$t" -- \
      -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 \
      -artifact_prefix="$artifacts/" >"$log" 2>&1; then
    grep -E '^(#[0-9]+\s+DONE|Done [0-9]+ runs)' "$log" | tail -1 || true
  else
    input=""
    if [ "$(find "$artifacts" -type f | wc -l)" -gt "$before" ]; then
      input="$artifacts/$(ls -t "$artifacts" | head -1)"
    fi
    echo "FAIL: $t crashed; input: ${input:-none written (see $log)}" >&2
    grep -E 'panicked at|ERROR: libFuzzer|SUMMARY' "$log" | head -5 >&2 || tail -20 "$log" >&2
    failed+=("$t")
  fi
done

if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz: crashes in: ${failed[*]} (inputs under fuzz/artifacts/)" >&2
  exit 1
fi
echo "fuzz: ${#targets[@]} targets, ${secs}s each, no crash"
