#!/usr/bin/env python3
"""Reference SAE fixtures for Dendrite's SAE loader/encoder tests, produced by the libraries themselves.

Writes tests/fixtures/sae/<case>/ for every case below. Each case holds the SAE files exactly as the
producing library saves them, plus
  reference.safetensors  float32: x [8, d_in] (N(0,1)*3, fixed seed), feature_acts [8, d_sae] = the
                         library's encode(x), sae_out [8, d_out] = the library's forward(x)
                         (= decode(encode(x)) except for skip transcoders, which add x @ W_skip.T);
                         some cases add extra tensors (listed in expected.json "extra_tensors").
  expected.json          architecture, hook names, dims, k, apply_b_dec_to_input, normalize_activations,
                         producing library + version, file list, notes.
Every parameter (W_enc, b_enc, W_dec, b_dec, threshold, b_gate, r_mag, b_mag, W_skip, ...) is random,
not the library's init, so a wrong formula cannot pass. References are computed from the SAE as
*reloaded from disk* by the library (SAE.load_from_disk / SparseCoder.load_from_disk), and checked
against the in-memory SAE before writing.

Environment: the project venv /root/.cache/dendrite/venv (= .cache/venv) with sae-lens 6.54.12 and
eai-sparsify 1.3.3 installed into it (pip changed neither torch 2.15 nor transformers 5.24):
  .cache/venv/bin/pip install sae-lens==6.54.12 eai-sparsify==1.3.3
Regenerate (deterministic; CPU only; a few seconds):
  .cache/venv/bin/python scripts/make_sae_fixtures.py [--only CASE ...] [--out tests/fixtures/sae]
See tests/fixtures/sae/README.md for the formulas each case pins down.
"""

import argparse
import copy
import json
import os
import shutil
import sys
import zlib
from pathlib import Path

os.environ.setdefault("SPARSIFY_DISABLE_TRITON", "1")  # CPU: use sparsify's eager decoder
os.environ.setdefault("WANDB_MODE", "disabled")

import numpy as np
import torch
from safetensors.torch import save_file

import sae_lens
from sae_lens import SAE
from sae_lens.saes import (
    GatedSAE,
    GatedSAEConfig,
    JumpReLUSAE,
    JumpReLUSAEConfig,
    JumpReLUSkipTranscoder,
    JumpReLUSkipTranscoderConfig,
    JumpReLUTranscoder,
    JumpReLUTranscoderConfig,
    SkipTranscoder,
    SkipTranscoderConfig,
    StandardSAE,
    StandardSAEConfig,
    TopKSAE,
    TopKSAEConfig,
    Transcoder,
    TranscoderConfig,
)
from sae_lens.saes.sae import SAEMetadata

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "fixtures" / "sae"
torch.set_num_threads(2)

D_IN = 32  # tiny GPT-2 fixture d_model
D_SAE = 64
N = 8
MODEL_NAME = "dendrite-tiny-gpt2"  # tests/fixtures/tiny/gpt2 (2 layers, d_model 32, n_positions 64)
TOL = 1e-5


def gen_for(name: str) -> torch.Generator:
    return torch.Generator().manual_seed(zlib.crc32(name.encode()))


def make_x(g: torch.Generator, d: int, zero_row: bool) -> torch.Tensor:
    x = torch.randn(N, d, generator=g) * 3.0
    if zero_row:
        x[N - 1] = 0.0
    return x


def metadata(hook: str, hook_out: str | None = None) -> SAEMetadata:
    m = dict(
        model_name=MODEL_NAME,
        hook_name=hook,
        hook_head_index=None,
        model_class_name="HookedTransformer",
        prepend_bos=True,
        context_size=64,
        dataset_path="",
        neuronpedia_id=None,
    )
    if hook_out is not None:
        m.update(hook_name_out=hook_out, hook_head_index_out=None)
    return SAEMetadata(**m)


