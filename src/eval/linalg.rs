//! Small dense linear algebra for the metrics, in f64: the 3 × 3 SVD behind Procrustes
//! alignment, FreiHAND's `align_w_scale`, and a Cholesky factorisation for the calibration.

/// A 3 × 3 matrix, row-major: `m[row][col]`.
pub type Mat3 = [[f64; 3]; 3];

fn col(m: &Mat3, j: usize) -> [f64; 3] {
    [m[0][j], m[1][j], m[2][j]]
}

fn dot3(a: [f64; 3], b: [f64; 3]) -> f64 {
    a[0] * b[0] + a[1] * b[1] + a[2] * b[2]
}

fn cross(a: [f64; 3], b: [f64; 3]) -> [f64; 3] {
    [
        a[1] * b[2] - a[2] * b[1],
        a[2] * b[0] - a[0] * b[2],
        a[0] * b[1] - a[1] * b[0],
    ]
}

fn norm3(a: [f64; 3]) -> f64 {
    dot3(a, a).sqrt()
}

fn scale3(a: [f64; 3], s: f64) -> [f64; 3] {
    [a[0] * s, a[1] * s, a[2] * s]
}

/// A unit vector orthogonal to the unit vector `a`.
fn orthogonal_to(a: [f64; 3]) -> [f64; 3] {
    // Cross with the axis `a` is least aligned with.
    let k = (0..3)
        .min_by(|&i, &j| a[i].abs().total_cmp(&a[j].abs()))
        .unwrap_or(0);
    let mut e = [0.0; 3];
    e[k] = 1.0;
    let c = cross(a, e);
    scale3(c, 1.0 / norm3(c))
}

/// The singular value decomposition `a = u · diag(s) · vᵀ` of a 3 × 3 matrix: `s` descending and
/// non-negative, `u`, `v` orthogonal (either determinant: reflections are allowed).
///
/// One-sided Jacobi (Hestenes): plane rotations applied to the columns of `a` (and accumulated in
/// `v`) until every pair of columns is orthogonal to working precision; the column norms are the
/// singular values and the normalised columns the left vectors. This is accurate for every rank:
/// columns stay orthogonal relative to their own length, so even a tiny singular value has an
/// orthogonal left vector; an exactly-zero column (rank deficiency) gets a left vector completed
/// from the others (`u₃ = ±u₁ × u₂`, sign towards the residual column, + if none). For such an
/// input the SVD is not unique; see [`align_w_scale`] for when that matters.
pub fn svd3(a: &Mat3) -> (Mat3, [f64; 3], Mat3) {
    let mut w = *a;
    let mut v: Mat3 = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]];
    for _sweep in 0..64 {
        let mut rotated = false;
        for (p, q) in [(0usize, 1usize), (0, 2), (1, 2)] {
            let (wp, wq) = (col(&w, p), col(&w, q));
            let alpha = dot3(wp, wp);
            let beta = dot3(wq, wq);
            let gamma = dot3(wp, wq);
            if gamma == 0.0 || gamma.abs() <= 1e-16 * (alpha * beta).sqrt() {
                continue;
            }
            rotated = true;
            let zeta = (beta - alpha) / (2.0 * gamma);
            let t = zeta.signum() / (zeta.abs() + (1.0 + zeta * zeta).sqrt());
            let c = 1.0 / (1.0 + t * t).sqrt();
            let s = c * t;
            for m in [&mut w, &mut v] {
                for row in m.iter_mut() {
                    let (x, y) = (row[p], row[q]);
                    row[p] = c * x - s * y;
                    row[q] = s * x + c * y;
                }
            }
        }
        if !rotated {
            break;
        }
    }
    // Sort by singular value, descending.
    let norms = [norm3(col(&w, 0)), norm3(col(&w, 1)), norm3(col(&w, 2))];
    let mut order = [0usize, 1, 2];
    order.sort_by(|&i, &j| norms[j].total_cmp(&norms[i]));
    let mut s = [0.0; 3];
    let mut ucols = [[0.0; 3]; 3];
    let mut vcols = [[0.0; 3]; 3];
    let mut residual = [[0.0; 3]; 3];
    for (k, &i) in order.iter().enumerate() {
        s[k] = norms[i];
        residual[k] = col(&w, i);
        vcols[k] = col(&v, i);
    }
    // A column is "zero" when it is below the smallest normal number relative to the largest
    // (or exactly zero): its direction carries no information.
    let tiny = s[0] * 1e-300;
    let mut rank = 0;
    for k in 0..3 {
        if s[k] > tiny && s[k] > 0.0 {
            ucols[k] = scale3(residual[k], 1.0 / s[k]);
            rank += 1;
        }
    }
    if rank == 0 {
        ucols[0] = [1.0, 0.0, 0.0];
    }
    if rank <= 1 {
        ucols[1] = orthogonal_to(ucols[0]);
    }
    if rank <= 2 {
        let c = cross(ucols[0], ucols[1]);
        let sign = if dot3(c, residual[2]) < 0.0 {
            -1.0
        } else {
            1.0
        };
        ucols[2] = scale3(c, sign);
    }
    let mut u = [[0.0; 3]; 3];
    let mut vm = [[0.0; 3]; 3];
    for k in 0..3 {
        for r in 0..3 {
            u[r][k] = ucols[k][r];
            vm[r][k] = vcols[k][r];
        }
    }
    (u, s, vm)
}

