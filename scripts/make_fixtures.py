#!/usr/bin/env python3
"""Reference outputs from HF transformers for Dendrite's tests.

Writes, under tests/fixtures/:
  tiny/<arch>/       a tiny random HF model per architecture (config.json, model.safetensors,
                     tokenizer.json) and reference.safetensors with HF's logits, hook tensors and
                     intervention results on fixed token ids (see reference.json for the cases).
  real/<model>.json  token ids of several texts, last-position logits (also with a neuron clamp)
                     for the real GGUF models fetched by scripts/fetch_models.sh, loaded by
                     transformers and dequantized to f32.
  generate.json      greedy `generate` continuations of the committed tiny models and SmolLM2,
                     with and without a neuron clamp at every position (`--only generate`).

Regenerate (needs torch, transformers, gguf, accelerate, safetensors):
  python -m venv .cache/venv && .cache/venv/bin/pip install torch transformers gguf accelerate safetensors
  scripts/fetch_models.sh && .cache/venv/bin/python scripts/make_fixtures.py [--only tiny|real]
Tests read only the committed outputs; no Python is needed to run them.
"""

import argparse
import json
import os
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"
MODELS = Path(os.environ.get("DENDRITE_MODELS", ROOT / ".cache" / "models"))
torch.set_num_threads(2)

# ── tiny random models ──────────────────────────────────────────────────────────────────────

VOCAB = 300
T = 12


