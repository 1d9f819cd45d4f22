#!/usr/bin/env python3
"""PyTorch TRAINING reference of handcov: losses, discriminator, one training step.

Written from SPEC.md §1.4-§1.5 (batch fields), §6.5 (uncertainty losses), §7 (base losses,
weights, discriminator), §8 (optimiser, step order) and §15b (handcov's decisions). The model
itself is `reference_model.HandCov`; this file adds what training needs:

* the losses, exactly as SPEC §6.5 / §7.1 with batch-SUM reductions, and the total objective
  per model type (`none` = the reference's `deterministic`, `diag`, `full`, `ours`,
  `ours_wo_linear`) with the SPEC §7.2 weights;
* the optional exact NLL of `ours` (SPEC §15b.2, `--ours-nll exact`):
  `½(log det Σ + rᵀΣ⁻¹r)`, `Σ = W·diag(e^s)·Wᵀ + 1e-6·I`, per sample, included iff all 21 3D
  confidences are exactly 1 (like the `full` NLL); it replaces the diagonal NLL term of `ours`;
* the HMR-style discriminator (SPEC §7.3, state-dict keys `discriminator.*` of SPEC §12) and
  its deterministic xavier-uniform / zero-bias initialisation;
* `train_step`: forward (in whatever dtype the model and batch are in; the fixtures use
  float64), total loss, autograd backward of every trained parameter, then the discriminator's
  own loss and gradients on (fake = detached predictions, real = the mocap batch), in the
  order of SPEC §8 (the generator loss's gradients on the discriminator are discarded, as the
  reference's `optimizer_d.zero_grad()` does);
* `finite_difference_check`: central differences of the float64 loss against autograd.

There is no drop path (the reference model has none: eval-style, deterministic) and no random
noise: the `ours` / `ours_wo_linear` sample loss uses the batch's `sample_eps` [B,N,63].

Run stand-alone (after make_train_fixtures.py wrote the batch) to print one step's losses and
the finite-difference check:

    python3 tests/reference/train_reference.py --type ours [--ours-nll exact]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections import OrderedDict

import numpy as np
import torch
import torch.nn as nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import reference_model as R  # noqa: E402

ROOT = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))

# SPEC §7.2 (experiment hamer_vit_transformer.yaml)
LOSS_WEIGHTS = {
    "KEYPOINTS_3D": 0.05,
    "KEYPOINTS_2D": 0.01,
    "GLOBAL_ORIENT": 0.001,
    "HAND_POSE": 0.001,
    "BETAS": 0.0005,
    "ADVERSARIAL": 0.0005,
    "KEYPOINTS_3D_NLL": 0.0005,
    "KEYPOINTS_3D_SAMPLE_MEAN": 0.0005,
    "UNCERTAINTY_REG": 0.0,
}
SAMPLE_NUM = 25                  # KEYPOINTS_3D_SAMPLE_NUM
NLL_EPS = 1e-6                   # Keypoint3DNLLLoss: exp(s) + 1e-6
EXACT_JITTER = 1e-6              # Σ = W diag(e^s) Wᵀ + 1e-6 I (exact `ours` NLL)
NUM_HAND_JOINTS = 15

# the scalar terms stored per step (0 where a term does not apply to the type)
LOSS_KEYS = ("loss", "loss_keypoints_2d", "loss_keypoints_3d", "loss_keypoints_3d_nll",
             "loss_sample_mean_keypoints_3d", "loss_global_orient", "loss_hand_pose",
             "loss_betas", "loss_adv")


# --------------------------------------------------------------------------------------------
# Geometry helpers
# --------------------------------------------------------------------------------------------

def aa_to_rotmat(theta: torch.Tensor) -> torch.Tensor:
    """HaMeR's `aa_to_rotmat` (via a quaternion), theta [N,3] -> [N,3,3]. The angle is
    `‖θ + 1e-8‖` (1e-8 added to every component); the axis is θ / angle (not re-normalised);
    the quaternion (cos(a/2), sin(a/2)·axis) is normalised inside `quat_to_rotmat`."""
    norm = torch.norm(theta + 1e-8, p=2, dim=1)
    angle = norm.unsqueeze(-1)
    normalized = theta / angle
    angle = angle * 0.5
    quat = torch.cat([torch.cos(angle), torch.sin(angle) * normalized], dim=1)
    quat = quat / quat.norm(p=2, dim=1, keepdim=True)
    w, x, y, z = quat[:, 0], quat[:, 1], quat[:, 2], quat[:, 3]
    w2, x2, y2, z2 = w * w, x * x, y * y, z * z
    wx, wy, wz = w * x, w * y, w * z
    xy, xz, yz = x * y, x * z, y * z
    return torch.stack([w2 + x2 - y2 - z2, 2 * xy - 2 * wz, 2 * wy + 2 * xz,
                        2 * wz + 2 * xy, w2 - x2 + y2 - z2, 2 * yz - 2 * wx,
                        2 * xz - 2 * wy, 2 * wx + 2 * yz, w2 - x2 - y2 + z2],
                       dim=1).view(-1, 3, 3)


# --------------------------------------------------------------------------------------------
# Discriminator (SPEC §7.3)
# --------------------------------------------------------------------------------------------

class Discriminator(nn.Module):
    """HMR-style discriminator. `state_dict()` keys are those of SPEC §12 without the
    `discriminator.` prefix. forward(hand_pose rotmats [B,15,3,3] (or anything reshaping to
    [-1,15,1,9]), betas [B,10]) -> [B,17] = [15 per-joint, 1 betas, 1 all-joints]."""

    def __init__(self, num_joints: int = NUM_HAND_JOINTS):
        super().__init__()
        self.num_joints = num_joints
        self.D_conv1 = nn.Conv2d(9, 32, kernel_size=1)
        self.D_conv2 = nn.Conv2d(32, 32, kernel_size=1)
        self.pose_out = nn.ModuleList([nn.Linear(32, 1) for _ in range(num_joints)])
        self.betas_fc1 = nn.Linear(10, 10)
        self.betas_fc2 = nn.Linear(10, 5)
        self.betas_out = nn.Linear(5, 1)
        self.D_alljoints_fc1 = nn.Linear(32 * num_joints, 1024)
        self.D_alljoints_fc2 = nn.Linear(1024, 1024)
        self.D_alljoints_out = nn.Linear(1024, 1)

    def forward(self, poses, betas):
        relu = torch.relu
        poses = poses.reshape(-1, self.num_joints, 1, 9)      # row-major 3x3 -> 9
        bn = poses.shape[0]
        poses = poses.permute(0, 3, 1, 2).contiguous()       # [B, 9, 15, 1]
        poses = relu(self.D_conv1(poses))
        poses = relu(self.D_conv2(poses))                     # [B, 32, 15, 1]
        poses_out = torch.cat([self.pose_out[i](poses[:, :, i, 0])
                               for i in range(self.num_joints)], dim=1)      # [B, 15]
        b = relu(self.betas_fc1(betas))
        b = relu(self.betas_fc2(b))
        betas_out = self.betas_out(b)                                        # [B, 1]
        flat = poses.reshape(bn, -1)                          # channel-major: c*15 + j
        a = relu(self.D_alljoints_fc1(flat))
        a = relu(self.D_alljoints_fc2(a))
        all_out = self.D_alljoints_out(a)                                    # [B, 1]
        return torch.cat([poses_out, betas_out, all_out], dim=1)             # [B, 17]


def random_discriminator_state_dict(seed: int) -> "OrderedDict[str, torch.Tensor]":
    """Deterministic initial discriminator weights, keys `discriminator.*` (f32): xavier-uniform
    weights `U(±√(6/(fan_in+fan_out)))` (conv 1×1: fan = channels), zero biases. Each tensor
    comes from its own numpy generator seeded by (seed, key)."""
    with torch.device("meta"):
        d = Discriminator()
    sd = OrderedDict()
    for k, v in d.state_dict().items():
        key = "discriminator." + k
        shape = tuple(v.shape)
        if k.endswith(".bias"):
            arr = np.zeros(shape, dtype=np.float32)
        else:
            rf = int(np.prod(shape[2:])) if len(shape) > 2 else 1
            fan_out, fan_in = shape[0] * rf, shape[1] * rf
            bound = math.sqrt(6.0 / (fan_in + fan_out))
            arr = R._uniform(R._rng(seed, key), shape, bound)
        sd[key] = torch.from_numpy(arr)
    return sd


def discriminator_from_state_dict(sd, dtype=torch.float64) -> Discriminator:
    d = Discriminator()
    d.load_state_dict({k[len("discriminator."):]: v for k, v in sd.items()
                       if k.startswith("discriminator.")}, strict=True)
    return d.to(dtype)


# --------------------------------------------------------------------------------------------
# Losses (SPEC §6.5, §7.1): every one returns a SUM over the batch
# --------------------------------------------------------------------------------------------

def keypoint_2d_loss(pred, gt):
    """L1 on normalised crop coords, weighted by the 2D conf: Σ_b Σ_j c_bj Σ_uv |p̂ − p|.
    pred [B,21,2], gt [B,21,3] (x, y, conf)."""
    conf = gt[:, :, -1:]
    return (conf * (pred - gt[:, :, :-1]).abs()).sum()


def keypoint_3d_loss(pred, gt, pelvis_id: int = 0):
    """Root-relative L1: joint 0 is subtracted from pred and GT separately (whatever joint 0's
    conf is); the root's own term is |0| = 0 and stays in the sum.
    pred [B,21,3], gt [B,21,4] (x, y, z, conf)."""
    pred = pred - pred[:, pelvis_id:pelvis_id + 1]
    g = gt[:, :, :-1] - gt[:, pelvis_id:pelvis_id + 1, :-1]
    conf = gt[:, :, -1:]
    return (conf * (pred - g).abs()).sum()


def parameter_loss(pred, gt, has):
    """Masked MSE: Σ_b has_b · Σ (pred − gt)². pred/gt [B, ...] flattened per sample."""
    B = pred.shape[0]
    return (has.to(pred.dtype).view(B, 1) * (pred.reshape(B, -1) - gt.reshape(B, -1)) ** 2).sum()


def nll_diag_loss(pred, gt, log_var):
    """Keypoint3DNLLLoss_wo_align: Σ_b Σ_j c_bj Σ_c ½(s + r²/(e^s + 1e-6)); no alignment."""
    B = pred.shape[0]
    s = log_var.reshape(B, R.NUM_KEYPOINTS, 3)
    conf = gt[:, :, -1:]
    r2 = (pred - gt[:, :, :-1]) ** 2
    return (conf * 0.5 * (s + r2 / (torch.exp(s) + NLL_EPS))).sum()


def full_sample_weight(gt):
    """w_b = 1 iff Σ_j c_bj == 21 (every joint has conf exactly 1), else 0."""
    return (gt[:, :, -1].sum(dim=1) == R.NUM_KEYPOINTS).to(gt.dtype)


def nll_full_loss(pred, gt, raw):
    """Keypoint3DFullNLLLoss_wo_align: nll_b = 2·Σ d_i + ‖rᵀL‖² (no ½), r = g − μ (63,
    joint-major), L built in the working dtype; L_NLLfull = Σ_b w_b·nll_b."""
    B = pred.shape[0]
    L = R.precision_factor_full(raw)                                   # [B,63,63]
    d = raw[:, :R.KP_DIM]
    r = (gt[:, :, :-1] - pred).reshape(B, R.KP_DIM)
    z = torch.einsum("bj,bjk->bk", r, L)                               # z_k = Σ_j r_j L_jk
    nll = 2.0 * d.sum(dim=1) + (z * z).sum(dim=1)
    return (full_sample_weight(gt) * nll).sum()


def ours_covariance(log_var, W, jitter=EXACT_JITTER):
    """Σ = W·diag(e^s)·Wᵀ + jitter·I, [B,63,63]."""
    S = torch.einsum("jd,bd,kd->bjk", W, torch.exp(log_var), W)
    return S + jitter * torch.eye(R.KP_DIM, dtype=S.dtype, device=S.device)


def nll_exact_ours_loss(pred, gt, log_var, W, jitter=EXACT_JITTER):
    """Exact Gaussian NLL of `ours` (SPEC §15b.2): Σ_b w_b·½(log det Σ_b + r_bᵀΣ_b⁻¹r_b),
    Σ = W diag(e^s) Wᵀ + 1e-6 I, r = g − μ, w_b as for `full` (all 21 conf == 1).
    Cholesky Σ = C·Cᵀ: log det Σ = 2Σ log C_ii, rᵀΣ⁻¹r = ‖C⁻¹r‖²."""
    B = pred.shape[0]
    Sigma = ours_covariance(log_var, W, jitter)
    C = torch.linalg.cholesky(Sigma)
    r = (gt[:, :, :-1] - pred).reshape(B, R.KP_DIM, 1)
    a = torch.linalg.solve_triangular(C, r, upper=False).squeeze(-1)
    logdet = 2.0 * torch.log(torch.diagonal(C, dim1=-2, dim2=-1)).sum(dim=1)
    nll = 0.5 * (logdet + (a * a).sum(dim=1))
    return (full_sample_weight(gt) * nll).sum()


def samples_ours(pred, log_var, eps, W=None):
    """y_n = μ + W(e^{s/2} ⊙ ε_n) (ours) or μ + e^{s/2} ⊙ ε_n (ours_wo_linear); [B,N,63]."""
    B = pred.shape[0]
    z = eps * torch.exp(0.5 * log_var).unsqueeze(1)                    # [B,N,63]
    if W is not None:
        z = z @ W.transpose(0, 1)                                      # (W z)_j = Σ_d W_jd z_d
    return pred.reshape(B, 1, R.KP_DIM) + z


def sample_mean_loss(samples, gt):
    """Keypoint3DSamplewiseMeanLoss_wo_align(l2): Σ_b Σ_j c_bj Σ_c (1/N) Σ_n (y − g)²."""
    B, N = samples.shape[:2]
    y = samples.reshape(B, N, R.NUM_KEYPOINTS, 3)
    conf = gt[:, :, -1:]
    se = ((y - gt[:, None, :, :-1]) ** 2).mean(dim=1)                  # [B,21,3]
    return (conf * se).sum()


def uncertainty_reg_loss(log_var):
    """UncertaintyRegLoss: mean(exp(−s)) (weight 0; ours only)."""
    return torch.exp(-log_var).mean()


def adversarial_generator_loss(disc, hand_pose, betas):
    """L_adv = Σ_b Σ_o (D(hand_pose rotmats, betas)_bo − 1)² / B."""
    B = hand_pose.shape[0]
    out = disc(hand_pose.reshape(B, -1), betas.reshape(B, -1))
    return ((out - 1.0) ** 2).sum() / B


def discriminator_loss(disc, fake_hand_pose, fake_betas, mocap_hand_pose, mocap_betas):
    """L_D = Σ D(fake)²/B + Σ (D(real) − 1)²/B, both divided by the IMAGE batch size B (the
    mocap batch M may differ: 128 vs 64 in the reference). Real axis-angle -> rotmats with
    `aa_to_rotmat`. Returns (L_D, D(fake), D(real))."""
    B = fake_hand_pose.shape[0]
    M = mocap_hand_pose.shape[0]
    real_rot = aa_to_rotmat(mocap_hand_pose.reshape(-1, 3)).view(M, NUM_HAND_JOINTS, 3, 3)
    out_fake = disc(fake_hand_pose.detach().reshape(B, -1), fake_betas.detach())
    out_real = disc(real_rot, mocap_betas)
    loss = (out_fake ** 2).sum() / B + ((out_real - 1.0) ** 2).sum() / B
    return loss, out_fake, out_real


# --------------------------------------------------------------------------------------------
# Total objective (SPEC §7.2)
# --------------------------------------------------------------------------------------------

def compute_losses(kind, out, batch, disc, model=None, ours_nll="reference"):
    """Total generator loss and its (unweighted) terms for model type `kind`.

    `out` is HandCov.forward's dict; `batch` holds the fields of make_train_fixtures.py (same
    dtype as the model). For `ours` the exact NLL is always computed and returned as
    `loss_keypoints_3d_nll_exact`; `ours_nll` selects which NLL enters the total."""
    w = LOSS_WEIGHTS
    B = out["pred_keypoints_3d"].shape[0]
    mu = out["pred_keypoints_3d"]
    gt3 = batch["keypoints_3d"]
    zero = mu.new_zeros(())
    t = OrderedDict((k, zero) for k in LOSS_KEYS)
    t["loss_keypoints_2d"] = keypoint_2d_loss(out["pred_keypoints_2d"], batch["keypoints_2d"])
    t["loss_keypoints_3d"] = keypoint_3d_loss(mu, gt3)
    go_gt = aa_to_rotmat(batch["mano_params.global_orient"].reshape(-1, 3)).view(B, -1, 3, 3)
    hp_gt = aa_to_rotmat(batch["mano_params.hand_pose"].reshape(-1, 3)).view(B, -1, 3, 3)
    t["loss_global_orient"] = parameter_loss(out["global_orient"], go_gt,
                                             batch["has_mano_params.global_orient"])
    t["loss_hand_pose"] = parameter_loss(out["hand_pose"], hp_gt,
                                         batch["has_mano_params.hand_pose"])
    t["loss_betas"] = parameter_loss(out["betas"], batch["mano_params.betas"],
                                     batch["has_mano_params.betas"])
    t["loss_adv"] = adversarial_generator_loss(disc, out["hand_pose"], out["betas"])

    total = (w["KEYPOINTS_3D"] * t["loss_keypoints_3d"] + w["KEYPOINTS_2D"] * t["loss_keypoints_2d"]
             + w["GLOBAL_ORIENT"] * t["loss_global_orient"] + w["HAND_POSE"] * t["loss_hand_pose"]
             + w["BETAS"] * t["loss_betas"] + w["ADVERSARIAL"] * t["loss_adv"])

    raw = out.get("uncertainty_raw")
    if kind == "diag":
        t["loss_keypoints_3d_nll"] = nll_diag_loss(mu, gt3, raw)
        total = total + w["KEYPOINTS_3D_NLL"] * t["loss_keypoints_3d_nll"]
    elif kind == "full":
        t["loss_keypoints_3d_nll"] = nll_full_loss(mu, gt3, raw)
        total = total + w["KEYPOINTS_3D_NLL"] * t["loss_keypoints_3d_nll"]
    elif kind in ("ours", "ours_wo_linear"):
        W = model.out_layer_keypoints_3d.weight if kind == "ours" else None
        t["loss_keypoints_3d_nll"] = nll_diag_loss(mu, gt3, raw)
        samples = samples_ours(mu, raw, batch["sample_eps"], W)
        t["loss_sample_mean_keypoints_3d"] = sample_mean_loss(samples, gt3)
        if kind == "ours":
            t["loss_keypoints_3d_nll_exact"] = nll_exact_ours_loss(mu, gt3, raw, W)
            nll = t["loss_keypoints_3d_nll_exact"] if ours_nll == "exact" else t["loss_keypoints_3d_nll"]
            total = total + w["UNCERTAINTY_REG"] * uncertainty_reg_loss(raw)   # exactly 0
        else:
            nll = t["loss_keypoints_3d_nll"]
        total = (total + w["KEYPOINTS_3D_NLL"] * nll
                 + w["KEYPOINTS_3D_SAMPLE_MEAN"] * t["loss_sample_mean_keypoints_3d"])
    elif kind != "none":
        raise ValueError(kind)
    if ours_nll not in ("reference", "exact"):
        raise ValueError(ours_nll)
    t["loss"] = total
    return total, t


# --------------------------------------------------------------------------------------------
# One training step
# --------------------------------------------------------------------------------------------

GRAD_OUT_KEYS = ("backbone_features", "pose6d", "betas", "pred_cam", "pred_keypoints_3d",
                 "uncertainty_raw")
OUT_KEYS = ("pose6d", "betas", "pred_cam", "pred_keypoints_3d", "pred_keypoints_2d",
            "hand_pose", "uncertainty_raw")


def batch_to(batch, dtype):
    return {k: v.to(dtype) for k, v in batch.items()}


def train_step(model, disc, batch, ours_nll="reference"):
    """Forward, total loss, backward; then the discriminator loss and backward.

    Returns a dict: `losses` (float terms incl. `disc_loss`), `grads` {param name: grad}
    (every nn.Parameter of the model: the trained set), `grad_out` {output: ∂loss/∂output},
    `out` (detached outputs), `disc_grads` {`discriminator.*`: ∂(ADVERSARIAL·L_D)/∂θ},
    `disc_out_fake`, `disc_out_real`. Gradients are left in `.grad` (model: generator
    objective; discriminator: ADVERSARIAL·L_D) for an optimiser to use."""
    kind = model.kind
    model.zero_grad(set_to_none=True)
    disc.zero_grad(set_to_none=True)
    out = model(batch["img"])
    for k in GRAD_OUT_KEYS:
        if k in out:
            out[k].retain_grad()
    total, terms = compute_losses(kind, out, batch, disc, model, ours_nll)
    if not torch.isfinite(total):
        raise FloatingPointError(f"{kind}: non-finite total loss {total}")
    total.backward()
    grads = OrderedDict((n, p.grad.detach().clone()) for n, p in model.named_parameters())
    grad_out = OrderedDict((k, out[k].grad.detach().clone()) for k in GRAD_OUT_KEYS if k in out)
    outs = OrderedDict((k, out[k].detach().clone()) for k in OUT_KEYS if k in out)

    # discriminator step (SPEC §7.3/§8): zero_grad discards the generator loss's D gradients
    disc.zero_grad(set_to_none=True)
    ld, of, orl = discriminator_loss(disc, out["hand_pose"], out["betas"],
                                     batch["mocap.hand_pose"], batch["mocap.betas"])
    (LOSS_WEIGHTS["ADVERSARIAL"] * ld).backward()
    disc_grads = OrderedDict(("discriminator." + n, p.grad.detach().clone())
                             for n, p in disc.named_parameters())
    losses = OrderedDict((k, v.item()) for k, v in terms.items())
    losses["disc_loss"] = ld.item()
    return dict(losses=losses, grads=grads, grad_out=grad_out, out=outs,
                disc_grads=disc_grads, disc_out_fake=of.detach(), disc_out_real=orl.detach(),
                fake_hand_pose=out["hand_pose"].detach(), fake_betas=out["betas"].detach())


def generator_loss_only(model, disc, batch, ours_nll="reference"):
    with torch.no_grad():
        out = model(batch["img"])
        total, _ = compute_losses(model.kind, out, batch, disc, model, ours_nll)
    return float(total)


# --------------------------------------------------------------------------------------------
# Finite differences
# --------------------------------------------------------------------------------------------

def _pick_entries(g: torch.Tensor, k: int):
    """Flat indices of the k largest |g| entries (ties broken by index)."""
    flat = g.reshape(-1).abs()
    k = min(k, flat.numel())
    return torch.topk(flat, k).indices.tolist()


def _central_difference(flat, i, h, f):
    """Fourth-order central difference (8(f(x+δ) − f(x−δ)) − (f(x+2δ) − f(x−2δ))) / 12δ,
    δ = h·max(1, |x|), of f() with respect to flat[i] (restored afterwards)."""
    x0 = flat[i].item()
    step = h * max(1.0, abs(x0))
    vals = {}
    for m in (1, -1, 2, -2):
        flat[i] = x0 + m * step
        vals[m] = f()
    flat[i] = x0
    return (8.0 * (vals[1] - vals[-1]) - (vals[2] - vals[-2])) / (12.0 * step)


def finite_difference_check(model, disc, batch, grads, names, ours_nll="reference", per=2,
                            h=1e-5):
    """Fourth-order central differences (f64) of the generator loss at the `per` largest-|grad| entries of
    each parameter in `names`; returns a list of (name, index, autograd, fd, rel err)."""
    params = dict(model.named_parameters())
    rows = []
    for n in names:
        p = params[n]
        for i in _pick_entries(grads[n], per):
            fd = _central_difference(p.data.view(-1), i, h,
                                     lambda: generator_loss_only(model, disc, batch, ours_nll))
            ad = grads[n].reshape(-1)[i].item()
            rel = abs(fd - ad) / max(abs(ad), abs(fd), 1e-300)
            rows.append((n, i, ad, fd, rel))
    return rows


def disc_finite_difference_check(disc, fake_hp, fake_b, batch, disc_grads, names, per=2, h=1e-5):
    params = dict(disc.named_parameters())
    rows = []

    def f():
        with torch.no_grad():
            ld, _, _ = discriminator_loss(disc, fake_hp, fake_b, batch["mocap.hand_pose"],
                                          batch["mocap.betas"])
        return LOSS_WEIGHTS["ADVERSARIAL"] * float(ld)

    for n in names:
        p = params[n[len("discriminator."):]]
        for i in _pick_entries(disc_grads[n], per):
            fd = _central_difference(p.data.view(-1), i, h, f)
            ad = disc_grads[n].reshape(-1)[i].item()
            rows.append((n, i, ad, fd, abs(fd - ad) / max(abs(ad), abs(fd), 1e-300)))
    return rows


def fd_param_names(kind):
    names = ["backbone.patch_embed.proj.weight", "backbone.pos_embed",
             "backbone.blocks.0.attn.qkv.weight", "backbone.blocks.3.mlp.fc2.bias",
             "backbone.last_norm.weight",
             "mano_head.transformer.to_token_embedding.bias",
             "mano_head.transformer.transformer.layers.1.1.fn.to_kv.weight",
             "mano_head.decpose.weight", "mano_head.decshape.bias", "mano_head.deccam.weight"]
    if kind != "none":
        names.append("uncertainty_head.transformer.transformer.layers.0.2.fn.net.0.weight")
    names += {"none": [], "diag": ["uncertainty_head.dec3dkeypoint.0.weight"],
              "full": ["uncertainty_head.dec3dkeypoint_diag.bias",
                       "uncertainty_head.dec3dkeypoint_cov.weight"],
              "ours": ["uncertainty_head.dec3dkeypoint.bias", "out_layer_keypoints_3d.weight"],
              "ours_wo_linear": ["uncertainty_head.dec3dkeypoint.weight"]}[kind]
    return names


DISC_FD_NAMES = ["discriminator.D_conv1.weight", "discriminator.pose_out.3.weight",
                 "discriminator.betas_fc1.weight", "discriminator.D_alljoints_fc2.weight",
                 "discriminator.D_alljoints_out.bias"]


# --------------------------------------------------------------------------------------------
# Loading the fixtures (used by the CLI below and by make_train_fixtures.py)
# --------------------------------------------------------------------------------------------

def needed_by(kind: str, name: str) -> bool:
    """Mirror of tests/common/mod.rs `needed_by`: the weight keys a type's Rust test loads."""
    if name.startswith(("backbone.", "mano_head.", "mano.")):
        return True
    if kind == "none":
        return False
    if name.startswith(("uncertainty_head.transformer.", "uncertainty_head.init_")):
        return True
    if kind == "diag":
        return name.startswith("uncertainty_head.dec3dkeypoint.0.")
    if kind == "full":
        return name.startswith(("uncertainty_head.dec3dkeypoint_cov.",
                                "uncertainty_head.dec3dkeypoint_diag."))
    ours_readout = name.startswith("uncertainty_head.dec3dkeypoint.") and ".0." not in name
    if kind == "ours":
        return ours_readout or name == "out_layer_keypoints_3d.weight"
    if kind == "ours_wo_linear":
        return ours_readout
    raise ValueError(kind)


