#!/usr/bin/env bash
# Installs the dependencies of the example clients (examples/python and
# examples/node) for tests/api/clients.rs. Idempotent and quiet; CI runs it.
# A language whose toolchain is missing is skipped with a warning (its test
# then reports SKIPPED).
set -euo pipefail
cd "$(dirname "$0")"

if command -v python3 >/dev/null; then
  PIP_ROOT_USER_ACTION=ignore PIP_DISABLE_PIP_VERSION_CHECK=1 \
    python3 -m pip install --quiet -r python/requirements.txt
else
  echo "install.sh: python3 not found, skipping examples/python" >&2
fi

if command -v npm >/dev/null; then
  # npm ci starts from scratch each time, so skip it when node_modules was
  # installed from this very lockfile.
  stamp=node/node_modules/.installed-package-lock.json
  if ! cmp -s node/package-lock.json "$stamp"; then
    (cd node && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
    cp node/package-lock.json "$stamp"
  fi
else
  echo "install.sh: npm not found, skipping examples/node" >&2
fi