def byte_level_tokenizer(path: Path):
    """A byte-level tokenizer with the 256 byte symbols and no merges (enough for open())."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    vocab = {ch: i for i, ch in enumerate(bytes_to_unicode().values())}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.save(str(path / "tokenizer.json"))


def tiny_configs():
    from transformers import GPT2Config, GPTNeoXConfig, Gemma3TextConfig, LlamaConfig, Qwen2Config

    common = dict(vocab_size=VOCAB, num_hidden_layers=2, max_position_embeddings=64)
    return {
        "gpt2": GPT2Config(vocab_size=VOCAB, n_positions=64, n_embd=32, n_layer=2, n_head=4, n_inner=64),
        "llama": LlamaConfig(
            hidden_size=32, intermediate_size=48, num_attention_heads=4, num_key_value_heads=2,
            tie_word_embeddings=False,
            rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                          "high_freq_factor": 4.0, "original_max_position_embeddings": 32},
            **common),
        "qwen2": Qwen2Config(
            hidden_size=32, intermediate_size=48, num_attention_heads=4, num_key_value_heads=1,
            tie_word_embeddings=True, **common),
        "gpt_neox": GPTNeoXConfig(
            hidden_size=32, intermediate_size=64, num_attention_heads=4, rotary_pct=0.25,
            use_parallel_residual=True, tie_word_embeddings=False, **common),
        "gemma3": Gemma3TextConfig(
            hidden_size=32, intermediate_size=48, num_attention_heads=4, num_key_value_heads=2,
            head_dim=16, query_pre_attn_scalar=16, sliding_window=4,
            layer_types=["sliding_attention", "full_attention"], **common),
    }


def modules(model, arch):
    """(decoder layers, mlp-down module, attention-out module) per layer, HF names."""
    if arch == "gpt2":
        layers = model.transformer.h
        return layers, [l.mlp.c_proj for l in layers], [l.attn.c_proj for l in layers]
    if arch == "gpt_neox":
        layers = model.gpt_neox.layers
        return layers, [l.mlp.dense_4h_to_h for l in layers], [l.attention.dense for l in layers]
    layers = model.model.layers
    return layers, [l.mlp.down_proj for l in layers], [l.self_attn.o_proj for l in layers]


def run_hooked(model, arch, ids, edit=None):
    """Logits plus captured hook tensors; `edit(kind, layer, tensor)` may modify inputs."""
    layers, downs, outs = modules(model, arch)
    captured, handles = {}, []
    n_heads = model.config.num_attention_heads

    def pre_hook(kind, layer):
        def fn(module, args):
            x = args[0]
            if edit is not None:
                x = edit(kind, layer, x.clone())
            captured[(kind, layer)] = x.detach().clone()
            return (x,) + tuple(args[1:])
        return fn

    def post_hook(layer):
        def fn(module, args, output):
            hidden = output[0] if isinstance(output, tuple) else output
            captured[("resid_post", layer)] = hidden.detach().clone()
        return fn

    for l in range(len(layers)):
        handles.append(downs[l].register_forward_pre_hook(pre_hook("mlp_post", l)))
        handles.append(outs[l].register_forward_pre_hook(pre_hook("z", l)))
        handles.append(layers[l].register_forward_hook(post_hook(l)))
    with torch.no_grad():
        out = model(input_ids=ids, output_attentions=True)
    for h in handles:
        h.remove()
    tensors = {"logits": out.logits.float().contiguous()}
    b, t = ids.shape
    for l in range(len(layers)):
        tensors[f"blocks.{l}.hook_resid_post"] = captured[("resid_post", l)].contiguous()
        tensors[f"blocks.{l}.mlp.hook_post"] = captured[("mlp_post", l)].contiguous()
        z = captured[("z", l)]
        tensors[f"blocks.{l}.attn.hook_z"] = z.reshape(b, t, n_heads, -1).contiguous()
        tensors[f"blocks.{l}.attn.hook_pattern"] = out.attentions[l].float().contiguous()
    return tensors


def make_tiny():
    from transformers import AutoModelForCausalLM

    for arch, config in tiny_configs().items():
        torch.manual_seed(0)
        config._attn_implementation = "eager"
        model = AutoModelForCausalLM.from_config(config, attn_implementation="eager").float().eval()
        with torch.no_grad():
            # Random init leaves norms at 1 and biases at 0; perturb them so a mistake shows.
            for name, p in model.named_parameters():
                if "norm" in name or "ln" in name or name.endswith("bias"):
                    p.add_(0.1 * torch.randn_like(p))
        out_dir = FIXTURES / "tiny" / arch
        out_dir.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(out_dir)
        byte_level_tokenizer(out_dir)
        g = torch.Generator().manual_seed(1)
        ids = torch.randint(0, VOCAB, (2, T), generator=g)
        ids[:, T // 2:] = ids[:, : T - T // 2]  # a repeat, so induction-like patterns exist

        ref = run_hooked(model, arch, ids)
        ref["input_ids"] = ids.to(torch.int64)

        clamp = {"hook": "blocks.0.mlp.hook_post", "neuron": 3, "value": 5.0}

        def do_clamp(kind, layer, x):
            if kind == "mlp_post" and layer == 0:
                x[..., clamp["neuron"]] = clamp["value"]
            return x

        ref["clamp.logits"] = run_hooked(model, arch, ids, do_clamp)["logits"]
        ablate = {"layer": 1, "head": 2, "mode": "zero"}
        d_head = config.hidden_size // config.num_attention_heads if arch != "gemma3" else config.head_dim

        def do_ablate(kind, layer, x):
            if kind == "z" and layer == ablate["layer"]:
                h = ablate["head"]
                x[..., h * d_head:(h + 1) * d_head] = 0.0
            return x

        ref["ablate.logits"] = run_hooked(model, arch, ids, do_ablate)["logits"]
        save_file({k: v.contiguous() for k, v in ref.items()}, out_dir / "reference.safetensors")
        (out_dir / "reference.json").write_text(json.dumps({
            "arch": arch, "clamp": clamp, "ablate_head": ablate,
            "transformers": __import__("transformers").__version__, "torch": torch.__version__,
        }, indent=2) + "\n")
        print(f"tiny/{arch}: logits {tuple(ref['logits'].shape)}")


# ── real GGUF models ───────────────────────────────────────────────────────────────────────

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "héllo wörld — ünïcödé naïve café 日本語のテキスト",
    "emoji 🤖🚀 and flags 🇫🇷 done",
    "digits 12345 and 3.14159, 2026-11-28",
    "  two  spaces   three\t\ttabs",
    "line one\nline two\n\nline four\r\nend",
]
PROMPT = "The capital of France is Paris. The capital of Germany is"
REAL = {
    "smollm2": ("SmolLM2-135M-Instruct.Q4_1.gguf", {"layer": 15, "neuron": 123, "value": 10.0}),
    "gemma3": ("gemma-3-270m-q4_k_m.gguf", {"layer": 9, "neuron": 77, "value": 20.0}),
}


def make_real():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out_dir = FIXTURES / "real"
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, (file, clamp) in REAL.items():
        if not (MODELS / file).exists():
            sys.exit(f"{MODELS / file} missing: run scripts/fetch_models.sh first")
        tok = AutoTokenizer.from_pretrained(MODELS, gguf_file=file)
        model = AutoModelForCausalLM.from_pretrained(
            MODELS, gguf_file=file, dtype=torch.float32, attn_implementation="eager").eval()
        texts = {t: tok(t, add_special_tokens=False)["input_ids"] for t in TEXTS}
        ids = tok(PROMPT, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids])).logits[0, -1].float()
        down = model.model.layers[clamp["layer"]].mlp.down_proj

        def pre(module, args):
            x = args[0].clone()
            x[..., clamp["neuron"]] = clamp["value"]
            return (x,)

        handle = down.register_forward_pre_hook(pre)
        with torch.no_grad():
            clamped = model(input_ids=torch.tensor([ids])).logits[0, -1].float()
        handle.remove()
        save_file({"logits_last": logits.contiguous(), "clamp.logits_last": clamped.contiguous()},
                  out_dir / f"{name}.safetensors")
        (out_dir / f"{name}.json").write_text(json.dumps({
            "file": file,
            "texts": [{"text": t, "token_ids": i} for t, i in texts.items()],
            "prompt": PROMPT,
            "prompt_ids": ids,
            "with_special": tok("Hi")["input_ids"],
            "top10": torch.topk(logits, 10).indices.tolist(),
            "clamp": {"hook": f"blocks.{clamp['layer']}.mlp.hook_post", **clamp},
            "clamp_top10": torch.topk(clamped, 10).indices.tolist(),
            "transformers": __import__("transformers").__version__,
        }, ensure_ascii=False, indent=1) + "\n")
        print(f"real/{name}: {len(ids)} prompt tokens, top1 {tok.decode([int(logits.argmax())])!r}")


# ── greedy generation (issue: generation under interventions) ─────────────────────────────

GEN_NEW = 12
CHATS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "system", "content": "You answer in one word."},
     {"role": "user", "content": "  Colour of the sky?  "},
     {"role": "assistant", "content": "Blue."},
     {"role": "user", "content": "And of grass?"}],
]


def greedy(model, ids, down=None, neuron=None, value=None):
    """HF `generate(do_sample=False)` with the model's own EOS; with `down`, the MLP neuron set
    at every position (a pre-hook on the down projection sees each step's new positions)."""
    handle = None
    if down is not None:
        def pre(module, args):
            x = args[0].clone()
            x[..., neuron] = value
            return (x,)
        handle = down.register_forward_pre_hook(pre)
    with torch.no_grad():
        out = model.generate(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                             do_sample=False, max_new_tokens=GEN_NEW, pad_token_id=0)
    if handle is not None:
        handle.remove()
    return out[0, len(ids):].tolist()


def make_generate():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cases = []
    for arch in ["gpt2", "llama", "qwen2", "gpt_neox", "gemma3"]:
        path = FIXTURES / "tiny" / arch
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="eager").eval()
        ids = [5, 17, 250, 3, 99, 42, 7]
        _, downs, _ = modules(model, arch)
        clamp = {"hook": "blocks.1.mlp.hook_post", "neuron": 5, "value": 4.0}
        eos = model.generation_config.eos_token_id
        cases.append({
            "model": f"tiny/{arch}", "prompt_ids": ids, "eos": eos,
            "generated_ids": greedy(model, ids),
            "clamp": clamp, "clamp_generated_ids": greedy(model, ids, downs[1], 5, 4.0),
        })
    file, clamp = REAL["smollm2"]
    tok = AutoTokenizer.from_pretrained(MODELS, gguf_file=file)
    model = AutoModelForCausalLM.from_pretrained(
        MODELS, gguf_file=file, dtype=torch.float32, attn_implementation="eager").eval()
    ids = tok(PROMPT, add_special_tokens=False)["input_ids"]
    down = model.model.layers[clamp["layer"]].mlp.down_proj
    plain = greedy(model, ids)
    clamped = greedy(model, ids, down, clamp["neuron"], clamp["value"])
    cases.append({
        "model": f"real/{file}", "prompt_ids": ids, "eos": model.generation_config.eos_token_id,
        "generated_ids": plain, "text": tok.decode(plain),
        "clamp": {"hook": f"blocks.{clamp['layer']}.mlp.hook_post", "neuron": clamp["neuron"],
                  "value": clamp["value"]},
        "clamp_generated_ids": clamped, "clamp_text": tok.decode(clamped),
    })
    chats = []
    for name in ["smollm2"]:  # the Gemma 3 270M GGUF (a base model) has no chat template
        file = REAL[name][0]
        tok = AutoTokenizer.from_pretrained(MODELS, gguf_file=file)
        for messages in CHATS:
            text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            chats.append({"model": f"real/{file}", "messages": messages, "text": text,
                          "ids": tok(text, add_special_tokens=False)["input_ids"]})
    (FIXTURES / "generate.json").write_text(json.dumps({
        "max_new_tokens": GEN_NEW, "cases": cases, "chats": chats,
        "transformers": __import__("transformers").__version__, "torch": torch.__version__,
    }, ensure_ascii=False, indent=1) + "\n")
    for c in cases:
        print(f"generate {c['model']}: {c['generated_ids']} / clamped {c['clamp_generated_ids']}")


