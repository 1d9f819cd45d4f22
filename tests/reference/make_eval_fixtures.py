#!/usr/bin/env python3
"""Write the fixtures of tests/eval_metrics.rs, tests/eval_files.rs and tests/eval_cli.rs into
tests/fixtures/eval/ (deterministic: fixed seeds, same bytes on every run).

Every expected number comes from NumPy / SciPy (eval_reference.py restates the reference's
evaluation from SPEC §9.3 / §9.4):

  repr.json         Python's repr(float) of ~1 300 values (bits as decimal u64 strings, since JSON
                    float parsing need not round-trip exactly): special values, powers of ten
                    around the notation switches (1e-05 / 0.0001, 1e+16 / 1e15), random f64
                    across magnitudes, random f32 values cast to f64 (what the writers print)
  procrustes.json   scipy.linalg.orthogonal_procrustes + FreiHAND's align_w_scale: random 21- and
                    778-point sets, reflections (det R = −1), rank-deficient predictions (planar,
                    collinear, all points equal), camera-frame GT vs MANO-frame predictions
  stats.json        simpson (N = 1…9, 49, 50, 51; uniform and non-uniform x), trapz, linspace,
                    percentile (linear), pearsonr with outliers and clipped variants,
                    sparsification (curve, oracle, AUSC, AUSE) on 420 and 2 100 entries, the
                    FreiHAND AUC (EvalUtil.get_measures) on per-part error lists
  kdtree.json       nearest-neighbour distances (cKDTree) and F@5/F@15 on small point sets
  special.json      scipy.stats.chi2.ppf, scipy.special.gammainc, gammaln
  calibration.json  NLL / Mahalanobis / coverage of 12 samples (one not positive definite); the
                    covariances are stored as factors (Σ = L·Lᵀ + diag(d), L 63 × 8, f64), which
                    the test multiplies out (rounding differences ~1e-16 relative)
  e2e.json          the end-to-end set of tests/eval_cli.rs: generator description, checksums of
                    the generated arrays, and the expected scores.txt numbers, aligned variants,
                    calibration and pose metrics

SciPy's `simpson`: the installed SciPy is 1.17.1; the reference pins 1.13.1. Reading both
versions' scipy/integrate/_quadrature.py (1.13.1 from its wheel): for an even number of samples
1.13.1's default (`even=None` → 'simpson') and 1.17.1's only rule are the same code — composite
Simpson on the first N−1 points (`_basic_simpson(y, 0, N-3, ...)`, non-uniform-h formula when x
is given) plus Cartwright's correction α·y[-1] + β·y[-2] − η·y[-3] with the same α, β, η; N = 2
is the trapezoid in both; odd N is `_basic_simpson(y, 0, N-2, ...)` in both. 1.13.1 only adds
the deprecated `even` keyword. So the fixtures from 1.17.1 hold for 1.13.1.

The end-to-end set is generated, not stored: both this script and tests/common/eval_set.rs
compute it from SplitMix64 hashes with the same scalar f64 operations in the same order (see
`E2E` below), so the inputs are bit-identical without committing megabytes of JSON. The predictions,
uncertainties and covariances are cast to f32 (as the engine writes them), the GT stays f64.

Run from the repository root:  python3 tests/reference/make_eval_fixtures.py   (~10 s)
"""

import json
import os
import struct
import sys

import numpy as np
from scipy.integrate import simpson
from scipy.linalg import orthogonal_procrustes
from scipy.special import gammainc, gammaln
from scipy.stats import chi2, pearsonr

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import eval_reference as ref  # noqa: E402

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
OUT = os.path.join(ROOT, "tests", "fixtures", "eval")


def bits(x):
    return str(struct.unpack("<Q", struct.pack("<d", float(x)))[0])


def lst(a):
    return np.asarray(a, dtype=np.float64).tolist()


def dump(name, obj):
    path = os.path.join(OUT, name)
    with open(path, "w") as f:
        json.dump(obj, f, separators=(",", ":"))
        f.write("\n")
    print(f"{name}: {os.path.getsize(path)} bytes")


# ---- repr ------------------------------------------------------------------------------------

