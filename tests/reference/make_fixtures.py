#!/usr/bin/env python3
"""Write the `tiny` test fixtures of handcov into tests/fixtures/ (deterministic).

    python3 tests/reference/make_fixtures.py [--out DIR] [--seed N]

Files written:
  tiny_config.json                 the tiny config (uncertainty "ours"; tests override the type)
  tiny_weights.safetensors         every key of every variant (f32 / int64)
  tiny_input.safetensors           img f32 [2,3,128,128]
  tiny_{none,diag,full,ours,ours_wo_linear}_out.safetensors   reference outputs (f32)

The reference forward runs in float64 (weights are the stored f32 values, cast exactly) and is
saved as f32. A float32 run of the same model is compared with it and the relative difference
max|f32-f64| / max|f64| is printed per tensor: the fp32 noise floor any fp32 engine must expect.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import OrderedDict

import numpy as np
import torch
from scipy.ndimage import gaussian_filter
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import reference_model as R  # noqa: E402

ROOT = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
SEED = 20250901
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406])
IMAGENET_STD = np.array([0.229, 0.224, 0.225])


def smooth_images(seed: int, batch: int, size: int) -> np.ndarray:
    """Plausible normalised crops: smooth random 0..255 fields, ImageNet-normalised."""
    rng = np.random.default_rng([seed, 7])
    imgs = np.empty((batch, 3, size, size))
    yy, xx = np.mgrid[0:size, 0:size] / size
    for b in range(batch):
        # shared luminance structure + per-channel colour variation, two length scales
        lum = gaussian_filter(rng.standard_normal((size, size)), size / 12, mode="wrap")
        lum /= lum.std()
        blob_c = rng.uniform(0.3, 0.7, size=2)
        blob = np.exp(-(((yy - blob_c[0]) ** 2 + (xx - blob_c[1]) ** 2) / (2 * 0.15 ** 2)))
        for c in range(3):
            fine = gaussian_filter(rng.standard_normal((size, size)), 1.5, mode="wrap")
            fine /= fine.std()
            chan = gaussian_filter(rng.standard_normal((size, size)), size / 20, mode="wrap")
            chan /= chan.std()
            pix = (120.0 + rng.uniform(-20, 20) + 45.0 * lum + 20.0 * chan + 6.0 * fine
                   + rng.uniform(40, 90) * blob)
            pix = np.clip(pix, 0.0, 255.0)
            imgs[b, c] = (pix - 255.0 * IMAGENET_MEAN[c]) / (255.0 * IMAGENET_STD[c])
    return imgs.astype(np.float32)


def save(tensors: "OrderedDict[str, torch.Tensor]", path: str, meta: dict | None = None):
    tensors = OrderedDict((k, v.contiguous()) for k, v in tensors.items())
    # safetensors writes a metadata map in hash order: keep ONE key (a sorted JSON string) so
    # that the bytes are reproducible
    info = None if meta is None else {"info": json.dumps(meta, sort_keys=True)}
    save_file(tensors, path, metadata=info)
    os.chmod(path, 0o644)                 # safetensors creates files 0600


def sanity_checks(sd, config):
    """SPEC §13 test vectors: identity pose + zero betas gives v_template exactly; rot6d(I) = I."""
    m = R.model_from_state_dict(dict(config, uncertainty="none"), sd).double()
    eye6 = torch.tensor([[1.0, 0, 0, 0, 1, 0]], dtype=torch.float64)
    assert torch.equal(R.rot6d_to_rotmat(eye6)[0], torch.eye(3, dtype=torch.float64))
    I = torch.eye(3, dtype=torch.float64)
    with torch.no_grad():
        j, v = m.mano(I.expand(1, 1, 3, 3), I.expand(1, 15, 3, 3),
                      torch.zeros(1, 10, dtype=torch.float64))
    err = (v[0] - m.mano.v_template).abs().max().item()
    assert err < 1e-12, err
    assert torch.all(sd["mano.lbs_weights"].double().sum(1) == 1.0)
    assert torch.all(sd["mano.lbs_weights"] >= 0) and torch.all(sd["mano.J_regressor"] >= 0)
    assert torch.allclose(sd["mano.lbs_weights"].double().sum(1), torch.ones(1, dtype=torch.float64), atol=1e-6)
    assert torch.allclose(sd["mano.J_regressor"].double().sum(1), torch.ones(1, dtype=torch.float64), atol=1e-6)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--out", default=os.path.join(ROOT, "tests", "fixtures"))
    ap.add_argument("--seed", type=int, default=SEED)
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)

    torch.set_num_threads(1)          # fixed reduction order -> reproducible bytes
    torch.use_deterministic_algorithms(True)
    config = json.loads(json.dumps(R.TINY_CONFIG))

    with open(os.path.join(args.out, "tiny_config.json"), "w") as f:
        json.dump(config, f, indent=2)
        f.write("\n")

    sd = R.random_state_dict(config, args.seed)
    sanity_checks(sd, config)
    meta = {"generator": "tests/reference/make_fixtures.py", "seed": str(args.seed),
            "config": json.dumps(config)}
    save(sd, os.path.join(args.out, "tiny_weights.safetensors"), meta)

    S = config["image_size"]
    img = torch.from_numpy(smooth_images(args.seed, 2, S))
    save(OrderedDict(img=img), os.path.join(args.out, "tiny_input.safetensors"), meta)
    print(f"img: min {img.min():.3f} max {img.max():.3f} mean {img.mean():.3f} std {img.std():.3f}")

    noise = OrderedDict()
    for kind in R.UNCERTAINTY_TYPES:
        cfg = dict(config, uncertainty=kind)
        m64 = R.model_from_state_dict(cfg, sd).double().eval()
        m32 = R.model_from_state_dict(cfg, sd).float().eval()
        with torch.no_grad():
            o64 = m64(img.double())
            o32 = m32(img)
        out = OrderedDict((k, v.to(torch.float32)) for k, v in o64.items())
        assert all(torch.isfinite(v).all() for v in out.values()), kind
        save(out, os.path.join(args.out, f"tiny_{kind}_out.safetensors"),
             {"generator": "tests/reference/make_fixtures.py", "uncertainty": kind,
              "precision": "float64 forward, stored as float32"})

        print(f"\n== {kind}")
        for k, v in o64.items():
            rel = ((o32[k].double() - v).abs().max() / v.abs().max()).item()
            noise.setdefault(k, {})[kind] = rel
            limit = 1e-4 if k == "keypoint_3d_cov" else 1e-5
            flag = "  <-- ABOVE " + str(limit) if rel > limit else ""
            print(f"  {k:20s} {str(tuple(v.shape)):18s} max|f64| {v.abs().max().item():10.4e}"
                  f"  f32 noise {rel:9.3e}{flag}")
        if kind == "full":
            L = R.precision_factor_full(o64["uncertainty_raw"])
            lam = L @ L.transpose(-2, -1)
            cond = torch.linalg.cond(lam)
            print("  full precision L·Lᵀ condition numbers per sample:",
                  ", ".join(f"{c:.2f}" for c in cond.tolist()))
            assert cond.max() < 1e3
            cov = o64["keypoint_3d_cov"]
            sd_ = torch.sqrt(torch.diagonal(cov, dim1=-2, dim2=-1))
            corr = cov / (sd_.unsqueeze(-1) * sd_.unsqueeze(-2))
            off = corr - torch.diag_embed(torch.diagonal(corr, dim1=-2, dim2=-1))
            print(f"  full: |correlation| off-diagonal max {off.abs().max():.3f}"
                  f" mean {off.abs().sum() / (off.numel() - 2 * 63):.3f}")
        if kind == "none":
            b = o64
            for k in ("pose6d", "betas", "pred_cam", "pred_keypoints_3d", "pred_keypoints_2d"):
                d = (b[k][0] - b[k][1]).abs().max().item()
                print(f"  batch item 0 vs 1: max|Δ{k}| = {d:.3e}")
            p6 = b["pose6d"].reshape(-1, 16, 6)
            a1, a2 = p6[..., :3], p6[..., 3:]
            b1 = a1 / a1.norm(dim=-1, keepdim=True)
            u = a2 - (b1 * a2).sum(-1, keepdim=True) * b1
            print(f"  6D: min |a1| {a1.norm(dim=-1).min():.3f}, min |a2 ⟂ a1| "
                  f"{u.norm(dim=-1).min():.3f}")

    print("\nfp32 noise floor, max|f32-f64|/max|f64| (worst over the uncertainty types):")
    for k, per in noise.items():
        print(f"  {k:20s} {max(per.values()):9.3e}   "
              + " ".join(f"{t}={v:.2e}" for t, v in per.items()))

    print("\nfiles:")
    total = 0
    for name in sorted(os.listdir(args.out)):
        if name.startswith("tiny_"):
            size = os.path.getsize(os.path.join(args.out, name))
            total += size
            print(f"  {name:38s} {size:10d} B")
    print(f"  total {total / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
