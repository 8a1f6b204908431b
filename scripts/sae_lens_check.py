#!/usr/bin/env python3
"""Prove that an SAE directory loads in SAELens and computes what we say it computes.

Loads DIR with sae_lens itself (SAE.load_from_disk: cfg.json + sae_weights.safetensors, v6 or
pre-6 flat config; or, with --format sparsify / auto-detected sae.safetensors, sae_lens's
sparsify_disk_loader), prints the parsed config, then if DIR/reference.safetensors exists or
--inputs FILE.safetensors is given (tensor `x`, optionally `feature_acts` / `sae_out`), runs
encode(x) and forward(x) and prints the max abs diff against the given tensors.

Exit code 0: loaded, and every given reference tensor matches within --tol (default 1e-4).
Exit code 1: failed to load, hook mismatch (--hook), shape mismatch or a diff > tol.

Usage (project venv with sae-lens 6.54.12, see scripts/make_sae_fixtures.py):
  .cache/venv/bin/python scripts/sae_lens_check.py tests/fixtures/sae/standard --hook blocks.0.hook_resid_post
  .cache/venv/bin/python scripts/sae_lens_check.py OUR_SAVED_DIR --hook HOOK --inputs ours.safetensors
"""

import argparse
import json
import os
import sys
import warnings
from pathlib import Path

os.environ.setdefault("WANDB_MODE", "disabled")


def max_diff(a, b):
    import torch
    if a.shape != b.shape:
        return float("inf")
    both_nan = torch.isnan(a) & torch.isnan(b)
    d = (a - b).abs()
    d = torch.where(both_nan, torch.zeros_like(d), d)
    return d.nan_to_num(nan=float("inf")).max().item() if d.numel() else 0.0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("dir", type=Path)
    ap.add_argument("--hook", help="expected hook name (cfg metadata.hook_name); mismatch -> exit 1")
    ap.add_argument("--inputs", type=Path, help="safetensors with x [n, d_in] (and optional feature_acts, sae_out)")
    ap.add_argument("--format", choices=["auto", "saelens", "sparsify"], default="auto")
    ap.add_argument("--tol", type=float, default=1e-4)
    ap.add_argument("--fold-w-dec-norm", action="store_true", help="pass fold_W_dec_norm=True to load_from_disk")
    args = ap.parse_args()

    import torch
    from safetensors.torch import load_file

    import sae_lens
    from sae_lens import SAE

    torch.set_num_threads(2)
    fmt = args.format
    if fmt == "auto":
        fmt = "sparsify" if (args.dir / "sae.safetensors").exists() and not (args.dir / "sae_weights.safetensors").exists() else "saelens"
    print(f"sae_lens {sae_lens.__version__}, torch {torch.__version__}; loading {args.dir} as {fmt}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if fmt == "sparsify":
                from sae_lens.loading.pretrained_sae_loaders import sparsify_disk_loader
                sae = SAE.load_from_disk(args.dir, device="cpu", converter=sparsify_disk_loader,
                                         fold_W_dec_norm=args.fold_w_dec_norm)
            else:
                sae = SAE.load_from_disk(args.dir, device="cpu", fold_W_dec_norm=args.fold_w_dec_norm)
    except Exception as e:  # noqa: BLE001
        print(f"FAIL: sae_lens could not load {args.dir}: {type(e).__name__}: {e}")
        return 1
    sae.eval()
    cfg = sae.cfg.to_dict()
    print(f"class: {type(sae).__name__}  architecture: {sae.cfg.architecture()}")
    print("cfg:", json.dumps(cfg, indent=2, default=str))
    print("params:", {k: list(v.shape) for k, v in sae.state_dict().items()})
    ok = True
    hook = sae.cfg.metadata.hook_name
    if args.hook is not None and hook != args.hook:
        print(f"FAIL: hook_name {hook!r} != expected {args.hook!r}")
        ok = False

    ref_path = args.inputs or (args.dir / "reference.safetensors")
    if not ref_path.exists():
        if args.inputs:
            print(f"FAIL: {ref_path} not found")
            return 1
        print("no reference.safetensors / --inputs; load-only check")
        print("OK" if ok else "FAILED")
        return 0 if ok else 1
    ref = load_file(str(ref_path))
    if "x" not in ref:
        print(f"FAIL: {ref_path} has no tensor 'x' (has {sorted(ref)})")
        return 1
    x = ref["x"].to(sae.dtype)
    with torch.no_grad():
        fa = sae.encode(x)
        out = sae(x)
    l0 = (fa > 0).sum(-1).float().mean().item()
    print(f"x {list(x.shape)} -> feature_acts {list(fa.shape)} (mean L0 {l0:.2f}) -> sae_out {list(out.shape)}")
    compared = 0
    for name, got in (("feature_acts", fa), ("sae_out", out)):
        if name not in ref:
            continue
        want = ref[name].to(got.dtype)
        d = max_diff(got, want)
        status = "ok" if d <= args.tol else "FAIL"
        shape_note = "" if got.shape == want.shape else f" (shape {list(got.shape)} vs {list(want.shape)})"
        print(f"{name:13s} max |sae_lens - given| = {d:.3g}{shape_note}  [{status}, tol {args.tol:g}]")
        ok &= d <= args.tol
        compared += 1
    if compared == 0:
        print("(no feature_acts / sae_out in the inputs file; nothing compared)")
    print("OK" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
