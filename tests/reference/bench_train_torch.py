#!/usr/bin/env python3
"""GPU TRAINING baseline: one full fine-tune step of the PyTorch reference (the `hamer` preset with
the `ours` uncertainty head) and the exact-NLL Cholesky with autograd, to set handcov's training
numbers against (issue "Training with hand-written backward passes", Performance).

    python3 tests/reference/bench_train_torch.py --out gpu_out/torch_train.jsonl
    python3 tests/reference/bench_train_torch.py --batch 32,64 --modes amp_fp16 --steps 30
    python3 tests/reference/bench_train_torch.py --load-weights scratch/hamer_ours.safetensors
    python3 tests/reference/bench_train_torch.py --device cpu --config tiny --batch 2 \
        --nll-batch 64 --steps 2                                                   # smoke test
    python3 tests/reference/bench_train_torch.py --device cpu --config tiny --batch 32 \
        --modes fp32 --drop-path 0 --ours-nll exact --no-nll --no-disc  # the demo's CPU step

1. Training step (kind "train"). The model of reference_model.py (random weights of its generator,
   --seed, or --load-weights FILE with SPEC key names), the discriminator of train_reference.py
   (xavier init), a synthetic batch of --batch images (smooth random ImageNet-normalised crops,
   keypoints_2d / keypoints_3d with conf 1, MANO parameters with every has_* = 1, a mocap batch
   of --mocap-batch (128) for the discriminator, fresh sample noise eps [B,25,63] every step).
   One timed step is what the reference trainer does per iteration (SPEC §8, manual
   optimisation):
     forward -> total generator objective of SPEC §7.2 for `ours`, with the loss functions of
     train_reference.py: 0.05 L_3D + 0.01 L_2D + 0.001 L_go + 0.001 L_hp + 0.0005 L_betas
     + 0.0005 L_adv (discriminator on the predicted hand pose / betas) + 0.0005 L_NLL (the
     reference's diagonal NLL; --ours-nll exact: the exact Cholesky NLL of SPEC §15b.2 in float64
     instead) + 0.0005 L_SM (sample loss, N = 25) + 0 L_reg
     -> zero_grad -> backward -> generator AdamW step
     -> discriminator loss 0.0005 L_D on the detached predictions and the mocap batch -> its
     zero_grad / backward / AdamW step.
   Generator AdamW (lr 1e-6, weight decay 1e-4, betas 0.9/0.999, eps 1e-8) over EVERY parameter:
   backbone + MANO head + uncertainty head + W (handcov's decision, SPEC §15b.1; the released
   trainer steps only backbone + MANO head). Discriminator: its own AdamW, same settings.
   Drop path (--drop-path, default 0.55 as the reference trainer: linear 0 .. 0.55 over the 32
   ViT blocks, per-sample, train mode only). No gradient clipping (the reference has none).
   Modes (--modes):
     amp_fp16  torch.autocast(float16) + GradScaler (torch.amp.GradScaler, = torch.cuda.amp's):
               the reference trainer (Lightning precision 16): scale(loss).backward(),
               scaler.step(opt), scaler.update() after EACH of the two optimiser steps, as
               Lightning's precision plugin does
     bf16      torch.autocast(bfloat16), no scaler
     fp32      no autocast, TF32 off
   Before the first measurement the script checks, once, in fp32, that its objective equals
   train_reference.compute_losses' total (it only skips the exact NLL that compute_losses always
   evaluates for `ours` but leaves out of the reference total).

2. Exact NLL (kind "nll"), at --nll-batch B (4096): s [B,63], W [63,63], mu [B,63] (requires_grad),
   gt [B,63]; Sigma = W diag(e^s) W^T + 1e-6 I, L = torch.linalg.cholesky(Sigma), r = gt - mu,
   alpha = torch.cholesky_solve(r, L), loss = sum_b 1/2 (2 sum log diag L + r^T alpha); one
   timed call = the forward from (s, W, mu) and loss.backward(). Rows: mode "f64" (handcov's
   kernel computes in f64) and "f32". Data: s = -4 + 0.5 N, W ~ U(+-1/sqrt 63) (PyTorch's
   default init of W), mu = 0.05 N, gt = mu + 0.01 N (one generator, --seed).

Timing: warm-up (--warmup, 5; for amp_fp16 prolonged while the GradScaler still skips steps,
at most 20 more), then --steps (20) timed steps back to back with a CUDA event pair around
each (the CPU clock on the CPU), median. On CUDA the peak is torch.cuda.max_memory_allocated()
over the timed steps, the counter reset after the warm-up (weights, gradients, AdamW states and
activations all included). --budget-s: no measurement starts after that many seconds from
launch (recorded as a row with "error": "skipped: ..."), and a running one times fewer steps
(at least 2) when the rest would run past it. A measurement that raises (out of memory) is
recorded with "error" and the run goes on.

Output: one JSON object per line in --out (flushed as measured), the row schema of
bench_gpu_torch.py: engine "torch", kind "train" | "nll", kernel "train_step" | "nll_exact",
mode, batch, median_ms, p10_ms, p90_ms, min_ms, images_per_s (= batch / median), peak_mem_mib,
plus the run's device / torch / cuda / date / config / weights and per-kind details.
tests/reference/compare_bench.py joins them with handcov's "train" / "nll" rows.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import math
import os
import platform
import sys
import time
import traceback
import types

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)


def die(msg: str):
    print(f"error: {msg}", file=sys.stderr, flush=True)
    sys.exit(2)


try:
    import numpy as np
    import torch
    import torch.nn.functional as F
except ImportError as e:  # pragma: no cover - depends on the machine
    die(f"{e}: this script needs numpy and PyTorch (python3 -m pip install torch numpy)")

import reference_model as R  # noqa: E402
import train_reference as T  # noqa: E402

T0 = time.monotonic()
MODES = {  # label -> (autocast dtype or None, GradScaler)
    "amp_fp16": (torch.float16, True),
    "bf16": (torch.bfloat16, False),
    "fp32": (None, False),
}
NLL_MODES = {"f64": torch.float64, "f32": torch.float32}
ADAMW = dict(lr=1e-6, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-4)
# forward GFLOP per image (SPEC §11: 2 x 127.1 GMAC with an uncertainty head); a training step is
# counted as 3 x the forward (forward + input and weight gradients)
FWD_GFLOP = {"hamer": 254.2, "tiny": None}


# ----------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------

def log(msg: str):
    print(f"[{time.monotonic() - T0:7.1f} s] {msg}", flush=True)


def parse_list(text: str, what: str, cast=int, allowed=None) -> list:
    try:
        vals = [cast(v.strip()) for v in text.split(",") if v.strip()]
    except ValueError:
        die(f"{what} must be a comma-separated list, got {text!r}")
    if not vals:
        die(f"{what} is empty")
    if cast is int and any(v <= 0 for v in vals):
        die(f"{what} must list positive integers, got {text!r}")
    if allowed is not None:
        bad = [v for v in vals if v not in allowed]
        if bad:
            die(f"{what}: unknown {bad} (choose from {', '.join(allowed)})")
    return vals


def short_error(e: BaseException) -> str:
    msg = " ".join(str(e).split())
    return f"{type(e).__name__}: {msg[:600]}"


def is_oom(e: BaseException) -> bool:
    return isinstance(e, torch.cuda.OutOfMemoryError) or "out of memory" in str(e)


def sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def free_memory(dev):
    gc.collect()
    if dev.type == "cuda":
        torch.cuda.empty_cache()


def mib(nbytes) -> float:
    return round(nbytes / 2**20, 1)


def stats(ms) -> dict:
    arr = np.asarray(ms, dtype=np.float64)
    return {"median_ms": round(float(np.median(arr)), 4),
            "p10_ms": round(float(np.percentile(arr, 10)), 4),
            "p90_ms": round(float(np.percentile(arr, 90)), 4),
            "min_ms": round(float(arr.min()), 4)}


def timed_calls(fn, n: int, dev) -> list[float]:
    """Milliseconds of each of n calls of fn(). CUDA: an event pair around each call, the calls
    back to back, one synchronise at the end. CPU: the host clock."""
    sync(dev)
    if dev.type == "cuda":
        evs = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
               for _ in range(n)]
        for start, end in evs:
            start.record()
            fn()
            end.record()
        torch.cuda.synchronize(dev)
        return [start.elapsed_time(end) for start, end in evs]
    out = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t) * 1e3)
    return out


class Writer:
    """One JSON object per line, flushed at once; every row carries the common fields."""

    def __init__(self, path, common, append):
        self.common, self.rows, self.f = common, [], None
        if path:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            self.f = open(path, "a" if append else "w")

    def write(self, row):
        row = {"engine": "torch", **self.common, **row}
        self.rows.append(row)
        if self.f:
            self.f.write(json.dumps(row) + "\n")
            self.f.flush()

    def close(self):
        if self.f:
            self.f.close()


class Budget:
    def __init__(self, seconds):
        self.seconds = seconds

    def left(self) -> float:
        return math.inf if self.seconds is None else self.seconds - (time.monotonic() - T0)

    def over(self, reserve: float = 0.0) -> bool:
        return self.left() < reserve

    def skipped(self) -> str:
        return f"skipped: --budget-s {self.seconds:g} reached"


# ----------------------------------------------------------------------------------------------
# model, discriminator, batch
# ----------------------------------------------------------------------------------------------

def build_model(args, config, dev):
    t = time.perf_counter()
    if args.load_weights:
        if not os.path.isfile(args.load_weights):
            die(f"--load-weights {args.load_weights}: no such file")
        try:
            from safetensors.torch import load_file
        except ImportError:
            die("--load-weights needs the safetensors package (python3 -m pip install safetensors)")
        try:
            sd = load_file(args.load_weights)
        except Exception as e:  # noqa: BLE001 - a bad file is user input
            die(f"--load-weights {args.load_weights}: not a readable safetensors file "
                f"({short_error(e)})")
        src = args.load_weights
    else:
        sd = R.random_state_dict(config, args.seed, kinds=(args.uncertainty,))
        src = f"random(seed={args.seed})"
    try:
        model = R.model_from_state_dict(config, sd, assign=True)
    except (KeyError, RuntimeError) as e:
        die(f"weights from {src} do not fit config {args.config!r} with uncertainty "
            f"{args.uncertainty!r} ({short_error(e)}); pick --config / --uncertainty to match")
    dsd = {k: v for k, v in sd.items() if k.startswith("discriminator.")}
    del sd
    if len(dsd) != len(T.random_discriminator_state_dict(args.seed)):
        dsd = T.random_discriminator_state_dict(args.seed)
        dsrc = f"random(seed={args.seed})"
    else:
        dsrc = src
    disc = T.discriminator_from_state_dict(dsd, dtype=torch.float32)
    model = model.float().to(dev)
    disc = disc.to(dev)
    install_drop_path(model, args.drop_path)
    n = sum(p.numel() for p in model.parameters())
    nd = sum(p.numel() for p in disc.parameters())
    log(f"model from {src}, discriminator from {dsrc}, in {time.perf_counter() - t:.1f} s: "
        f"{n:,} trained parameters (+ {nd:,} discriminator), uncertainty={args.uncertainty}, "
        f"drop path {args.drop_path}, on {dev}")
    return model, disc, src, n


def install_drop_path(model, rate: float):
    """ViTPose's stochastic depth in train mode: block i drops each sample's residual branch with
    probability rate * i / (depth - 1) (torch.linspace(0, rate, depth)), the kept ones scaled by
    1 / keep. The reference model has no drop path; this patches its blocks' forward."""
    if rate <= 0:
        return
    blocks = model.backbone.blocks
    dpr = torch.linspace(0, rate, len(blocks)).tolist()

    def drop(x, p, training):
        if p == 0.0 or not training:
            return x
        keep = 1.0 - p
        mask = torch.empty((x.shape[0],) + (1,) * (x.ndim - 1), dtype=x.dtype,
                           device=x.device).bernoulli_(keep)
        return x * mask.div_(keep)

    def forward(self, x):
        x = x + drop(self.attn(self.norm1(x)), self.drop_prob, self.training)
        x = x + drop(self.mlp(self.norm2(x)), self.drop_prob, self.training)
        return x

    for blk, p in zip(blocks, dpr):
        blk.drop_prob = p
        blk.forward = types.MethodType(forward, blk)


