#!/usr/bin/env bash
# Installs what the web UI's browser tests need, from Debian's packages and the npm registry
# only: Debian's Chromium at /usr/bin/chromium (apt-get, when missing), Node.js 20+ with npm,
# and web/node_modules from web/package-lock.json (`npm ci`: playwright-core, pinned). Never
# downloads a browser build (PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1). Exits non-zero with a clear
# message when something cannot be installed: the browser tests must not be skipped.
set -euo pipefail
cd "$(dirname "$0")/.."

fail() {
  echo "browser.sh: error: $*" >&2
  exit 1
}

apt_install() {
  command -v apt-get >/dev/null 2>&1 ||
    fail "$* missing and apt-get is not available: install Debian's $* by hand"
  local sudo=""
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null 2>&1 || fail "$* missing; installing needs root (or sudo)"
    sudo="sudo"
  fi
  echo "browser.sh: installing $* from Debian" >&2
  $sudo apt-get update -qq >&2 || fail "apt-get update failed; cannot install $*"
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "$@" >&2 ||
    fail "apt-get install $* failed"
}

missing=()
[ -x /usr/bin/chromium ] || missing+=(chromium)
# Text in screenshots needs at least one font.
dpkg -s fonts-dejavu-core >/dev/null 2>&1 || missing+=(fonts-dejavu-core)
command -v node >/dev/null 2>&1 || missing+=(nodejs)
command -v npm >/dev/null 2>&1 || missing+=(npm)
if [ ${#missing[@]} -gt 0 ]; then
  apt_install "${missing[@]}"
fi

[ -x /usr/bin/chromium ] || fail "/usr/bin/chromium is still missing after installing Debian's chromium"
/usr/bin/chromium --headless --no-sandbox --version >/dev/null 2>&1 ||
  fail "/usr/bin/chromium does not start: $(/usr/bin/chromium --headless --no-sandbox --version 2>&1 | tail -1)"

node_major=$(node -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0)
[ "$node_major" -ge 20 ] ||
  fail "Node.js $(node --version 2>/dev/null || echo '(none)') is too old: playwright-core needs Node.js 20 or later"

# node_modules is rebuilt only when the lock file changed since the last install.
stamp=web/node_modules/.package-lock.json
if [ ! -f "$stamp" ] || ! cmp -s web/package-lock.json web/node_modules/.installed-lock; then
  echo "browser.sh: npm ci in web/" >&2
  (cd web && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund >&2) ||
    fail "npm ci in web/ failed (is the npm registry reachable?)"
  cp web/package-lock.json web/node_modules/.installed-lock
fi
node -e 'require.resolve("playwright-core", { paths: ["web"] })' 2>/dev/null ||
  fail "playwright-core is not installed in web/node_modules"

echo "browser.sh: $(/usr/bin/chromium --version 2>/dev/null | head -1), node $(node --version), playwright-core $(node -p 'require("./web/node_modules/playwright-core/package.json").version')" >&2
