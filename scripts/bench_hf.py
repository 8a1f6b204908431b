#!/usr/bin/env python3
"""HF transformers baseline for BENCHMARKS.md: the same SmolLM2 GGUF, the same token ids and the
same three measurements as `cargo bench --bench forward`:
  forward                 plain eager forward
  forward_capture         + a forward pre-hook on every down_proj (TL's mlp.hook_post) and
                          output_attentions=True (every attention pattern)
  clamp_l15_full          a full rerun with neuron 123 of layer 15's hook_post set (HF has no
                          incremental recompute)
Usage: .cache/venv/bin/python scripts/bench_hf.py [--threads 2] [--repeats 10]
Prints median milliseconds per measurement and the process's peak RSS. With --peak-rss N it only
loads and runs one N-token capturing forward (as `dendrite bench --peak-rss --tokens N`), printing
the peak RSS after each, in this fresh process.
"""
import argparse
import sys
import resource
import statistics
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

ROOT = Path(__file__).resolve().parent.parent
TEXT = "The quick brown fox jumps over the lazy dog while the curious cat watches from the warm windowsill. "


def median_ms(fn, repeats):
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--peak-rss", type=int, metavar="TOKENS")
    ap.add_argument("--model", default=str(ROOT / ".cache/models/SmolLM2-135M-Instruct.Q4_1.gguf"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    path = Path(args.model)
    tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=torch.float32, attn_implementation="eager").eval()
    captured = {}

    def capture(layer):
        def fn(module, inputs):
            captured[layer] = inputs[0].detach()
        return fn

    def clamp(module, inputs):
        x = inputs[0].clone()
        x[..., 123] = 10.0
        return (x,)

    def peak_mib():
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    def ids_of(n):
        return torch.tensor([tok(TEXT * (n // 8 + 2), add_special_tokens=False)["input_ids"][:n]])

    if args.peak_rss:
        load = peak_mib()
        ids = ids_of(args.peak_rss)
        with torch.inference_mode():
            handles = [l.mlp.down_proj.register_forward_pre_hook(capture(i)) for i, l in enumerate(model.model.layers)]
            out = model(input_ids=ids, output_attentions=True)
            del out
        print(f"peak RSS: load {load:.0f} MiB, + one {args.peak_rss}-token forward capturing every "
              f"down_proj input and attention {peak_mib():.0f} MiB")
        return

    for n in (16, 64, 256):
        ids = ids_of(n)
        with torch.inference_mode():
            plain = median_ms(lambda: model(input_ids=ids), args.repeats)
            handles = [l.mlp.down_proj.register_forward_pre_hook(capture(i)) for i, l in enumerate(model.model.layers)]
            hooked = median_ms(lambda: model(input_ids=ids, output_attentions=True), args.repeats)
            c = model.model.layers[15].mlp.down_proj.register_forward_pre_hook(clamp)
            clamped = median_ms(lambda: model(input_ids=ids, output_attentions=True), args.repeats)
            c.remove()
            for h in handles:
                h.remove()
        print(f"n={n:>3}  forward {plain:8.1f} ms  forward_capture {hooked:8.1f} ms  clamp_l15_full {clamped:8.1f} ms")
    # Head scores on the repeated-random-token probe: 4 sequences of 20 tokens repeated, one
    # batched pass with eager attentions, then the four scores (as make_fixtures.py computes).
    sys.path.insert(0, str(ROOT / "scripts"))
    from make_fixtures import detect_induction_mul, head_scores
    g = torch.Generator().manual_seed(0)
    half = torch.randint(1, model.config.vocab_size, (4, 20), generator=g)
    ids = torch.cat([half, half], 1)
    toks = ids.tolist()

    def all_scores():
        out = model(input_ids=ids, output_attentions=True)
        for att in out.attentions:
            head_scores(att.float(), toks, 20)
            detect_induction_mul(att.float(), toks, False)

    with torch.inference_mode():
        heads = median_ms(all_scores, args.repeats)
    print(f"head scores (4 x 40 tokens, all layers and heads): {heads:8.1f} ms")
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
