#!/usr/bin/env python3
"""Compare two safetensors dumps tensor by tensor: max|a - b| / max|b| (the project's error
measure), b being the reference. Used to check `infer --dump` against the PyTorch reference's
`--save-output` on the same weights and input:

    python3 tests/reference/compare_dumps.py scratch/rust_out.safetensors scratch/torch_out.safetensors
"""
import sys

import numpy as np
from safetensors.numpy import load_file


def main() -> int:
    if len(sys.argv) != 3:
        print("usage: compare_dumps.py OURS.safetensors REFERENCE.safetensors", file=sys.stderr)
        return 2
    ours, ref = load_file(sys.argv[1]), load_file(sys.argv[2])
    worst = 0.0
    for name in sorted(ref):
        if name not in ours:
            print(f"{name:22s} missing from {sys.argv[1]}")
            worst = float("inf")
            continue
        a, b = ours[name].astype(np.float64), ref[name].astype(np.float64)
        if a.shape != b.shape:
            print(f"{name:22s} shape {a.shape} vs {b.shape}")
            worst = float("inf")
            continue
        den = np.abs(b).max()
        err = np.abs(a - b).max() / den if den > 0 else np.abs(a - b).max()
        worst = max(worst, err)
        print(f"{name:22s} {str(b.shape):20s} rel err {err:.2e}")
    print(f"worst {worst:.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
