"""SmolLM2-135M-Instruct for the HF baselines (bench_*_hf.py): the GGUF that
scripts/fetch_models.sh fetches, loaded by transformers and dequantized to f32, eager attention."""
import os
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

ROOT = Path(__file__).resolve().parent.parent
MODELS = Path(os.environ.get("DENDRITE_MODELS", ROOT / ".cache" / "models"))
FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def load(threads):
    """(tokenizer, model) with torch limited to `threads` threads."""
    torch.set_num_threads(threads)
    tok = AutoTokenizer.from_pretrained(MODELS, gguf_file=FILE)
    model = AutoModelForCausalLM.from_pretrained(
        MODELS, gguf_file=FILE, dtype=torch.float32, attn_implementation="eager").eval()
    return tok, model
