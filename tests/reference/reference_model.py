"""PyTorch reference implementation of the handcov model (HaMeR + Hand-Uncertainty heads).

Written from the project specification (SPEC.md) (sections 2-6 and 12); it is the ground truth that the
Rust engine is tested against (see make_fixtures.py) and the CPU speed baseline
(see bench_cpu_torch.py).

The model is parameterised by a config dict with the JSON layout

    {"vit": {"img_size": [H, W], "patch_size": P, "patch_padding": p, "embed_dim": C,
             "depth": n, "num_heads": h, "mlp_ratio": 4.0, "qkv_bias": true, "ln_eps": 1e-6},
     "decoder": {"dim": D, "depth": L, "heads": k, "dim_head": e, "mlp_dim": M,
                 "context_dim": C, "ln_eps": 1e-5},
     "uncertainty": "none" | "diag" | "full" | "ours" | "ours_wo_linear",
     "image_size": S, "focal_length": f}

and every `state_dict()` key is spelled exactly as in SPEC §2.3 / §3.5 / §5.4 / §12.

Besides the model this file holds the deterministic random-weight generator shared by
make_fixtures.py and bench_cpu_torch.py (`random_state_dict`, `random_mano`).
"""

from __future__ import annotations

import math
import zlib
from collections import OrderedDict

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

UNCERTAINTY_TYPES = ("none", "diag", "full", "ours", "ours_wo_linear")

NUM_MANO_JOINTS = 16            # wrist + 15 hand joints
NUM_BETAS = 10
NUM_KEYPOINTS = 21              # OpenPose order after joint_map
KP_DIM = 3 * NUM_KEYPOINTS      # 63 = dimension of the modelled random vector
N_OFFDIAG = KP_DIM * (KP_DIM - 1) // 2   # 1953 strictly-lower entries of L (full)
NPOSE = 6 * NUM_MANO_JOINTS     # 96

MANO_PARENTS = [-1, 0, 1, 2, 0, 4, 5, 0, 7, 8, 0, 10, 11, 0, 13, 14]
# fingertip vertices appended as joints 16..20: thumb, index, middle, ring, pinky (SPEC §5.4)
MANO_EXTRA_JOINTS_IDXS = [744, 320, 443, 554, 671]
# 21 -> OpenPose/FreiHAND order (SPEC §5.4)
MANO_JOINT_MAP = [0, 13, 14, 15, 16, 1, 2, 3, 17, 4, 5, 6, 18, 10, 11, 12, 19, 7, 8, 9, 20]

TINY_CONFIG = {
    "vit": {"img_size": [128, 96], "patch_size": 16, "patch_padding": 2, "embed_dim": 128,
            "depth": 4, "num_heads": 4, "mlp_ratio": 4.0, "qkv_bias": True, "ln_eps": 1e-6},
    "decoder": {"dim": 128, "depth": 2, "heads": 4, "dim_head": 32, "mlp_dim": 256,
                "context_dim": 128, "ln_eps": 1e-5},
    "uncertainty": "ours",
    "image_size": 128,
    "focal_length": 5000.0,
}

HAMER_CONFIG = {
    "vit": {"img_size": [256, 192], "patch_size": 16, "patch_padding": 2, "embed_dim": 1280,
            "depth": 32, "num_heads": 16, "mlp_ratio": 4.0, "qkv_bias": True, "ln_eps": 1e-6},
    "decoder": {"dim": 1024, "depth": 6, "heads": 8, "dim_head": 64, "mlp_dim": 1024,
                "context_dim": 1280, "ln_eps": 1e-5},
    "uncertainty": "none",
    "image_size": 256,
    "focal_length": 5000.0,
}


def vit_grid(vit_cfg: dict) -> tuple[int, int]:
    """Token grid (rows, cols) of the patch embedding: ((H+2p-P)//P+1, (W+2p-P)//P+1)."""
    H, W = vit_cfg["img_size"]
    P, p = vit_cfg["patch_size"], vit_cfg["patch_padding"]
    return (H + 2 * p - P) // P + 1, (W + 2 * p - P) // P + 1


# --------------------------------------------------------------------------------------------
# ViT backbone (SPEC §2)
# --------------------------------------------------------------------------------------------