def make_repr():
    rng = np.random.default_rng(1)
    vals = [0.0, -0.0, 1.0, -1.0, 0.1, 0.5, 2.0, 10.0, 100.0, 1 / 3, 2 / 3, 123.456, float("nan"),
            float("inf"), float("-inf"), 5e-324, 2.2250738585072014e-308, 1.7976931348623157e308,
            9007199254740993.0, 123456789012345678.0, 0.30000000000000004, 654.0, 53.1]
    for e in range(-8, 20):
        for m in (1.0, 1.5, 9.999999999999998, 9.5):
            vals += [m * 10.0 ** e, -m * 10.0 ** e]
    vals += [10.0 ** e for e in range(-310, 309, 7)]
    vals += list(rng.standard_normal(300) * 10.0 ** rng.integers(-12, 20, 300))
    vals += list(rng.random(300))
    vals += [float(np.float32(v)) for v in rng.standard_normal(300) * 0.1]
    vals += [float(np.float32(v)) for v in rng.random(200) * 1e-5]
    vals += [float(v) for v in (rng.integers(0, 2**62, 100, dtype=np.int64).view(np.float64))
             if np.isfinite(v)]
    vals += [float(v) for v in rng.integers(0, 2**60, 100) * 0.25]  # halfway cases: ties to even
    dump("repr.json", [[bits(v), repr(float(v))] for v in vals])


# ---- Procrustes ------------------------------------------------------------------------------

def rot(rng):
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] *= -1
    return q


def make_procrustes():
    rng = np.random.default_rng(2)
    cases = []

    def add(name, gt, pred, r_unique=True):
        gt, pred = np.asarray(gt, float), np.asarray(pred, float)
        aligned, (R, s, s1, s2, t1, t2) = ref.align_w_scale(gt, pred, return_trafo=True)
        R0, s0 = orthogonal_procrustes(gt, pred)
        cases.append({"name": name, "gt": lst(gt), "pred": lst(pred), "aligned": lst(aligned),
                      "r": lst(R), "s": float(s), "s1": float(s1), "s2": float(s2),
                      "r_unique": r_unique, "det_r": float(np.linalg.det(R)),
                      "op_r": lst(R0), "op_scale": float(s0)})

    hand = rng.standard_normal((21, 3)) * [0.04, 0.03, 0.015]
    for k in range(4):  # camera-frame GT vs MANO-frame prediction
        gt = hand @ rot(rng).T * (1 + 0.1 * k) + [0.05 * k, -0.02, 0.6 + 0.1 * k]
        pred = hand + rng.standard_normal((21, 3)) * 0.004 * (k + 1)
        add(f"joints_{k}", gt, pred)
    gt = hand + [0.0, 0.0, 0.7]
    add("reflection", gt, hand * [-1.0, 1.0, 1.0] + rng.standard_normal((21, 3)) * 0.002)
    add("reflection_exact", hand, hand @ np.diag([1.0, -1.0, 1.0]))
    add("identity", hand, hand)
    add("pure_scale_shift", hand, hand * 0.5 + 3.0)
    planar = hand.copy()
    planar[:, 2] = 0.0
    add("pred_planar", hand + [0, 0, 0.5], planar @ rot(rng).T, r_unique=False)
    add("both_planar", planar @ rot(rng).T + 0.3, planar + rng.standard_normal((21, 3)) * [0.003, 0.003, 0.0],
        r_unique=False)
    line = np.outer(np.linspace(-1, 1, 21), [0.02, 0.05, -0.03])
    add("pred_collinear", hand, line, r_unique=False)
    add("pred_single_point", hand, np.tile([0.1, 0.2, 0.3], (21, 1)), r_unique=False)
    verts = rng.standard_normal((300, 3)) * [0.04, 0.03, 0.015]
    add("verts", verts @ rot(rng).T + [0, 0.1, 0.8], verts + rng.standard_normal((300, 3)) * 0.003)
    add("tiny_set", rng.standard_normal((4, 3)), rng.standard_normal((4, 3)))
    dump("procrustes.json", cases)


# ---- statistics ------------------------------------------------------------------------------

