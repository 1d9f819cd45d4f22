//! An exact nearest-neighbour search over a small 3D point set (a k-d tree), for the F-scores.
//!
//! The tree is implicit in a permutation of the points: the node of the index range `[lo, hi)`
//! is its middle element `m`, split on the axis of largest extent at the median (so the left
//! range holds values ≤ the split and the right range values ≥ it); ranges of at most `LEAF`
//! points are scanned. A query descends to the near side first, then visits the far side only
//! when the splitting plane is strictly closer than the best squared distance so far, so the
//! result is the exact minimum of `(qx−px)² + (qy−py)² + (qz−pz)²` over the set (ties go to
//! whichever point was met first).

/// Ranges up to this size are leaves.
const LEAF: usize = 8;

pub struct KdTree {
    /// The points, permuted into tree order.
    pts: Vec<[f64; 3]>,
    /// `orig[k]`: the index in the input of `pts[k]`.
    orig: Vec<u32>,
    /// Split axis of the node at each middle index (unused for leaf entries).
    axis: Vec<u8>,
}

fn sq_dist(a: &[f64; 3], b: &[f64; 3]) -> f64 {
    let dx = a[0] - b[0];
    let dy = a[1] - b[1];
    let dz = a[2] - b[2];
    dx * dx + dy * dy + dz * dz
}

impl KdTree {
    pub fn new(points: &[[f64; 3]]) -> KdTree {
        let mut items: Vec<([f64; 3], u32)> = points
            .iter()
            .enumerate()
            .map(|(i, p)| (*p, i as u32))
            .collect();
        let mut axis = vec![0u8; points.len()];
        build(&mut items, 0, &mut axis);
        KdTree {
            pts: items.iter().map(|x| x.0).collect(),
            orig: items.iter().map(|x| x.1).collect(),
            axis,
        }
    }

    pub fn len(&self) -> usize {
        self.pts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pts.is_empty()
    }

    /// The nearest point to `q`: (its index in the input, the squared distance). `None` only for
    /// an empty tree.
    pub fn nearest(&self, q: &[f64; 3]) -> Option<(usize, f64)> {
        self.nearest_below(q, f64::INFINITY)
    }

    /// The nearest point to `q` among those with squared distance `< bound_sq` (exact when it
    /// exists), else `None`.
    pub fn nearest_below(&self, q: &[f64; 3], bound_sq: f64) -> Option<(usize, f64)> {
        self.nearest_until(q, bound_sq, f64::NEG_INFINITY)
    }

    /// Like [`KdTree::nearest_below`], but the search may stop as soon as it has found a point
    /// with squared distance `< stop_sq`, returning that point (not necessarily the nearest).
    /// When it returns a distance `≥ stop_sq`, or `None`, the answer is exact. This decides
    /// "is the nearest distance below t" for every t with `t² ≤ stop_sq` or `t² ≤ bound_sq`
    /// without a full search.
    pub fn nearest_until(&self, q: &[f64; 3], bound_sq: f64, stop_sq: f64) -> Option<(usize, f64)> {
        let mut best = (usize::MAX, bound_sq);
        self.search(q, 0, self.pts.len(), &mut best, stop_sq);
        (best.0 != usize::MAX).then(|| (self.orig[best.0] as usize, best.1))
    }

    /// Returns true when it stopped early (`best < stop`).
    fn search(
        &self,
        q: &[f64; 3],
        lo: usize,
        hi: usize,
        best: &mut (usize, f64),
        stop: f64,
    ) -> bool {
        if hi - lo <= LEAF {
            for k in lo..hi {
                let d = sq_dist(q, &self.pts[k]);
                if d < best.1 {
                    *best = (k, d);
                }
            }
            return best.1 < stop;
        }
        let m = lo + (hi - lo) / 2;
        let ax = self.axis[m] as usize;
        let diff = q[ax] - self.pts[m][ax];
        let d = sq_dist(q, &self.pts[m]);
        if d < best.1 {
            *best = (m, d);
            if d < stop {
                return true;
            }
        }
        let (near, far) = if diff < 0.0 {
            ((lo, m), (m + 1, hi))
        } else {
            ((m + 1, hi), (lo, m))
        };
        if self.search(q, near.0, near.1, best, stop) {
            return true;
        }
        diff * diff < best.1 && self.search(q, far.0, far.1, best, stop)
    }
}

fn build(items: &mut [([f64; 3], u32)], base: usize, axis: &mut [u8]) {
    let n = items.len();
    if n <= LEAF {
        return;
    }
    let mut lo = [f64::INFINITY; 3];
    let mut hi = [f64::NEG_INFINITY; 3];
    for (p, _) in items.iter() {
        for c in 0..3 {
            lo[c] = lo[c].min(p[c]);
            hi[c] = hi[c].max(p[c]);
        }
    }
    let ax = (0..3)
        .max_by(|&a, &b| (hi[a] - lo[a]).total_cmp(&(hi[b] - lo[b])))
        .unwrap_or(0);
    let m = n / 2;
    items.select_nth_unstable_by(m, |a, b| a.0[ax].total_cmp(&b.0[ax]));
    axis[base + m] = ax as u8;
    let (left, rest) = items.split_at_mut(m);
    build(left, base, axis);
    build(&mut rest[1..], base + m + 1, axis);
}