def load_model(config, sd, kind, dtype=torch.float64):
    """HandCov for `kind` from the subset of `sd` selected like the Rust tests, in `dtype`."""
    cfg = dict(config, uncertainty=kind)
    subset = {k: v for k, v in sd.items() if needed_by(kind, k)}
    model = R.model_from_state_dict(cfg, subset)
    assert set(model.state_dict().keys()) == set(subset.keys()), kind
    return model.to(dtype).eval()


def main():
    from safetensors.torch import load_file
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--type", default="ours", choices=R.UNCERTAINTY_TYPES)
    ap.add_argument("--ours-nll", default="reference", choices=("reference", "exact"))
    ap.add_argument("--fixtures", default=os.path.join(ROOT, "tests", "fixtures"))
    ap.add_argument("--per", type=int, default=2, help="FD entries per checked parameter")
    ap.add_argument("--h", type=float, default=1e-5, help="FD step, relative to max(1, |θ|)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    fx = args.fixtures
    with open(os.path.join(fx, "tiny_config.json")) as f:
        config = json.load(f)
    sd = load_file(os.path.join(fx, "tiny_weights.safetensors"))
    batch = batch_to(load_file(os.path.join(fx, "train_tiny_batch.safetensors")), torch.float64)
    dsd = load_file(os.path.join(fx, "train_tiny_discriminator.safetensors"))
    model = load_model(config, sd, args.type)
    disc = discriminator_from_state_dict(dsd)
    res = train_step(model, disc, batch, args.ours_nll)
    for k, v in res["losses"].items():
        print(f"  {k:34s} {v:.10e}")
    rows = finite_difference_check(model, disc, batch, res["grads"], fd_param_names(args.type),
                                   args.ours_nll, per=args.per, h=args.h)
    rows += disc_finite_difference_check(disc, res["fake_hand_pose"], res["fake_betas"], batch,
                                         res["disc_grads"], DISC_FD_NAMES, per=args.per, h=args.h)
    for n, i, ad, fd, rel in rows:
        print(f"  {n:62s} [{i:7d}] autograd {ad:+.9e} fd {fd:+.9e} rel {rel:.2e}")
    print(f"max relative error (autograd vs central differences): {max(r[4] for r in rows):.3e}")


if __name__ == "__main__":
    main()