def make_stats():
    rng = np.random.default_rng(3)
    out = {}
    simp = []
    for n in list(range(1, 10)) + [49, 50, 51]:
        y = rng.standard_normal(n)
        for kind in ("uniform", "nonuniform"):
            if kind == "uniform":
                x = np.arange(2.0, 2.0 * n + 1, 2.0)
            else:
                x = np.cumsum(rng.random(n) + 0.1)
            simp.append({"x": lst(x), "y": lst(y), "simpson": float(simpson(y, x=x))})
    x = np.arange(2, 101, 2)
    y = np.linspace(8.0, 5.0, 50) + rng.random(50)
    simp.append({"x": lst(x), "y": lst(y), "simpson": float(simpson(y, x=x))})
    simp.append({"x": [0.0, 1.0, 1.0, 2.0], "y": [1.0, 2.0, 3.0, 4.0],
                 "simpson": float(simpson([1.0, 2.0, 3.0, 4.0], x=[0.0, 1.0, 1.0, 2.0]))})
    out["simpson"] = simp
    tz = []
    for n in (2, 5, 100):
        xx, yy = np.sort(rng.random(n)), rng.random(n)
        tz.append({"x": lst(xx), "y": lst(yy), "trapz": float(ref.trapz(yy, xx))})
    out["trapz"] = tz
    out["linspace_0_005_100"] = [bits(v) for v in np.linspace(0.0, 0.05, 100)]
    perc = []
    for n in (1, 2, 7, 100, 1001):
        v = rng.standard_normal(n)
        qs = [0, 1, 5, 25, 50, 95, 99, 100]
        perc.append({"v": lst(v), "q": qs, "p": lst(np.percentile(v, qs))})
    out["percentile"] = perc
    pear = []
    for n, outliers in ((50, 0), (400, 5), (2000, 30)):
        e = rng.random(n) * 0.05
        u = 0.3 * e + rng.random(n) * 0.02
        idx = rng.choice(n, outliers, replace=False)
        u[idx] *= 50.0
        lo1, hi1 = np.percentile(u, [1, 99])
        lo5, hi5 = np.percentile(u, [5, 95])
        pear.append({"e": lst(e), "u": lst(u), "r": float(pearsonr(e, u).statistic),
                     "r_1_99": float(pearsonr(e, np.clip(u, lo1, hi1)).statistic),
                     "r_5_95": float(pearsonr(e, np.clip(u, lo5, hi5)).statistic)})
    out["pearson"] = pear
    spars = []
    for n in (20, 100):
        m = 21 * n
        e = np.abs(rng.standard_normal(m)) * 0.05 + 0.5
        u = 0.5 * e + rng.random(m) * 0.1
        u[rng.choice(m, 10, replace=False)] *= 20.0
        assert len(np.unique(u)) == m
        x, curve, oracle, ausc, ause = ref.sparsification(10 * e, u)
        ks = [int(m * (p / 100)) for p in range(2, 101, 2)]
        spars.append({"e": lst(10 * e), "u": lst(u), "curve": lst(curve), "oracle": lst(oracle),
                      "ausc": float(ausc), "ause": float(ause), "k": ks})
        # The reference's scores on joint-major lists of this size.
    out["sparsification"] = spars
    # M = 83 160 (FreiHAND): the k of p = 70 differs from exact integer arithmetic.
    out["k_freihand"] = [int(83160 * (p / 100)) for p in range(2, 101, 2)]
    scores = []
    for n in (30,):
        err = [np.abs(rng.standard_normal(n)) * 0.02 + 0.6 for _ in range(21)]
        unc = [0.001 * err[j] + rng.random(n) * 1e-4 for j in range(21)]
        scores.append({"n": n, "e": lst(np.concatenate(err)), "u": lst(np.concatenate(unc)),
                       "scores": ref.scores_from_errors(err, unc)})
    out["scores"] = scores
    aucs = []
    for parts, n in ((5, 30), (21, 40)):
        data = np.abs(rng.standard_normal((parts, n))) * 0.02
        data[0, :3] = [0.0, 0.05, 0.05 / 99 * 7]  # values on the thresholds
        mean, auc = ref.measures(data)
        aucs.append({"errors": lst(data), "mean": mean, "auc": auc})
    out["auc"] = aucs
    dump("stats.json", out)


# ---- k-d tree and F-scores -------------------------------------------------------------------

def make_kdtree():
    rng = np.random.default_rng(4)
    cases = []
    for n_pts, n_q in ((1, 5), (9, 20), (200, 300), (500, 100)):
        pts = rng.standard_normal((n_pts, 3)) * 0.03
        q = rng.standard_normal((n_q, 3)) * 0.03
        if n_pts > 9:
            pts[5:15] = pts[5]  # duplicates
            q[:10] = pts[rng.choice(n_pts, 10)]  # queries on points
        cases.append({"points": lst(pts), "queries": lst(q), "dist": lst(ref.nn_dist(q, pts))})
    fs = []
    for n in (30, 150, 400):
        gt = rng.standard_normal((n, 3)) * 0.03
        pr = gt + rng.standard_normal((n + 7, 3))[:n] * 0.004
        pr = np.concatenate([pr, rng.standard_normal((5, 3)) * 0.05])
        fs.append({"gt": lst(gt), "pred": lst(pr),
                   "f5": ref.fscore(gt, pr, 0.005), "f15": ref.fscore(gt, pr, 0.015)})
    for n in (100, 250):  # same size, corresponding points (mesh vertices)
        gt = rng.standard_normal((n, 3)) * 0.03
        pr = gt + rng.standard_normal((n, 3)) * 0.004
        fs.append({"gt": lst(gt), "pred": lst(pr),
                   "f5": ref.fscore(gt, pr, 0.005), "f15": ref.fscore(gt, pr, 0.015)})
    far = rng.standard_normal((20, 3))
    fs.append({"gt": lst(far), "pred": lst(far + 10.0), "f5": 0.0, "f15": 0.0})
    dump("kdtree.json", {"nearest": cases, "fscore": fs})


