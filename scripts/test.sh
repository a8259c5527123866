#!/usr/bin/env bash
# The whole test suite: formatting, lints, unit and integration tests.
#
# PostgreSQL: set CHATGATE_TEST_POSTGRES_URL (an admin URL; each test creates and
# drops its own database) to run every storage test on PostgreSQL as well as on
# SQLite. Without it those tests are skipped, loudly. `.ci/run` sets it up.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy (all targets, warnings are errors)"
cargo clippy --all-targets --locked -- -D warnings

if [ -z "${CHATGATE_TEST_POSTGRES_URL:-}" ]; then
  echo "NOTE: CHATGATE_TEST_POSTGRES_URL is not set: the PostgreSQL half of the storage tests will be SKIPPED."
fi

step "cargo test"
cargo test --all-targets --locked

echo
echo "all tests passed"
