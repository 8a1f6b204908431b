#!/usr/bin/env python3
"""Issue 12's ratios to HF transformers, measured in alternating rounds.

On a shared VM the same pass's time drifts by 15-30 % within minutes, on both sides, so one
Dendrite run next to one HF run decides ratios near their targets by chance. This runs
`dendrite bench --json` and `scripts/bench_hf.py` in turn, `--rounds` times, takes each
round's ratio (Dendrite over the HF run right after it) and prints every round and the median.

Usage (after `cargo build --release` and the HF venv of BENCHMARKS.md):
  .cache/venv/bin/python scripts/bench_ratios.py [--rounds 3] [--repeats 5] [--tokens 64,256]
"""
import argparse
import json
import re
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / ".cache/models/SmolLM2-135M-Instruct.Q4_1.gguf"
LAYER = 15

# (name, Dendrite's field, HF's measurement, target) per prompt length; `None`: no target.
ROWS = [
    ("forward", "forward_ms", "forward", {64: 0.70, 256: 0.75}),
    ("forward, capturing", "capture_ms", "forward_capture", {64: 0.75, 256: 0.80}),
    ("clamp L15, all positions", "clamp_ms", "clamp_l15_full", {64: 0.40, 256: 0.45}),
    ("clamp L15, last position", "clamp_last_position_ms", "clamp_l15_full", {64: 0.10, 256: 0.05}),
]


def dendrite(tokens, repeats):
    out = subprocess.run(
        [str(ROOT / "target/release/dendrite"), "bench", str(MODEL), "--tokens",
         ",".join(map(str, tokens)), "--repeats", str(repeats), "--clamp-layers", str(LAYER),
         "--json"],
        check=True, capture_output=True, text=True).stdout
    report = json.loads(out)
    by_tokens = {}
    for r in report["results"]:
        get = lambda field: (r[field][f"L{LAYER}"] if isinstance(r[field], dict) and "median" not in r[field]
                             else r[field])["median"]
        by_tokens[r["tokens"]] = {row[1]: get(row[1]) for row in ROWS}
        by_tokens[r["tokens"]]["heads_ms"] = r["heads_ms"]["median"]
    return by_tokens


def hf(repeats):
    out = subprocess.run(
        [sys.executable, str(ROOT / "scripts/bench_hf.py"), "--repeats", str(repeats)],
        check=True, capture_output=True, text=True).stdout
    by_tokens = {}
    for m in re.finditer(r"n=\s*(\d+)\s+forward\s+([\d.]+) ms\s+forward_capture\s+([\d.]+) ms\s+"
                         r"clamp_l15_full\s+([\d.]+) ms", out):
        n, f, c, k = int(m[1]), float(m[2]), float(m[3]), float(m[4])
        by_tokens[n] = {"forward": f, "forward_capture": c, "clamp_l15_full": k}
    heads = re.search(r"head scores[^:]*:\s*([\d.]+) ms", out)
    if heads is None or not by_tokens:
        sys.exit(f"could not read scripts/bench_hf.py's output:\n{out}")
    return by_tokens, float(heads[1])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--tokens", default="64,256")
    args = ap.parse_args()
    tokens = [int(t) for t in args.tokens.split(",")]
    ratios = {}
    for round_ in range(args.rounds):
        mine = dendrite(tokens, args.repeats)
        theirs, heads = hf(args.repeats)
        print(f"round {round_ + 1}: HF forward " +
              ", ".join(f"{n}: {theirs[n]['forward']:.1f} ms" for n in tokens if n in theirs),
              flush=True)
        for n in tokens:
            for name, field, hf_name, _ in ROWS:
                ratios.setdefault((n, name), []).append(
                    (mine[n][field], theirs[n][hf_name], mine[n][field] / theirs[n][hf_name]))
        n0 = tokens[0]
        ratios.setdefault((None, "head-score probe"), []).append(
            (mine[n0]["heads_ms"], heads, mine[n0]["heads_ms"] / heads))
    print("| tokens | measurement | Dendrite ms per round | HF ms per round | ratios | median ratio | target |")
    print("|---:|---|---|---|---|---:|---|")
    targets = {(n, name): t.get(n) for name, _, _, ts in ROWS for n in tokens for t in [ts]}
    targets[(None, "head-score probe")] = 0.80
    for (n, name), rs in ratios.items():
        med = statistics.median(r[2] for r in rs)
        target = targets.get((n, name))
        verdict = "" if target is None else f"≤ {target:.2f}×: {'met' if med <= target else 'missed'}"
        fmt = lambda i, d: " / ".join(f"{r[i]:.{d}f}" for r in rs)
        print(f"| {n or '—'} | {name} | {fmt(0, 1)} | {fmt(1, 1)} | {fmt(2, 3)} | {med:.3f}× | {verdict} |")


if __name__ == "__main__":
    main()
