#!/usr/bin/env python3
"""HF transformers baseline for `dendrite scan` (BENCHMARKS.md): the same SmolLM2 GGUF, the same
windows (one document per corpus file, no special tokens, consecutive windows of CONTEXT
tokens), every `mlp.hook_post` (a forward pre-hook on each `down_proj`) and optionally one
SAELens-format TopK SAE on its hook, with a streaming top-k per unit kept the way a torch user
would: per batch, each window's maximum per unit, merged into the running top-k with
`torch.topk`, plus firing counts and sums for density and mean. No quantile samples or
histograms (Dendrite keeps those too).

Usage: .cache/venv/bin/python scripts/bench_scan_hf.py --corpus FILE_OR_DIR [--sae DIR]
       [--tokens N] [--context 64] [--batch 8] [--top-k 32] [--threads 2]
Prints tokens/s and the process's peak RSS.
"""
import argparse
import json
import resource
import sys
import time
from pathlib import Path

import torch

import hf_smollm2



def corpus_docs(path):
    path = Path(path)
    files = sorted(p for p in path.rglob("*") if p.suffix in (".txt", ".jsonl")) if path.is_dir() else [path]
    for f in files:
        if f.suffix == ".jsonl":
            for line in f.read_text().splitlines():
                if line.strip():
                    yield json.loads(line)["text"]
        else:
            yield f.read_text()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--corpus", required=True)
    ap.add_argument("--sae")
    ap.add_argument("--tokens", type=int, default=None)
    ap.add_argument("--context", type=int, default=64)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--top-k", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    tok, model = hf_smollm2.load(args.threads)

    windows = []
    for doc in corpus_docs(args.corpus):
        ids = tok(doc, add_special_tokens=False)["input_ids"]
        windows += [ids[i:i + args.context] for i in range(0, len(ids) - args.context + 1, args.context)]
    if args.tokens:
        windows = windows[: args.tokens // args.context]

    n_layers = len(model.model.layers)
    captured = {}
    for l, layer in enumerate(model.model.layers):
        layer.mlp.down_proj.register_forward_pre_hook(
            lambda module, a, l=l: captured.__setitem__(l, a[0]))

    sae = None
    if args.sae:
        from safetensors.torch import load_file
        cfg = json.loads((Path(args.sae) / "cfg.json").read_text())
        w = load_file(str(Path(args.sae) / "sae_weights.safetensors"))
        hook_layer = int(cfg.get("hook_name", cfg.get("metadata", {}).get("hook_name")).split(".")[1])
        sae = (w["W_enc"], w["b_enc"], w["b_dec"], int(cfg["k"]), hook_layer)
        model.model.layers[hook_layer].register_forward_hook(
            lambda module, a, out: captured.__setitem__("sae_in", out[0] if isinstance(out, tuple) else out))

    d_mlp = model.config.intermediate_size
    K = args.top_k
    units = n_layers * d_mlp + (sae[0].shape[1] if sae else 0)
    top_vals = torch.full((K, units), float("-inf"))
    top_idx = torch.zeros((K, units), dtype=torch.long)
    fires = torch.zeros(units, dtype=torch.long)
    sums = torch.zeros(units, dtype=torch.float64)
    started = time.perf_counter()
    n_tokens = 0
    with torch.no_grad():
        for start in range(0, len(windows), args.batch):
            batch = torch.tensor(windows[start:start + args.batch])
            model(input_ids=batch)
            acts = [captured[l] for l in range(n_layers)]
            if sae:
                W_enc, b_enc, b_dec, k, _ = sae
                x = captured["sae_in"]
                pre = (x - b_dec) @ W_enc + b_enc
                vals, idx = pre.topk(k, dim=-1)
                f = torch.zeros_like(pre).scatter_(-1, idx, vals.relu())
                acts.append(f)
            a = torch.cat(acts, dim=-1)  # [b, t, units]
            fires += (a > 0).sum(dim=(0, 1))
            sums += a.double().sum(dim=(0, 1))
            win_max = a.max(dim=1).values  # [b, units]
            ids = torch.arange(start, start + batch.shape[0]).unsqueeze(1).expand_as(win_max)
            vals = torch.cat([top_vals, win_max])
            idxs = torch.cat([top_idx, ids])
            top_vals, order = vals.topk(K, dim=0)
            top_idx = idxs.gather(0, order)
            n_tokens += batch.numel()
    elapsed = time.perf_counter() - started
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({
        "windows": len(windows), "tokens": n_tokens, "units": units,
        "seconds": round(elapsed, 3), "tokens_per_s": round(n_tokens / elapsed, 1),
        "peak_rss_mb": round(peak_mb), "threads": args.threads,
    }))


if __name__ == "__main__":
    sys.exit(main())
