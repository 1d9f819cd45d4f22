#!/usr/bin/env python3
"""Timing baseline for `eval pose` and `eval uncertainty`: the reference's computation in Python.

  uncertainty  uncertainty_eval/eval_uncertainty.py's logic (SPEC §9.3): loads the predictions,
               the uncertainties and evaluation_xyz.json (+ evaluation_verts.json, loaded but
               unused, as the reference does), prints the five lines of scores.txt
  pose         FreiHAND's official eval.py procedure (SPEC §9.4): align_w_scale per sample,
               PA-MPJPE / PA-MPVPE / AUC / F@5 / F@15 (nearest neighbours by scipy cKDTree, since
               open3d is not installed), plus MPJPE and root-aligned MPJPE
  make-data    a synthetic FreiHAND-sized set in the reference's layout (default N = 3960):
               OUT/results/bench/freihand-val.json (f32 predictions, MANO frame: hand-sized,
               wrist near the origin), freihand-val_uncertainty.json, freihand-val_covariance
               .safetensors (f32 [N, 63, 63]), OUT/gt/evaluation_{xyz,verts}.json (f64, camera
               frame: random rotation, z 0.5–1.0 m)

The metric code is eval_reference.py's (shared with the fixture script). Each command prints its
wall time split into loading and computing.

  python3 tests/reference/eval_reference_python.py make-data --out scratch/evalbench
  python3 tests/reference/eval_reference_python.py pose --pred scratch/evalbench/results/bench/freihand-val.json \\
          --gt-dir scratch/evalbench/gt
  python3 tests/reference/eval_reference_python.py uncertainty --dataset freihand --exp bench \\
          --pred-dir scratch/evalbench/results --gt-dir scratch/evalbench/gt
"""

import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import eval_reference as ref  # noqa: E402


def load(path):
    with open(path) as f:
        return json.load(f)


def cmd_pose(a):
    t0 = time.perf_counter()
    pred = load(a.pred)
    xyz = load(os.path.join(a.gt_dir, "evaluation_xyz.json"))
    verts = load(os.path.join(a.gt_dir, "evaluation_verts.json"))
    gx, gv = np.array(xyz), np.array(verts)
    px, pv = np.array(pred[0]), np.array(pred[1])
    t1 = time.perf_counter()
    m = ref.pose_metrics(gx, gv, px, pv)
    t2 = time.perf_counter()
    for k, v in m.items():
        print(f"{k}: {v}")
    print(f"time: load {t1 - t0:.2f} s, metrics {t2 - t1:.2f} s, total {t2 - t0:.2f} s")


def cmd_uncertainty(a):
    t0 = time.perf_counter()
    d = os.path.join(a.pred_dir, a.exp)
    pred = load(os.path.join(d, f"{a.dataset}-val.json"))
    unc = load(os.path.join(d, f"{a.dataset}-val_uncertainty.json"))[0]
    gx = np.array(load(os.path.join(a.gt_dir, "evaluation_xyz.json")))
    load(os.path.join(a.gt_dir, "evaluation_verts.json"))  # loaded but unused, as the reference
    t1 = time.perf_counter()
    s = ref.uncertainty_scores(gx, np.array(pred[0]), unc)
    t2 = time.perf_counter()
    for label, v in zip(["Pearson Correlation", "Pearson Correlation_1_99",
                         "Pearson Correlation_5_95", "AUSC", "AUSE"], s):
        print(f"{label}: {v!r}")
    print(f"time: load {t1 - t0:.2f} s, metrics {t2 - t1:.2f} s, total {t2 - t0:.2f} s")


def random_rotations(rng, n):
    q = rng.standard_normal((n, 4))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    w, x, y, z = q.T
    return np.stack([
        np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)], -1),
        np.stack([2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)], -1),
        np.stack([2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)], -1),
    ], 1)


def cmd_make_data(a):
    from safetensors.numpy import save_file

    rng = np.random.default_rng(a.seed)
    n = a.n
    # A hand-sized template: 778 vertices in an ellipsoid ~ 18 × 9 × 3 cm, wrist at the origin.
    tv = rng.standard_normal((778, 3)) * [0.045, 0.022, 0.008] + [0.09, 0.0, 0.0]
    tj = tv[rng.choice(778, 21, replace=False)]
    tj[0] = 0.0
    # Per-sample articulation: a smooth random deformation (a few mm to ~2 cm).
    defo = rng.standard_normal((n, 1, 3)) * 0.01 * (tv[None, :, :1] / 0.18)
    gt_v_local = tv[None] + defo + rng.standard_normal((n, 778, 3)) * 0.002
    gt_j_local = tj[None] + defo[:, :1] * (tj[None, :, :1] / 0.18) + rng.standard_normal((n, 21, 3)) * 0.002
    R = random_rotations(rng, n)
    t = np.stack([rng.uniform(-0.15, 0.15, n), rng.uniform(-0.15, 0.15, n), rng.uniform(0.5, 1.0, n)], -1)
    gt_v = np.einsum("nij,nvj->nvi", R, gt_v_local) + t[:, None]
    gt_j = np.einsum("nij,nvj->nvi", R, gt_j_local) + t[:, None]
    # Predictions in the MANO frame: the local shape plus per-sample error (2–15 mm).
    level = rng.uniform(0.002, 0.015, n)
    pv = (gt_v_local + rng.standard_normal((n, 778, 3)) * level[:, None, None]).astype(np.float32)
    pj = (gt_j_local + rng.standard_normal((n, 21, 3)) * level[:, None, None]).astype(np.float32)
    unc = (3 * level[:, None] ** 2 * rng.uniform(0.5, 1.5, (n, 21))).astype(np.float32)
    L = rng.standard_normal((n, 63, 16)) * level[:, None, None] / 4
    cov = (L @ L.transpose(0, 2, 1) + np.eye(63)[None] * (level ** 2)[:, None, None]).astype(np.float32)

    res = os.path.join(a.out, "results", "bench")
    gt = os.path.join(a.out, "gt")
    os.makedirs(res, exist_ok=True)
    os.makedirs(gt, exist_ok=True)
    with open(os.path.join(res, "freihand-val.json"), "w") as f:
        json.dump([pj.tolist(), pv.tolist()], f)
    with open(os.path.join(res, "freihand-val_uncertainty.json"), "w") as f:
        json.dump([unc.tolist()], f)
    save_file({"covariance": cov}, os.path.join(res, "freihand-val_covariance.safetensors"),
              metadata={"uncertainty": "ours"})
    with open(os.path.join(gt, "evaluation_xyz.json"), "w") as f:
        json.dump(gt_j.tolist(), f)
    with open(os.path.join(gt, "evaluation_verts.json"), "w") as f:
        json.dump(gt_v.tolist(), f)
    for root, _, files in os.walk(a.out):
        for fn in sorted(files):
            p = os.path.join(root, fn)
            print(f"{p}: {os.path.getsize(p) / 1e6:.1f} MB")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("pose")
    s.add_argument("--pred", required=True)
    s.add_argument("--gt-dir", required=True)
    s = sub.add_parser("uncertainty")
    s.add_argument("--dataset", default="freihand")
    s.add_argument("--exp", required=True)
    s.add_argument("--pred-dir", required=True)
    s.add_argument("--gt-dir", required=True)
    s = sub.add_parser("make-data")
    s.add_argument("--out", required=True)
    s.add_argument("--n", type=int, default=3960)
    s.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    {"pose": cmd_pose, "uncertainty": cmd_uncertainty, "make-data": cmd_make_data}[a.cmd](a)


if __name__ == "__main__":
    main()
