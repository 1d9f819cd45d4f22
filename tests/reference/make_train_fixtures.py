#!/usr/bin/env python3
"""Write the `tiny` TRAINING fixtures of handcov into tests/fixtures/ (deterministic).

    python3 tests/reference/make_train_fixtures.py [--out DIR] [--seed N] [--no-check]

Needs tests/fixtures/tiny_weights.safetensors and tiny_config.json (make_fixtures.py). Files:

  train_tiny_batch.safetensors          one training batch, B = 4 (f32)
  train_tiny_discriminator.safetensors  the discriminator's initial weights (f32)
  train_tiny_{type}_step.safetensors    per type: loss terms, grad.* of every trained parameter
  train_tiny_ours_exact_step.safetensors  `ours` with --ours-nll exact (no grad.backbone.*; nor have the
                                          diag/full/ours/ours_wo_linear files: only `none` stores them)
  train_tiny_disc_step.safetensors      the discriminator step (identical for every type)
  train_tiny_ours_adamw.json            10 AdamW steps of `ours` (lr 1e-4): the loss trajectory

Everything is computed in float64 from the stored f32 weights / batch (cast exactly); tensors
are stored as f32, scalars as 0-d float64. See tests/reference/README.md ("Training fixtures").
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections import OrderedDict

import numpy as np
import torch
from safetensors.torch import load_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import reference_model as R  # noqa: E402
import make_fixtures as MF  # noqa: E402
import train_reference as T  # noqa: E402

SEED = MF.SEED
B, N, M = 4, T.SAMPLE_NUM, 8
ADAM = dict(lr=1e-4, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-4)
ADAM_STEPS = 10
META = {"generator": "tests/reference/make_train_fixtures.py"}


# --------------------------------------------------------------------------------------------
# The batch
# --------------------------------------------------------------------------------------------

def make_batch(seed: int, sd, config) -> "OrderedDict[str, torch.Tensor]":
    S = config["image_size"]
    rng = lambda name: R._rng(seed, "train." + name)  # noqa: E731

    img = MF.smooth_images(seed + 1, B, S)                     # other images than tiny_input

    # GT MANO parameters (axis-angle), flat-hand-relative like the datasets
    g = rng("global_orient")
    axes = g.standard_normal((B, 3))
    axes /= np.linalg.norm(axes, axis=1, keepdims=True)
    go = axes * g.uniform(0.6, 2.6, size=(B, 1))
    hp = 0.25 * rng("hand_pose").standard_normal((B, 45))
    betas = np.clip(0.8 * rng("betas").standard_normal((B, 10)), -2.5, 2.5)
    go, hp, betas = (x.astype(np.float32) for x in (go, hp, betas))
    has_go = np.array([1, 1, 0, 1], dtype=np.float32)
    has_hp = np.array([1, 0, 1, 1], dtype=np.float32)
    has_betas = np.array([1, 0, 1, 0], dtype=np.float32)

    # GT 3D joints: the (random, tiny-fixture) MANO posed with the GT parameters, moved into a
    # camera frame (root at t, z 0.45-0.9 m) plus 3 mm noise
    mano = R.ManoLayer(sd["mano.v_template"].shape[0], sd["mano.faces_tensor"].shape[0])
    mano.load_state_dict({k[5:]: v for k, v in sd.items() if k.startswith("mano.")})
    mano = mano.double()
    rot = lambda aa: torch.from_numpy(R.axis_angle_to_rotmat(aa.astype(np.float64)))  # noqa: E731
    with torch.no_grad():
        j21, _ = mano(rot(go).view(B, 1, 3, 3), rot(hp.reshape(B, 15, 3)),
                      torch.from_numpy(betas.astype(np.float64)))
    j21 = j21.numpy()
    c = rng("cam_t")
    t = np.stack([c.uniform(-0.06, 0.06, B), c.uniform(-0.06, 0.06, B), c.uniform(0.45, 0.9, B)], 1)
    p_cam = j21 - j21[:, :1] + t[:, None, :] + 0.003 * c.standard_normal((B, 21, 3))

    conf3 = np.ones((B, 21))
    conf3[1, 0] = 0.0                  # root unlabelled: the root-relative L1 still subtracts it
    conf3[1, [6, 11]] = 0.0
    conf3[1, 15] = 0.5
    conf3[3, [4, 8, 20]] = 0.0         # samples 0 and 2 all ones (enter the full / exact NLL)
    kp3 = np.concatenate([p_cam, conf3[..., None]], axis=-1).astype(np.float32)

    # GT 2D: a real camera's projection, scaled and centred so the hand spans ~60 % of the crop
    k2 = rng("keypoints_2d")
    uv = p_cam[..., :2] / p_cam[..., 2:3]
    lo, hi = uv.min(axis=1, keepdims=True), uv.max(axis=1, keepdims=True)
    scale = 0.6 / (hi - lo).max(axis=2, keepdims=True)
    uv = (uv - 0.5 * (lo + hi)) * scale + k2.uniform(-0.04, 0.04, (B, 1, 2))
    uv = np.clip(uv + 0.004 * k2.standard_normal((B, 21, 2)), -0.5, 0.5)
    conf2 = k2.choice([0.0, 0.5, 1.0], p=[0.15, 0.15, 0.7], size=(B, 21))
    conf2[0] = 1.0                     # sample 0 all ones
    conf2[1, 2], conf2[2, 5] = 0.0, 0.5   # make sure both values occur
    kp2 = np.concatenate([uv, conf2[..., None]], axis=-1).astype(np.float32)

    eps = rng("sample_eps").standard_normal((B, N, R.KP_DIM), dtype=np.float32)
    mhp = (0.3 * rng("mocap.hand_pose").standard_normal((M, 45))).astype(np.float32)
    mb = rng("mocap.betas").standard_normal((M, 10)).astype(np.float32)

    f = lambda a: torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))  # noqa: E731
    return OrderedDict([
        ("img", f(img)), ("keypoints_2d", f(kp2)), ("keypoints_3d", f(kp3)),
        ("mano_params.global_orient", f(go)), ("mano_params.hand_pose", f(hp)),
        ("mano_params.betas", f(betas)),
        ("has_mano_params.global_orient", f(has_go)), ("has_mano_params.hand_pose", f(has_hp)),
        ("has_mano_params.betas", f(has_betas)),
        ("sample_eps", f(eps)), ("mocap.hand_pose", f(mhp)), ("mocap.betas", f(mb)),
    ])


# --------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------

def f64_scalar(x: float) -> torch.Tensor:
    return torch.tensor(float(x), dtype=torch.float64)


def step_tensors(res, kind, with_backbone=True) -> "OrderedDict[str, torch.Tensor]":
    t = OrderedDict()
    for k, v in res["losses"].items():
        t[k] = f64_scalar(v)
    for n, g in res["grads"].items():
        if with_backbone or not n.startswith("backbone."):
            t["grad." + n] = g.to(torch.float32)
    for n, g in res["grad_out"].items():
        t["grad_out." + n] = g.to(torch.float32)
    for n, v in res["out"].items():
        t["out." + n] = v.to(torch.float32)
    return t


def independent_checks(model, disc, batch, kind):
    """Loss values against torch.distributions (other formulas, same definition)."""
    with torch.no_grad():
        out = model(batch["img"])
        _, terms = T.compute_losses(kind, out, batch, disc, model)
        mu, gt = out["pred_keypoints_3d"], batch["keypoints_3d"]
        r = (gt[:, :, :3] - mu).reshape(B, -1)
        w = T.full_sample_weight(gt)
        msg = []
        if kind == "full":
            L = R.precision_factor_full(out["uncertainty_raw"])
            mvn = torch.distributions.MultivariateNormal(torch.zeros_like(r),
                                                         precision_matrix=L @ L.transpose(1, 2))
            ref = (w * (-2.0 * mvn.log_prob(r) - R.KP_DIM * math.log(2 * math.pi))).sum()
            got = terms["loss_keypoints_3d_nll"]
            msg.append(f"full NLL vs MultivariateNormal: rel {abs(got - ref) / abs(ref):.2e}")
            assert abs(got - ref) <= 1e-9 * abs(ref)
        if kind == "ours":
            W = model.out_layer_keypoints_3d.weight
            Sig = T.ours_covariance(out["uncertainty_raw"], W)
            mvn = torch.distributions.MultivariateNormal(torch.zeros_like(r), covariance_matrix=Sig)
            ref = (w * (-mvn.log_prob(r) - 0.5 * R.KP_DIM * math.log(2 * math.pi))).sum()
            got = terms["loss_keypoints_3d_nll_exact"]
            cond = torch.linalg.cond(Sig)
            msg.append(f"exact NLL vs MultivariateNormal: rel {abs(got - ref) / abs(ref):.2e}; "
                       f"cond(Σ) per sample {', '.join(f'{c:.3g}' for c in cond.tolist())}; "
                       f"eig(Σ) min {torch.linalg.eigvalsh(Sig).min():.3g}")
            assert abs(got - ref) <= 1e-8 * abs(ref)
        if kind in ("diag", "ours", "ours_wo_linear"):
            s = out["uncertainty_raw"]
            c = gt[:, :, 3:].expand(B, 21, 3).reshape(B, -1)
            var = torch.exp(s) + T.NLL_EPS
            nrm = torch.distributions.Normal(mu.reshape(B, -1), torch.sqrt(var))
            # -log N(g; μ, e^s + 1e-6) - ½log2π = ½(log(e^s + 1e-6) + r²/(e^s + 1e-6)); the
            # loss has s instead of log(e^s + 1e-6)
            ref = (c * (-nrm.log_prob(gt[:, :, :3].reshape(B, -1)) - 0.5 * math.log(2 * math.pi)
                        + 0.5 * (s - torch.log(var)))).sum()
            got = terms["loss_keypoints_3d_nll"]
            msg.append(f"diag NLL vs Normal: rel {abs(got - ref) / abs(ref):.2e}")
            assert abs(got - ref) <= 1e-12 * abs(ref)
    return msg


def run_adamw(config, sd, dsd, batch, kind, ours_nll, steps):
    model = T.load_model(config, sd, kind)
    disc = T.discriminator_from_state_dict(dsd)
    opt_g = torch.optim.AdamW(model.parameters(), foreach=False, **ADAM)
    opt_d = torch.optim.AdamW(disc.parameters(), foreach=False, **ADAM)
    p0 = {n: p.detach().clone() for n, p in model.named_parameters()}
    d0 = {"discriminator." + n: p.detach().clone() for n, p in disc.named_parameters()}
    traj = []
    for k in range(steps):
        # forward + generator backward, then D loss + backward (fake = this forward's detached
        # predictions); the generator step does not change the D loss, so stepping both here
        # is the SPEC §8 order (generator step, then discriminator forward/backward/step)
        res = T.train_step(model, disc, batch, ours_nll)
        opt_g.step()
        opt_d.step()
        traj.append(OrderedDict([("step", k)] + list(res["losses"].items())))
        print(f"    step {k}: loss {res['losses']['loss']:.10f}  disc_loss {res['losses']['disc_loss']:.6f}")
    res = T.train_step(model, disc, batch, ours_nll)         # losses after the last update
    final = OrderedDict([("step", steps)] + list(res["losses"].items()))
    checks = OrderedDict()
    names = ["backbone.patch_embed.proj.weight", "backbone.blocks.0.attn.qkv.weight",
             "mano_head.decpose.weight", "mano_head.deccam.bias"]
    names += [n for n in p0 if n.startswith("uncertainty_head.dec")] + \
             [n for n in p0 if n == "out_layer_keypoints_3d.weight"]
    params = dict(model.named_parameters())
    for n in names:
        d = (params[n].detach() - p0[n])
        checks[n] = {"l2": float(params[n].detach().norm()), "delta_l2": float(d.norm()),
                     "delta_sum": float(d.sum())}
    dparams = {"discriminator." + n: p for n, p in disc.named_parameters()}
    for n in ("discriminator.D_conv1.weight", "discriminator.D_alljoints_out.weight",
              "discriminator.D_alljoints_out.bias"):
        d = dparams[n].detach() - d0[n]
        checks[n] = {"l2": float(dparams[n].detach().norm()), "delta_l2": float(d.norm()),
                     "delta_sum": float(d.sum())}
    return {"steps": traj, "final": final, "params_after": checks}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--out", default=os.path.join(MF.ROOT, "tests", "fixtures"))
    ap.add_argument("--seed", type=int, default=SEED)
    ap.add_argument("--no-check", action="store_true", help="skip the finite-difference check")
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    t_start = time.time()

    with open(os.path.join(args.out, "tiny_config.json")) as f:
        config = json.load(f)
    sd = load_file(os.path.join(args.out, "tiny_weights.safetensors"))
    written = []

    def save(tensors, name, meta):
        MF.save(tensors, os.path.join(args.out, name), dict(META, **meta))
        written.append(name)

    batch32 = make_batch(args.seed, sd, config)
    save(batch32, "train_tiny_batch.safetensors", {"seed": str(args.seed), "B": str(B)})
    batch = T.batch_to(batch32, torch.float64)
    kp3 = batch32["keypoints_3d"]
    print(f"batch: img {tuple(batch32['img'].shape)}, 3D conf sums {kp3[:, :, 3].sum(1).tolist()}, "
          f"2D conf sums {batch32['keypoints_2d'][:, :, 2].sum(1).tolist()}, "
          f"z {kp3[:, :, 2].min():.3f}..{kp3[:, :, 2].max():.3f} m, "
          f"2D {batch32['keypoints_2d'][:, :, :2].min():.3f}..{batch32['keypoints_2d'][:, :, :2].max():.3f}")

    # aa_to_rotmat (HaMeR's quaternion form) against Rodrigues
    aa = batch["mano_params.hand_pose"].reshape(-1, 3)
    err = (T.aa_to_rotmat(aa) - torch.from_numpy(R.axis_angle_to_rotmat(aa.numpy()))).abs().max()
    print(f"aa_to_rotmat vs Rodrigues: max abs diff {err:.2e}")
    assert err < 1e-7

    dsd = T.random_discriminator_state_dict(args.seed)
    save(dsd, "train_tiny_discriminator.safetensors", {"seed": str(args.seed)})

    fd_rows_all = []
    disc_ref = None
    for kind in R.UNCERTAINTY_TYPES:
        model = T.load_model(config, sd, kind)
        disc = T.discriminator_from_state_dict(dsd)
        res = T.train_step(model, disc, batch)
        assert all(torch.isfinite(g).all() for g in res["grads"].values()), kind
        assert set(res["grads"]) == {n for n, _ in model.named_parameters()}
        print(f"\n== {kind}: {len(res['grads'])} trained tensors, "
              f"{sum(g.numel() for g in res['grads'].values())} parameters")
        for k, v in res["losses"].items():
            print(f"  {k:34s} {v:.10e}")
        for m in independent_checks(model, disc, batch, kind):
            print("  " + m)
        # The backbone backward is one function for every type: its parameter gradients are
        # stored for `none` only; the other types give grad_out.backbone_features, the gradient
        # entering the backbone, which checks everything above it (and keeps the fixtures small).
        full_backbone = kind == "none"
        save(step_tensors(res, kind, with_backbone=full_backbone), f"train_tiny_{kind}_step.safetensors",
             {"uncertainty": kind, "ours_nll": "reference",
              "precision": "float64 step; tensors stored as float32, scalars as 0-d float64",
              "note": "" if full_backbone else "grad.backbone.* omitted; grad_out.backbone_features given"})
        # the discriminator step depends only on (hand_pose, betas): identical for every type
        if disc_ref is None:
            disc_ref = res
        else:
            assert torch.equal(res["fake_hand_pose"], disc_ref["fake_hand_pose"])
            assert all(torch.equal(res["disc_grads"][n], disc_ref["disc_grads"][n])
                       for n in res["disc_grads"])
        if not args.no_check:
            rows = T.finite_difference_check(model, disc, batch, res["grads"],
                                             T.fd_param_names(kind))
            worst = max(rows, key=lambda r: r[4])
            print(f"  finite differences: {len(rows)} entries, max rel err {worst[4]:.2e} "
                  f"({worst[0]}[{worst[1]}])")
            fd_rows_all += [(kind,) + r for r in rows]
        if kind == "ours":
            model = T.load_model(config, sd, kind)
            disc = T.discriminator_from_state_dict(dsd)
            rx = T.train_step(model, disc, batch, ours_nll="exact")
            print(f"\n== ours --ours-nll exact: loss {rx['losses']['loss']:.10e}")
            save(step_tensors(rx, kind, with_backbone=False), "train_tiny_ours_exact_step.safetensors",
                 {"uncertainty": kind, "ours_nll": "exact",
                  "precision": "float64 step; tensors stored as float32, scalars as 0-d float64",
                  "note": "grad.backbone.* omitted; grad_out.backbone_features given"})
            if not args.no_check:
                rows = T.finite_difference_check(model, disc, batch, rx["grads"],
                                                 T.fd_param_names(kind), ours_nll="exact",
                                                 h=1e-4)   # Σ's cond ~2e4 amplifies rounding
                worst = max(rows, key=lambda r: r[4])
                print(f"  finite differences: {len(rows)} entries, max rel err {worst[4]:.2e} "
                      f"({worst[0]}[{worst[1]}])")
                fd_rows_all += [("ours_exact",) + r for r in rows]

    r = disc_ref
    dstep = OrderedDict([("disc_loss", f64_scalar(r["losses"]["disc_loss"]))])
    for n, g in r["disc_grads"].items():
        dstep["grad_disc." + n] = g.to(torch.float32)
    real_rot = T.aa_to_rotmat(batch["mocap.hand_pose"].reshape(-1, 3)).view(M, 15, 3, 3)
    dstep["fake.hand_pose"] = r["fake_hand_pose"].to(torch.float32)
    dstep["fake.betas"] = r["fake_betas"].to(torch.float32)
    dstep["real.hand_pose"] = real_rot.to(torch.float32)
    dstep["disc_out_fake"] = r["disc_out_fake"].to(torch.float32)
    dstep["disc_out_real"] = r["disc_out_real"].to(torch.float32)
    save(dstep, "train_tiny_disc_step.safetensors",
         {"note": "gradients of ADVERSARIAL*disc_loss = 0.0005*L_D; fake = detached predictions"})
    print(f"\n== discriminator step: disc_loss {r['losses']['disc_loss']:.10e}")
    if not args.no_check:
        disc = T.discriminator_from_state_dict(dsd)
        fake_hp = r["fake_hand_pose"]
        fake_b = r["fake_betas"]
        rows = T.disc_finite_difference_check(disc, fake_hp, fake_b, batch, r["disc_grads"],
                                              T.DISC_FD_NAMES)
        worst = max(rows, key=lambda x: x[4])
        print(f"  finite differences: {len(rows)} entries, max rel err {worst[4]:.2e} ({worst[0]})")
        fd_rows_all += [("disc",) + x for x in rows]

    print(f"\n== AdamW, {ADAM_STEPS} steps of `ours` on the same batch (float64), {ADAM}")
    traj = OrderedDict([
        ("generator", META["generator"]), ("seed", args.seed), ("type", "ours"),
        ("dtype", "float64"), ("batch", "train_tiny_batch.safetensors, the same batch every step"),
        ("weights", "tiny_weights.safetensors (ours subset), train_tiny_discriminator.safetensors"),
        ("optimizer", OrderedDict([("name", "torch.optim.AdamW"), ("lr", ADAM["lr"]),
                                   ("betas", list(ADAM["betas"])), ("eps", ADAM["eps"]),
                                   ("weight_decay", ADAM["weight_decay"]),
                                   ("params", "every model parameter (backbone, mano_head, "
                                              "uncertainty_head, out_layer_keypoints_3d)")])),
        ("discriminator_optimizer", "the same AdamW settings over the discriminator"),
        ("loss_weights", T.LOSS_WEIGHTS),
        ("note", "steps[k] = losses of the forward at the parameters before update k (disc_loss: "
                 "discriminator before its update k); final = after all updates. lr 1e-4, not "
                 "the reference's 1e-6, so that 10 steps move the loss visibly."),
    ])
    print("  ours (reference NLL):")
    traj["ours"] = run_adamw(config, sd, dsd, batch, "ours", "reference", ADAM_STEPS)
    print("  ours --ours-nll exact:")
    traj["ours_nll_exact"] = run_adamw(config, sd, dsd, batch, "ours", "exact", ADAM_STEPS)
    path = os.path.join(args.out, "train_tiny_ours_adamw.json")
    with open(path, "w") as f:
        json.dump(traj, f, indent=1)
        f.write("\n")
    written.append("train_tiny_ours_adamw.json")

    if fd_rows_all:
        print("\nfinite-difference self-check (autograd f64 vs 4th-order central differences, h = 1e-5·max(1,|θ|), ours_exact 1e-4):")
        for row in fd_rows_all:
            kind, n, i, ad, fd, rel = row
            print(f"  {kind:10s} {n:64s}[{i:7d}] ad {ad:+.6e} fd {fd:+.6e} rel {rel:.1e}")
        print(f"  max relative error over {len(fd_rows_all)} entries: "
              f"{max(x[5] for x in fd_rows_all):.3e}")

    print("\nfiles:")
    total = 0
    for name in written:
        size = os.path.getsize(os.path.join(args.out, name))
        total += size
        print(f"  {name:42s} {size:10d} B")
    print(f"  total {total} B = {total / 2**20:.2f} MiB  ({time.time() - t_start:.0f} s)")


if __name__ == "__main__":
    main()
