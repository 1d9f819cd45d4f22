#!/usr/bin/env python3
"""GPU speed baseline: the PyTorch reference at the `hamer` preset (ViT-H/16 + decoder heads +
the `ours` uncertainty head) on a CUDA device, to set handcov's `bench` numbers against.

    python3 tests/reference/bench_gpu_torch.py --out results/torch_bench.jsonl
    python3 tests/reference/bench_gpu_torch.py --batch 1,16,64 --iters 50 --warmup 10 \
        --modes eager_fp32,eager_bf16,compile_bf16 --compile-mode default,max-autotune-no-cudagraphs
    python3 tests/reference/bench_gpu_torch.py --load-weights scratch/hamer_ours.safetensors
    python3 tests/reference/bench_gpu_torch.py --device cpu --preset tiny --iters 3 --warmup 1  # smoke

Modes (`--modes`, comma list; each is `<eager|compile>_<fp32|bf16|bf16w>`):
  eager_fp32    the fp32 model, TF32 off for matmul and cuDNN (the accuracy reference)
  eager_bf16    the fp32 model under torch.autocast(dtype=bfloat16): weights are re-cast every call
  compile_bf16  torch.compile(model, dynamic=False) under bf16 autocast, once per --compile-mode
                (`default` -> mode label compile_bf16, `max-autotune-no-cudagraphs` -> compile_bf16_autotune,
                `reduce-overhead` -> compile_bf16_cudagraphs, `max-autotune` -> compile_bf16_autotune_cudagraphs)
  *_bf16w       (optional) parameters stored in bf16 (MANO and mean-parameter buffers stay fp32), still
                under autocast: no per-call weight cast, closer to what handcov's bf16 mode does
  compile_fp32  (optional) torch.compile of the fp32 model, TF32 off
TF32 stays off in every mode. Each (mode, batch) is warmed up, then --iters forwards are timed with
CUDA events around each forward (back to back, one synchronise at the end), under
torch.inference_mode(). Reported: median / p10 / p90 ms per forward, images/s = batch / median,
peak device memory over the timed loop (weights included), MFU = achieved FLOP/s over --peak-tflops
(bf16 rows) or --peak-tflops-fp32 (fp32 rows) at --gflop-per-image (default 254.2 = 2 x 127.1 GMAC,
SPEC §11, for an uncertainty head; 251.0 without), and the error of pred_keypoints_3d /
keypoint_3d_cov against the eager fp32 output (max|a-b| / max|b|).

Micro-benchmarks (kernel="sdpa" and kernel="mano" rows): F.scaled_dot_product_attention at
(B,H,S,D) = --sdpa-shape (64,16,192,80) in bf16 and fp32 (default backend, then each backend
forced, and the explicit matmul-softmax-matmul of the reference model), and the reference MANO layer
alone at --mano-batch (1024) in fp32.

Every measurement is one JSON object per line in --out (written as soon as it is measured, so a
killed run keeps what it finished); a mode that raises (a torch.compile failure, out of memory) is
recorded with an "error" key and the run goes on. --deadline-s stops starting new measurements
after that many seconds (the rest are recorded as skipped). tests/reference/compare_bench.py
reads the file next to handcov's `bench --json` output. Weights are random (the generator of
reference_model.py, --seed) unless --load-weights gives a safetensors file (SPEC key names, as
written by bench_cpu_torch.py --save-weights). Nothing is downloaded.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime
import json
import math
import os
import platform
import re
import sys
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

DEFAULT_SDPA_SHAPE = {"hamer": (64, 16, 192, 80), "tiny": (4, 4, 48, 32)}
DEFAULT_MANO_BATCH = {"hamer": 1024, "tiny": 64}
COMPILE_LABELS = {
    "default": "",
    "max-autotune-no-cudagraphs": "_autotune",
    "reduce-overhead": "_cudagraphs",
    "max-autotune": "_autotune_cudagraphs",
}
# outputs compared with the eager fp32 forward -> JSON key of max|a-b| / max|b|
ERR_KEYS = {"pred_keypoints_3d": "err_kp3d", "keypoint_3d_cov": "err_cov",
            "pred_vertices": "err_verts"}
MODE_RE = re.compile(r"^(eager|compile)_(fp32|bf16|bf16w)$")


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


# ----------------------------------------------------------------------------------------------
# small helpers
# ----------------------------------------------------------------------------------------------

T0 = time.monotonic()


def log(msg: str):
    print(f"[{time.monotonic() - T0:7.1f} s] {msg}", flush=True)


def parse_ints(text: str, what: str) -> list[int]:
    try:
        vals = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        die(f"{what} must be a comma-separated list of integers, got {text!r}")
    if not vals or any(v <= 0 for v in vals):
        die(f"{what} must list positive integers, got {text!r}")
    return vals


def rel_err(a, b) -> float:
    """max|a-b| / max|b| (DESIGN's error measure), in float64."""
    a, b = a.detach().double(), b.detach().double()
    den = b.abs().max().item()
    num = (a - b).abs().max().item()
    return num / den if den > 0 else num


def sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def time_fn(fn, iters: int, warmup: int, dev) -> list[float]:
    """Per-iteration milliseconds of `fn()` after `warmup` untimed calls. On CUDA, an event pair
    around each call, all calls back to back, one synchronise at the end; on the CPU, a host clock."""
    for _ in range(warmup):
        fn()
    sync(dev)
    if dev.type == "cuda":
        evs = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
               for _ in range(iters)]
        for start, end in evs:
            start.record()
            fn()
            end.record()
        torch.cuda.synchronize(dev)
        return [start.elapsed_time(end) for start, end in evs]
    out = []
    for _ in range(iters):
        t = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t) * 1e3)
    return out


