"""The evaluation reference in NumPy / SciPy, restated from SPEC.md §9.3 and §9.4 (not copied).

Shared by make_eval_fixtures.py (the fixtures of tests/eval_metrics.rs and tests/eval_cli.rs)
and eval_reference_python.py (the timing baseline for `eval pose` / `eval uncertainty`).

* `align_w_scale`, `fscore`, `pose_metrics`: FreiHAND's official `eval.py` procedure. Its F-score
  uses open3d's `compute_point_cloud_distance`; open3d is not installed here, so the
  nearest-neighbour distances come from `scipy.spatial.cKDTree` (exact, like open3d's).
* `uncertainty_scores`: the logic of `uncertainty_eval/eval_uncertainty.py` (SPEC §9.3).
* `calibration`: handcov's calibration (SPEC §15b.3), written with explicit matrices
  (A Σ Aᵀ, (I⊗cR) Σ (I⊗cR)ᵀ built as 60×63 / 63×63 matrices) as an independent check of the
  Rust block formulas.
"""

import numpy as np
import scipy
from scipy.integrate import simpson
from scipy.linalg import orthogonal_procrustes
from scipy.spatial import cKDTree
from scipy.stats import chi2, pearsonr

trapz = getattr(np, "trapz", None) or np.trapezoid


# ---- pose (SPEC §9.4) ------------------------------------------------------------------------

def align_w_scale(mtx1, mtx2, return_trafo=False):
    """Align mtx2 (prediction) to mtx1 (ground truth): centre, unit Frobenius norm (+1e-8),
    orthogonal Procrustes (reflections allowed), scale by s·s1, move to mtx1's centroid."""
    t1 = mtx1.mean(0)
    t2 = mtx2.mean(0)
    m1 = mtx1 - t1
    m2 = mtx2 - t2
    s1 = np.linalg.norm(m1) + 1e-8
    m1 = m1 / s1
    s2 = np.linalg.norm(m2) + 1e-8
    m2 = m2 / s2
    R, s = orthogonal_procrustes(m1, m2)
    out = np.dot(m2, R.T) * s
    out = out * s1
    out = out + t1
    if return_trafo:
        return out, (R, s, s1, s2, t1, t2)
    return out


def nn_dist(src, dst):
    """For every point of src, the distance to its nearest neighbour in dst."""
    d, _ = cKDTree(dst).query(src, k=1)
    return d


def fscore(gt, pr, th):
    d1 = nn_dist(gt, pr)  # per GT point
    d2 = nn_dist(pr, gt)  # per predicted point
    a = float(np.sum(d2 < th)) / len(d2)
    b = float(np.sum(d1 < th)) / len(d1)
    return 2 * a * b / (a + b) if a + b > 0 else 0.0


def measures(data):
    """EvalUtil.get_measures(0, 0.05, 100) on data[part] = list of errors: (mean EPE, AUC)."""
    thresholds = np.linspace(0.0, 0.05, 100)
    norm = trapz(np.ones_like(thresholds), thresholds)
    means, aucs = [], []
    for part in data:
        part = np.asarray(part)
        means.append(np.mean(part))
        pck = np.array([np.mean((part <= t).astype("float")) for t in thresholds])
        aucs.append(trapz(pck, thresholds) / norm)
    return float(np.mean(means)), float(np.mean(aucs))


def pose_metrics(gt_xyz, gt_verts, pred_xyz, pred_verts):
    n = len(gt_xyz)
    ej, ejr, ejpa, evpa, f5, f15 = [], [], [], [], [], []
    for i in range(n):
        g, p = gt_xyz[i], pred_xyz[i]
        ej.append(np.sqrt(np.sum((g - p) ** 2, axis=1)))
        ejr.append(np.sqrt(np.sum(((g - g[0]) - (p - p[0])) ** 2, axis=1)))
        pa = align_w_scale(g, p)
        ejpa.append(np.sqrt(np.sum((g - pa) ** 2, axis=1)))
        gv = gt_verts[i]
        pv = align_w_scale(gv, pred_verts[i])
        evpa.append(np.sqrt(np.sum((gv - pv) ** 2, axis=1)))
        f5.append(fscore(gv, pv, 0.005))
        f15.append(fscore(gv, pv, 0.015))
    by_part = lambda rows: np.array(rows).T
    pa_mpjpe, auc_j = measures(by_part(ejpa))
    pa_mpvpe, auc_v = measures(by_part(evpa))
    return {
        "n": n,
        "pa_mpjpe_mm": 1000.0 * pa_mpjpe,
        "pa_mpvpe_mm": 1000.0 * pa_mpvpe,
        "auc_j": auc_j,
        "auc_v": auc_v,
        "f5": float(np.mean(f5)),
        "f15": float(np.mean(f15)),
        "mpjpe_mm": 1000.0 * measures(by_part(ej))[0],
        "root_mpjpe_mm": 1000.0 * measures(by_part(ejr))[0],
    }


