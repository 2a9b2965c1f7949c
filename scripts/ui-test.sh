#!/usr/bin/env bash
# Browser tests of the web UI (web/tests/*.test.mjs): Playwright (playwright-core) drives Debian's
# headless Chromium against the real `logline serve` on fresh demo data on 127.0.0.1:0. Installs
# its tools first (scripts/browser.sh) and fails loudly if it cannot: never skipped. Screenshots
# go to target/ui-screenshots/. LOGLINE_BIN picks another binary (default target/debug/logline,
# built here); extra arguments go to `node --test`.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! scripts/browser.sh; then
  echo "ui-test.sh: error: the browser tests cannot run: Chromium, Node.js or playwright-core is missing and could not be installed (see above)" >&2
  exit 1
fi

if [ -z "${LOGLINE_BIN:-}" ]; then
  cargo build --bin logline >&2
  export LOGLINE_BIN="$PWD/target/debug/logline"
fi
[ -x "$LOGLINE_BIN" ] || { echo "ui-test.sh: error: $LOGLINE_BIN is not an executable" >&2; exit 1; }

mkdir -p target/ui-screenshots
cd web
if ! node --test --test-concurrency=1 "$@" tests/; then
  echo "ui-test.sh: error: the web UI tests failed (screenshots in target/ui-screenshots/)" >&2
  exit 1
fi
echo "ui-test.sh: web UI tests passed; screenshots in target/ui-screenshots/" >&2