# ── head scores on SmolLM2 (issue: headless analyses) ───────────────────────────────────────

HEADS_L, HEADS_B = 20, 4


def head_scores(att, toks, L):
    """The definitions `dendrite heads` implements, from HF eager attentions [B, H, T, T]."""
    B, H, T, _ = att.shape
    ind = torch.stack([att[:, :, i, i - L + 1] for i in range(L, 2 * L)], -1).mean((0, 2))
    prev = torch.stack([att[:, :, i, i - 1] for i in range(1, T)], -1).mean((0, 2))
    dup = torch.stack([att[:, :, i, i - L] for i in range(L, 2 * L)], -1).mean((0, 2))
    prefix = torch.zeros(H, dtype=torch.float64)
    count = 0
    for b in range(B):
        for i in range(1, T):
            targets = [j for j in range(1, i + 1) if toks[b][j - 1] == toks[b][i] and j - 1 != i]
            if targets:
                prefix += att[b, :, i, targets].double().sum(-1)
                count += 1
    prefix = prefix / max(count, 1)
    return ind.tolist(), prev.tolist(), dup.tolist(), prefix.tolist()


def detect_induction_mul(att, toks, exclude_bos):
    """TL head_detector: D = duplicate-token mask shifted right by one, tril; score ΣA⊙D/ΣA per
    sequence, averaged over sequences."""
    B, H, T, _ = att.shape
    scores = torch.zeros(H, dtype=torch.float64)
    for b in range(B):
        t = torch.tensor(toks[b])
        dup = (t[:, None] == t[None, :]).int()
        dup.fill_diagonal_(0)
        dup = torch.tril(dup)
        ind = torch.zeros_like(dup)
        ind[:, 1:] = torch.roll(dup, 1, 1)[:, 1:]
        ind = torch.tril(ind).double()
        a = att[b].double().clone()
        if exclude_bos:
            a[:, :, 0] = 0
        scores += (a * ind).sum((1, 2)) / a.sum((1, 2))
    return (scores / B).tolist()


