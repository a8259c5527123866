#!/usr/bin/env bash
# Runs chatgate on SQLite with chatgate.example.toml, generating the vault key and
# the signing key next to it on first use. Stop with Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release --locked
bin=target/release/chatgate
[ -f vault.key ] || { "$bin" keys generate vault > vault.key; chmod 600 vault.key; echo "generated vault.key"; }
[ -f signing.pem ] || "$bin" keys generate signing --out signing.pem
"$bin" check-config --config chatgate.example.toml
exec "$bin" serve --config chatgate.example.toml
