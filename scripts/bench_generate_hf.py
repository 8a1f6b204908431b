#!/usr/bin/env python3
"""HF transformers baseline for `dendrite generate` (BENCHMARKS.md): SmolLM2 from the same GGUF
(dequantized to f32), greedy `generate` of N new tokens after the README's prompt, EOS ignored,
2 threads, with and without a neuron clamp at every position (a pre-hook on one down_proj).
Prints prefill-inclusive wall time and decode tokens/s.

Usage: .cache/venv/bin/python scripts/bench_generate_hf.py [--new 64] [--threads 2]
"""
import argparse
import json
import time

import torch

import hf_smollm2

PROMPT = "The capital of France is Paris. The capital of Germany is"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--new", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    tok, model = hf_smollm2.load(args.threads)
    ids = torch.tensor([tok(PROMPT, add_special_tokens=False)["input_ids"]])
    results = {}
    for case in ["plain", "clamp"]:
        handle = None
        if case == "clamp":
            def pre(module, a):
                x = a[0].clone()
                x[..., 123] = 10.0
                return (x,)
            handle = model.model.layers[15].mlp.down_proj.register_forward_pre_hook(pre)
        times = []
        for _ in range(3):
            start = time.perf_counter()
            with torch.no_grad():
                out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                     max_new_tokens=args.new, min_new_tokens=args.new, pad_token_id=0)
            times.append(time.perf_counter() - start)
            assert out.shape[1] - ids.shape[1] == args.new
        if handle is not None:
            handle.remove()
        best = sorted(times)[1]
        results[case] = {"seconds_median": round(best, 3), "tokens_per_s": round(args.new / best, 1)}
    print(json.dumps({"new_tokens": args.new, "threads": args.threads, **results}))


if __name__ == "__main__":
    main()
