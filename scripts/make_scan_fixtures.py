#!/usr/bin/env python3
"""Reference outputs from HF transformers for the corpus scan and for prompts' BOS.

Writes, under tests/fixtures/real/:
  tokens_with_special.json  HF's `tokenizer(text)["input_ids"]` (special tokens added as HF adds
                            them: Gemma's BOS) and `add_special_tokens=False` ids, for texts on
                            both real models.
  smollm2_scan.json         SmolLM2-135M over the committed held-out text
                            (tests/fixtures/text/cymbeline_heldout.txt) cut as `dendrite scan`
                            cuts it (one document, no special tokens, consecutive windows of
                            CONTEXT tokens, no BOS since SmolLM2's tokenizer adds none): for
                            every 16th MLP neuron of three layers (TL's `mlp.hook_post`, the
                            input of `down_proj`), the top-K windows by the neuron's maximum in
                            the window (ties: lower window), each window's peak position, the
                            top window's activations, and density / mean / max over every token.
                            Top-k is kept the way a torch user would: `torch.topk` over the
                            [windows] maxima per neuron.

Regenerate (needs torch, transformers, gguf, accelerate):
  scripts/fetch_models.sh && .cache/venv/bin/python scripts/make_scan_fixtures.py
"""

import json
import os
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"
MODELS = Path(os.environ.get("DENDRITE_MODELS", ROOT / ".cache" / "models"))
torch.set_num_threads(2)

TEXTS = [
    "To be, or not to be",
    "The quick brown fox jumps over the lazy dog.",
    "  two  spaces and a\nnewline",
    "<bos> typed by hand",
    "",
]
CONTEXT = 16
WINDOWS = 24
TOP_K = 4
LAYERS = [0, 15, 29]
EVERY = 16


def load(file):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(MODELS, gguf_file=file)
    model = AutoModelForCausalLM.from_pretrained(
        MODELS, gguf_file=file, dtype=torch.float32, attn_implementation="eager").eval()
    return tok, model


def tokens_with_special():
    out = {}
    for name, file in (("smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
                       ("gemma3", "gemma-3-270m-q4_k_m.gguf")):
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(MODELS, gguf_file=file)
        out[name] = {
            "file": file,
            "bos_token_id": tok.bos_token_id,
            "texts": [{
                "text": t,
                "with_special": tok(t)["input_ids"],
                "without_special": tok(t, add_special_tokens=False)["input_ids"],
            } for t in TEXTS],
        }
    (FIXTURES / "real" / "tokens_with_special.json").write_text(
        json.dumps(out, ensure_ascii=False, indent=1) + "\n")


def scan():
    tok, model = load("SmolLM2-135M-Instruct.Q4_1.gguf")
    text = (FIXTURES / "text" / "cymbeline_heldout.txt").read_text()
    ids = tok(text, add_special_tokens=False)["input_ids"]
    windows = [ids[i * CONTEXT:(i + 1) * CONTEXT] for i in range(WINDOWS)]
    assert all(len(w) == CONTEXT for w in windows)
    captured = {}

    def hook(layer):
        def pre(module, args):
            captured[layer] = args[0].detach().clone()
        return pre

    handles = [model.model.layers[l].mlp.down_proj.register_forward_pre_hook(hook(l)) for l in LAYERS]
    acts = {l: [] for l in LAYERS}
    with torch.no_grad():
        for start in range(0, WINDOWS, 8):
            batch = torch.tensor(windows[start:start + 8])
            model(input_ids=batch)
            for l in LAYERS:
                acts[l].append(captured[l])
    for h in handles:
        h.remove()
    layers = []
    for l in LAYERS:
        a = torch.cat(acts[l])  # [windows, positions, d_mlp]
        units = list(range(0, a.shape[-1], EVERY))
        a = a[:, :, units]
        win_max, win_pos = a.max(dim=1)  # [windows, units]; first position on ties
        result = []
        for k, u in enumerate(units):
            col = win_max[:, k]
            # Largest first, ties to the lower window.
            top = sorted(range(WINDOWS), key=lambda w: (-col[w].item(), w))[:TOP_K]
            result.append({
                "unit": u,
                "top_windows": top,
                "top_max": [col[w].item() for w in top],
                "top_pos": [win_pos[w, k].item() for w in top],
                "top_acts": a[top[0], :, k].tolist(),
                "density": (a[:, :, k] > 0).float().mean().item(),
                "mean": a[:, :, k].double().mean().item(),
                "max": a[:, :, k].max().item(),
            })
        layers.append({"hook": f"blocks.{l}.mlp.hook_post", "units": result})
    (FIXTURES / "real" / "smollm2_scan.json").write_text(json.dumps({
        "file": "SmolLM2-135M-Instruct.Q4_1.gguf",
        "corpus": "tests/fixtures/text/cymbeline_heldout.txt",
        "context": CONTEXT,
        "windows": WINDOWS,
        "top_k": TOP_K,
        "window_ids": windows,
        "layers": layers,
        "transformers": __import__("transformers").__version__,
    }) + "\n")


if __name__ == "__main__":
    tokens_with_special()
    scan()
    print("wrote tests/fixtures/real/tokens_with_special.json and smollm2_scan.json")