class PatchEmbed(nn.Module):
    def __init__(self, embed_dim: int, patch: int, padding: int):
        super().__init__()
        self.proj = nn.Conv2d(3, embed_dim, kernel_size=patch, stride=patch, padding=padding)

    def forward(self, x):
        return self.proj(x)                                   # [B, C, rows, cols]


class VitAttention(nn.Module):
    def __init__(self, dim: int, heads: int, qkv_bias: bool):
        super().__init__()
        assert dim % heads == 0
        self.heads = heads
        self.head_dim = dim // heads
        self.scale = self.head_dim ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        B, N, C = x.shape
        # feature index f = which*C + head*head_dim + d
        qkv = self.qkv(x).reshape(B, N, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]                      # [B, h, N, hd]
        attn = torch.softmax((q * self.scale) @ k.transpose(-2, -1), dim=-1)
        out = (attn @ v).transpose(1, 2).reshape(B, N, C)     # head-major concat
        return self.proj(out)


class VitMlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x)))                  # exact (erf) GELU


class VitBlock(nn.Module):
    def __init__(self, dim, heads, mlp_ratio, qkv_bias, eps):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = VitAttention(dim, heads, qkv_bias)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = VitMlp(dim, int(dim * mlp_ratio))

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        x = x + self.mlp(self.norm2(x))
        return x


class ViT(nn.Module):
    def __init__(self, cfg: dict):
        super().__init__()
        C = cfg["embed_dim"]
        self.rows, self.cols = vit_grid(cfg)
        self.patch_embed = PatchEmbed(C, cfg["patch_size"], cfg["patch_padding"])
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.rows * self.cols, C))
        self.blocks = nn.ModuleList([
            VitBlock(C, cfg["num_heads"], cfg["mlp_ratio"], cfg["qkv_bias"], cfg["ln_eps"])
            for _ in range(cfg["depth"])])
        self.last_norm = nn.LayerNorm(C, eps=cfg["ln_eps"])

    def forward(self, x):
        x = self.patch_embed(x)                               # [B, C, rows, cols]
        B, C, Hp, Wp = x.shape
        assert (Hp, Wp) == (self.rows, self.cols)
        x = x.flatten(2).transpose(1, 2)                      # tokens t = cols*i + j
        x = x + self.pos_embed[:, 1:] + self.pos_embed[:, :1]
        for blk in self.blocks:
            x = blk(x)
        x = self.last_norm(x)
        return x.permute(0, 2, 1).reshape(B, C, Hp, Wp)


# --------------------------------------------------------------------------------------------
# Transformer decoder (SPEC §3.2), used by the MANO head and the uncertainty head
# --------------------------------------------------------------------------------------------

class PreNorm(nn.Module):
    def __init__(self, dim, fn, eps):
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=eps)
        self.fn = fn

    def forward(self, x, *args):
        return self.fn(self.norm(x), *args)


def _split_heads(t, heads):                                   # b n (h d) -> b h n d
    B, N, HD = t.shape
    return t.reshape(B, N, heads, HD // heads).transpose(1, 2)


def _merge_heads(t):                                          # b h n d -> b n (h d)
    B, H, N, D = t.shape
    return t.transpose(1, 2).reshape(B, N, H * D)


class SelfAttention(nn.Module):
    def __init__(self, dim, heads, dim_head):
        super().__init__()
        inner = heads * dim_head
        self.heads = heads
        self.scale = dim_head ** -0.5
        self.to_qkv = nn.Linear(dim, 3 * inner, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner, dim), nn.Dropout(0.0))

    def forward(self, x):
        q, k, v = (_split_heads(t, self.heads) for t in self.to_qkv(x).chunk(3, dim=-1))
        attn = torch.softmax((q @ k.transpose(-2, -1)) * self.scale, dim=-1)
        return self.to_out(_merge_heads(attn @ v))


class CrossAttention(nn.Module):
    def __init__(self, dim, context_dim, heads, dim_head):
        super().__init__()
        inner = heads * dim_head
        self.heads = heads
        self.scale = dim_head ** -0.5
        self.to_kv = nn.Linear(context_dim, 2 * inner, bias=False)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner, dim), nn.Dropout(0.0))

    def forward(self, x, context):
        k, v = (_split_heads(t, self.heads) for t in self.to_kv(context).chunk(2, dim=-1))
        q = _split_heads(self.to_q(x), self.heads)
        attn = torch.softmax((q @ k.transpose(-2, -1)) * self.scale, dim=-1)
        return self.to_out(_merge_heads(attn @ v))


