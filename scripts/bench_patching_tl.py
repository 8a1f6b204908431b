#!/usr/bin/env python3
"""TransformerLens' activation patching on SmolLM2, beside `dendrite patch` (issue 14's speed).

Loads SmolLM2-135M-Instruct (the GGUF the tests use, dequantized to f32 by transformers) into a
TransformerLens HookedTransformer built locally (no hub: the config is SmolLM2's, the weights
converted by TL's own `convert_llama_weights`, no folding or centering so the logits are HF's),
checks its logits against HF's, then times `patching.get_act_patch_resid_pre` (30 layers × every
position) on a 16-token IOI pair, and prints its values so they can be compared with ours.

  .cache/venv/bin/python scripts/bench_patching_tl.py [--rounds N] [--json OUT]

The venv is the test script's (sae_lens brings transformer_lens and torch).
"""

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")  # TL's per-patch progress bar
import torch

ROOT = Path(__file__).resolve().parent.parent
MODELS = Path(os.environ.get("DENDRITE_MODELS", ROOT / ".cache" / "models"))
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
# 16 tokens each with SmolLM2's tokenizer (no BOS: HF adds none).
CLEAN = "When Mary and John went to the store last night, John gave a drink to"
CORRUPT = "When Mary and John went to the store last night, Mary gave a drink to"
ANSWER, WRONG = " Mary", " John"


def load():
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformer_lens.pretrained.weight_conversions.llama import convert_llama_weights

    tok = AutoTokenizer.from_pretrained(MODELS, gguf_file=GGUF)
    hf = AutoModelForCausalLM.from_pretrained(MODELS, gguf_file=GGUF, dtype=torch.float32).eval()
    c = hf.config
    cfg = HookedTransformerConfig(
        d_model=c.hidden_size, d_head=c.hidden_size // c.num_attention_heads,
        n_heads=c.num_attention_heads, n_key_value_heads=c.num_key_value_heads,
        d_mlp=c.intermediate_size, n_layers=c.num_hidden_layers, n_ctx=2048,
        d_vocab=c.vocab_size, act_fn="silu", normalization_type="RMS", eps=c.rms_norm_eps,
        positional_embedding_type="rotary", rotary_base=int(c.rope_theta if hasattr(c, "rope_theta") else c.rope_parameters["rope_theta"]),
        rotary_dim=c.hidden_size // c.num_attention_heads, gated_mlp=True, final_rms=True,
        original_architecture="LlamaForCausalLM", tokenizer_prepends_bos=False,
        default_prepend_bos=False, dtype=torch.float32, device="cpu")
    model = HookedTransformer(cfg, tokenizer=tok, move_to_device=True)
    model.load_and_process_state_dict(convert_llama_weights(hf, cfg), fold_ln=False,
                                      center_writing_weights=False, center_unembed=False,
                                      fold_value_biases=False)
    model.eval()
    return hf, tok, model


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--json")
    args = parser.parse_args()
    torch.set_num_threads(2)
    from transformer_lens import patching

    hf, tok, model = load()
    clean = tok(CLEAN, add_special_tokens=False, return_tensors="pt")["input_ids"]
    corrupt = tok(CORRUPT, add_special_tokens=False, return_tensors="pt")["input_ids"]
    assert clean.shape == corrupt.shape, (clean.shape, corrupt.shape)
    answer, = tok(ANSWER, add_special_tokens=False)["input_ids"]
    wrong, = tok(WRONG, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        hf_logits = hf(clean).logits
        clean_logits, clean_cache = model.run_with_cache(clean)
        corrupt_logits = model(corrupt)
    drift = float((clean_logits - hf_logits).abs().max())
    print(f"TL vs HF logits: max |Δ| = {drift:.2e} over {clean.shape[1]} tokens")
    assert drift < 1e-3, drift
    ld = lambda logits: float(logits[0, -1, answer] - logits[0, -1, wrong])
    ld_clean, ld_corrupt = ld(clean_logits), ld(corrupt_logits)

    def metric(logits):
        return (logits[0, -1, answer] - logits[0, -1, wrong] - ld_corrupt) / (ld_clean - ld_corrupt)

    times = []
    for _ in range(args.rounds):
        started = time.perf_counter()
        with torch.no_grad():
            values = patching.get_act_patch_resid_pre(model, corrupt, clean_cache, metric)
        times.append(time.perf_counter() - started)
    print(f"TransformerLens get_act_patch_resid_pre: {clean.shape[1]} tokens × "
          f"{model.cfg.n_layers} layers, best of {args.rounds}: {min(times) * 1e3:.0f} ms "
          f"(all: {', '.join(f'{t * 1e3:.0f}' for t in times)})")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "clean": CLEAN, "corrupt": CORRUPT, "answer": ANSWER, "wrong": WRONG,
            "metric_clean": ld_clean, "metric_corrupt": ld_corrupt,
            "values": values.tolist(), "times_ms": [t * 1e3 for t in times]}) + "\n")


if __name__ == "__main__":
    main()