def make_images(seed: int, batch: int, size: int) -> torch.Tensor:
    """Smooth ImageNet-normalised random crops (make_fixtures.py's generator; a cheaper smooth
    field with the same range when scipy is missing)."""
    try:
        from make_fixtures import smooth_images
        n = min(batch, 8)                       # a few distinct crops, tiled to the batch
        img = torch.from_numpy(smooth_images(seed, n, size))
        return img.repeat((batch + n - 1) // n, 1, 1, 1)[:batch].contiguous()
    except ImportError:
        g = torch.Generator().manual_seed(seed)
        img = torch.randn(batch, 3, size // 8, size // 8, generator=g)
        img = F.interpolate(img, size=(size, size), mode="bilinear", align_corners=False)
        return (img / img.std()).clamp(-2.0, 2.4)


def make_batch(seed: int, batch: int, mocap: int, size: int, dev) -> dict:
    """A synthetic training batch with the fields of make_train_fixtures.py: every conf 1, every
    has_* 1; sample_eps is drawn again every step (make_step)."""
    g = torch.Generator().manual_seed(seed + 17)
    B = batch
    axes = torch.randn(B, 3, generator=g)
    axes = axes / axes.norm(dim=1, keepdim=True)
    go = axes * (0.6 + 2.0 * torch.rand(B, 1, generator=g))
    hp = 0.25 * torch.randn(B, 45, generator=g)
    betas = (0.8 * torch.randn(B, 10, generator=g)).clamp(-2.5, 2.5)
    root = torch.stack([0.12 * torch.rand(B, generator=g) - 0.06,
                        0.12 * torch.rand(B, generator=g) - 0.06,
                        0.45 + 0.45 * torch.rand(B, generator=g)], dim=1)
    j3 = root[:, None, :] + 0.04 * torch.randn(B, R.NUM_KEYPOINTS, 3, generator=g)
    kp3 = torch.cat([j3, torch.ones(B, R.NUM_KEYPOINTS, 1)], dim=-1)
    uv = 0.3 * (2 * torch.rand(B, R.NUM_KEYPOINTS, 2, generator=g) - 1)
    kp2 = torch.cat([uv, torch.ones(B, R.NUM_KEYPOINTS, 1)], dim=-1)
    ones = torch.ones(B)
    out = {
        "img": make_images(seed, B, size),
        "keypoints_2d": kp2, "keypoints_3d": kp3,
        "mano_params.global_orient": go, "mano_params.hand_pose": hp,
        "mano_params.betas": betas,
        "has_mano_params.global_orient": ones, "has_mano_params.hand_pose": ones.clone(),
        "has_mano_params.betas": ones.clone(),
        "sample_eps": torch.randn(B, T.SAMPLE_NUM, R.KP_DIM, generator=g),
        "mocap.hand_pose": 0.3 * torch.randn(mocap, 45, generator=g),
        "mocap.betas": torch.randn(mocap, 10, generator=g),
    }
    return {k: v.float().to(dev) for k, v in out.items()}


# ----------------------------------------------------------------------------------------------
# the objective
# ----------------------------------------------------------------------------------------------

def objective(model, out, batch, disc, ours_nll: str):
    """The generator objective of SPEC §7.2 with train_reference.py's loss functions. For `ours`
    the same sum as train_reference.compute_losses without evaluating the NLL that is not in the
    total (compute_losses always computes the exact one); the exact NLL, when selected, runs in
    float64 outside autocast (torch's Cholesky has no fp16 / bf16 kernels). Other types:
    compute_losses itself."""
    if model.kind != "ours":
        return T.compute_losses(model.kind, out, batch, disc, model, ours_nll)[0]
    w = T.LOSS_WEIGHTS
    B = out["pred_keypoints_3d"].shape[0]
    mu, gt3, raw = out["pred_keypoints_3d"], batch["keypoints_3d"], out["uncertainty_raw"]
    W = model.out_layer_keypoints_3d.weight
    go_gt = T.aa_to_rotmat(batch["mano_params.global_orient"].reshape(-1, 3)).view(B, -1, 3, 3)
    hp_gt = T.aa_to_rotmat(batch["mano_params.hand_pose"].reshape(-1, 3)).view(B, -1, 3, 3)
    total = (w["KEYPOINTS_3D"] * T.keypoint_3d_loss(mu, gt3)
             + w["KEYPOINTS_2D"] * T.keypoint_2d_loss(out["pred_keypoints_2d"], batch["keypoints_2d"])
             + w["GLOBAL_ORIENT"] * T.parameter_loss(out["global_orient"], go_gt,
                                                     batch["has_mano_params.global_orient"])
             + w["HAND_POSE"] * T.parameter_loss(out["hand_pose"], hp_gt,
                                                 batch["has_mano_params.hand_pose"])
             + w["BETAS"] * T.parameter_loss(out["betas"], batch["mano_params.betas"],
                                             batch["has_mano_params.betas"]))
    if disc is not None:
        total = total + w["ADVERSARIAL"] * T.adversarial_generator_loss(disc, out["hand_pose"],
                                                                        out["betas"])
    if ours_nll == "exact":
        with torch.autocast(mu.device.type, enabled=False):
            nll = T.nll_exact_ours_loss(mu.double(), gt3.double(), raw.double(), W.double())
    else:
        nll = T.nll_diag_loss(mu, gt3, raw)
    samples = T.samples_ours(mu, raw, batch["sample_eps"], W)
    total = (total + w["UNCERTAINTY_REG"] * T.uncertainty_reg_loss(raw)
             + w["KEYPOINTS_3D_NLL"] * nll
             + w["KEYPOINTS_3D_SAMPLE_MEAN"] * T.sample_mean_loss(samples, gt3))
    return total


def check_objective(model, disc, batch, ours_nll):
    """objective() == train_reference.compute_losses' total (fp32, no autocast, eval mode: no
    drop path), on the first two samples, with the reference NLL (with --ours-nll exact the
    objective's exact term is train_reference.nll_exact_ours_loss itself, in float64, while
    compute_losses would evaluate it in fp32: the totals differ by the fp32 Cholesky's error)."""
    ours_nll = "reference"
    sub = {k: (v[:2] if not k.startswith("mocap.") else v) for k, v in batch.items()}
    was = model.training
    model.eval()
    with torch.no_grad():
        out = model(sub["img"])
        mine = float(objective(model, out, sub, disc, ours_nll))
        try:
            ref = float(T.compute_losses(model.kind, out, sub, disc, model, ours_nll)[0])
        except RuntimeError as e:   # e.g. its (unused) fp32 exact NLL: Sigma not positive definite
            log(f"warning: objective check not possible ({short_error(e)[:200]})")
            model.train(was)
            return None
    model.train(was)
    rel = abs(mine - ref) / max(abs(ref), 1e-30)
    log(f"objective check (fp32, 2 samples): {mine:.9g} vs train_reference.compute_losses "
        f"{ref:.9g} (rel {rel:.1e})")
    if not (rel < 1e-5 and math.isfinite(mine)):
        die(f"the benchmark's objective ({mine}) differs from train_reference.compute_losses "
            f"({ref})")
    return rel


# ----------------------------------------------------------------------------------------------
# training step measurement
# ----------------------------------------------------------------------------------------------

def make_optimizer(params, args, dev):
    kw = dict(ADAMW)
    if args.adamw != "default":
        kw[args.adamw] = True
    return torch.optim.AdamW(params, **kw)


def run_train(args, model, disc, batch_full, mode, B, dev, writer, budget, nparam):
    cast, use_scaler = MODES[mode]
    prec = {torch.float16: "fp16", torch.bfloat16: "bf16", None: "fp32"}[cast]
    row = dict(kind="train", kernel="train_step", mode=mode, batch=B, precision=prec,
               grad_scaler=use_scaler, optimizer=f"AdamW({args.adamw}) lr 1e-6 wd 1e-4",
               trained_params=nparam, drop_path=args.drop_path, ours_nll=args.ours_nll,
               mocap_batch=args.mocap_batch, sample_num=T.SAMPLE_NUM)
    if budget.over(args.reserve_s):
        log(f"train {mode} batch {B}: skipped ({budget.skipped()})")
        writer.write(dict(row, error=budget.skipped()))
        return
    batch = {k: (v if k.startswith("mocap.") else v[:B].contiguous()) for k, v in batch_full.items()}
    opt_g = opt_d = scaler = None
    dev_type = dev.type
    state = {"loss": None}
    try:
        model.train()
        opt_g = make_optimizer(model.parameters(), args, dev)
        if disc is not None:
            disc.train()
            opt_d = make_optimizer(disc.parameters(), args, dev)
        scaler = torch.amp.GradScaler(dev_type) if use_scaler else None
        ctx = ((lambda: torch.autocast(dev_type, dtype=cast)) if cast is not None
               else (lambda: torch.autocast(dev_type, enabled=False)))
        eps_shape = (B, T.SAMPLE_NUM, R.KP_DIM)

        def step():
            batch["sample_eps"] = torch.randn(eps_shape, device=dev)
            with ctx():
                out = model(batch["img"])
                loss = objective(model, out, batch, disc, args.ours_nll)
            opt_g.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.step(opt_g)
                scaler.update()
            else:
                loss.backward()
                opt_g.step()
            state["loss"] = loss.detach()
            if disc is None:
                return
            # discriminator step (SPEC §7.3 / §8) on the detached predictions of this forward
            with ctx():
                ld, _, _ = T.discriminator_loss(disc, out["hand_pose"], out["betas"],
                                                batch["mocap.hand_pose"], batch["mocap.betas"])
                ld = T.LOSS_WEIGHTS["ADVERSARIAL"] * ld
            opt_d.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(ld).backward()
                scaler.step(opt_d)
                scaler.update()
            else:
                ld.backward()
                opt_d.step()

        # An optimiser step (generator or discriminator) whose gradients hold inf/NaN is skipped
        # by the scaler, which halves its scale (it grows only after 2000 clean steps): skipped
        # steps = log2 of the drop; the scale is read outside the timed steps only.
        scale = (lambda: scaler.get_scale()) if scaler is not None else (lambda: 1.0)  # noqa: E731
        skips = lambda s0, s1: int(round(math.log2(s0 / s1))) if s1 < s0 else 0  # noqa: E731
        log(f"train {mode} batch {B}: warm-up ({args.warmup} steps)")
        s_start = scale()
        last = {"s": 0.0}

        def warm_step():                 # synchronised: the last one estimates a step's time
            t = time.perf_counter()
            step()
            sync(dev)
            last["s"] = time.perf_counter() - t

        for _ in range(max(1, args.warmup)):
            warm_step()
        extra = 0
        if scaler is not None:          # settle the loss scale: no skipped step in the timing
            while extra < 20:
                s0 = scale()
                warm_step()
                extra += 1
                if scale() >= s0:
                    break
        per_step = last["s"]
        n = args.steps
        room = budget.left() - args.margin_s
        if room < n * per_step:
            n = max(2, int(room / per_step)) if per_step > 0 else n
            row["steps_cut_by_budget"] = True
            log(f"train {mode} batch {B}: ~{per_step:.2f} s per step, {room:.0f} s left: timing "
                f"{n} steps instead of {args.steps}")
        s_timed = scale()
        warm_skipped = skips(s_start, s_timed)
        mem_before = torch.cuda.memory_allocated(dev) if dev_type == "cuda" else None
        if dev_type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
        ms = timed_calls(step, n, dev)
        peak = mib(torch.cuda.max_memory_allocated(dev)) if dev_type == "cuda" else None
        loss = float(state["loss"])
        skipped = skips(s_timed, scale())
        st = stats(ms)
        ips = round(B / (st["median_ms"] / 1e3), 2)
        row.update(st, steps=n, warmup=max(1, args.warmup) + extra, images_per_s=ips, peak_mem_mib=peak,
                   mem_before_steps_mib=None if mem_before is None else mib(mem_before),
                   loss=loss, finite=math.isfinite(loss),
                   scaler_skipped_steps=skipped if scaler is not None else None,
                   scaler_skipped_warmup=warm_skipped if scaler is not None else None,
                   loss_scale=scaler.get_scale() if scaler is not None else None)
        gf = FWD_GFLOP.get(args.config) if args.uncertainty != "none" else None
        if gf and dev_type == "cuda":
            row.update(train_gflop_per_image=3 * gf,
                       tflops=round(3 * gf * B / (st["median_ms"] / 1e3) / 1e3, 2))
        log(f"train {mode} batch {B}: median {st['median_ms']:.2f} ms (p10 {st['p10_ms']:.2f}, "
            f"p90 {st['p90_ms']:.2f}) over {n} steps, {ips:.1f} images/s, peak {peak} MiB, "
            f"loss {loss:.4g}"
            + (f", scaler skipped {skipped} timed steps (scale {scaler.get_scale():g})"
               if scaler is not None else ""))
        if scaler is not None and skipped:
            log(f"warning: {skipped} of the timed amp_fp16 steps had inf/NaN gradients "
                f"and skipped the optimiser step (slightly optimistic timing)")
    except Exception as e:  # noqa: BLE001 - record and go on (OOM, a dtype the CPU lacks)
        log(f"train {mode} batch {B}: FAILED: {short_error(e)}")
        traceback.print_exc(limit=-4, file=sys.stdout)
        row["error"] = short_error(e)
        row["oom"] = is_oom(e)
    # free the optimiser states before the next measurement
    for o in (opt_g, opt_d):
        if o is not None:
            o.zero_grad(set_to_none=True)
            o.state.clear()
    model.zero_grad(set_to_none=True)
    if disc is not None:
        disc.zero_grad(set_to_none=True)
    del opt_g, opt_d, scaler, batch
    writer.write(row)
    free_memory(dev)


# ----------------------------------------------------------------------------------------------
# exact NLL measurement
# ----------------------------------------------------------------------------------------------

def nll_inputs(seed: int, B: int, dtype, dev):
    g = torch.Generator().manual_seed(seed + 31)
    D = R.KP_DIM
    s = -4.0 + 0.5 * torch.randn(B, D, generator=g, dtype=torch.float64)
    W = (2 * torch.rand(D, D, generator=g, dtype=torch.float64) - 1) / math.sqrt(D)
    mu = 0.05 * torch.randn(B, D, generator=g, dtype=torch.float64)
    gt = mu + 0.01 * torch.randn(B, D, generator=g, dtype=torch.float64)
    leaf = lambda t: t.to(dev, dtype).requires_grad_(True)  # noqa: E731
    return leaf(s), leaf(W), leaf(mu), gt.to(dev, dtype)


def nll_forward(s, W, mu, gt, jitter=T.EXACT_JITTER):
    D = W.shape[0]
    Sigma = torch.einsum("jd,bd,kd->bjk", W, torch.exp(s), W)
    Sigma = Sigma + jitter * torch.eye(D, dtype=Sigma.dtype, device=Sigma.device)
    L = torch.linalg.cholesky(Sigma)
    r = (gt - mu).unsqueeze(-1)                                        # [B,63,1]
    alpha = torch.cholesky_solve(r, L)
    logdet = 2.0 * torch.log(torch.diagonal(L, dim1=-2, dim2=-1)).sum(-1)
    quad = (r * alpha).sum(dim=(-2, -1))
    return (0.5 * (logdet + quad)).sum()


def run_nll(args, mode, dev, writer, budget):
    dtype = NLL_MODES[mode]
    B = args.nll_batch
    row = dict(kind="nll", kernel="nll_exact", mode=mode, batch=B, dim=R.KP_DIM,
               jitter=T.EXACT_JITTER,
               ops="einsum Sigma + linalg.cholesky + cholesky_solve, loss.backward()")
    if budget.over(args.reserve_s / 4):
        log(f"nll {mode} batch {B}: skipped ({budget.skipped()})")
        writer.write(dict(row, error=budget.skipped()))
        return
    try:
        s, W, mu, gt = nll_inputs(args.seed, B, dtype, dev)
        state = {}

        def call():
            s.grad = W.grad = mu.grad = None
            loss = nll_forward(s, W, mu, gt)
            loss.backward()
            state["loss"] = loss.detach()

        for _ in range(args.nll_warmup):
            call()
        # the float64 value for reference (and to see how far f32 is from it), and the same
        # value from train_reference.nll_exact_ours_loss (conf 1 everywhere: every w_b = 1)
        with torch.no_grad():
            s64, W64, mu64, gt64 = (t.detach().double() for t in (s, W, mu, gt))
            ref = float(nll_forward(s64, W64, mu64, gt64))
            gt4 = torch.cat([gt64.view(B, R.NUM_KEYPOINTS, 3),
                             gt64.new_ones(B, R.NUM_KEYPOINTS, 1)], dim=-1)
            tr = float(T.nll_exact_ours_loss(mu64.view(B, R.NUM_KEYPOINTS, 3), gt4, s64, W64))
            del s64, W64, mu64, gt64, gt4
        row["check_vs_train_reference"] = float(f"{abs(tr - ref) / max(abs(tr), 1e-300):.3e}")
        if not row["check_vs_train_reference"] < 1e-9:
            log(f"warning: nll {mode}: {ref} differs from train_reference.nll_exact_ours_loss {tr}")
        free_memory(dev)
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
        ms = timed_calls(call, args.nll_iters, dev)
        peak = mib(torch.cuda.max_memory_allocated(dev)) if dev.type == "cuda" else None
        loss = float(state["loss"])
        st = stats(ms)
        row.update(st, iters=args.nll_iters, warmup=args.nll_warmup,
                   images_per_s=round(B / (st["median_ms"] / 1e3), 2),
                   peak_mem_mib=peak, loss=loss, finite=math.isfinite(loss),
                   rel_err_vs_f64=float(f"{abs(loss - ref) / max(abs(ref), 1e-300):.3e}"))
        log(f"nll {mode} batch {B}: median {st['median_ms']:.3f} ms (p10 {st['p10_ms']:.3f}, "
            f"p90 {st['p90_ms']:.3f}), loss {loss:.6g} (rel to f64 {row['rel_err_vs_f64']}), "
            f"peak {peak} MiB")
        del s, W, mu, gt
    except Exception as e:  # noqa: BLE001 - e.g. a non-positive-definite f32 matrix
        log(f"nll {mode} batch {B}: FAILED: {short_error(e)}")
        row["error"] = short_error(e)
    writer.write(row)
    free_memory(dev)


# ----------------------------------------------------------------------------------------------
# main
# ----------------------------------------------------------------------------------------------

def parse_args():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--device", default="cuda", choices=("cuda", "cpu"),
                    help="cpu = smoke test of the script (with --config tiny)")
    ap.add_argument("--config", "--preset", dest="config", default="hamer", choices=("hamer", "tiny"))
    ap.add_argument("--uncertainty", default="ours", choices=R.UNCERTAINTY_TYPES,
                    help="(ours) other types use train_reference.compute_losses as it is")
    ap.add_argument("--ours-nll", default="reference", choices=("reference", "exact"),
                    help="NLL term of `ours`: the reference's diagonal one, or the exact one (f64)")
    ap.add_argument("--batch", default="64", help="comma list of training batch sizes (64)")
    ap.add_argument("--modes", default="amp_fp16,bf16,fp32",
                    help="comma list of " + ", ".join(MODES) + " (amp_fp16,bf16,fp32), in order")
    ap.add_argument("--steps", type=int, default=20, help="timed training steps (20)")
    ap.add_argument("--warmup", type=int, default=5, help="untimed steps first (5)")
    ap.add_argument("--mocap-batch", type=int, default=128,
                    help="the discriminator's real batch (128, SPEC §7.3)")
    ap.add_argument("--drop-path", type=float, default=0.55,
                    help="ViT stochastic depth rate in train mode (0.55 as the reference; 0 = off)")
    ap.add_argument("--adamw", default="default", choices=("default", "foreach", "fused"),
                    help="torch AdamW implementation (default: torch's choice, foreach on CUDA)")
    ap.add_argument("--nll-batch", type=int, default=4096, help="exact-NLL batch (4096)")
    ap.add_argument("--nll-modes", default="f64,f32", help="comma list of f64, f32")
    ap.add_argument("--nll-iters", type=int, default=None, help="timed NLL calls (50; CPU: --steps)")
    ap.add_argument("--nll-warmup", type=int, default=5, help="untimed NLL calls (5)")
    ap.add_argument("--no-nll", action="store_true", help="only the training step")
    ap.add_argument("--no-disc", action="store_true",
                    help="no discriminator: no adversarial term and no discriminator step (the "
                         "synthetic demo's objective)")
    ap.add_argument("--nll-only", action="store_true", help="only the exact NLL (no model built)")
    ap.add_argument("--seed", type=int, default=20250901)
    ap.add_argument("--load-weights", metavar="PATH",
                    help="safetensors with SPEC key names (discriminator.* used when complete)")
    ap.add_argument("--out", metavar="PATH", help="JSONL file, one object per measurement")
    ap.add_argument("--append", action="store_true", help="append to --out instead of replacing")
    ap.add_argument("--budget-s", "--deadline-s", dest="budget_s", type=float, default=None,
                    help="start no measurement after this many seconds from launch")
    ap.add_argument("--reserve-s", type=float, default=None,
                    help="a training measurement starts only with this much of --budget-s left "
                         "(CUDA 20, CPU 0)")
    ap.add_argument("--margin-s", type=float, default=5.0,
                    help="seconds kept free at the end of --budget-s when cutting steps (5)")
    args = ap.parse_args()
    args.batches = parse_list(args.batch, "--batch")
    args.mode_list = parse_list(args.modes, "--modes", str, MODES)
    args.nll_mode_list = parse_list(args.nll_modes, "--nll-modes", str, NLL_MODES)
    if args.steps < 2 or args.warmup < 0 or args.nll_warmup < 0:
        die("--steps must be >= 2, --warmup and --nll-warmup >= 0")
    if args.nll_batch <= 0 or args.mocap_batch <= 0:
        die("--nll-batch and --mocap-batch must be positive")
    if not 0.0 <= args.drop_path < 1.0:
        die("--drop-path must be in [0, 1)")
    if args.no_nll and args.nll_only:
        die("--no-nll and --nll-only exclude each other")
    if args.reserve_s is None:
        args.reserve_s = 20.0 if args.device == "cuda" else 0.0
    if args.nll_iters is None:
        args.nll_iters = 50 if args.device == "cuda" else max(2, args.steps)
    if args.nll_iters < 2:
        die("--nll-iters must be >= 2")
    return args


def device_or_die(args):
    if args.device == "cpu":
        return torch.device("cpu"), platform.processor() or platform.machine()
    if not torch.cuda.is_available():
        die(f"no CUDA device is visible to PyTorch {torch.__version__} (built for CUDA "
            f"{torch.version.cuda}). Run this on the GPU machine, or smoke-test the script with "
            f"--device cpu --config tiny --batch 2 --nll-batch 64 --steps 2.")
    try:
        dev = torch.device("cuda", torch.cuda.current_device())
        name = torch.cuda.get_device_name(dev)
    except Exception as e:  # noqa: BLE001
        die(f"the CUDA device could not be initialised ({short_error(e)})")
    return dev, name


def main():
    args = parse_args()
    dev, dev_name = device_or_die(args)
    torch.backends.cuda.matmul.allow_tf32 = False          # fp32 rows are true fp32
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    torch.manual_seed(args.seed)
    budget = Budget(args.budget_s)
    if dev.type == "cpu" and args.config == "hamer" and not args.nll_only:
        log("warning: the hamer config on the CPU is very slow; --config tiny is the smoke test")
    config = json.loads(json.dumps(R.HAMER_CONFIG if args.config == "hamer" else R.TINY_CONFIG))
    config["uncertainty"] = args.uncertainty
    log(f"torch {torch.__version__} (CUDA {torch.version.cuda}), device {dev_name}, config "
        f"{args.config}, uncertainty {args.uncertainty}, batches {args.batches}, modes "
        f"{args.mode_list}, NLL batch {args.nll_batch} {args.nll_mode_list}, budget "
        f"{args.budget_s} s")
    common = dict(device=dev_name, torch=torch.__version__, cuda=torch.version.cuda,
                  date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                  preset=args.config, uncertainty=args.uncertainty, tf32=False)
    writer = Writer(args.out, common, args.append)
    try:
        if not args.no_nll:                 # small and quick: first, before the model exists
            for mode in args.nll_mode_list:
                run_nll(args, mode, dev, writer, budget)
        if not args.nll_only:
            model, disc, src, nparam = build_model(args, config, dev)
            if args.no_disc:
                disc = None
            writer.common["weights"] = src
            writer.common["discriminator"] = not args.no_disc
            batch = make_batch(args.seed, max(args.batches), args.mocap_batch,
                               config["image_size"], dev)
            # compute_losses always has the adversarial term: no check without a discriminator.
            rel = None if disc is None else check_objective(model, disc, batch, args.ours_nll)
            writer.common["objective_check_rel"] = None if rel is None else float(f"{rel:.2e}")
            for mode in args.mode_list:
                for b in args.batches:
                    run_train(args, model, disc, batch, mode, b, dev, writer, budget, nparam)
    finally:
        writer.close()
    print_summary(writer.rows)
    if args.out:
        log(f"{len(writer.rows)} rows written to {args.out}")


def print_summary(rows):
    print("\n| kind | mode | batch | median ms | p10 | p90 | images/s | peak MiB | note |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['kind']} | {r['mode']} | {r['batch']} | | | | | | {r['error'][:70]} |")
            continue
        note = ""
        if r["kind"] == "train" and r.get("scaler_skipped_steps"):
            note = f"{r['scaler_skipped_steps']} scaler-skipped steps"
        if r["kind"] == "nll":
            note = f"rel vs f64 {r['rel_err_vs_f64']:.1e}"
        peak = r.get("peak_mem_mib")
        print(f"| {r['kind']} | {r['mode']} | {r['batch']} | {r['median_ms']:.3f} "
              f"| {r['p10_ms']:.3f} | {r['p90_ms']:.3f} | {r['images_per_s']:.1f} "
              f"| {'' if peak is None else f'{peak:.0f}'} | {note} |")


if __name__ == "__main__":
    main()
