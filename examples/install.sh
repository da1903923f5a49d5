#!/usr/bin/env bash
# Installs the dependencies of the example clients (examples/python,
# examples/node, examples/oauth, examples/web and examples/ssf) for
# tests/api/clients.rs, tests/api/oauth_clients.rs, tests/api/browser.rs and
# tests/api/ssf_receiver_kit.rs. Idempotent and quiet;
# CI runs it. The browser itself (Debian's chromium) is .ci/run's to install.
# A language whose toolchain is missing is skipped with a warning (its tests
# then report SKIPPED).
set -euo pipefail
cd "$(dirname "$0")"

if command -v python3 >/dev/null; then
  # Pinned versions already installed make this a quick no-op.
  for requirements in python/requirements.txt oauth/requirements.txt web/requirements.txt ssf/requirements.txt; do
    PIP_ROOT_USER_ACTION=ignore PIP_DISABLE_PIP_VERSION_CHECK=1 \
      python3 -m pip install --quiet -r "$requirements"
  done
else
  echo "install.sh: python3 not found, skipping examples/python, examples/oauth, examples/web and examples/ssf" >&2
fi

if command -v npm >/dev/null; then
  for dir in node oauth web; do
    # npm ci starts from scratch each time, so skip it when node_modules was
    # installed from this very lockfile.
    stamp="$dir/node_modules/.installed-package-lock.json"
    if ! cmp -s "$dir/package-lock.json" "$stamp"; then
      (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
      cp "$dir/package-lock.json" "$stamp"
    fi
  done
else
  echo "install.sh: npm not found, skipping examples/node, examples/oauth and examples/web" >&2
fi