def make_heads():
    from transformers import AutoModelForCausalLM

    file = REAL["smollm2"][0]
    model = AutoModelForCausalLM.from_pretrained(
        MODELS, gguf_file=file, dtype=torch.float32, attn_implementation="eager").eval()
    g = torch.Generator().manual_seed(0)
    half = torch.randint(1, model.config.vocab_size, (HEADS_B, HEADS_L), generator=g)
    ids = torch.cat([half, half], 1)
    out_dir = FIXTURES / "real"
    (out_dir / "smollm2_heads_tokens.txt").write_text(
        "".join(",".join(str(int(x)) for x in row) + "\n" for row in ids))
    with torch.no_grad():
        out = model(input_ids=ids, output_attentions=True)
    toks = ids.tolist()
    result = {"induction_score": [], "prev_token_score": [], "duplicate_token_score": [], "prefix_matching_score": []}
    for att in out.attentions:
        ind, prev, dup, prefix = head_scores(att.float(), toks, HEADS_L)
        result["induction_score"].append(ind)
        result["prev_token_score"].append(prev)
        result["duplicate_token_score"].append(dup)
        result["prefix_matching_score"].append(prefix)
    logp = torch.log_softmax(out.logits.float(), -1)
    nll = -logp[:, :-1].gather(-1, ids[:, 1:, None])[..., 0]
    result["per_position_nll"] = nll.mean(0).tolist()
    result["repeat_len"] = HEADS_L
    # TL detect_head(..., "induction_head", error_measure="mul"), with and without exclude_bos.
    for key, exclude_bos in (("induction_score_mul", False), ("induction_score_mul_exclude_bos", True)):
        result[key] = [detect_induction_mul(att.float(), toks, exclude_bos) for att in out.attentions]
    (out_dir / "smollm2_heads.json").write_text(json.dumps(result) + "\n")
    print(f"real/smollm2_heads: max induction {max(max(r) for r in result['induction_score']):.3f}")


# ── sparsity and logit lens on SmolLM2 ──────────────────────────────────────────────────────

SPARSITY_PROMPT = ("The old lighthouse keeper climbed the stairs every evening at dusk, counting "
                   "each of the 112 steps aloud. When the storm came in 1887, he stayed awake for "
                   "three nights so that the ships could find the harbour.")
SPARSITY_METHODS = ["zero", "eps:0.05", "cats:0.5", "chess:0.5", "cett:0.2", "cett-eps:0.5",
                    "delta:0.05"]


def cats_threshold(abs_s, k):
    """definitions.md §2: histogram over [-inf, linspace(-1, 1, 1001), +inf], normalised cumsum,
    t = edges[searchsorted(cumsum, k, right)]."""
    import numpy as np
    edges = np.concatenate([[-np.inf], np.linspace(-1, 1, 1001), [np.inf]])
    bins = np.searchsorted(edges, abs_s.ravel(), side="right") - 1
    counts = np.bincount(bins, minlength=len(edges) - 1).astype(np.float64)
    cum = np.cumsum(counts / counts.sum())
    return float(edges[np.searchsorted(cum, k, side="right")])


def cett_per_token(a, w_down, eps):
    """definitions.md §4: ‖Σ_{‖n_i‖<ε} n_i‖ / ‖FFN(x)‖ per token (a: [T, F], w_down: [D, F])."""
    norms = a.abs() * w_down.norm(dim=0)[None, :]
    dropped = torch.where(norms < eps, a, torch.zeros_like(a))
    return (dropped @ w_down.T).norm(dim=-1) / (a @ w_down.T).norm(dim=-1), norms


def cett_threshold(a, w_down, target):
    norms = (a.abs() * w_down.norm(dim=0)[None, :]).flatten().double()
    lo_v, hi_v = float(norms.min()), float(torch.quantile(norms, 0.99))
    cand = lambda i: lo_v + (hi_v - lo_v) * i / 65535
    ok = lambda i: float(cett_per_token(a, w_down, cand(i))[0].mean()) <= target
    lo, hi = 0, 65536
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if mid < 65536 and ok(mid):
            lo = mid
        else:
            hi = mid - 1
    return cand(lo)