class FeedForward(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        # indices 0 and 3 carry weights (state-dict keys net.0.*, net.3.*)
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(0.0),
                                 nn.Linear(hidden, dim), nn.Dropout(0.0))

    def forward(self, x):
        return self.net(x)


class DecoderLayers(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        dim, eps = cfg["dim"], cfg["ln_eps"]
        self.layers = nn.ModuleList()
        for _ in range(cfg["depth"]):
            self.layers.append(nn.ModuleList([
                PreNorm(dim, SelfAttention(dim, cfg["heads"], cfg["dim_head"]), eps),
                PreNorm(dim, CrossAttention(dim, cfg["context_dim"], cfg["heads"],
                                            cfg["dim_head"]), eps),
                PreNorm(dim, FeedForward(dim, cfg["mlp_dim"]), eps),
            ]))

    def forward(self, x, context):
        for self_attn, cross_attn, ff in self.layers:
            x = self_attn(x) + x            # real attention over the single token
            x = cross_attn(x, context) + x  # context is NOT normalised
            x = ff(x) + x
        return x                            # no final LayerNorm


class TransformerDecoder(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.to_token_embedding = nn.Linear(1, cfg["dim"])
        self.pos_embedding = nn.Parameter(torch.zeros(1, 1, cfg["dim"]))
        self.transformer = DecoderLayers(cfg)

    def forward(self, context):
        B = context.shape[0]
        token = torch.zeros(B, 1, 1, dtype=context.dtype, device=context.device)
        x = self.to_token_embedding(token) + self.pos_embedding[:, :1]
        return self.transformer(x, context)                   # [B, 1, dim]


def _features_to_context(feats):                              # b c h w -> b (h w) c
    return feats.flatten(2).transpose(1, 2)


class _MeanParams(nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("init_hand_pose", torch.zeros(1, NPOSE))
        self.register_buffer("init_betas", torch.zeros(1, NUM_BETAS))
        self.register_buffer("init_cam", torch.zeros(1, 3))


class ManoHead(_MeanParams):
    def __init__(self, dec_cfg):
        super().__init__()
        self.transformer = TransformerDecoder(dec_cfg)
        D = dec_cfg["dim"]
        self.decpose = nn.Linear(D, NPOSE)
        self.decshape = nn.Linear(D, NUM_BETAS)
        self.deccam = nn.Linear(D, 3)

    def forward(self, feats):
        tok = self.transformer(_features_to_context(feats)).squeeze(1)
        pose6d = self.decpose(tok) + self.init_hand_pose
        betas = self.decshape(tok) + self.init_betas
        cam = self.deccam(tok) + self.init_cam
        return pose6d, betas, cam


class UncertaintyHead(_MeanParams):
    """Separate decoder + readout. Returns the raw readout (s [B,63], or [d | offdiag] [B,2016])."""

    def __init__(self, dec_cfg, kind):
        super().__init__()
        assert kind in ("diag", "full", "ours", "ours_wo_linear")
        self.kind = kind
        self.transformer = TransformerDecoder(dec_cfg)
        D = dec_cfg["dim"]
        if kind == "diag":
            self.dec3dkeypoint = nn.Sequential(nn.Linear(D, KP_DIM))
        elif kind == "full":
            self.dec3dkeypoint_cov = nn.Linear(D, N_OFFDIAG)
            self.dec3dkeypoint_diag = nn.Linear(D, KP_DIM)
        else:
            self.dec3dkeypoint = nn.Linear(D, KP_DIM)

    def forward(self, feats):
        tok = self.transformer(_features_to_context(feats)).squeeze(1)
        if self.kind == "full":
            return torch.cat([self.dec3dkeypoint_diag(tok), self.dec3dkeypoint_cov(tok)], dim=-1)
        return self.dec3dkeypoint(tok)


# --------------------------------------------------------------------------------------------
# 6D -> rotation matrix (SPEC §3.3), camera (SPEC §4)
# --------------------------------------------------------------------------------------------

def rot6d_to_rotmat(x):
    """x [..., 6] = (a1, a2) -> R [..., 3, 3] with columns (b1, b2, b1 x b2)."""
    a1, a2 = x[..., 0:3], x[..., 3:6]
    b1 = a1 / torch.clamp(a1.norm(dim=-1, keepdim=True), min=1e-12)
    u = a2 - (b1 * a2).sum(dim=-1, keepdim=True) * b1
    b2 = u / torch.clamp(u.norm(dim=-1, keepdim=True), min=1e-12)
    b3 = torch.cross(b1, b2, dim=-1)
    return torch.stack([b1, b2, b3], dim=-1)


def perspective_projection(points, translation, focal):
    X = points + translation.unsqueeze(1)
    return focal * X[..., :2] / X[..., 2:3]


# --------------------------------------------------------------------------------------------
# MANO layer (SPEC §5), buffers only
# --------------------------------------------------------------------------------------------

class ManoLayer(nn.Module):
    def __init__(self, num_verts=778, num_faces=1538):
        super().__init__()
        V, J = num_verts, NUM_MANO_JOINTS
        self.register_buffer("v_template", torch.zeros(V, 3))
        self.register_buffer("shapedirs", torch.zeros(V, 3, NUM_BETAS))
        self.register_buffer("posedirs", torch.zeros(9 * (J - 1), 3 * V))
        self.register_buffer("J_regressor", torch.zeros(J, V))
        self.register_buffer("lbs_weights", torch.zeros(V, J))
        self.register_buffer("parents", torch.tensor(MANO_PARENTS, dtype=torch.int64))
        self.register_buffer("faces_tensor", torch.zeros(num_faces, 3, dtype=torch.int64))
        self.register_buffer("extra_joints_idxs",
                             torch.tensor(MANO_EXTRA_JOINTS_IDXS, dtype=torch.int64))
        self.register_buffer("joint_map", torch.tensor(MANO_JOINT_MAP, dtype=torch.int64))

    def forward(self, global_orient, hand_pose, betas):
        """global_orient [B,1,3,3], hand_pose [B,15,3,3], betas [B,10] -> (joints21, verts)."""
        B = betas.shape[0]
        V = self.v_template.shape[0]
        J = NUM_MANO_JOINTS
        dt = self.v_template.dtype
        parents = self.parents.tolist()

        v_shaped = self.v_template + torch.einsum("bl,vcl->bvc", betas, self.shapedirs)
        Jrest = torch.einsum("jv,bvc->bjc", self.J_regressor, v_shaped)        # [B,16,3]

        R = torch.cat([global_orient, hand_pose], dim=1)                      # [B,16,3,3]
        eye = torch.eye(3, dtype=dt, device=R.device)
        pose_feature = (R[:, 1:] - eye).reshape(B, 9 * (J - 1))
        v_posed = v_shaped + (pose_feature @ self.posedirs).reshape(B, V, 3)

        # kinematic chain
        rel = Jrest.clone()
        rel[:, 1:] = Jrest[:, 1:] - Jrest[:, parents[1:]]
        bottom = torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=dt, device=R.device).expand(B, J, 1, 4)
        T = torch.cat([torch.cat([R, rel.unsqueeze(-1)], dim=-1), bottom], dim=-2)  # [B,16,4,4]
        G = [T[:, 0]]
        for j in range(1, J):
            G.append(G[parents[j]] @ T[:, j])
        G = torch.stack(G, dim=1)                                             # [B,16,4,4]
        posed_joints = G[:, :, :3, 3]
        # A_j = [G_R | G_t - G_R J_j]
        A = G.clone()
        A[:, :, :3, 3] = G[:, :, :3, 3] - (G[:, :, :3, :3] @ Jrest.unsqueeze(-1)).squeeze(-1)

        Tv = torch.einsum("vj,bjmn->bvmn", self.lbs_weights, A)               # [B,V,4,4]
        verts = (Tv[:, :, :3, :3] @ v_posed.unsqueeze(-1)).squeeze(-1) + Tv[:, :, :3, 3]

        joints = torch.cat([posed_joints, verts[:, self.extra_joints_idxs]], dim=1)  # [B,21,3]
        joints = joints[:, self.joint_map]
        return joints, verts


# --------------------------------------------------------------------------------------------
# Full model
# --------------------------------------------------------------------------------------------

def covariance_from_raw(kind, raw, W=None):
    """Covariance Sigma [B,63,63] of the 63-vector of 3D keypoints from the head readout."""
    if kind in ("diag", "ours_wo_linear"):
        return torch.diag_embed(torch.exp(raw))
    if kind == "ours":
        return torch.einsum("jd,bd,kd->bjk", W, torch.exp(raw), W)
    if kind == "full":
        B = raw.shape[0]
        d, off = raw[:, :KP_DIM], raw[:, KP_DIM:]
        r, c = np.tril_indices(KP_DIM, -1)                    # row-major (1,0),(2,0),(2,1),...
        L = torch.zeros(B, KP_DIM, KP_DIM, dtype=raw.dtype, device=raw.device)
        L[:, torch.from_numpy(r), torch.from_numpy(c)] = off
        idx = torch.arange(KP_DIM)
        L[:, idx, idx] = torch.exp(-d)
        return torch.linalg.inv(L @ L.transpose(-2, -1))
    raise ValueError(kind)


def precision_factor_full(raw):
    """L of the `full` parameterisation (for diagnostics: condition numbers)."""
    B = raw.shape[0]
    d, off = raw[:, :KP_DIM], raw[:, KP_DIM:]
    r, c = np.tril_indices(KP_DIM, -1)
    L = torch.zeros(B, KP_DIM, KP_DIM, dtype=raw.dtype)
    L[:, torch.from_numpy(r), torch.from_numpy(c)] = off
    idx = torch.arange(KP_DIM)
    L[:, idx, idx] = torch.exp(-d)
    return L


class HandCov(nn.Module):
    def __init__(self, config: dict, num_verts: int = 778, num_faces: int = 1538):
        super().__init__()
        self.config = config
        self.kind = config["uncertainty"]
        assert self.kind in UNCERTAINTY_TYPES, self.kind
        assert config["decoder"]["context_dim"] == config["vit"]["embed_dim"]
        self.backbone = ViT(config["vit"])
        self.mano_head = ManoHead(config["decoder"])
        if self.kind != "none":
            self.uncertainty_head = UncertaintyHead(config["decoder"], self.kind)
        if self.kind == "ours":
            self.out_layer_keypoints_3d = nn.Linear(KP_DIM, KP_DIM, bias=False)
        self.mano = ManoLayer(num_verts, num_faces)

    def vit_input(self, img):
        """Central img_size[1] columns of the square crop (256/192: columns 32..223)."""
        H, W = self.config["vit"]["img_size"]
        S = img.shape[-1]
        assert img.shape[-2] == H, "crop height must equal vit img_size[0]"
        c0 = (S - W) // 2
        return img[:, :, :, c0:c0 + W]

    def forward(self, img):
        cfg = self.config
        B = img.shape[0]
        feats = self.backbone(self.vit_input(img))                          # [B,C,rows,cols]
        pose6d, betas, cam = self.mano_head(feats)
        rotmats = rot6d_to_rotmat(pose6d.reshape(B, NUM_MANO_JOINTS, 6))    # [B,16,3,3]
        global_orient, hand_pose = rotmats[:, :1], rotmats[:, 1:]
        kp3d, verts = self.mano(global_orient, hand_pose, betas)

        f, S = cfg["focal_length"], cfg["image_size"]
        cam_t = torch.stack([cam[:, 1], cam[:, 2], 2.0 * f / (S * cam[:, 0] + 1e-9)], dim=-1)
        kp2d = perspective_projection(kp3d, cam_t, f / S)

        out = OrderedDict(
            backbone_features=feats, pose6d=pose6d, global_orient=global_orient,
            hand_pose=hand_pose, betas=betas, pred_cam=cam, pred_cam_t=cam_t,
            pred_keypoints_3d=kp3d, pred_keypoints_2d=kp2d, pred_vertices=verts)
        if self.kind != "none":
            raw = self.uncertainty_head(feats)
            W = self.out_layer_keypoints_3d.weight if self.kind == "ours" else None
            cov = covariance_from_raw(self.kind, raw, W)
            diag = torch.diagonal(cov, dim1=-2, dim2=-1).reshape(B, NUM_KEYPOINTS, 3)
            out["uncertainty_raw"] = raw
            out["keypoint_3d_cov"] = cov
            out["joint_uncertainty"] = diag.sum(-1)
        return out


def model_from_state_dict(config, sd, assign=False):
    """Build HandCov for `config` and load the subset of `sd` it needs (strict on that subset)."""
    V = sd["mano.v_template"].shape[0]
    Fn = sd["mano.faces_tensor"].shape[0]
    if assign:
        with torch.device("meta"):
            model = HandCov(config, V, Fn)
    else:
        model = HandCov(config, V, Fn)
    wanted = model.state_dict().keys()
    missing = [k for k in wanted if k not in sd]
    if missing:
        raise KeyError(f"missing keys: {missing[:10]} ...")
    model.load_state_dict({k: sd[k] for k in wanted}, strict=True, assign=assign)
    return model


# --------------------------------------------------------------------------------------------
# Deterministic random weights (shared by make_fixtures.py and bench_cpu_torch.py)
# --------------------------------------------------------------------------------------------

def state_dict_shapes(config: dict, kinds=UNCERTAINTY_TYPES, num_verts=778, num_faces=1538):
    """Ordered {key: (shape, dtype)} of the union of the state dicts of `kinds`."""
    shapes = OrderedDict()
    for kind in kinds:
        cfg = dict(config, uncertainty=kind)
        with torch.device("meta"):
            m = HandCov(cfg, num_verts, num_faces)
        for k, v in m.state_dict().items():
            shapes.setdefault(k, (tuple(v.shape), v.dtype))
    return shapes


def _rng(seed: int, name: str) -> np.random.Generator:
    """A generator that depends only on (seed, name), so a tensor's values do not depend on
    which other tensors are generated."""
    return np.random.default_rng([seed, zlib.crc32(name.encode())])


def _uniform(rng, shape, bound):
    return ((rng.random(shape, dtype=np.float32) * 2.0 - 1.0) * np.float32(bound)).astype(np.float32)


def _normal(rng, shape, std, mean=0.0):
    return (rng.standard_normal(shape, dtype=np.float32) * np.float32(std)
            + np.float32(mean)).astype(np.float32)


def axis_angle_to_rotmat(aa):
    """Rodrigues (numpy float64). aa [..., 3] -> [..., 3, 3]."""
    aa = np.asarray(aa, dtype=np.float64)
    th = np.linalg.norm(aa, axis=-1, keepdims=True)
    k = aa / np.maximum(th, 1e-12)
    K = np.zeros(aa.shape[:-1] + (3, 3))
    K[..., 0, 1], K[..., 0, 2] = -k[..., 2], k[..., 1]
    K[..., 1, 0], K[..., 1, 2] = k[..., 2], -k[..., 0]
    K[..., 2, 0], K[..., 2, 1] = -k[..., 1], k[..., 0]
    th = th[..., None]
    return np.eye(3) + np.sin(th) * K + (1.0 - np.cos(th)) * (K @ K)


def mean_params(seed: int):
    """Plausible stand-ins for mano_mean_params.npz (pose 6D [1,96], betas [1,10], cam [1,3])."""
    rng = _rng(seed, "mean_params")
    axes = rng.standard_normal((NUM_MANO_JOINTS, 3))
    axes /= np.linalg.norm(axes, axis=-1, keepdims=True)
    angles = rng.uniform(0.15, 0.6, size=(NUM_MANO_JOINTS, 1))
    angles[0] = rng.uniform(0.8, 1.4)                         # global orientation: larger
    R = axis_angle_to_rotmat(axes * angles)                   # [16,3,3]
    pose6d = np.concatenate([R[:, :, 0], R[:, :, 1]], axis=-1).reshape(1, NPOSE)
    betas = 0.3 * rng.standard_normal((1, NUM_BETAS))
    cam = np.array([[0.9, 0.0, 0.1]])
    return (pose6d.astype(np.float32), betas.astype(np.float32), cam.astype(np.float32))


# Skeleton anchors (metres) of a flat right hand, fingers towards -x, MANO joint order:
# 0 wrist, 1-3 index, 4-6 middle, 7-9 pinky, 10-12 ring, 13-15 thumb; then tips in the
# order of MANO_EXTRA_JOINTS_IDXS (thumb, index, middle, ring, pinky).
_ANCHORS = np.array([
    [0.095, 0.006, 0.006],
    [0.005, 0.025, 0.005], [-0.030, 0.028, 0.004], [-0.052, 0.030, 0.003],
    [0.000, 0.003, 0.006], [-0.038, 0.002, 0.005], [-0.063, 0.001, 0.004],
    [0.012, -0.038, 0.002], [-0.015, -0.045, 0.001], [-0.032, -0.049, 0.000],
    [0.004, -0.018, 0.004], [-0.030, -0.021, 0.003], [-0.054, -0.023, 0.002],
    [0.070, 0.030, -0.010], [0.045, 0.050, -0.015], [0.025, 0.065, -0.018],
])
_TIPS = np.array([  # thumb, index, middle, ring, pinky
    [0.005, 0.078, -0.020], [-0.072, 0.031, 0.002], [-0.085, 0.000, 0.003],
    [-0.075, -0.025, 0.001], [-0.048, -0.052, 0.000],
])
_TIP_OWNER = [15, 3, 6, 12, 9]                                 # DIP joint carrying each tip


def random_mano(seed: int, num_verts=778, num_faces=1538, shapedirs_std=0.01,
                posedirs_std=0.005):
    """A random but MANO-shaped hand model of real sizes (numpy, f32 / int64)."""
    rng = _rng(seed, "mano")
    V, J = num_verts, NUM_MANO_JOINTS
    parents = MANO_PARENTS
    children = {j: [c for c in range(J) if parents[c] == j] for j in range(J)}
    # segments (owner joint, start, end)
    segs = []
    for j in range(J):
        if children[j]:
            for c in children[j]:
                segs.append((j, _ANCHORS[j], _ANCHORS[c]))
        else:
            segs.append((j, _ANCHORS[j], _TIPS[_TIP_OWNER.index(j)]))
    lengths = np.array([np.linalg.norm(e - s) for _, s, e in segs])
    seg_id = rng.choice(len(segs), size=V, p=lengths / lengths.sum())
    t = rng.random(V)
    verts = np.empty((V, 3))
    owner = np.empty(V, dtype=np.int64)
    for v in range(V):
        o, s, e = segs[seg_id[v]]
        verts[v] = s + t[v] * (e - s) + rng.normal(0.0, 0.007, size=3) * np.array([1.0, 1.0, 0.8])
        owner[v] = o
    for tip_vertex, tip, o in zip(MANO_EXTRA_JOINTS_IDXS, _TIPS, _TIP_OWNER):
        verts[tip_vertex] = tip + rng.normal(0.0, 0.002, size=3)
        owner[tip_vertex] = o
        t[tip_vertex] = 1.0

    # skinning weights: owner joint dominant, rest to parent and / or a child
    lbs = np.zeros((V, J))
    for v in range(V):
        o = owner[v]
        nb = []
        if parents[o] >= 0:
            nb.append(parents[o])
        if children[o]:
            nb.append(children[o][rng.integers(len(children[o]))])
        w0 = rng.uniform(0.55, 0.95)
        lbs[v, o] = w0
        if nb:
            share = rng.dirichlet(np.ones(len(nb)))
            for n, sh in zip(nb, share):
                lbs[v, n] += (1.0 - w0) * sh
        else:
            lbs[v, o] = 1.0
    # quantise to multiples of 2^-16 with the owner taking the exact remainder, so that every
    # row sums to exactly 1 in f32 (identity pose + zero betas then reproduces v_template)
    q = np.round(lbs * 65536.0) / 65536.0
    q[np.arange(V), owner] = 0.0
    q[np.arange(V), owner] = 1.0 - q.sum(axis=1)
    lbs = q

    # joint regressor: a few dozen vertices nearest to each anchor
    Jreg = np.zeros((J, V))
    for j in range(J):
        k = int(rng.integers(24, 41))
        near = np.argsort(np.linalg.norm(verts - _ANCHORS[j], axis=1))[:k]
        w = rng.random(k) + 0.1
        Jreg[j, near] = w / w.sum()

    faces = np.stack([rng.choice(V, size=3, replace=False) for _ in range(num_faces)])
    return OrderedDict([
        ("mano.v_template", verts.astype(np.float32)),
        ("mano.shapedirs", (shapedirs_std * rng.standard_normal((V, 3, NUM_BETAS))).astype(np.float32)),
        ("mano.posedirs", (posedirs_std * rng.standard_normal((9 * (J - 1), 3 * V))).astype(np.float32)),
        ("mano.J_regressor", Jreg.astype(np.float32)),
        ("mano.lbs_weights", lbs.astype(np.float32)),
        ("mano.parents", np.array(MANO_PARENTS, dtype=np.int64)),
        ("mano.faces_tensor", faces.astype(np.int64)),
        ("mano.extra_joints_idxs", np.array(MANO_EXTRA_JOINTS_IDXS, dtype=np.int64)),
        ("mano.joint_map", np.array(MANO_JOINT_MAP, dtype=np.int64)),
    ])


# Target standard deviations of the sample-dependent readout deltas, relative to the readout
# input (decoder token, rms ~TOKEN_RMS); chosen so that outputs are meaningful (see README).
TOKEN_RMS = 1.5
READOUT = {
    # key suffix: (delta std, bias mean, bias std)
    "mano_head.decpose": (0.10, 0.0, 0.02),
    "mano_head.decshape": (0.20, 0.0, 0.05),
    "mano_head.deccam": (0.03, 0.0, 0.01),
    "uncertainty_head.dec3dkeypoint.0": (0.5, -4.0, 0.3),      # diag: log-variance s
    "uncertainty_head.dec3dkeypoint": (0.5, -4.0, 0.3),        # ours / ours_wo_linear: s
    "uncertainty_head.dec3dkeypoint_diag": (0.15, -2.0, 0.1),  # full: d (L_ii = exp(-d))
}
FULL_OFFDIAG_REL = 0.10   # std of the off-diagonals of L relative to exp(-mean d)


def random_state_dict(config: dict, seed: int, kinds=UNCERTAINTY_TYPES, num_verts=778,
                      num_faces=1538) -> "OrderedDict[str, torch.Tensor]":
    """Deterministic random weights for every key of `kinds` (f32 / int64 torch tensors)."""
    shapes = state_dict_shapes(config, kinds, num_verts, num_faces)
    D = config["decoder"]["dim"]
    pose6d, betas0, cam0 = mean_params(seed)
    mano = random_mano(seed, num_verts, num_faces)
    full_off_std = FULL_OFFDIAG_REL * math.exp(-READOUT["uncertainty_head.dec3dkeypoint_diag"][1])
    sd = OrderedDict()
    for key, (shape, _dtype) in shapes.items():
        rng = _rng(seed, key)
        base, _, leaf = key.rpartition(".")
        if key.startswith("mano."):
            arr = mano[key]
        elif leaf == "init_hand_pose":
            arr = pose6d
        elif leaf == "init_betas":
            arr = betas0
        elif leaf == "init_cam":
            arr = cam0
        elif key == "backbone.pos_embed":
            arr = _normal(rng, shape, 0.1)
        elif leaf == "pos_embedding":
            arr = _normal(rng, shape, 1.0)                    # PyTorch default N(0,1)
        elif base.endswith("norm") or base.endswith("norm1") or base.endswith("norm2") \
                or base.endswith("last_norm"):
            arr = _normal(rng, shape, 0.1, 1.0) if leaf == "weight" else _normal(rng, shape, 0.05)
        elif base in READOUT:
            delta, bmean, bstd = READOUT[base]
            if leaf == "weight":
                arr = _normal(rng, shape, delta / (math.sqrt(D) * TOKEN_RMS))
            else:
                arr = _normal(rng, shape, bstd, bmean)
        elif base == "uncertainty_head.dec3dkeypoint_cov":
            if leaf == "weight":
                arr = _normal(rng, shape, 0.5 * full_off_std / (math.sqrt(D) * TOKEN_RMS))
            else:
                arr = _normal(rng, shape, full_off_std)
        elif key == "out_layer_keypoints_3d.weight":
            arr = _uniform(rng, shape, 1.0 / math.sqrt(shape[1]))   # PyTorch default
        elif leaf in ("weight", "bias"):
            wshape = shapes[base + ".weight"][0]
            fan_in = int(np.prod(wshape[1:]))
            arr = _uniform(rng, shape, 1.0 / math.sqrt(fan_in))     # PyTorch-default-like
        else:
            raise KeyError(f"no init rule for {key}")
        assert tuple(arr.shape) == tuple(shape), (key, arr.shape, shape)
        sd[key] = torch.from_numpy(np.array(arr, copy=True, order="C"))
    return sd
