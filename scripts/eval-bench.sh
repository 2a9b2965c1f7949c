#!/usr/bin/env bash
# scripts/eval-bench.sh [CASES] — ll-eval against promptfoo, side by side in one run: the same
# questions and assertions, the same local fake OpenAI-compatible server (ll-eval-fake, which
# answers at once with TCP_NODELAY set), the same concurrency. ll-eval runs the whole agent in
# process (prompt build, provider call, schema and citation checks, the turn's spans) and
# records every case as signed eval_case spans; promptfoo calls the server and checks the text.
# Prints one JSON line per runner and the ratio. PROFILE=release (default) or dev; CONC=8.
set -euo pipefail
cd "$(dirname "$0")/.."
cases=${1:-1000}
conc=${CONC:-8}
profile=${PROFILE:-release}
export CARGO_BUILD_JOBS=${CARGO_BUILD_JOBS:-2}
cargo build --quiet --profile "$profile" -p evals --bins
dir=${CARGO_TARGET_DIR:-target}/$([ "$profile" = dev ] && echo debug || echo "$profile")
promptfoo=$(scripts/promptfoo.sh)
work=target/eval-bench
rm -rf "$work" && mkdir -p "$work"

"$dir/ll-eval-fake" > "$work/fake.url" &
fake=$!
trap 'kill $fake 2>/dev/null || true' EXIT
for _ in $(seq 50); do [ -s "$work/fake.url" ] && break; sleep 0.1; done
url=$(head -1 "$work/fake.url")

# The same cases for both: questions and assertions generated once.
python3 - "$cases" "$work" "$url" "$conc" <<'PY'
import json, sys
n, work, url, conc = int(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])
asserts = [
    {"type": "icontains", "value": "deadline"},
    {"type": "contains", "value": "D1"},
    {"type": "regex", "value": "terminated by [a-z_]+"},
    {"type": "not-icontains", "value": "PWNED"},
    {"type": "javascript", "value": "output.length > 20"},
]
qs = [f"why was D{i % 5 + 1} terminated? (case {i})" for i in range(n)]
with open(f"{work}/suite.yaml", "w") as f:
    f.write("suite: bench\ntenant: bench\nuser: ana@padaria-lisboa.pt\ncases:\n")
    for i, q in enumerate(qs):
        f.write(f"  - name: case-{i}\n    question: {json.dumps(q)}\n    assert: {json.dumps(asserts)}\n")
cfg = {
    "description": "bench",
    "prompts": ["{{question}}"],
    "providers": [{"id": "openai:chat:fake", "config": {"apiBaseUrl": url, "apiKey": "fake"}}],
    "evaluateOptions": {"maxConcurrency": conc},
    "tests": [{"vars": {"question": q}, "assert": asserts} for q in qs],
}
json.dump(cfg, open(f"{work}/promptfooconfig.json", "w"))
PY

t0=$(date +%s.%N)
set +e
"$dir/ll-eval" "$work/suite.yaml" --fresh --no-progress --provider openai --model fake \
  --base-url "$url" --concurrency "$conc" --output "$work/ll-eval.jsonl" > "$work/ll-eval.out" 2>&1
ll_code=$?
t1=$(date +%s.%N)
PROMPTFOO_DISABLE_TELEMETRY=1 PROMPTFOO_DISABLE_UPDATE=1 PROMPTFOO_CONFIG_DIR="$PWD/$work/promptfoo-home" \
  OPENAI_API_KEY=fake "$promptfoo" eval -c "$work/promptfooconfig.json" --no-cache --no-progress-bar \
  --max-concurrency "$conc" -o "$work/promptfoo.json" > "$work/promptfoo.out" 2>&1
pf_code=$?
t2=$(date +%s.%N)
set -e
python3 - "$work" "$cases" "$t0" "$t1" "$t2" "$ll_code" "$pf_code" "$conc" <<'PY'
import json, re, sys
work, n, t0, t1, t2, llc, pfc, conc = sys.argv[1], int(sys.argv[2]), *map(float, sys.argv[3:6]), sys.argv[6], sys.argv[7], sys.argv[8]
ll = [json.loads(l) for l in open(f"{work}/ll-eval.jsonl")]
pf = json.load(open(f"{work}/promptfoo.json"))
stats = pf.get("results", {}).get("stats", {})
out = open(f"{work}/ll-eval.out").read()
m = re.search(r"(\d+) attempts in ([\d.]+) s", out)
ll_inner = int(m.group(1)) / float(m.group(2)) if m else None
ll_rate, pf_rate = n / (t1 - t0), n / (t2 - t1)
print(json.dumps({"runner": "ll-eval", "cases": len(ll), "passed": sum(1 for l in ll if l["pass"]), "exit": int(llc),
                  "seconds": round(t1 - t0, 2), "cases_per_s": round(ll_rate, 1),
                  "cases_per_s_excluding_startup": round(ll_inner, 1) if ll_inner else None,
                  "eval_case_spans": sum(1 for l in ll if l.get("eval_case")), "concurrency": int(conc)}))
print(json.dumps({"runner": "promptfoo@0.121.20", "cases": stats.get("successes", 0) + stats.get("failures", 0) + stats.get("errors", 0),
                  "passed": stats.get("successes"), "exit": int(pfc), "seconds": round(t2 - t1, 2),
                  "cases_per_s": round(pf_rate, 1),
                  "cases_per_s_excluding_startup": round(n / (stats["durationMs"] / 1000), 1) if stats.get("durationMs") else None,
                  "concurrency": int(conc)}))
ratio = {"ratio": round(ll_rate / pf_rate, 2), "target": 3.0}
if ll_inner and stats.get("durationMs"):
    ratio["ratio_excluding_startup"] = round(ll_inner / (n / (stats["durationMs"] / 1000)), 2)
print(json.dumps(ratio))
PY