def sparsity_reference(method, s, u, a, w_down):
    """Per-layer (frac_active, threshold) for one method; calibration = the prompt itself."""
    name, _, value = method.partition(":")
    v = float(value) if value else None
    if name == "zero":
        return float((a != 0).double().mean()), None
    if name == "eps":
        return float((a.abs() >= v).double().mean()), v
    if name == "cats":
        t = cats_threshold(s.abs().double().numpy(), v)
        return float((s.abs().double() >= t).double().mean()), t
    if name == "chess":
        m = u.abs().double().mean(0)
        scores = (s.abs().double() * m[None, :]).flatten()
        kth = min(max(int(v * scores.numel()), 1), scores.numel())
        tau = float(torch.kthvalue(scores, kth).values)
        t = tau / m
        return float((s.abs().double() >= t[None, :]).double().mean()), tau
    if name in ("cett", "cett-eps"):
        eps = cett_threshold(a.double(), w_down.double(), v) if name == "cett" else v
        _, norms = cett_per_token(a.double(), w_down.double(), eps)
        return float((norms >= eps).double().mean()), eps
    if name == "delta":
        # definitions.md §13: the share of channels with |a_t - a_{t-1}| > θ, averaged over the
        # tokens that have a token before them (no BOS here: every token is scored).
        changed = ((a[1:].double() - a[:-1].double()).abs() > v).double().mean(1)
        return float(changed.mean()), v
    raise ValueError(method)


CORE_PROMPTS = ("The cat sat on the warm mat and purred while the rain fell outside.",
                "A dog slept on the soft rug and snored while the snow fell outside.")


def core_reference(a, alpha, beta, frequency=False):
    """definitions.md §12 from one layer's down_proj input a [T, F]: token cores (k = round
    half to even of α·|A+|, largest first, ties to the lower index) and the sentence core."""
    T, F = a.shape
    token_cores = []
    counts = [0] * F
    for t in range(T):
        row = a[t].double().tolist()
        pos = [j for j in range(F) if row[j] > 0]
        k = int(torch.round(torch.tensor(alpha * len(pos), dtype=torch.float64)))
        pos.sort(key=lambda j: (-row[j], j))
        core = pos[:k]
        token_cores.append(core)
        for j in core:
            counts[j] += 1
    if frequency:
        sentence = [j for j in range(F) if counts[j] > 0 and counts[j] / T >= beta]
    else:
        order = sorted((j for j in range(F) if counts[j] > 0), key=lambda j: (-counts[j], j))
        sentence = sorted(order[:int(beta * F)])
    return token_cores, sentence


def mlp_activations(model, ids):
    """Each layer's down_proj input (SiLU(x W_gate) ⊙ x W_up) for one prompt."""
    acts = {}
    handles = [layer.mlp.down_proj.register_forward_pre_hook(
        lambda m, args, l=l: acts.__setitem__(l, args[0][0].detach()))
        for l, layer in enumerate(model.model.layers)]
    with torch.no_grad():
        model(input_ids=torch.tensor([ids]))
    for h in handles:
        h.remove()
    return [acts[l] for l in range(len(model.model.layers))]


def make_core():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    file = REAL["smollm2"][0]
    tok = AutoTokenizer.from_pretrained(MODELS, gguf_file=file)
    model = AutoModelForCausalLM.from_pretrained(
        MODELS, gguf_file=file, dtype=torch.float32, attn_implementation="eager").eval()
    result = {"prompts": CORE_PROMPTS, "alpha": 0.4, "beta": 0.2, "layers": []}
    ids = [tok(p, add_special_tokens=False)["input_ids"] for p in CORE_PROMPTS]
    result["token_ids"] = ids
    acts = [mlp_activations(model, i) for i in ids]
    for l in range(len(model.model.layers)):
        cores = [core_reference(a[l], 0.4, 0.2) for a in acts]
        _, variant = core_reference(acts[0][l], 0.4, 0.2, frequency=True)
        a_set, b_set = set(cores[0][1]), set(cores[1][1])
        result["layers"].append({
            "token_cores": cores[0][0],
            "core": cores[0][1],
            "core_frequency_variant": variant,
            "compare_core": cores[1][1],
            "jaccard": len(a_set & b_set) / max(len(a_set | b_set), 1),
        })
    (FIXTURES / "real" / "smollm2_core.json").write_text(json.dumps(result) + "\n")
    print("real/smollm2_core:", [round(x["jaccard"], 3) for x in result["layers"]])


def make_sparsity():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    file = REAL["smollm2"][0]
    tok = AutoTokenizer.from_pretrained(MODELS, gguf_file=file)
    model = AutoModelForCausalLM.from_pretrained(
        MODELS, gguf_file=file, dtype=torch.float32, attn_implementation="eager").eval()
    ids = tok(SPARSITY_PROMPT, add_special_tokens=False)["input_ids"]
    acts = {}
    handles = []
    for l, layer in enumerate(model.model.layers):
        mlp = layer.mlp
        handles.append(mlp.act_fn.register_forward_hook(
            lambda m, i, o, l=l: acts.__setitem__(("s", l), o[0].detach())))
        handles.append(mlp.up_proj.register_forward_hook(
            lambda m, i, o, l=l: acts.__setitem__(("u", l), o[0].detach())))
        handles.append(mlp.down_proj.register_forward_pre_hook(
            lambda m, args, l=l: acts.__setitem__(("a", l), args[0][0].detach())))
    with torch.no_grad():
        out = model(input_ids=torch.tensor([ids]), output_hidden_states=True)
    for h in handles:
        h.remove()
    result = {"prompt": SPARSITY_PROMPT, "token_ids": ids, "methods": {}}
    for method in SPARSITY_METHODS:
        rows = []
        for l, layer in enumerate(model.model.layers):
            frac, threshold = sparsity_reference(method, acts[("s", l)], acts[("u", l)],
                                                 acts[("a", l)], layer.mlp.down_proj.weight.detach())
            rows.append({"frac_active": frac, "threshold": threshold})
        result["methods"][method] = rows
    # Logit lens: final norm + lm_head on each layer's residual (HF's last hidden state is
    # already normalised, so the last layer is the model's own logits).
    lens = []
    n = len(model.model.layers)
    with torch.no_grad():
        for l in range(n):
            if l < n - 1:
                logits = model.lm_head(model.model.norm(out.hidden_states[l + 1]))[0]
            else:
                logits = out.logits[0]
            probs = torch.softmax(logits.float(), -1)
            top = torch.topk(probs, 5, dim=-1)
            lens.append({"ids": top.indices.tolist(), "probs": top.values.tolist()})
    result["lens_top5"] = lens
    (FIXTURES / "real" / "smollm2_sparsity.json").write_text(json.dumps(result) + "\n")
    print("real/smollm2_sparsity:", {m: round(sum(r["frac_active"] for r in rows) / len(rows), 4)
                                     for m, rows in result["methods"].items()})


