//! Test meshes (icosphere, cube) and 2D geometry (convex hull, IoU) for `synth_raster`.

use std::collections::HashMap;

// ---- meshes ---------------------------------------------------------------------------------

/// A unit icosphere (radius 1) subdivided `n` times, outward winding.
pub fn icosphere(n: usize) -> (Vec<[f32; 3]>, Vec<[u32; 3]>) {
    let t = (1.0 + 5f64.sqrt()) / 2.0;
    let mut v: Vec<[f64; 3]> = [
        [-1.0, t, 0.0],
        [1.0, t, 0.0],
        [-1.0, -t, 0.0],
        [1.0, -t, 0.0],
        [0.0, -1.0, t],
        [0.0, 1.0, t],
        [0.0, -1.0, -t],
        [0.0, 1.0, -t],
        [t, 0.0, -1.0],
        [t, 0.0, 1.0],
        [-t, 0.0, -1.0],
        [-t, 0.0, 1.0],
    ]
    .to_vec();
    let mut f: Vec<[u32; 3]> = vec![
        [0, 11, 5],
        [0, 5, 1],
        [0, 1, 7],
        [0, 7, 10],
        [0, 10, 11],
        [1, 5, 9],
        [5, 11, 4],
        [11, 10, 2],
        [10, 7, 6],
        [7, 1, 8],
        [3, 9, 4],
        [3, 4, 2],
        [3, 2, 6],
        [3, 6, 8],
        [3, 8, 9],
        [4, 9, 5],
        [2, 4, 11],
        [6, 2, 10],
        [8, 6, 7],
        [9, 8, 1],
    ];
    let norm = |p: [f64; 3]| {
        let l = (p[0] * p[0] + p[1] * p[1] + p[2] * p[2]).sqrt();
        p.map(|x| x / l)
    };
    v = v.into_iter().map(norm).collect();
    for _ in 0..n {
        let mut mid: HashMap<(u32, u32), u32> = HashMap::new();
        let mut nf = Vec::with_capacity(f.len() * 4);
        for tri in &f {
            let mut m = [0u32; 3];
            for k in 0..3 {
                let (a, b) = (tri[k], tri[(k + 1) % 3]);
                let key = (a.min(b), a.max(b));
                m[k] = *mid.entry(key).or_insert_with(|| {
                    let (p, q) = (v[a as usize], v[b as usize]);
                    v.push(norm([0, 1, 2].map(|i| (p[i] + q[i]) / 2.0)));
                    (v.len() - 1) as u32
                });
            }
            nf.extend([
                [tri[0], m[0], m[2]],
                [tri[1], m[1], m[0]],
                [tri[2], m[2], m[1]],
                m,
            ]);
        }
        f = nf;
    }
    (v.iter().map(|p| p.map(|x| x as f32)).collect(), f)
}

/// An axis-aligned cube of half-side `h` centred at the origin (12 triangles).
pub fn cube(h: f32) -> (Vec<[f32; 3]>, Vec<[u32; 3]>) {
    let v = (0..8)
        .map(|i| [0, 1, 2].map(|k| if i >> k & 1 == 1 { h } else { -h }))
        .collect();
    let quads = [
        [0, 2, 3, 1],
        [4, 5, 7, 6],
        [0, 1, 5, 4],
        [2, 6, 7, 3],
        [0, 4, 6, 2],
        [1, 3, 7, 5],
    ];
    let f = quads
        .iter()
        .flat_map(|q| [[q[0], q[1], q[2]], [q[0], q[2], q[3]]])
        .collect();
    (v, f)
}

/// Rotates points about the axis (1, 1, 0)/√2 by `a` radians, then scales.
pub fn rotate_scale(v: &[[f32; 3]], a: f64, s: f32) -> Vec<[f32; 3]> {
    let (sn, cs) = a.sin_cos();
    let k = [1.0 / 2f64.sqrt(), 1.0 / 2f64.sqrt(), 0.0];
    v.iter()
        .map(|p| {
            let p = p.map(|x| x as f64);
            let kxp = [
                k[1] * p[2] - k[2] * p[1],
                k[2] * p[0] - k[0] * p[2],
                k[0] * p[1] - k[1] * p[0],
            ];
            let kdp = k[0] * p[0] + k[1] * p[1] + k[2] * p[2];
            [0, 1, 2].map(|i| ((p[i] * cs + kxp[i] * sn + k[i] * kdp * (1.0 - cs)) as f32) * s)
        })
        .collect()
}

// ---- 2D geometry helpers --------------------------------------------------------------------

pub fn cross2(o: [f64; 2], a: [f64; 2], b: [f64; 2]) -> f64 {
    (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])
}

/// Convex hull (counter-clockwise in x-right / y-up terms), Andrew's monotone chain.
pub fn convex_hull(mut p: Vec<[f64; 2]>) -> Vec<[f64; 2]> {
    p.sort_by(|a, b| a[0].total_cmp(&b[0]).then(a[1].total_cmp(&b[1])));
    let mut h: Vec<[f64; 2]> = Vec::new();
    for pass in 0..2 {
        let start = h.len();
        let pts: Vec<[f64; 2]> = if pass == 0 {
            p.clone()
        } else {
            p.iter().rev().copied().collect()
        };
        for q in pts {
            while h.len() >= start + 2 && cross2(h[h.len() - 2], h[h.len() - 1], q) <= 0.0 {
                h.pop();
            }
            h.push(q);
        }
        h.pop();
    }
    h
}

/// Signed distance of `q` to a convex polygon's boundary, positive inside.
pub fn hull_depth(hull: &[[f64; 2]], q: [f64; 2]) -> f64 {
    (0..hull.len())
        .map(|i| {
            let (a, b) = (hull[i], hull[(i + 1) % hull.len()]);
            cross2(a, b, q) / ((b[0] - a[0]).hypot(b[1] - a[1]))
        })
        .fold(f64::INFINITY, f64::min)
}

pub fn iou(a: &[bool], b: &[bool]) -> f64 {
    let inter = a.iter().zip(b).filter(|(x, y)| **x && **y).count();
    let union = a.iter().zip(b).filter(|(x, y)| **x || **y).count();
    inter as f64 / union.max(1) as f64
}