# ---- special functions -----------------------------------------------------------------------

def make_special():
    qs = [1e-6, 0.01, 0.05, 0.3, 0.5, 0.9, 0.95, 0.99, 0.999]
    ks = [1, 2, 3, 5, 10, 59, 60, 63, 100, 250]
    ppf = [{"q": q, "k": k, "x": float(chi2.ppf(q, k))} for q in qs for k in ks]
    gi = []
    for a in (0.5, 1.0, 1.5, 7.3, 30.0, 31.5, 125.0):
        for x in (1e-3, 0.5, 1.0, 5.0, 29.0, 31.5, 40.0, 200.0):
            gi.append({"a": a, "x": x, "p": float(gammainc(a, x))})
    gl = [{"x": x, "lgamma": float(gammaln(x))} for x in
          (0.5, 1.0, 1.5, 2.0, 3.7, 10.0, 14.999, 15.0, 31.5, 100.0, 1e4)]
    dump("special.json", {"chi2_ppf": ppf, "gammainc": gi, "gammaln": gl})


# ---- calibration -----------------------------------------------------------------------------

def make_calibration():
    rng = np.random.default_rng(5)
    n = 12
    hand = rng.standard_normal((21, 3)) * [0.04, 0.03, 0.015]
    gt, pred, cov, factors = [], [], [], []
    for i in range(n):
        L = rng.standard_normal((63, 8)) * 0.002 / np.sqrt(8)
        D = rng.random(63) * 1e-5 + 1e-6
        S = L @ L.T + np.diag(D)
        p = hand + rng.standard_normal((21, 3)) * 0.001
        r = (np.linalg.cholesky(0.5 * (S + S.T)) @ rng.standard_normal(63)).reshape(21, 3)
        g = p + r * (0.5 + 0.25 * (i % 4))  # over- and under-dispersed samples
        if i % 3 == 1:  # a camera-frame GT: rotated and moved
            g = g @ rot(rng).T + [0.02, -0.01, 0.6]
        if i == 4:
            D[10] = -1e-2  # not positive definite
            S = L @ L.T + np.diag(D)
        gt.append(g)
        pred.append(p)
        cov.append(S)
        factors.append({"l": lst(L), "d": lst(D)})
    gt, pred, cov = np.array(gt), np.array(pred), np.array(cov)
    res = ref.calibration(gt, pred, cov)
    dump("calibration.json", {"gt": lst(gt), "pred": lst(pred), "cov_factors": factors,
                              "expected": res})


# ---- end-to-end set (mirrored in tests/common/eval_set.rs) ------------------------------------

MASK = (1 << 64) - 1


def splitmix64(x):
    z = (x + 0x9E3779B97F4A7C15) & MASK
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
    return z ^ (z >> 31)


def u(stream, i):
    return float(splitmix64((stream << 32) + i) >> 11) * 2.0 ** -53


SIZE = [0.10, 0.08, 0.03]
E2E = """N = 40 samples. u(s, i) = (splitmix64((s << 32) + i) >> 11) * 2^-53. With v in 0..778,
j in 0..21, c in 0..3, i in 0..N, all scalar f64 operations evaluated left to right:
T[v][c] = (u(1, 3v+c) - 0.5) * SIZE[c], SIZE = [0.10, 0.08, 0.03]
off[i] = [(u(2,3i) - 0.5) * 0.2, (u(2,3i+1) - 0.5) * 0.2, 0.5 + u(2,3i+2) * 0.5]
s[i] = 0.9 + 0.2 * u(3, i);  noise[i] = 0.002 + 0.02 * u(6, i)
rot(x) = [x0*0.6 + x1*-0.8 + x2*0.0, x0*0.8 + x1*0.6 + x2*0.0, x0*0.0 + x1*0.0 + x2*1.0]
gt_verts[i][v][c] = T[v][c] * s[i] + off[i][c] + (u(4, (778i+v)*3+c) - 0.5) * 0.002
pred_verts[i][v][c] = rot(T[v])[c] + (u(5, (778i+v)*3+c) - 0.5) * noise[i]          (-> f32)
jv(j) = (37 j) mod 778
gt_xyz[i][j][c] = T[jv][c] * s[i] + off[i][c] + (u(7, (21i+j)*3+c) - 0.5) * 0.002
pred_xyz[i][j][c] = rot(T[jv])[c] + (u(8, (21i+j)*3+c) - 0.5) * noise[i] * 2.0     (-> f32)
unc[i][j] = noise[i] * noise[i] * (0.5 + u(9, 21i+j))                              (-> f32)
cv[a] = (u(10, 63i+a) - 0.5) * noise[i];  d[a] = noise[i] * noise[i] * (0.2 + 0.3 * u(11, 63i+a)),
        except d[5] = -1.0 for i = 7 (not positive definite)
cov[i][a][b] = cv[a] * cv[b] + (d[a] if a == b else 0.0)                            (-> f32)"""