PATCH_PAIR = ("When Mary and John went to the store, John gave a drink to",
              "When Mary and John went to the store, Mary gave a drink to", " Mary", " John")


def make_patching():
    """definitions.md §16 with plain HF hooks: each cell runs the corrupted prompt with one
    site replaced by the clean run's value (denoising), the metric the normalised logit
    difference at the last position. resid_pre, attn_out and mlp_out per layer × position, z
    (head outputs before o_proj) per layer × head, and resid_pre noising."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    file = REAL["smollm2"][0]
    tok = AutoTokenizer.from_pretrained(MODELS, gguf_file=file)
    model = AutoModelForCausalLM.from_pretrained(
        MODELS, gguf_file=file, dtype=torch.float32, attn_implementation="eager").eval()
    clean_text, corrupt_text, answer_text, wrong_text = PATCH_PAIR
    clean = tok(clean_text, add_special_tokens=False)["input_ids"]
    corrupt = tok(corrupt_text, add_special_tokens=False)["input_ids"]
    answer, = tok(answer_text, add_special_tokens=False)["input_ids"]
    wrong, = tok(wrong_text, add_special_tokens=False)["input_ids"]
    assert len(clean) == len(corrupt)
    layers = model.model.layers
    n_heads = model.config.num_attention_heads
    d_head = model.config.hidden_size // n_heads

    def modules(site, l):
        return {"resid_pre": layers[l], "attn_out": layers[l].self_attn,
                "mlp_out": layers[l].mlp, "z": layers[l].self_attn.o_proj}[site]

    def record(ids):
        """Every site's activation [t, width] per layer, and the last-position LD."""
        acts, handles = {}, []
        for l in range(len(layers)):
            def pre(m, args, kwargs, l=l, key="resid_pre"):
                x = args[0] if args else kwargs["hidden_states"]
                acts[(key, l)] = x[0].detach().clone()
            handles.append(layers[l].register_forward_pre_hook(pre, with_kwargs=True))
            handles.append(layers[l].self_attn.register_forward_hook(
                lambda m, a, o, l=l: acts.__setitem__(("attn_out", l), o[0][0].detach().clone())))
            handles.append(layers[l].mlp.register_forward_hook(
                lambda m, a, o, l=l: acts.__setitem__(("mlp_out", l), o[0].detach().clone())))
            handles.append(layers[l].self_attn.o_proj.register_forward_pre_hook(
                lambda m, a, l=l: acts.__setitem__(("z", l), a[0][0].detach().clone())))
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids])).logits[0, -1]
        for h in handles:
            h.remove()
        return acts, float(logits[answer] - logits[wrong])

    def patched_ld(ids, site, l, replace):
        m = modules(site, l)
        if site == "resid_pre":
            def hook(mod, args, kwargs):
                if args:
                    return (replace(args[0]),) + tuple(args[1:]), kwargs
                kwargs = dict(kwargs)
                kwargs["hidden_states"] = replace(kwargs["hidden_states"])
                return args, kwargs
            h = m.register_forward_pre_hook(hook, with_kwargs=True)
        elif site == "z":
            h = m.register_forward_pre_hook(lambda mod, a: (replace(a[0]),))
        elif site == "attn_out":
            h = m.register_forward_hook(lambda mod, a, o: (replace(o[0]),) + tuple(o[1:]))
        else:
            h = m.register_forward_hook(lambda mod, a, o: replace(o))
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids])).logits[0, -1]
        h.remove()
        return float(logits[answer] - logits[wrong])

    clean_acts, ld_clean = record(clean)
    corrupt_acts, ld_corrupt = record(corrupt)
    result = {"clean": clean_text, "corrupt": corrupt_text, "answer": answer_text,
              "wrong": wrong_text, "clean_ids": clean, "corrupt_ids": corrupt,
              "metric_clean": ld_clean, "metric_corrupt": ld_corrupt, "sites": {}}
    norm = lambda ld: (ld - ld_corrupt) / (ld_clean - ld_corrupt)
    t = len(clean)
    for site, direction in [("resid_pre", "denoise"), ("attn_out", "denoise"),
                            ("mlp_out", "denoise"), ("z", "denoise"), ("resid_pre", "noise")]:
        source, base = (clean_acts, corrupt) if direction == "denoise" else (corrupt_acts, clean)
        rows = []
        for l in range(len(layers)):
            row = []
            cells = range(n_heads) if site == "z" else range(t)
            for c in cells:
                value = source[(site, l)]
                def replace(x, c=c, value=value):
                    x = x.clone()
                    if site == "z":
                        x[0, :, c * d_head:(c + 1) * d_head] = value[:, c * d_head:(c + 1) * d_head]
                    else:
                        x[0, c] = value[c]
                    return x
                row.append(norm(patched_ld(base, site, l, replace)))
            rows.append(row)
        result["sites"][f"{site}:{direction}"] = rows
        print(site, direction, "done")
    (FIXTURES / "real" / "smollm2_patching.json").write_text(json.dumps(result) + "\n")
    print("real/smollm2_patching: LD", round(ld_clean, 3), round(ld_corrupt, 3))


