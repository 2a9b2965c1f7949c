#!/usr/bin/env bash
# Installs promptfoo 0.121.20 (the last release for Node 20) into target/promptfoo with npm and
# prints the path of its executable. Used by scripts/eval-bench.sh to compare ll-eval with
# promptfoo; nothing else needs it. Idempotent: a second run finds the installed copy.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=target/promptfoo
bin=$dir/node_modules/.bin/promptfoo
want=0.121.20
if [ -x "$bin" ] && [ "$(node -p "require('./$dir/node_modules/promptfoo/package.json').version" 2>/dev/null)" = "$want" ]; then
  echo "$PWD/$bin"
  exit 0
fi
command -v npm >/dev/null || { echo "scripts/promptfoo.sh: npm is not installed (need Node 20 and npm)" >&2; exit 1; }
mkdir -p "$dir"
[ -f "$dir/package.json" ] || echo '{"name":"logline-promptfoo","private":true}' > "$dir/package.json"
npm install --prefix "$dir" --no-audit --no-fund --loglevel=error "promptfoo@$want" >&2
[ -x "$bin" ] || { echo "scripts/promptfoo.sh: npm did not install $bin" >&2; exit 1; }
echo "$PWD/$bin"
