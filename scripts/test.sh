#!/usr/bin/env bash
# The whole test suite: formatting, lints, unit and integration tests (Rust),
# then the browser end-to-end tests (Node + npm oidc-provider, in Debian's
# Chromium, Firefox ESR and WebKitGTK).
#
# PostgreSQL: set CHATGATE_TEST_POSTGRES_URL (an admin URL; each test creates and
# drops its own database) to run every storage test on PostgreSQL as well as on
# SQLite. Without it those tests are skipped, loudly. `.ci/run` sets it up.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy (all targets, warnings are errors; the production build and the demo build)"
cargo clippy --all-targets --locked -- -D warnings
cargo clippy --all-targets --locked --features demo -- -D warnings

if [ -z "${CHATGATE_TEST_POSTGRES_URL:-}" ]; then
  echo "NOTE: CHATGATE_TEST_POSTGRES_URL is not set: the PostgreSQL half of the storage tests will be SKIPPED."
fi

step "cargo test (with the demo, whose development IdP the tests use)"
cargo test --all-targets --locked --features demo

step "a production build has no demo"
cargo build --locked --bin chatgate
demo_output="$(./target/debug/chatgate demo 2>&1 || true)"
if grep -q -- "--features demo" <<<"$demo_output"; then
  echo "ok: chatgate built without --features demo refuses 'demo' and says how to get it"
else
  echo "FAILED: a build without the demo feature still runs 'chatgate demo'"
  exit 1
fi

step "browser end-to-end tests (tests/e2e)"
if [ "${CHATGATE_SKIP_BROWSER_TESTS:-}" = "1" ]; then
  echo "SKIPPED: CHATGATE_SKIP_BROWSER_TESTS=1"
else
  chromium_bin="${CHROMIUM_PATH:-/usr/bin/chromium}"
  if [ ! -x "$chromium_bin" ] || ! command -v node >/dev/null; then
    echo "The browser tests need Node.js 20+ and Debian's chromium ($chromium_bin)."
    echo "Install them (sudo apt-get install chromium nodejs npm) or run 'bash .ci/run', which does."
    exit 1
  fi
  # Firefox ESR and WebKitGTK: skipped, loudly, when missing (CI requires them:
  # CHATGATE_TEST_REQUIRE_ENGINES=1).
  for engine in /usr/bin/firefox-esr /usr/bin/WebKitWebDriver; do
    [ -x "$engine" ] || echo "NOTE: $engine is missing: its browser tests will be SKIPPED (sudo apt-get install firefox-esr webkit2gtk-driver xvfb)."
  done
  cargo build --locked --bin chatgate --features demo
  # The examples' npm workspace (the Web Chat test runs examples/webchat).
  if [ ! -d examples/node_modules ] || [ examples/package-lock.json -nt examples/node_modules/.package-lock.json ]; then
    (cd examples && npm ci --no-audit --no-fund)
  fi
  (
    cd tests/e2e
    # Install the pinned npm packages when missing or when the lock file changed.
    if [ ! -d node_modules ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
      npm ci --no-audit --no-fund
    fi
    # The Python example bot's packages, in a venv of their own.
    if [ ! -x .venv/bin/python ] || [ requirements.txt -nt .venv/bin/python ]; then
      python3 -m venv .venv && .venv/bin/pip install --quiet --disable-pip-version-check -r requirements.txt
    fi
    CHATGATE_BIN="$(pwd)/../../target/debug/chatgate" node --test --test-concurrency=1 --test-timeout=180000 --test-reporter=spec
  )
fi

echo
echo "all tests passed"