def stats(ms: list[float]) -> dict:
    arr = np.asarray(ms, dtype=np.float64)
    return {"median_ms": round(float(np.median(arr)), 4),
            "p10_ms": round(float(np.percentile(arr, 10)), 4),
            "p90_ms": round(float(np.percentile(arr, 90)), 4),
            "min_ms": round(float(arr.min()), 4)}


def reset_peak(dev):
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)


def peak_mib(dev):
    if dev.type == "cuda":
        return round(torch.cuda.max_memory_allocated(dev) / 2**20, 1)
    return None


def short_error(e: BaseException) -> str:
    msg = " ".join(str(e).split())
    return f"{type(e).__name__}: {msg[:600]}"


def free_memory(dev):
    import gc
    gc.collect()
    if dev.type == "cuda":
        torch.cuda.empty_cache()


class Writer:
    """One JSON object per line, flushed at once; every row carries the common fields."""

    def __init__(self, path, common, append):
        self.path, self.common, self.rows = path, common, []
        self.f = None
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


# ----------------------------------------------------------------------------------------------
# model, weights, inputs
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
            die(f"--load-weights {args.load_weights}: not a readable safetensors file ({short_error(e)})")
        src = args.load_weights
    else:
        sd = R.random_state_dict(config, args.seed, kinds=(args.uncertainty,))
        src = f"random(seed={args.seed})"
    try:
        model = R.model_from_state_dict(config, sd, assign=True)
    except (KeyError, RuntimeError) as e:
        die(f"weights from {src} do not fit preset {args.preset!r} with uncertainty "
            f"{args.uncertainty!r} ({short_error(e)}); pick --preset / --uncertainty to match "
            f"the file")
    del sd
    model = model.float().eval().to(dev)
    nparam = sum(p.numel() for p in model.parameters())
    log(f"model built from {src} in {time.perf_counter() - t:.1f} s: {nparam:,} parameters, "
        f"uncertainty={args.uncertainty}, on {dev}")
    return model, src


def bf16_weights_copy(model):
    """A copy whose parameters are bf16; buffers (MANO, mean parameters) stay fp32."""
    m = copy.deepcopy(model)
    with torch.no_grad():
        for p in m.parameters():
            p.data = p.data.to(torch.bfloat16)
    return m


