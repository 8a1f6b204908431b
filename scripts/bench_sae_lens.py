#!/usr/bin/env python3
"""SAELens baseline for BENCHMARKS.md: encode throughput of a 576 -> 16384 TopK SAE (k=64, random
float32 weights) on real SmolLM2-135M activations at blocks.15.hook_resid_post.

1. Runs HF transformers on .cache/models/SmolLM2-135M-Instruct.Q4_1.gguf (dequantized to f32, as
   scripts/bench_hf.py loads it) over --tokens tokens of fixed English text in sequences of 256
   tokens (no BOS), capturing the output of model.model.layers[15] (= TL blocks.15.hook_resid_post).
2. Writes those activations to .cache/smollm2_l15_resid.safetensors (tensor x [T, 576] f32) so the
   Rust bench uses the same inputs (reused on later runs unless --recompute).
3. Times sae_lens TopKSAE.encode over all T tokens in batches of --batch (one warm-up pass, then
   the median of --repeats passes) with torch threads = --threads.
Prints: sae_lens encode 576->16384 topk k=64: N tokens/s (batch 1024, 2 threads)

Usage (project venv with sae-lens 6.54.12, see scripts/make_sae_fixtures.py):
  .cache/venv/bin/python scripts/bench_sae_lens.py [--threads 2] [--repeats 5] [--tokens 4096]
      [--save-sae .cache/bench_sae_topk_576x16384]   # also write the random SAE (SAELens v6 layout)
"""

import argparse
import os
import statistics
import time
import warnings
from pathlib import Path

os.environ.setdefault("WANDB_MODE", "disabled")

import torch
from safetensors.torch import load_file, save_file

ROOT = Path(__file__).resolve().parent.parent
PARAGRAPH = (
    "The history of the printing press is a story of slow change followed by sudden acceleration. "
    "For centuries, books were copied by hand in monasteries, and a single volume could take a scribe "
    "many months to finish. When movable type arrived in Europe in the fifteenth century, printers "
    "could produce hundreds of identical pages in a day. Prices fell, literacy spread, and ideas "
    "travelled faster than ever before, reshaping religion, science and politics across the continent. "
)
SEQ = 256
LAYER = 15


def activations(model_path: Path, n_tokens: int, threads: int) -> torch.Tensor:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_path.parent, gguf_file=model_path.name)
    model = AutoModelForCausalLM.from_pretrained(
        model_path.parent, gguf_file=model_path.name, dtype=torch.float32,
        attn_implementation="eager").eval()
    ids = []
    while len(ids) < n_tokens:
        ids += tok(PARAGRAPH * 20, add_special_tokens=False)["input_ids"]
    ids = torch.tensor(ids[:n_tokens]).view(-1, SEQ)
    captured = []

    def hook(module, inputs, output):
        h = output[0] if isinstance(output, (tuple, list)) else output
        captured.append(h.detach().reshape(-1, h.shape[-1]).clone())

    handle = model.model.layers[LAYER].register_forward_hook(hook)
    with torch.inference_mode():
        for row in ids:
            model(input_ids=row[None])
    handle.remove()
    x = torch.cat(captured).float().contiguous()
    assert x.shape == (n_tokens, model.config.hidden_size), x.shape
    return x


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--tokens", type=int, default=4096)
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--d-sae", type=int, default=16384)
    ap.add_argument("--k", type=int, default=64)
    ap.add_argument("--model", default=str(ROOT / ".cache/models/SmolLM2-135M-Instruct.Q4_1.gguf"))
    ap.add_argument("--acts", default=str(ROOT / ".cache/smollm2_l15_resid.safetensors"))
    ap.add_argument("--recompute", action="store_true", help="recompute activations even if --acts exists")
    ap.add_argument("--save-sae", help="also save the random SAE here (sae_lens save_model layout)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    acts = Path(args.acts)
    if acts.exists() and not args.recompute:
        x = load_file(str(acts))["x"]
        print(f"activations: {acts} {list(x.shape)} (cached)")
    else:
        t0 = time.perf_counter()
        x = activations(Path(args.model), args.tokens, args.threads)
        acts.parent.mkdir(parents=True, exist_ok=True)
        save_file({"x": x}, str(acts))
        print(f"activations: wrote {acts} {list(x.shape)} in {time.perf_counter() - t0:.1f} s")

    from sae_lens.saes import TopKSAE, TopKSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    d_in = x.shape[1]
    cfg = TopKSAEConfig(d_in=d_in, d_sae=args.d_sae, k=args.k, dtype="float32", device="cpu",
                        metadata=SAEMetadata(model_name="SmolLM2-135M-Instruct",
                                             hook_name=f"blocks.{LAYER}.hook_resid_post"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sae = TopKSAE(cfg).eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        sae.W_enc.copy_(torch.randn(d_in, args.d_sae, generator=g) / d_in**0.5)
        sae.b_enc.copy_(torch.randn(args.d_sae, generator=g) * 0.1)
        sae.W_dec.copy_(torch.randn(args.d_sae, d_in, generator=g) / args.d_sae**0.5)
        sae.b_dec.copy_(x.mean(0))
    if args.save_sae:
        sae.save_model(args.save_sae)
        print(f"saved SAE to {args.save_sae}")

    batches = list(x.split(args.batch))

    def run():
        with torch.inference_mode():
            for b in batches:
                sae.encode(b)

    run()  # warm-up
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    with torch.inference_mode():
        l0 = (sae.encode(batches[0]) > 0).sum(-1).float().mean().item()
    print(f"  per pass: median {med * 1e3:.1f} ms over {len(x)} tokens (min {min(times) * 1e3:.1f}, "
          f"max {max(times) * 1e3:.1f}); mean L0 {l0:.1f}; torch {torch.__version__}")
    print(f"sae_lens encode {d_in}->{args.d_sae} topk k={args.k}: {len(x) / med:,.0f} tokens/s "
          f"(batch {args.batch}, {args.threads} threads)")


if __name__ == "__main__":
    main()
