#!/usr/bin/env python3
"""CPU speed baseline: the PyTorch reference at the `hamer` preset (ViT-H/16 + decoder heads).

    python3 tests/reference/bench_cpu_torch.py --threads 2 --batch 1 --iters 5
    python3 tests/reference/bench_cpu_torch.py --uncertainty ours \
        --save-weights scratch/hamer_ours.safetensors --save-input scratch/hamer_input.safetensors
    python3 tests/reference/bench_cpu_torch.py --load-weights scratch/hamer_ours.safetensors \
        --uncertainty ours

Weights are random (deterministic for a given --seed; same generator and init rules as the
tiny fixtures, real MANO sizes). With --save-weights / --save-input the exact fp32 weights
(SPEC key names, ~2.7 GB) and the input `img` [B,3,256,256] are written as safetensors so that
the Rust engine can time itself on identical data; --save-output also writes the fp32 outputs
of the last timed forward. Times the fp32 forward under torch.inference_mode() after warm-up
and prints the median and min milliseconds per image, then one JSON line with the numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections import OrderedDict

import torch
from safetensors import safe_open
from safetensors.torch import save_file

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import reference_model as R  # noqa: E402
from make_fixtures import smooth_images  # noqa: E402



def _save(tensors, path, info):
    tensors = OrderedDict((k, v.contiguous()) for k, v in tensors.items())
    save_file(tensors, path, metadata={"info": json.dumps(info, sort_keys=True)})
    os.chmod(path, 0o644)


def load_weights(path):
    sd = OrderedDict()
    with safe_open(path, framework="pt") as f:
        for k in f.keys():
            sd[k] = f.get_tensor(k)
    return sd


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--iters", type=int, default=5, help="timed iterations")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--uncertainty", default="none", choices=R.UNCERTAINTY_TYPES)
    ap.add_argument("--preset", default="hamer", choices=("hamer", "tiny"),
                    help="tiny = the fixture config (quick check of the script)")
    ap.add_argument("--seed", type=int, default=20250901)
    ap.add_argument("--save-weights", metavar="PATH")
    ap.add_argument("--save-input", metavar="PATH")
    ap.add_argument("--save-output", metavar="PATH")
    ap.add_argument("--load-weights", metavar="PATH")
    ap.add_argument("--load-input", metavar="PATH")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    preset = R.HAMER_CONFIG if args.preset == "hamer" else R.TINY_CONFIG
    config = json.loads(json.dumps(preset))
    config["uncertainty"] = args.uncertainty
    S = config["image_size"]

    t0 = time.perf_counter()
    if args.load_weights:
        sd = load_weights(args.load_weights)
        src = args.load_weights
    else:
        sd = R.random_state_dict(config, args.seed, kinds=(args.uncertainty,))
        src = f"random(seed={args.seed})"
    model = R.model_from_state_dict(config, sd, assign=True).float().eval()
    del sd
    nparam = sum(p.numel() for p in model.parameters())
    print(f"model built from {src} in {time.perf_counter() - t0:.1f} s: "
          f"{nparam:,} parameters, uncertainty={args.uncertainty}", flush=True)

    if args.save_weights:
        t0 = time.perf_counter()
        _save(model.state_dict(), args.save_weights,
              {"generator": "tests/reference/bench_cpu_torch.py", "seed": args.seed,
               "config": config})
        print(f"weights written to {args.save_weights} "
              f"({os.path.getsize(args.save_weights) / 1e9:.2f} GB, "
              f"{time.perf_counter() - t0:.1f} s)", flush=True)

    if args.load_input:
        with safe_open(args.load_input, framework="pt") as f:
            img = f.get_tensor("img")
        assert img.shape[0] == args.batch, "--batch must match the loaded input"
    else:
        img = torch.from_numpy(smooth_images(args.seed, args.batch, S))
    if args.save_input:
        _save(OrderedDict(img=img), args.save_input,
              {"generator": "tests/reference/bench_cpu_torch.py", "seed": args.seed})
        print(f"input written to {args.save_input}", flush=True)

    times = []
    with torch.inference_mode():
        for i in range(args.warmup + args.iters):
            t0 = time.perf_counter()
            out = model(img)
            dt = time.perf_counter() - t0
            tag = "warm-up" if i < args.warmup else "timed  "
            print(f"  {tag} iter {i}: {dt * 1e3:9.1f} ms ({dt * 1e3 / args.batch:9.1f} ms/image)",
                  flush=True)
            if i >= args.warmup:
                times.append(dt / args.batch)
    for k, v in out.items():
        assert torch.isfinite(v).all(), k
    if args.save_output:
        _save(OrderedDict((k, v.float()) for k, v in out.items()), args.save_output,
              {"generator": "tests/reference/bench_cpu_torch.py", "seed": args.seed,
               "precision": "float32"})
        print(f"outputs written to {args.save_output}")

    med, mn = statistics.median(times) * 1e3, min(times) * 1e3
    gflop = None
    if args.preset == "hamer":       # SPEC §11.2: 125.5 / 127.1 G MAC per image
        gflop = 2 * (125.5 if args.uncertainty == "none" else 127.1)
    rate = f" ({gflop / (med / 1e3):.1f} GFLOP/s at {gflop:.0f} GFLOP/image)" if gflop else ""
    print(f"median {med:.1f} ms/image, min {mn:.1f} ms/image{rate}")
    print(json.dumps({
        "bench": "torch_cpu", "preset": args.preset, "uncertainty": args.uncertainty,
        "threads": args.threads, "batch": args.batch, "iters": args.iters,
        "warmup": args.warmup, "median_ms_per_image": round(med, 2),
        "min_ms_per_image": round(mn, 2), "gflop_per_image": gflop,
        "torch": torch.__version__, "cpu": platform.processor() or platform.machine(),
        "weights": src,
    }))


if __name__ == "__main__":
    main()