/// `scipy.linalg.orthogonal_procrustes(a, b)` for N × 3 point sets: the orthogonal `r` (a
/// rotation or a reflection) minimising `‖a·r − b‖_F`, and `scale` = the sum of the singular
/// values of `aᵀ·b`. From the SVD `aᵀ·b = u·diag(w)·vᵀ`: `r = u·vᵀ`, `scale = Σ w`.
pub fn orthogonal_procrustes(a: &[[f64; 3]], b: &[[f64; 3]]) -> (Mat3, f64) {
    let mut m = [[0.0; 3]; 3];
    for (pa, pb) in a.iter().zip(b) {
        for i in 0..3 {
            for j in 0..3 {
                m[i][j] += pa[i] * pb[j];
            }
        }
    }
    let (u, w, v) = svd3(&m);
    let mut r = [[0.0; 3]; 3];
    for i in 0..3 {
        for j in 0..3 {
            r[i][j] = (0..3).map(|k| u[i][k] * v[j][k]).sum();
        }
    }
    (r, w[0] + w[1] + w[2])
}

/// The similarity transform found by [`align_w_scale`]: a point `p` of the prediction maps to
/// `((p − t2)/s2 · rᵀ)·s·s1 + t1` (row vectors), i.e. `x ↦ c·r·x + const` with
/// `c = s·s1/s2` ([`Similarity::linear_scale`]).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Similarity {
    pub r: Mat3,
    /// Sum of the singular values (`orthogonal_procrustes`'s `scale`).
    pub s: f64,
    /// `‖gt − t1‖_F + 1e-8`.
    pub s1: f64,
    /// `‖pred − t2‖_F + 1e-8`.
    pub s2: f64,
    /// Centroid of the ground truth.
    pub t1: [f64; 3],
    /// Centroid of the prediction.
    pub t2: [f64; 3],
}

impl Similarity {
    /// The factor `c` of the linear part `c·r`.
    pub fn linear_scale(&self) -> f64 {
        self.s * self.s1 / self.s2
    }

    /// Maps one predicted point, with the operations in the order of `align_w_scale`.
    pub fn apply(&self, p: [f64; 3]) -> [f64; 3] {
        let x = [
            (p[0] - self.t2[0]) / self.s2,
            (p[1] - self.t2[1]) / self.s2,
            (p[2] - self.t2[2]) / self.s2,
        ];
        let mut out = [0.0; 3];
        for (c, o) in out.iter_mut().enumerate() {
            let rot = x[0] * self.r[c][0] + x[1] * self.r[c][1] + x[2] * self.r[c][2];
            *o = rot * self.s * self.s1 + self.t1[c];
        }
        out
    }
}

fn centroid(p: &[[f64; 3]]) -> [f64; 3] {
    let mut t = [0.0; 3];
    for q in p {
        for c in 0..3 {
            t[c] += q[c];
        }
    }
    let n = p.len() as f64;
    [t[0] / n, t[1] / n, t[2] / n]
}