def make_inputs(seed: int, batch: int, size: int, dev):
    """Smooth, ImageNet-normalised random crops (the fixtures' generator); never zeros."""
    try:
        from make_fixtures import smooth_images
        img = torch.from_numpy(smooth_images(seed, batch, size))
    except ImportError:  # scipy missing: a cheaper smooth field with the same value range
        g = torch.Generator().manual_seed(seed)
        img = torch.randn(batch, 3, size // 8, size // 8, generator=g)
        img = F.interpolate(img, size=(size, size), mode="bilinear", align_corners=False)
        img = (img / img.std()).clamp(-2.0, 2.4)
    return img.to(dev)


def count_gflop(model, img1) -> float | None:
    """FLOPs of one fp32 forward of one image, counted by torch's FlopCounterMode."""
    try:
        from torch.utils.flop_counter import FlopCounterMode
        with torch.inference_mode(), FlopCounterMode(display=False) as fc:
            model(img1)
        return fc.get_total_flops() / 1e9
    except Exception as e:  # noqa: BLE001 - a diagnostic only
        log(f"FLOP count failed ({short_error(e)}); using --gflop-per-image only")
        return None


# ----------------------------------------------------------------------------------------------
# measurements
# ----------------------------------------------------------------------------------------------

def expand_modes(modes: list[str], compile_modes: list[str]):
    """[(label, kind, precision, compile_mode)] in the order asked."""
    out = []
    for m in modes:
        mt = MODE_RE.match(m)
        if not mt:
            die(f"--modes: unknown mode {m!r} (use <eager|compile>_<fp32|bf16|bf16w>, e.g. "
                f"eager_fp32,eager_bf16,compile_bf16)")
        kind, prec = mt.groups()
        if kind == "eager":
            out.append((m, kind, prec, None))
        else:
            for cm in compile_modes:
                out.append((m + COMPILE_LABELS[cm], kind, prec, cm))
    return out


class Bench:
    def __init__(self, args, model, dev, writer, gflop, counted):
        self.args, self.model, self.dev, self.w = args, model, dev, writer
        self.gflop, self.counted = gflop, counted
        self.size = model.config["image_size"]
        self.imgs = make_inputs(args.seed, max(args.batches), self.size, dev)
        self.ref_out = {}            # batch -> eager fp32 outputs (for the error columns)
        self.bf16w_model = None
        self.compiled = {}           # (prec, compile_mode) -> compiled callable
        self.compile_failed = {}     # mode label -> where torch.compile raised (not OOM)

    # -- time budget --------------------------------------------------------------------------
    def out_of_time(self, reserve=0.0) -> bool:
        d = self.args.deadline_s
        return d is not None and time.monotonic() - T0 + reserve > d

    # -- helpers ------------------------------------------------------------------------------
    def variant(self, prec):
        if prec == "bf16w":
            if self.bf16w_model is None:
                self.bf16w_model = bf16_weights_copy(self.model)
            return self.bf16w_model
        return self.model

    def forward_fn(self, kind, prec, cm):
        base = self.variant(prec)
        if kind == "compile":
            key = (prec, cm)
            if key not in self.compiled:
                torch._dynamo.reset()
                self.compiled = {key: torch.compile(
                    base, mode=None if cm == "default" else cm, dynamic=False)}
            base = self.compiled[key]
        if prec == "fp32":
            return base
        dev_type = self.dev.type

        def fwd(x):
            with torch.autocast(dev_type, dtype=torch.bfloat16):
                return base(x)
        return fwd

    def reference(self, batch):
        """Eager fp32 outputs for this batch (one batch kept at a time)."""
        if batch not in self.ref_out:
            with torch.inference_mode():
                out = self.model(self.imgs[:batch].contiguous())
            self.ref_out = {batch: {k: out[k].float() for k in ERR_KEYS if k in out}}
        return self.ref_out[batch]

    def check(self, out, batch, vs_reference: bool):
        """finite flag, and (unless this IS the reference) the error of each ERR_KEYS output."""
        res = {"finite": all(bool(torch.isfinite(v).all()) for v in out.values())}
        if vs_reference:
            ref = self.reference(batch)
            for key, name in ERR_KEYS.items():
                if key in out:
                    res[name] = float(f"{rel_err(out[key], ref[key]):.3e}")
        return res

    # -- the model ----------------------------------------------------------------------------
    def run_model(self, label, kind, prec, cm, batch):
        a = self.args
        row = dict(kernel="model", mode=label, batch=batch, precision=prec, iters=a.iters,
                   compile_mode=cm, gflop_per_image=self.gflop,
                   counted_gflop_per_image=self.counted)
        if label in self.compile_failed:     # do not spend minutes failing again
            log(f"{label} batch {batch}: skipped (torch.compile failed at "
                f"{self.compile_failed[label][:60]})")
            self.w.write(dict(row, error=f"skipped: torch.compile failed at "
                                         f"{self.compile_failed[label]}"))
            return
        reserve = a.compile_reserve_s if kind == "compile" else 0.0
        if self.out_of_time(reserve):
            log(f"{label} batch {batch}: skipped (--deadline-s {a.deadline_s} reached)")
            self.w.write(dict(row, error=f"skipped: --deadline-s {a.deadline_s} reached"))
            return
        x = self.imgs[:batch].contiguous()
        try:
            fn = self.forward_fn(kind, prec, cm)
            compile_s = None
            with torch.inference_mode():
                if kind == "compile":
                    log(f"{label} batch {batch}: compiling (mode={cm}); this can take minutes ...")
                    breaks0 = _graph_breaks()
                    t = time.perf_counter()
                    fn(x)
                    sync(self.dev)
                    compile_s = round(time.perf_counter() - t, 1)
                    row["graph_breaks"] = _graph_breaks() - breaks0
                    log(f"{label} batch {batch}: compiled in {compile_s} s "
                        f"({row['graph_breaks']} graph breaks)")
                log(f"{label} batch {batch}: {a.warmup} warm-up + {a.iters} timed forwards")
                for _ in range(a.warmup):
                    fn(x)
                sync(self.dev)
                reset_peak(self.dev)
                ms = time_fn(lambda: fn(x), a.iters, 0, self.dev)
                peak = peak_mib(self.dev)
                out = fn(x)
            st = stats(ms)
            row.update(st, compile_s=compile_s, peak_mem_mib=peak,
                       images_per_s=round(batch / (st["median_ms"] / 1e3), 2))
            peak_tf = a.peak_tflops_fp32 if prec == "fp32" else a.peak_tflops
            if self.gflop and self.dev.type == "cuda":
                achieved = self.gflop * batch / (st["median_ms"] / 1e3) / 1e3    # TFLOP/s
                row.update(tflops=round(achieved, 2), peak_tflops=peak_tf,
                           mfu=round(achieved / peak_tf, 4))
            else:
                row.update(mfu=None)
            row.update(self.check(out, batch, vs_reference=(kind, prec) != ("eager", "fp32")))
            del out
            log(f"{label} batch {batch}: median {st['median_ms']:.3f} ms (p10 {st['p10_ms']:.3f}, "
                f"p90 {st['p90_ms']:.3f}), {row['images_per_s']:.1f} images/s, "
                f"peak {peak} MiB, MFU {row.get('mfu')}")
        except Exception as e:  # noqa: BLE001 - record and go on (compile failures, OOM)
            log(f"{label} batch {batch}: FAILED: {short_error(e)}")
            traceback.print_exc(limit=-4, file=sys.stdout)
            row["error"] = short_error(e)
            oom = isinstance(e, torch.cuda.OutOfMemoryError) or "out of memory" in str(e)
            if kind == "compile" and not oom:
                self.compile_failed[label] = f"batch {batch}: {row['error'][:200]}"
        self.w.write(row)
        free_memory(self.dev)

    # -- micro-benchmarks ---------------------------------------------------------------------
    def run_sdpa(self):
        a = self.args
        B, H, S, D = a.sdpa_shape
        gflop = 4.0 * B * H * S * S * D / 1e9           # QK^T and PV
        try:
            from torch.nn.attention import SDPBackend, sdpa_kernel
            backends = [("flash", SDPBackend.FLASH_ATTENTION),
                        ("efficient", SDPBackend.EFFICIENT_ATTENTION),
                        ("cudnn", SDPBackend.CUDNN_ATTENTION), ("math", SDPBackend.MATH)]
        except ImportError:
            backends, sdpa_kernel = [], None
        g = torch.Generator(device=self.dev).manual_seed(a.seed)
        for dt_name, dt in (("bf16", torch.bfloat16), ("fp32", torch.float32)):
            if self.out_of_time():
                self.w.write(dict(kernel="sdpa", mode=dt_name, batch=B, shape=[B, H, S, D],
                                  error=f"skipped: --deadline-s {a.deadline_s} reached"))
                continue
            q, k, v = (torch.randn(B, H, S, D, device=self.dev, dtype=dt, generator=g)
                       for _ in range(3))
            scale = D ** -0.5

            def explicit():
                return torch.softmax((q * scale) @ k.transpose(-2, -1), dim=-1) @ v
            variants = [(dt_name, lambda: F.scaled_dot_product_attention(q, k, v), None),
                        (f"{dt_name}:explicit", explicit, None)]
            variants += [(f"{dt_name}:{n}", lambda: F.scaled_dot_product_attention(q, k, v), b)
                         for n, b in backends]
            ref = _sdpa_f64(q, k, v)
            for mode, fn, backend in variants:
                row = dict(kernel="sdpa", mode=mode, batch=B, shape=[B, H, S, D],
                           gflop=round(gflop, 3))
                try:
                    with torch.inference_mode(), (sdpa_kernel(backend) if backend is not None
                                                  else contextlib.nullcontext()):
                        fn()                                     # raises if unsupported
                        reset_peak(self.dev)
                        ms = time_fn(fn, a.micro_iters, a.warmup, self.dev)
                        out = fn()
                except Exception as e:  # noqa: BLE001
                    if backend is not None:                      # not supported here: no row
                        log(f"sdpa {mode}: not available ({short_error(e)[:120]})")
                        continue
                    row["error"] = short_error(e)
                    self.w.write(row)
                    continue
                st = stats(ms)
                row.update(st, peak_mem_mib=peak_mib(self.dev),
                           tflops=round(gflop / st["median_ms"], 2))
                row["err"] = float(f"{rel_err(out.float(), ref):.3e}")
                log(f"sdpa {mode} {B}x{H}x{S}x{D}: median {st['median_ms']:.4f} ms, "
                    f"{row['tflops']} TFLOP/s, err {row['err']}")
                self.w.write(row)
            del q, k, v, ref
            free_memory(self.dev)

    def run_mano(self):
        a = self.args
        n = a.mano_batch
        row = dict(kernel="mano", mode="fp32", batch=n)
        if self.out_of_time():
            self.w.write(dict(row, error=f"skipped: --deadline-s {a.deadline_s} reached"))
            return
        g = torch.Generator(device=self.dev).manual_seed(a.seed + 1)
        eye6 = torch.tensor([1.0, 0, 0, 0, 1.0, 0], device=self.dev)
        pose6d = eye6 + 0.3 * torch.randn(n, R.NUM_MANO_JOINTS, 6, device=self.dev, generator=g)
        rot = R.rot6d_to_rotmat(pose6d)
        go, hp = rot[:, :1].contiguous(), rot[:, 1:].contiguous()
        betas = 0.5 * torch.randn(n, R.NUM_BETAS, device=self.dev, generator=g)
        mano = self.model.mano
        try:
            with torch.inference_mode():
                reset_peak(self.dev)
                ms = time_fn(lambda: mano(go, hp, betas), a.micro_iters, a.warmup, self.dev)
            st = stats(ms)
            row.update(st, peak_mem_mib=peak_mib(self.dev),
                       us_per_hand=round(st["median_ms"] * 1e3 / n, 4))
            log(f"mano fp32 batch {n}: median {st['median_ms']:.4f} ms "
                f"({row['us_per_hand']} us per hand)")
        except Exception as e:  # noqa: BLE001
            row["error"] = short_error(e)
            log(f"mano: FAILED: {row['error']}")
        self.w.write(row)


def _sdpa_f64(q, k, v):
    q, k, v = q.double(), k.double(), v.double()
    return torch.softmax((q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5, dim=-1) @ v


def _graph_breaks() -> int:
    try:
        from torch._dynamo.utils import counters
        return int(sum(counters["graph_break"].values()))
    except Exception:  # noqa: BLE001 - a diagnostic only
        return 0


# ----------------------------------------------------------------------------------------------
# main
# ----------------------------------------------------------------------------------------------

def parse_args():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--device", default="cuda", choices=("cuda", "cpu"),
                    help="cpu = smoke test of the script (use with --preset tiny)")
    ap.add_argument("--preset", default="hamer", choices=("hamer", "tiny"))
    ap.add_argument("--uncertainty", default="ours", choices=R.UNCERTAINTY_TYPES)
    ap.add_argument("--batch", default="1,16,64", help="comma list of batch sizes (1,16,64)")
    ap.add_argument("--iters", type=int, default=50, help="timed forwards per measurement (50)")
    ap.add_argument("--warmup", type=int, default=10, help="untimed forwards before timing (10)")
    ap.add_argument("--micro-iters", type=int, default=None,
                    help="timed calls per micro-benchmark (default 4 x --iters)")
    ap.add_argument("--modes", default="eager_fp32,eager_bf16,compile_bf16",
                    help="comma list of <eager|compile>_<fp32|bf16|bf16w>")
    ap.add_argument("--compile-mode", default="default",
                    help="comma list of torch.compile modes for the compile_* modes: "
                         + ", ".join(COMPILE_LABELS))
    ap.add_argument("--no-micro", action="store_true", help="skip the sdpa and MANO benchmarks")
    ap.add_argument("--micro-only", action="store_true", help="only the sdpa and MANO benchmarks")
    ap.add_argument("--sdpa-shape", default=None, help="B,H,S,D (hamer 64,16,192,80)")
    ap.add_argument("--mano-batch", type=int, default=None, help="(hamer 1024)")
    ap.add_argument("--peak-tflops", type=float, default=989.0,
                    help="dense bf16 peak for MFU (989: H100 SXM)")
    ap.add_argument("--peak-tflops-fp32", type=float, default=67.0,
                    help="fp32 (no tensor cores) peak for the fp32 rows (67: H100 SXM)")
    ap.add_argument("--gflop-per-image", type=float, default=None,
                    help="for MFU (hamer: 254.2 with an uncertainty head, 251.0 without; "
                         "tiny: counted by FlopCounterMode)")
    ap.add_argument("--seed", type=int, default=20250901)
    ap.add_argument("--load-weights", metavar="PATH", help="safetensors with SPEC key names")
    ap.add_argument("--out", metavar="PATH", help="JSONL file, one object per measurement")
    ap.add_argument("--append", action="store_true", help="append to --out instead of replacing")
    ap.add_argument("--deadline-s", type=float, default=None,
                    help="start no measurement after this many seconds from launch")
    ap.add_argument("--compile-reserve-s", type=float, default=90.0,
                    help="a compile measurement starts only with this much time left before "
                         "--deadline-s (90)")
    args = ap.parse_args()
    args.batches = parse_ints(args.batch, "--batch")
    args.compile_modes = [c.strip() for c in args.compile_mode.split(",") if c.strip()]
    for c in args.compile_modes:
        if c not in COMPILE_LABELS:
            die(f"--compile-mode: unknown mode {c!r} (one of: {', '.join(COMPILE_LABELS)})")
    args.mode_list = expand_modes([m.strip() for m in args.modes.split(",") if m.strip()],
                                  args.compile_modes)
    shape = args.sdpa_shape or ",".join(map(str, DEFAULT_SDPA_SHAPE[args.preset]))
    args.sdpa_shape = parse_ints(shape, "--sdpa-shape")
    if len(args.sdpa_shape) != 4:
        die(f"--sdpa-shape needs B,H,S,D, got {shape!r}")
    args.mano_batch = args.mano_batch or DEFAULT_MANO_BATCH[args.preset]
    if args.mano_batch <= 0:
        die("--mano-batch must be positive")
    if args.iters < 2 or args.warmup < 0:
        die("--iters must be >= 2 and --warmup >= 0")
    args.micro_iters = args.micro_iters or 4 * args.iters
    return args


def device_or_die(args):
    if args.device == "cpu":
        return torch.device("cpu"), platform.processor() or platform.machine()
    if not torch.cuda.is_available():
        die(f"no CUDA device is visible to PyTorch {torch.__version__} (built for CUDA "
            f"{torch.version.cuda}; torch.cuda.is_available() is False). Run this on the GPU "
            f"machine (check nvidia-smi and CUDA_VISIBLE_DEVICES), or smoke-test the script with "
            f"--device cpu --preset tiny.")
    try:
        dev = torch.device("cuda", torch.cuda.current_device())
        name = torch.cuda.get_device_name(dev)
    except Exception as e:  # noqa: BLE001 - a broken driver is the machine's state, not a bug
        die(f"the CUDA device could not be initialised ({short_error(e)})")
    return dev, name


def main():
    args = parse_args()
    dev, dev_name = device_or_die(args)
    # TF32 off everywhere: fp32 rows are true fp32; bf16 rows are unaffected (autocast casts).
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    if dev.type == "cpu" and args.preset == "hamer":
        log("warning: the hamer preset on the CPU is very slow; --preset tiny is the smoke test")

    config = json.loads(json.dumps(R.HAMER_CONFIG if args.preset == "hamer" else R.TINY_CONFIG))
    config["uncertainty"] = args.uncertainty
    log(f"torch {torch.__version__} (CUDA {torch.version.cuda}), device {dev_name}, "
        f"preset {args.preset}, uncertainty {args.uncertainty}, batches {args.batches}, "
        f"modes {[m[0] for m in args.mode_list]}")
    model, src = build_model(args, config, dev)

    counted = count_gflop(model, make_inputs(args.seed, 1, config["image_size"], dev))
    gflop = args.gflop_per_image
    if gflop is None:
        gflop = (2 * (125.5 if args.uncertainty == "none" else 127.1) if args.preset == "hamer"
                 else counted)
    if counted is not None:
        log(f"FlopCounterMode: {counted:.4g} GFLOP per image (MFU uses {gflop:.4g})")
        counted = round(counted, 2)

    common = dict(device=dev_name, torch=torch.__version__, cuda=torch.version.cuda,
                  date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                  preset=args.preset, uncertainty=args.uncertainty, weights=src,
                  iters=args.micro_iters, warmup=args.warmup, tf32=False)
    writer = Writer(args.out, common, args.append)
    bench = Bench(args, model, dev, writer, gflop, counted)
    try:
        if not args.no_micro:
            bench.run_sdpa()
            bench.run_mano()
        if not args.micro_only:
            for label, kind, prec, cm in args.mode_list:
                for b in args.batches:
                    bench.run_model(label, kind, prec, cm, b)
    finally:
        writer.close()

    print_summary(writer.rows)
    if args.out:
        log(f"{len(writer.rows)} rows written to {args.out}")


def print_summary(rows):
    print("\n| kernel | mode | batch | median ms | p10 | p90 | images/s | peak MiB | MFU | err |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['kernel']} | {r['mode']} | {r['batch']} | {r['error'][:70]} "
                  f"| | | | | | |")
            continue
        err = r.get("err_kp3d", r.get("err"))
        mfu = r.get("mfu")
        print(f"| {r['kernel']} | {r['mode']} | {r['batch']} | {r['median_ms']:.3f} "
              f"| {r['p10_ms']:.3f} | {r['p90_ms']:.3f} | {_fmt(r.get('images_per_s'), '.1f')} "
              f"| {_fmt(r.get('peak_mem_mib'), '.0f')} "
              f"| {'' if mfu is None else f'{100 * mfu:.1f}%'} | {_fmt(err, '.1e')} |")


def _fmt(v, spec):
    return "" if v is None else format(v, spec)


if __name__ == "__main__":
    main()