@torch.no_grad()
def randomize(module: torch.nn.Module, g: torch.Generator) -> None:
    """Replace every parameter with random values of a scale that makes some latents fire."""
    for name, p in module.named_parameters():
        shape = p.shape
        if name in ("W_enc", "encoder.weight"):
            fan_in = shape[0] if name == "W_enc" else shape[1]
            v = torch.randn(shape, generator=g) / fan_in**0.5
        elif name in ("W_dec",):
            v = torch.randn(shape, generator=g) / shape[0] ** 0.5 * 2.0
        elif name == "threshold":
            # mostly positive (0..3) with a few negative entries (a negative θ must not let
            # ReLU(π)=0 entries through, and must not change anything else)
            v = torch.rand(shape, generator=g) * 3.0
            v[::8] = -torch.rand(shape[0] // 8 + (shape[0] % 8 > 0), generator=g)
        elif name == "r_mag":
            v = torch.randn(shape, generator=g) * 0.5
        elif name == "W_skip":
            v = torch.randn(shape, generator=g) * 0.1
        else:  # b_enc, b_dec, b_gate, b_mag, encoder.bias
            v = torch.randn(shape, generator=g)
        p.copy_(v.to(p.dtype))


def check_close(name, a, b, what):
    if a.shape != b.shape or not torch.allclose(a, b, atol=TOL, rtol=0, equal_nan=True):
        d = (a - b).abs().nan_to_num(nan=float("inf")).max().item() if a.shape == b.shape else "shape"
        raise SystemExit(f"{name}: {what} mismatch (max abs diff {d})")


def write_case(out: Path, name: str, tensors: dict, expected: dict) -> None:
    tensors = {k: v.detach().to(torch.float32).contiguous() for k, v in tensors.items()}
    save_file(tensors, str(out / "reference.safetensors"))
    expected = dict(expected)
    expected["case"] = name
    expected["reference_tensors"] = {k: list(v.shape) for k, v in tensors.items()}
    expected["files"] = sorted(
        str(p.relative_to(out)) for p in out.rglob("*") if p.is_file() and p.name != "expected.json"
    ) + ["expected.json"]
    (out / "expected.json").write_text(json.dumps(expected, indent=2) + "\n")
    fa = tensors.get("feature_acts")
    if fa is not None:
        l0 = (fa > 0).sum(-1).tolist()
        print(f"{name:32s} d_in={expected['d_in']} d_sae={expected['d_sae']} d_out={expected['d_out']} L0/row={l0}")


def lib_info(lib="sae_lens"):
    if lib == "sae_lens":
        return {"library": "sae_lens", "library_version": sae_lens.__version__}
    import importlib.metadata as md
    return {"library": "sparsify (PyPI eai-sparsify)", "library_version": md.version("eai-sparsify")}


# ── SAELens v6 cases ─────────────────────────────────────────────────────────────────────────

SAELENS_CASES = {
    # name: (sae class, cfg class, cfg kwargs, hook, hook_out, zero_row)
    "standard": (StandardSAE, StandardSAEConfig, dict(apply_b_dec_to_input=True),
                 "blocks.0.hook_resid_post", None, True),
    "standard_no_bdec": (StandardSAE, StandardSAEConfig, dict(apply_b_dec_to_input=False),
                         "blocks.1.hook_resid_pre", None, False),
    "topk": (TopKSAE, TopKSAEConfig, dict(k=4, apply_b_dec_to_input=True),
             "blocks.0.hook_mlp_out", None, True),
    "topk_rescale_dec_norm": (TopKSAE, TopKSAEConfig,
                              dict(k=4, apply_b_dec_to_input=True, rescale_acts_by_decoder_norm=True),
                              "blocks.1.hook_resid_post", None, False),
    "jumprelu": (JumpReLUSAE, JumpReLUSAEConfig, dict(apply_b_dec_to_input=True),
                 "blocks.1.hook_resid_post", None, False),
    "gated": (GatedSAE, GatedSAEConfig, dict(apply_b_dec_to_input=True),
              "blocks.0.hook_resid_pre", None, False),
    "transcoder": (Transcoder, TranscoderConfig, dict(apply_b_dec_to_input=False, d_out=D_IN),
                   "blocks.0.ln2.hook_normalized", "blocks.0.hook_mlp_out", False),
    "skip_transcoder": (SkipTranscoder, SkipTranscoderConfig, dict(apply_b_dec_to_input=False, d_out=D_IN),
                        "blocks.0.ln2.hook_normalized", "blocks.0.hook_mlp_out", False),
    "jumprelu_transcoder": (JumpReLUTranscoder, JumpReLUTranscoderConfig,
                            dict(apply_b_dec_to_input=False, d_out=D_IN),
                            "blocks.1.ln2.hook_normalized", "blocks.1.hook_mlp_out", False),
    "jumprelu_skip_transcoder": (JumpReLUSkipTranscoder, JumpReLUSkipTranscoderConfig,
                                 dict(apply_b_dec_to_input=False, d_out=D_IN),
                                 "blocks.1.ln2.hook_normalized", "blocks.1.hook_mlp_out", False),
    "norm_constant_norm_rescale": (StandardSAE, StandardSAEConfig,
                                   dict(apply_b_dec_to_input=True, normalize_activations="constant_norm_rescale"),
                                   "blocks.0.hook_resid_post", None, False),
    "norm_layer_norm": (StandardSAE, StandardSAEConfig,
                        dict(apply_b_dec_to_input=True, normalize_activations="layer_norm"),
                        "blocks.0.hook_resid_post", None, False),
    "norm_expected_average_only_in": (StandardSAE, StandardSAEConfig,
                                      dict(apply_b_dec_to_input=True, normalize_activations="expected_average_only_in"),
                                      "blocks.1.hook_resid_pre", None, False),
}

NOTES = {
    "standard": "f = ReLU((x - b_dec) @ W_enc + b_enc); sae_out = f @ W_dec + b_dec. Row 7 of x is all zeros.",
    "standard_no_bdec": "f = ReLU(x @ W_enc + b_enc) (no b_dec subtraction); sae_out = f @ W_dec + b_dec.",
    "topk": "pre = (x - b_dec) @ W_enc + b_enc; keep the k largest pre (torch.topk), ReLU the kept values, "
            "zero the rest; sae_out = f @ W_dec + b_dec. Row 7 of x is all zeros. Row 6 is x = b_dec, so pre = b_enc, "
            "which has only 2 positive entries (b_enc is mostly negative in this case): L0 = 2 < k.",
    "topk_rescale_dec_norm": "rescale_acts_by_decoder_norm=true: pre = ((x - b_dec) @ W_enc + b_enc) * ||W_dec[j]||; "
                             "f = ReLU(topk(pre)); sae_out = (f / ||W_dec[j]||) @ W_dec + b_dec.",
    "jumprelu": "pre = (x - b_dec) @ W_enc + b_enc; f = ReLU(pre) * (pre > threshold) (strict >). "
                "Some thresholds are negative on purpose.",
    "gated": "x' = x - b_dec; gate = (x' @ W_enc + b_gate > 0); mag = ReLU(x' @ (W_enc * exp(r_mag)) + b_mag); "
             "f = gate * mag; sae_out = f @ W_dec + b_dec. No b_enc.",
    "transcoder": "f = ReLU(x @ W_enc + b_enc) (never subtracts b_dec; b_dec has d_out); sae_out = f @ W_dec + b_dec. "
                  "No output de-normalization.",
    "skip_transcoder": "f = ReLU(x @ W_enc + b_enc); sae_out = f @ W_dec + b_dec + x @ W_skip.T "
                       "(W_skip [d_out, d_in], applied to the raw input x). 'decode_out' = decode(f) without skip.",
    "jumprelu_transcoder": "pre = x @ W_enc + b_enc; f = ReLU(pre) * (pre > threshold); sae_out = f @ W_dec + b_dec.",
    "jumprelu_skip_transcoder": "jumprelu_transcoder encode, sae_out = f @ W_dec + b_dec + x @ W_skip.T.",
    "norm_constant_norm_rescale": "c = sqrt(d_in) / ||x|| (per row); f = ReLU((c*x - b_dec) @ W_enc + b_enc); "
                                  "sae_out = (f @ W_dec + b_dec) / c.",
    "norm_layer_norm": "mu = mean(x); s = std(x - mu) with Bessel (N-1) correction; xn = (x - mu) / (s + 1e-5); "
                       "f = ReLU((xn - b_dec) @ W_enc + b_enc); sae_out = (f @ W_dec + b_dec) * s + mu "
                       "(note: multiplies by s, not s + 1e-5).",
    "norm_expected_average_only_in": "SAE.load_from_disk applies NO normalization for this mode (identity in "
                                     "encode/decode), so feature_acts/sae_out equal plain standard. The training "
                                     "scale factor s = sqrt(d_in)/mean_t ||x_t|| lives outside the SAE files "
                                     "(activation_scaler.json written by the trainer; pretrained_saes.yaml "
                                     "norm_scaling_factor for from_pretrained) and is folded into the weights: "
                                     "W_enc *= s, W_dec /= s, b_dec /= s, then normalize_activations='none'. "
                                     "feature_acts_folded / sae_out_folded are the outputs after "
                                     "sae.fold_activation_norm_scaling_factor(s) with s from activation_scaler.json "
                                     "(= encode(s*x), decode(.)/s of the unfolded SAE).",
}


def make_saelens_case(name: str, out: Path) -> None:
    sae_cls, cfg_cls, kw, hook, hook_out, zero_row = SAELENS_CASES[name]
    g = gen_for(name)
    cfg = cfg_cls(d_in=D_IN, d_sae=D_SAE, dtype="float32", device="cpu",
                  metadata=metadata(hook, hook_out), **kw)
    sae = sae_cls(cfg)
    randomize(sae, g)
    sae.eval()
    sae.save_model(out)
    loaded = SAE.load_from_disk(out, device="cpu")
    assert type(loaded) is sae_cls, (type(loaded), sae_cls)
    x = make_x(g, D_IN, zero_row)
    if name == "topk":
        # Row 6: x = b_dec, so pre = b_enc, and b_enc has only 2 positive entries: top-k (k=4) then
        # keeps 2 negative pre-activations, which the ReLU turns into 0 (L0 = 2 < k).
        with torch.no_grad():
            for s in (sae, loaded):
                s.b_enc.copy_(-s.b_enc.abs())
                s.b_enc[[5, 40]] = torch.tensor([0.7, 1.3])
            sae.save_model(out)
            loaded = SAE.load_from_disk(out, device="cpu")
        x[6] = loaded.b_dec.detach()
    with torch.no_grad():
        fa = loaded.encode(x)
        y = loaded(x)
        check_close(name, fa, sae.encode(x), "in-memory vs reloaded encode")
        check_close(name, y, sae(x), "in-memory vs reloaded forward")
        tensors = {"x": x, "feature_acts": fa, "sae_out": y}
        extra = []
        if "skip" in name:
            tensors["decode_out"] = loaded.decode(fa)
            extra.append("decode_out")
        if name == "norm_expected_average_only_in":
            from sae_lens.training.activation_scaler import ActivationScaler
            s = D_IN**0.5 / x.norm(dim=-1).mean().item()
            ActivationScaler(scaling_factor=s).save(str(out / "activation_scaler.json"))
            folded = copy.deepcopy(loaded)
            folded.fold_activation_norm_scaling_factor(s)
            fa_f = folded.encode(x)
            y_f = folded(x)
            # the trainer's view: scale the input, run the unfolded SAE, unscale the output
            check_close(name, fa_f, loaded.encode(x * s), "folded vs scaled encode")
            check_close(name, y_f, loaded.decode(loaded.encode(x * s)) / s, "folded vs scaled decode")
            tensors.update(feature_acts_folded=fa_f, sae_out_folded=y_f)
            extra += ["feature_acts_folded", "sae_out_folded"]
    d_out = kw.get("d_out", D_IN)
    expected = {
        "format": "saelens_v6",
        "architecture": cfg.architecture(),
        "hook_name": hook,
        "hook_name_out": hook_out,
        "d_in": D_IN,
        "d_sae": D_SAE,
        "d_out": d_out,
        "k": kw.get("k"),
        "rescale_acts_by_decoder_norm": kw.get("rescale_acts_by_decoder_norm", False) if "k" in kw else None,
        "apply_b_dec_to_input": kw["apply_b_dec_to_input"],
        "normalize_activations": kw.get("normalize_activations", "none"),
        "zero_row": N - 1 if zero_row else None,
        "extra_tensors": extra,
        "loaded_by": "sae_lens.SAE.load_from_disk",
        "notes": NOTES[name],
        **lib_info(),
    }
    write_case(out, name, tensors, expected)


# ── legacy (pre-v6) flat cfg.json ───────────────────────────────────────────────────────────

def make_legacy_flat(name: str, out: Path) -> None:
    """SAELens <= 3-era flat cfg (hook_point, hook_point_layer, dtype 'torch.float32', an all-ones
    scaling_factor tensor in the weights) for a standard ReLU SAE."""
    g = gen_for(name)
    hook = "blocks.1.hook_resid_pre"
    cfg = {
        "architecture": "standard",
        "d_in": D_IN,
        "d_sae": D_SAE,
        "activation_fn_str": "relu",
        "apply_b_dec_to_input": True,
        "finetuning_scaling_factor": False,
        "context_size": 64,
        "model_name": MODEL_NAME,
        "hook_point": hook,
        "hook_point_layer": 1,
        "hook_point_head_index": None,
        "prepend_bos": True,
        "dataset_path": "",
        "normalize_activations": False,  # legacy bool; sae_lens 6 maps False->'none', True->'expected_average_only_in'
        "dtype": "torch.float32",
        "device": "cpu",
        "sae_lens_training_version": "3.5.0",
    }
    st = StandardSAE(StandardSAEConfig(d_in=D_IN, d_sae=D_SAE))
    randomize(st, g)
    weights = {k: v.detach().clone().contiguous() for k, v in st.state_dict().items()}
    weights["scaling_factor"] = torch.ones(D_SAE)
    out.mkdir(parents=True, exist_ok=True)
    save_file(weights, str(out / "sae_weights.safetensors"))
    (out / "cfg.json").write_text(json.dumps(cfg, indent=2) + "\n")
    _finish_legacy(name, out, g, weights, hook, cfg, "relu", None,
                   "Loads in sae_lens 6 via handle_pre_6_0_config (no sae_lens_version -> pre-6): "
                   "hook_point->hook_name, activation_fn_str->activation_fn, normalize_activations False->'none'; "
                   "an all-ones 'scaling_factor' tensor is dropped on load (a non-ones one makes load fail unless "
                   "finetuning_scaling_factor is true, and then v6 load_state_dict rejects the extra key).")


def make_legacy_v5_topk(name: str, out: Path) -> None:
    """SAELens 5.x SAE.save_model cfg (SAEConfig.to_dict keys of 5.x) for a TopK SAE expressed as
    activation_fn_str='topk' + activation_fn_kwargs.k (how 5.x stored TopK)."""
    g = gen_for(name)
    hook = "blocks.0.hook_resid_post"
    cfg = {
        "architecture": "standard",
        "d_in": D_IN,
        "d_sae": D_SAE,
        "dtype": "float32",
        "device": "cpu",
        "model_name": MODEL_NAME,
        "hook_name": hook,
        "hook_layer": 0,
        "hook_head_index": None,
        "activation_fn_str": "topk",
        "activation_fn_kwargs": {"k": 4},
        "apply_b_dec_to_input": True,
        "finetuning_scaling_factor": False,
        "sae_lens_training_version": "5.9.1",
        "prepend_bos": True,
        "dataset_path": "",
        "dataset_trust_remote_code": True,
        "context_size": 64,
        "normalize_activations": "none",
        "neuronpedia_id": None,
        "model_from_pretrained_kwargs": {},
        "seqpos_slice": [None],
    }
    st = StandardSAE(StandardSAEConfig(d_in=D_IN, d_sae=D_SAE))
    randomize(st, g)
    weights = {k: v.detach().clone().contiguous() for k, v in st.state_dict().items()}
    out.mkdir(parents=True, exist_ok=True)
    save_file(weights, str(out / "sae_weights.safetensors"))
    (out / "cfg.json").write_text(json.dumps(cfg, indent=2) + "\n")
    _finish_legacy(name, out, g, weights, hook, cfg, "topk", 4,
                   "SAELens 5.x layout. sae_lens 6 maps activation_fn_str 'topk' + activation_fn_kwargs.k "
                   "to architecture 'topk' with k (so the cfg's architecture='standard' is overridden).")


def _finish_legacy(name, out, g, weights, hook, cfg, act, k, note):
    x = make_x(g, D_IN, False)
    W_enc, b_enc, W_dec, b_dec = (weights[n] for n in ("W_enc", "b_enc", "W_dec", "b_dec"))
    pre = (x - b_dec) @ W_enc + b_enc
    if k is None:
        f_formula = torch.relu(pre)
    else:
        v, i = pre.topk(k, dim=-1)
        f_formula = torch.zeros_like(pre).scatter(-1, i, v.relu())
    y_formula = f_formula @ W_dec + b_dec
    try:
        sae = SAE.load_from_disk(out, device="cpu")
        with torch.no_grad():
            fa, y = sae.encode(x), sae(x)
        check_close(name, fa, f_formula, "sae_lens vs formula encode")
        check_close(name, y, y_formula, "sae_lens vs formula forward")
        loaded_by, arch = "sae_lens.SAE.load_from_disk (pre-6 config conversion)", sae.cfg.architecture()
    except Exception as e:  # noqa: BLE001
        print(f"{name}: sae_lens {sae_lens.__version__} does not load it ({e!r}); using the formula")
        fa, y = f_formula, y_formula
        loaded_by, arch = f"formula (sae_lens failed: {e!r})", ("topk" if k else "standard")
    expected = {
        "format": "saelens_legacy_flat",
        "architecture": arch,
        "hook_name": hook,
        "hook_name_out": None,
        "d_in": D_IN, "d_sae": D_SAE, "d_out": D_IN, "k": k,
        "apply_b_dec_to_input": True,
        "normalize_activations": "none",
        "zero_row": None,
        "extra_tensors": [],
        "loaded_by": loaded_by,
        "notes": note,
        **lib_info(),
    }
    write_case(out, name, {"x": x, "feature_acts": fa, "sae_out": y}, expected)


# ── Gemma Scope params.npz ──────────────────────────────────────────────────────────────────

def make_gemma_scope(name: str, out: Path) -> None:
    g = gen_for(name)
    hook = "blocks.0.hook_resid_post"
    cfg = JumpReLUSAEConfig(d_in=D_IN, d_sae=D_SAE, apply_b_dec_to_input=False,
                            metadata=metadata(hook))
    src = JumpReLUSAE(cfg)
    randomize(src, g)
    params = {k: v.detach().numpy().astype(np.float32) for k, v in src.state_dict().items()}
    out.mkdir(parents=True, exist_ok=True)
    # Gemma Scope layout: W_enc [d_in, d_sae], b_enc [d_sae], W_dec [d_sae, d_in], b_dec [d_in], threshold [d_sae]
    np.savez(out / "params.npz", **{k: params[k] for k in ("W_enc", "b_enc", "W_dec", "b_dec", "threshold")})
    # load the way sae_lens's gemma_2_sae_huggingface_loader does (npz -> state dict, JumpReLU,
    # apply_b_dec_to_input False), through SAE.load_from_disk with a disk converter
    def gemma_scope_disk_loader(path, device="cpu", cfg_overrides=None):
        sd = {}
        with np.load(Path(path) / "params.npz") as data:
            for key in data:
                sk = "W_" + key[2:] if key.startswith("w_") else key
                sd[sk] = torch.tensor(data[key]).to(torch.float32)
        cfg_dict = {"architecture": "jumprelu", "d_in": D_IN, "d_sae": D_SAE, "dtype": "float32",
                    "device": device, "apply_b_dec_to_input": False, "normalize_activations": "none",
                    "metadata": {"hook_name": hook, "model_name": MODEL_NAME,
                                 "sae_lens_version": sae_lens.__version__}}
        return cfg_dict, sd
    sae = SAE.load_from_disk(out, converter=gemma_scope_disk_loader)
    x = make_x(g, D_IN, False)
    with torch.no_grad():
        fa, y = sae.encode(x), sae(x)
        check_close(name, fa, src.encode(x), "npz-loaded vs source encode")
    expected = {
        "format": "gemma_scope_npz",
        "architecture": "jumprelu",
        "hook_name": hook,
        "hook_name_out": None,
        "d_in": D_IN, "d_sae": D_SAE, "d_out": D_IN, "k": None,
        "apply_b_dec_to_input": False,
        "normalize_activations": "none",
        "zero_row": None,
        "extra_tensors": [],
        "loaded_by": "sae_lens JumpReLUSAE given the params.npz tensors (as gemma_2_sae_huggingface_loader maps them)",
        "notes": "pre = x @ W_enc + b_enc (no b_dec subtraction); f = ReLU(pre) * (pre > threshold); "
                 "sae_out = f @ W_dec + b_dec. Real Gemma Scope paths look like "
                 "layer_<L>/width_16k/average_l0_<n>/params.npz; the hook (resid_post / mlp_out / attn.hook_z) "
                 "comes from the repo name (gemma-scope-2b-pt-res|mlp|att).",
        **lib_info(),
    }
    write_case(out, name, {"x": x, "feature_acts": fa, "sae_out": y}, expected)


# ── EleutherAI sparsify ─────────────────────────────────────────────────────────────────────

def make_sparsify(name: str, out: Path) -> None:
    from sparsify import SparseCoder, SparseCoderConfig
    g = gen_for(name)
    hookpoint = "layers.0"
    sc = SparseCoder(D_IN, SparseCoderConfig(num_latents=D_SAE, k=4, expansion_factor=2))
    randomize(sc, g)
    sub = out / hookpoint
    sc.save_to_disk(sub)
    sae = SparseCoder.load_from_disk(sub)
    x = make_x(g, D_IN, False)
    with torch.no_grad():
        top_acts, top_idx, _pre = sae.encode(x)
        fa = torch.zeros(N, D_SAE).scatter(-1, top_idx, top_acts)
        y = sae(x).sae_out
        check_close(name, y, sae.decode(top_acts, top_idx), "forward vs decode")
        # the formula, to make sure the fixture pins it
        pre = torch.relu((x - sae.b_dec) @ sae.encoder.weight.T + sae.encoder.bias)
        v, i = pre.topk(4, dim=-1)
        f2 = torch.zeros_like(pre).scatter(-1, i, v)
        check_close(name, fa, f2, "sparsify vs formula encode")
        check_close(name, y, f2 @ sae.W_dec + sae.b_dec, "sparsify vs formula decode")
    # does sae_lens's own sparsify converter load it, and agree?
    try:
        from sae_lens.loading.pretrained_sae_loaders import sparsify_disk_loader
        sl = SAE.load_from_disk(sub, converter=sparsify_disk_loader).to(torch.float32)
        with torch.no_grad():
            d = (sl.encode(x) - fa).abs().max().item()
        saelens_note = f"sae_lens sparsify_disk_loader loads it; max |encode diff| = {d:.3g} (bf16 cast)"
    except Exception as e:  # noqa: BLE001
        saelens_note = f"sae_lens {sae_lens.__version__} sparsify_disk_loader FAILS on this layout: {type(e).__name__}: {str(e)[:200]}"
    print(f"{name}: {saelens_note}")
    expected = {
        "format": "sparsify",
        "architecture": "topk",
        "hookpoint": hookpoint,
        "hook_name": "blocks.0.hook_resid_post",
        "hook_name_out": None,
        "d_in": D_IN, "d_sae": D_SAE, "d_out": D_IN, "k": 4,
        "apply_b_dec_to_input": True,
        "normalize_activations": "none",
        "zero_row": None,
        "extra_tensors": [],
        "loaded_by": "sparsify.SparseCoder.load_from_disk; encode() + forward().sae_out (eager decoder)",
        "notes": "Files in layers.0/: cfg.json + sae.safetensors (encoder.weight [num_latents, d_in], encoder.bias, "
                 "W_dec [num_latents, d_in], b_dec [d_in]). pre = ReLU((x - b_dec) @ encoder.weight.T + encoder.bias) "
                 "(ReLU BEFORE top-k); keep top k of pre; sae_out = sum_j f_j W_dec[j] + b_dec. "
                 "b_dec is not subtracted when cfg.transcode is true. " + saelens_note,
        **lib_info("sparsify"),
    }
    write_case(out, name, {"x": x, "feature_acts": fa, "sae_out": y}, expected)


CASES = {n: make_saelens_case for n in SAELENS_CASES}
CASES.update(legacy_flat=make_legacy_flat, legacy_v5_topk=make_legacy_v5_topk,
             gemma_scope=make_gemma_scope, sparsify=make_sparsify)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=str(OUT))
    ap.add_argument("--only", nargs="*", choices=sorted(CASES), help="cases to (re)generate")
    args = ap.parse_args()
    root = Path(args.out)
    for name in args.only or CASES:
        out = root / name
        if out.exists():
            shutil.rmtree(out)
        out.mkdir(parents=True)
        CASES[name](name, out)


if __name__ == "__main__":
    sys.exit(main())