/// FreiHAND's `align_w_scale(gt, pred)`: centre both sets, divide each by its Frobenius norm
/// (+ 1e-8), rotate (or reflect) the prediction onto the ground truth with
/// `orthogonal_procrustes(gt_n, pred_n)`, scale by `s·s1` and move to the ground truth's
/// centroid. Returns the aligned prediction and the transform. `gt` and `pred` have the same
/// length (≥ 1).
///
/// When `gt_nᵀ·pred_n` is rank deficient the rotation is not unique; the aligned points still are
/// when the deficiency comes from the prediction (e.g. a planar or collinear prediction: the
/// free directions of `r` act on directions the prediction does not occupy), which is the case
/// the tests cover. A deficiency caused by the ground truth alone leaves a sign choice that
/// LAPACK and this code may make differently (measure zero for real data).
pub fn align_w_scale(gt: &[[f64; 3]], pred: &[[f64; 3]]) -> (Vec<[f64; 3]>, Similarity) {
    let t1 = centroid(gt);
    let t2 = centroid(pred);
    let center = |p: &[[f64; 3]], t: [f64; 3]| -> Vec<[f64; 3]> {
        p.iter()
            .map(|q| [q[0] - t[0], q[1] - t[1], q[2] - t[2]])
            .collect()
    };
    let mut g = center(gt, t1);
    let mut p = center(pred, t2);
    let fro = |m: &[[f64; 3]]| m.iter().map(|q| dot3(*q, *q)).sum::<f64>().sqrt();
    let s1 = fro(&g) + 1e-8;
    let s2 = fro(&p) + 1e-8;
    for q in g.iter_mut() {
        *q = [q[0] / s1, q[1] / s1, q[2] / s1];
    }
    for q in p.iter_mut() {
        *q = [q[0] / s2, q[1] / s2, q[2] / s2];
    }
    let (r, s) = orthogonal_procrustes(&g, &p);
    let sim = Similarity {
        r,
        s,
        s1,
        s2,
        t1,
        t2,
    };
    let aligned = pred.iter().map(|&q| sim.apply(q)).collect();
    (aligned, sim)
}

/// In-place Cholesky factorisation of the symmetric `n × n` row-major matrix `a` into its lower
/// factor `L` (`a = L·Lᵀ`; the strict upper triangle is left untouched, then zeroed). Returns
/// `false` when `a` is not (numerically) positive definite: a pivot ≤ 0 or not finite.
pub fn cholesky(a: &mut [f64], n: usize) -> bool {
    for j in 0..n {
        let mut d = a[j * n + j];
        for k in 0..j {
            d -= a[j * n + k] * a[j * n + k];
        }
        if !(d > 0.0 && d.is_finite()) {
            return false;
        }
        let l = d.sqrt();
        a[j * n + j] = l;
        for i in j + 1..n {
            let mut v = a[i * n + j];
            for k in 0..j {
                v -= a[i * n + k] * a[j * n + k];
            }
            a[i * n + j] = v / l;
        }
    }
    for i in 0..n {
        for j in i + 1..n {
            a[i * n + j] = 0.0;
        }
    }
    true
}

/// With the lower Cholesky factor `l` of Σ (n × n), `xᵀ·Σ⁻¹·x = ‖L⁻¹x‖²` (forward substitution).
pub fn mahalanobis_sq(l: &[f64], n: usize, x: &[f64]) -> f64 {
    let mut z = vec![0.0; n];
    let mut acc = 0.0;
    for i in 0..n {
        let mut v = x[i];
        for k in 0..i {
            v -= l[i * n + k] * z[k];
        }
        z[i] = v / l[i * n + i];
        acc += z[i] * z[i];
    }
    acc
}

/// `log det Σ` from its lower Cholesky factor: `2·Σ log Lᵢᵢ`.
pub fn log_det_from_cholesky(l: &[f64], n: usize) -> f64 {
    2.0 * (0..n).map(|i| l[i * n + i].ln()).sum::<f64>()
}