SPARSIFY_METHODS = ["topk:768", "cats:0.5", "chess:0.5", "cett:0.2", "fatrelu:0.01"]


def make_sparsify():
    """Activation sparsity applied during the forward (definitions §1–5) on SmolLM2, calibrated
    on the prompt itself: the mean loss and the share of zeros in every down_proj input."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    file = REAL["smollm2"][0]
    tok = AutoTokenizer.from_pretrained(MODELS, gguf_file=file)
    model = AutoModelForCausalLM.from_pretrained(
        MODELS, gguf_file=file, dtype=torch.float32, attn_implementation="eager").eval()
    ids = tok(SPARSITY_PROMPT, add_special_tokens=False)["input_ids"]
    layers = model.model.layers
    # Dense activations for calibration.
    acts, handles = {}, []
    for l, layer in enumerate(layers):
        handles.append(layer.mlp.act_fn.register_forward_hook(
            lambda m, i, o, l=l: acts.__setitem__(("s", l), o[0].detach())))
        handles.append(layer.mlp.up_proj.register_forward_hook(
            lambda m, i, o, l=l: acts.__setitem__(("u", l), o[0].detach())))
        handles.append(layer.mlp.down_proj.register_forward_pre_hook(
            lambda m, args, l=l: acts.__setitem__(("a", l), args[0][0].detach())))
    with torch.no_grad():
        model(input_ids=torch.tensor([ids]))
    for h in handles:
        h.remove()

    def loss():
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids])).logits[0, :-1].double()
        return float(torch.nn.functional.cross_entropy(logits, torch.tensor(ids[1:])))

    result = {"prompt": SPARSITY_PROMPT, "token_ids": ids, "dense_mean_loss": loss(), "methods": {}}
    for method in SPARSIFY_METHODS:
        name, _, value = method.partition(":")
        v = float(value)
        zeros = {}
        handles = []
        thresholds = []
        for l, layer in enumerate(layers):
            s_cal, u_cal, a_cal = acts[("s", l)], acts[("u", l)], acts[("a", l)]
            w_down = layer.mlp.down_proj.weight.detach()
            if name == "cett":
                eps = cett_threshold(a_cal.double(), w_down.double(), v)
                thresholds.append(eps)
                limit = eps / w_down.double().norm(dim=0)

                def pre(m, args, limit=limit):
                    a = args[0].clone()
                    a[a.double().abs() < limit] = 0
                    return (a,)
                handles.append(layer.mlp.down_proj.register_forward_pre_hook(pre))
            else:
                if name == "topk":
                    k = int(v)

                    def cut(s, k=k):
                        order = torch.argsort(-s.abs(), dim=-1, stable=True)
                        mask = torch.ones_like(s, dtype=torch.bool)
                        mask.scatter_(-1, order[..., :k], False)
                        return mask
                elif name == "cats":
                    t = cats_threshold(s_cal.abs().double().numpy(), v)
                    thresholds.append(t)
                    cut = lambda s, t=t: s.abs().double() < t
                elif name == "chess":
                    m_ = u_cal.abs().double().mean(0)
                    scores = (s_cal.abs().double() * m_[None, :]).flatten()
                    kth = min(max(int(v * scores.numel()), 1), scores.numel())
                    tau = float(torch.kthvalue(scores, kth).values)
                    t = tau / m_
                    cut = lambda s, t=t: s.abs().double() < t[None, :]
                elif name == "fatrelu":
                    cut = lambda s, v=v: s < v
                def hook(m, i, o, cut=cut):
                    o = o.clone()
                    o[cut(o)] = 0
                    return o
                handles.append(layer.mlp.act_fn.register_forward_hook(hook))
            handles.append(layer.mlp.down_proj.register_forward_pre_hook(
                lambda m, args, l=l: zeros.__setitem__(l, float((args[0][0] == 0).double().mean()))))
        result["methods"][method] = {"mean_loss": loss(),
                                     "sparsity": sum(zeros.values()) / len(zeros),
                                     "thresholds": thresholds}
        for h in handles:
            h.remove()
        print("sparsify", method, result["methods"][method])
    (FIXTURES / "real" / "smollm2_sparsify.json").write_text(json.dumps(result) + "\n")


GOLDEN = 0x9E3779B97F4A7C15
MASK64 = (1 << 64) - 1


def splitmix_keys(state, n):
    """The next n numbers of Dendrite's SplitMix64 stream (`src/rng.rs`) from `state`, and the
    state after them."""
    import numpy as np
    with np.errstate(over="ignore"):
        s = np.uint64(state) + np.arange(1, n + 1, dtype=np.uint64) * np.uint64(GOLDEN)
        z = s
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return z, (state + n * GOLDEN) & MASK64


def prune_masks(mats, method, sparsity):
    """definitions.md §14 on flat [out, in] weights, in Dendrite's matrix order; returns the
    pruned copies."""
    import numpy as np
    name, _, arg = method.partition(":")
    out = [m.clone() for m in mats]
    if name == "magnitude":
        for m in out:
            flat = m.view(-1)
            k = round(sparsity * flat.numel())
            idx = torch.argsort(flat.abs(), stable=True)[:k]
            flat[idx] = 0
    elif name == "magnitude-global":
        pooled = torch.cat([m.view(-1) for m in out])
        k = round(sparsity * pooled.numel())
        idx = torch.argsort(pooled.abs(), stable=True)[:k]
        pooled[idx] = 0
        at = 0
        for m in out:
            n = m.numel()
            m.view(-1).copy_(pooled[at:at + n])
            at += n
    elif name == "random":
        state = (int(arg) ^ GOLDEN) & MASK64
        for m in out:
            flat = m.view(-1)
            n = flat.numel()
            keys, state = splitmix_keys(state, n)
            remove = n - round((1 - sparsity) * n)
            idx = np.argsort(keys, kind="stable")[:remove]
            flat[torch.from_numpy(idx.astype(np.int64))] = 0
    elif name == "nm":
        keep, group = (int(x) for x in arg.split(":"))
        for m in out:
            rows, cols = m.shape
            g = m.view(rows, cols // group, group)
            order = torch.argsort(-g.abs(), dim=-1, stable=True)
            drop = order[..., keep:]
            g.scatter_(-1, drop, 0.0)
    else:
        raise ValueError(method)
    return out


PRUNE_CASES = [("magnitude", [0.1, 0.3, 0.5]), ("magnitude-global", [0.1, 0.3, 0.5]),
               ("random:7", [0.1, 0.3, 0.5]), ("nm:3:4", [0.25]), ("nm:2:4", [0.5]),
               ("nm:1:4", [0.75])]


def make_pruning():
    """Mean next-token loss on SPARSITY_PROMPT of SmolLM2 with every block matrix (q, k, v, o,
    gate, up, down) pruned as definitions §14 says, per method and sparsity."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    file = REAL["smollm2"][0]
    tok = AutoTokenizer.from_pretrained(MODELS, gguf_file=file)
    model = AutoModelForCausalLM.from_pretrained(
        MODELS, gguf_file=file, dtype=torch.float32, attn_implementation="eager").eval()
    ids = tok(SPARSITY_PROMPT, add_special_tokens=False)["input_ids"]
    mods = []
    for layer in model.model.layers:
        a, m = layer.self_attn, layer.mlp
        mods += [a.q_proj, a.k_proj, a.v_proj, a.o_proj, m.gate_proj, m.up_proj, m.down_proj]
    dense = [mod.weight.detach().clone() for mod in mods]

    def loss():
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids])).logits[0, :-1].double()
        return float(torch.nn.functional.cross_entropy(logits, torch.tensor(ids[1:])))

    result = {"prompt": SPARSITY_PROMPT, "token_ids": ids, "scope": "all",
              "dense_mean_loss": loss(), "cases": []}
    for method, levels in PRUNE_CASES:
        for s in levels:
            pruned = prune_masks(dense, method, s)
            zeros = sum(int((p == 0).sum()) for p in pruned)
            total = sum(p.numel() for p in pruned)
            with torch.no_grad():
                for mod, w in zip(mods, pruned):
                    mod.weight.copy_(w)
            result["cases"].append({"method": method, "sparsity": s, "mean_loss": loss(),
                                    "achieved_sparsity": zeros / total})
            print("pruning", method, s, round(result["cases"][-1]["mean_loss"], 4))
    with torch.no_grad():
        for mod, w in zip(mods, dense):
            mod.weight.copy_(w)
    (FIXTURES / "real" / "smollm2_pruning.json").write_text(json.dumps(result) + "\n")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--only", choices=["tiny", "real", "heads", "sparsity", "generate",
                                           "core", "patching", "pruning", "sparsify"])
    args = parser.parse_args()
    if args.only in (None, "tiny"):
        make_tiny()
    if args.only in (None, "real"):
        make_real()
    if args.only in (None, "heads"):
        make_heads()
    if args.only in (None, "sparsity"):
        make_sparsity()
    if args.only in (None, "generate"):
        make_generate()
    if args.only in (None, "core"):
        make_core()
    if args.only in (None, "patching"):
        make_patching()
    if args.only in (None, "pruning"):
        make_pruning()
    if args.only in (None, "sparsify"):
        make_sparsify()