def make_e2e():
    n = 40
    T = [[(u(1, 3 * v + c) - 0.5) * SIZE[c] for c in range(3)] for v in range(778)]

    def rot3(x):
        return [x[0] * 0.6 + x[1] * -0.8 + x[2] * 0.0,
                x[0] * 0.8 + x[1] * 0.6 + x[2] * 0.0,
                x[0] * 0.0 + x[1] * 0.0 + x[2] * 1.0]

    RT = [rot3(t) for t in T]
    gv, pv, gx, px, un, cov = [], [], [], [], [], []
    for i in range(n):
        off = [(u(2, 3 * i) - 0.5) * 0.2, (u(2, 3 * i + 1) - 0.5) * 0.2, 0.5 + u(2, 3 * i + 2) * 0.5]
        s = 0.9 + 0.2 * u(3, i)
        noise = 0.002 + 0.02 * u(6, i)
        gv.append([[T[v][c] * s + off[c] + (u(4, (778 * i + v) * 3 + c) - 0.5) * 0.002
                    for c in range(3)] for v in range(778)])
        pv.append([[RT[v][c] + (u(5, (778 * i + v) * 3 + c) - 0.5) * noise for c in range(3)]
                   for v in range(778)])
        gx.append([[T[(37 * j) % 778][c] * s + off[c] + (u(7, (21 * i + j) * 3 + c) - 0.5) * 0.002
                    for c in range(3)] for j in range(21)])
        px.append([[RT[(37 * j) % 778][c] + (u(8, (21 * i + j) * 3 + c) - 0.5) * noise * 2.0
                    for c in range(3)] for j in range(21)])
        un.append([noise * noise * (0.5 + u(9, 21 * i + j)) for j in range(21)])
        cv = [(u(10, 63 * i + a) - 0.5) * noise for a in range(63)]
        d = [noise * noise * (0.2 + 0.3 * u(11, 63 * i + a)) for a in range(63)]
        if i == 7:
            d[5] = -1.0
        cov.append([[cv[a] * cv[b] + (d[a] if a == b else 0.0) for b in range(63)] for a in range(63)])
    f32 = lambda a: np.asarray(a, dtype=np.float64).astype(np.float32).astype(np.float64)
    gv, gx = np.array(gv), np.array(gx)
    pv, px, un, cov = f32(pv), f32(px), f32(un), f32(cov)
    assert len(np.unique(un)) == un.size, "ties in the uncertainties"
    checks = {name: float(np.sum(a)) for name, a in
              (("gt_verts", gv), ("pred_verts", pv), ("gt_xyz", gx), ("pred_xyz", px), ("unc", un),
               ("cov", cov))}
    first = {name: [bits(v) for v in np.asarray(a).reshape(-1)[:5]] for name, a in
             (("gt_verts", gv), ("pred_verts", pv), ("gt_xyz", gx), ("pred_xyz", px), ("unc", un),
              ("cov", cov))}
    out = {
        "generator": E2E,
        "n": n,
        "sums": checks,
        "first_bits": first,
        "scores_txt": ref.uncertainty_scores(gx, px, un),
        "root_aligned": ref.uncertainty_scores(gx, px, un, "root"),
        "procrustes_aligned": ref.uncertainty_scores(gx, px, un, "procrustes"),
        "calibration": ref.calibration(gx, px, cov),
        "pose": ref.pose_metrics(gx, gv, px, pv),
        "versions": ref.versions(),
    }
    dump("e2e.json", out)


if __name__ == "__main__":
    os.makedirs(OUT, exist_ok=True)
    make_repr()
    make_procrustes()
    make_stats()
    make_kdtree()
    make_special()
    make_calibration()
    make_e2e()