# ---- uncertainty (SPEC §9.3) -----------------------------------------------------------------

def sparsification(E, U):
    """E, U flat (M entries). Returns (x, curve, oracle, AUSC, AUSE)."""
    M = len(E)
    idx_u = np.argsort(U)
    idx_o = np.argsort(E)
    x = np.arange(2, 101, 2)
    curve, oracle = [], []
    for p in x:
        k = int(M * (p / 100))
        curve.append(np.mean(E[idx_u[:k]]))
        oracle.append(np.mean(E[idx_o[:k]]))
    curve, oracle = np.array(curve), np.array(oracle)
    return x, curve, oracle, simpson(curve, x=x), simpson(curve - oracle, x=x)


def scores_from_errors(err, unc):
    """err, unc: [21][N] joint-major lists. The five numbers of scores.txt."""
    e_nw = np.concatenate([err[j] for j in range(1, 21)])
    u_nw = np.concatenate([unc[j] for j in range(1, 21)])
    r = pearsonr(e_nw, u_nw).statistic
    lo, hi = np.percentile(u_nw, [1, 99])
    r1 = pearsonr(e_nw, np.clip(u_nw, lo, hi)).statistic
    lo, hi = np.percentile(u_nw, [5, 95])
    r5 = pearsonr(e_nw, np.clip(u_nw, lo, hi)).statistic
    E = 10 * np.concatenate([err[j] for j in range(21)])
    U = np.concatenate([unc[j] for j in range(21)])
    _, _, _, ausc, ause = sparsification(E, U)
    return [float(r), float(r1), float(r5), float(ausc), float(ause)]


def joint_errors(gt, pred, how):
    """Joint-major [21][N] errors; how = 'none' | 'root' | 'procrustes'."""
    n = len(gt)
    err = [[] for _ in range(21)]
    for i in range(n):
        g, p = gt[i], pred[i]
        if how == "root":
            g, p = g - g[0], p - p[0]
        elif how == "procrustes":
            p = align_w_scale(g, p)
        d = np.sqrt(np.sum((g - p) ** 2, axis=1))
        for j in range(21):
            err[j].append(d[j])
    return [np.array(e) for e in err]


def uncertainty_scores(gt_xyz, pred_xyz, unc_list, how="none"):
    unc = [np.array([unc_list[i][j] for i in range(len(unc_list))]) for j in range(21)]
    return scores_from_errors(joint_errors(gt_xyz, pred_xyz, how), unc)


# ---- calibration (SPEC §15b.3) ---------------------------------------------------------------

def root_matrix():
    A = np.zeros((60, 63))
    for j in range(1, 21):
        for c in range(3):
            A[3 * (j - 1) + c, 3 * j + c] = 1.0
            A[3 * (j - 1) + c, c] = -1.0
    return A


def gaussian_terms(d, S):
    S = 0.5 * (S + S.T)
    try:
        L = np.linalg.cholesky(S)
    except np.linalg.LinAlgError:
        return None
    z = np.linalg.solve(L, d)
    return float(z @ z), float(2.0 * np.sum(np.log(np.diag(L))))


def calibration(gt_xyz, pred_xyz, cov):
    """cov: [N, 63, 63] (f64 of the stored f32). Per variant: k, n_used, n_not_pd, nll,
    mahalanobis_sq mean, coverage at 0.5/0.9/0.95, chi2 thresholds."""
    A = root_matrix()
    terms = {"unaligned": [], "root_relative": [], "procrustes_aligned": []}
    for i in range(len(gt_xyz)):
        g, p, S = gt_xyz[i], pred_xyz[i], cov[i]
        S = 0.5 * (S + S.T)
        terms["unaligned"].append(gaussian_terms((g - p).reshape(-1), S))
        terms["root_relative"].append(gaussian_terms(A @ (g - p).reshape(-1), A @ S @ A.T))
        pa, (R, s, s1, s2, _, _) = align_w_scale(g, p, return_trafo=True)
        B = np.kron(np.eye(21), (s * s1 / s2) * R)
        terms["procrustes_aligned"].append(gaussian_terms((g - pa).reshape(-1), B @ S @ B.T))
    out = {}
    for name, k in [("unaligned", 63), ("root_relative", 60), ("procrustes_aligned", 63)]:
        used = [t for t in terms[name] if t is not None]
        th = [float(chi2.ppf(q, k)) for q in (0.5, 0.9, 0.95)]
        m = np.array([t[0] for t in used])
        ld = np.array([t[1] for t in used])
        out[name] = {
            "k": k,
            "n_used": len(used),
            "n_not_pd": len(terms[name]) - len(used),
            "nll": float(np.mean(0.5 * (m + ld + k * np.log(2 * np.pi)))),
            "mahalanobis_sq_mean": float(np.mean(m)),
            "coverage": [float(np.mean(m <= t)) for t in th],
            "chi2": th,
        }
    return out


def versions():
    return {"numpy": np.__version__, "scipy": scipy.__version__}
