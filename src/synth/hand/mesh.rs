//! The procedural hand's surface: one closed, consistently oriented, genus-0 triangle mesh made
//! of a palm tube that branches into four finger tubes at the knuckles and a thumb tube that
//! leaves through a hole in the palm's radial side.
//!
//! Topology (fixed, whatever the shape coefficients):
//! * palm: 6 rings of 34 vertices (ring 0 at the wrist, ring 5 = the knuckle ring), quads
//!   between consecutive rings, ring 0 closed by a fan to a wrist pole. Loop vertex `l` of a
//!   palm ring sits at angle `(l + ½)·2π/34` around the palm axis, counted from +z (radial)
//!   toward +y (dorsal): `l = 0..=16` run along the back from the radial to the ulnar side and
//!   `l = 17..=33` back along the palm;
//! * fingers: the knuckle ring is split into four 10-vertex loops (5 back + 5 palm vertices
//!   each); neighbouring fingers share the two vertices of the edge between them (the crotch);
//!   each finger is a tube of 11 more 10-vertex rings closed by a fan to its tip vertex;
//! * thumb: the 6 palm quads between rings 1–3 and loop vertices 30–33 are left out (dropping
//!   2 vertices); their 10-vertex boundary is the base of a 13-ring thumb tube with a tip fan.
//!
//! V = 6·34 − 2 + 1 (wrist pole) + 4·(11·10 + 1) + (13·10 + 1) = 778, F = 2V − 4 = 1552
//! triangles, E = 2328 edges, Euler characteristic 2. Every ring is right-handed about the tube's
//! direction (from its base toward its tip), which makes every face wind counter-clockwise seen
//! from outside.

use super::skeleton::*;
use std::f64::consts::PI;

/// Vertices of a palm cross-section.
pub(crate) const LOOP: usize = 34;
/// Vertices of a digit cross-section.
pub(crate) const RING: usize = 10;
/// Vertices along the back (and along the palm side) of a palm ring.
const COLS: usize = 17;
/// Palm ring that is the knuckle ring (ring 0 is the wrist).
const KNUCKLES: usize = 5;
/// The thumb's hole spans palm rings `HOLE_K[0]..=HOLE_K[1]` and loop vertices
/// `HOLE_L[0]..=HOLE_L[1]`; the palm quads inside are left out.
const HOLE_K: [usize; 2] = [1, 3];
const HOLE_L: [usize; 2] = [30, 33];
/// Thumb membership of palm vertices by their ring/loop distance from the hole boundary
/// (how much the CMC joint's chain takes part in skinning and corrective shapes).
const THUMB_REACH: [f64; 3] = [1.0, 0.45, 0.12];

/// Palm cross-sections 0..=4 (ring 5 is the knuckle ring): centre z and y, half-width (z),
/// half-thickness (y), superellipse exponent, and how much of the knuckle ring is blended in.
const PALM: [[f64; 6]; 5] = [
    [0.006, 0.006, 0.029, 0.0165, 2.3, 0.0],
    [0.003, 0.005, 0.035, 0.0165, 2.6, 0.0],
    [0.001, 0.004, 0.038, 0.0155, 2.8, 0.0],
    [0.000, 0.0035, 0.040, 0.0145, 2.8, 0.0],
    [-0.001, 0.0035, 0.040, 0.0125, 2.8, 0.4],
];
/// Length of the thumb curve's starting tangent (along the hole's normal), in metacarpal
/// lengths, and how round (vs. hole-shaped) its first four rings are.
const THUMB_LIFT: f64 = 1.5;
const THUMB_ROUND: [f64; 4] = [0.3, 0.6, 0.85, 1.0];
/// Offset of the wrist pole from the wrist ring's centre along +x.
const WRIST_DOME: f64 = 0.008;

/// Chains of the skinning and corrective shapes: 0..4 = index, middle, ring, pinky, 4 = thumb.
pub(crate) const THUMB: usize = 4;
/// MANO index of each chain's first joint (the next two follow it).
pub(crate) const CHAIN_JOINT: [usize; 5] = [1, 4, 10, 7, 13];

/// A vertex's part in one chain: where it sits along the chain (metres from the chain's first
/// joint, negative inside the palm) and with what share.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Member {
    pub chain: usize,
    pub s: f64,
    pub factor: f64,
}

/// One built hand surface, in builder order (the caller permutes).
pub(crate) struct Geometry {
    pub pos: Vec<V3>,
    pub faces: Vec<[usize; 3]>,
    /// Chain memberships of each vertex; the rest of its share belongs to the wrist.
    pub members: Vec<Vec<Member>>,
    /// For each of the 16 joints, the vertices whose mean is the joint.
    pub joint_sets: Vec<Vec<usize>>,
    /// Tip vertices: thumb, index, middle, ring, pinky.
    pub tips: [usize; 5],
    /// Joint positions along each chain (`s` of its three joints).
    pub chain_s: [[f64; 3]; 5],
}

#[derive(Default)]
struct Builder {
    pos: Vec<V3>,
    members: Vec<Vec<Member>>,
    faces: Vec<[usize; 3]>,
}

impl Builder {
    fn vertex(&mut self, p: V3, m: Vec<Member>) -> usize {
        self.pos.push(p);
        self.members.push(m);
        self.pos.len() - 1
    }

    /// Two triangles for the quad `a b c d` (counter-clockwise seen from outside); the diagonal
    /// alternates with `parity` so that tubes get a symmetric pattern (and never depends on the
    /// positions: the topology is the same for every shape).
    fn quad(&mut self, [a, b, c, d]: [usize; 4], parity: usize) {
        if parity % 2 == 0 {
            self.faces.push([a, b, c]);
            self.faces.push([a, c, d]);
        } else {
            self.faces.push([a, b, d]);
            self.faces.push([b, c, d]);
        }
    }

    /// Quads between two loops of the same length, both right-handed about `lo → hi`.
    fn sleeve(&mut self, lo: &[usize], hi: &[usize], parity: usize) {
        let n = lo.len();
        for q in 0..n {
            let q1 = (q + 1) % n;
            self.quad([lo[q], lo[q1], hi[q1], hi[q]], q + parity);
        }
    }

    /// Triangles from a loop to a pole; `ahead` when the pole lies in the direction the loop is
    /// right-handed about.
    fn fan(&mut self, ring: &[usize], pole: usize, ahead: bool) {
        let n = ring.len();
        for q in 0..n {
            let (a, b) = (ring[q], ring[(q + 1) % n]);
            self.faces
                .push(if ahead { [a, b, pole] } else { [b, a, pole] });
        }
    }

    fn ring(&mut self, pts: &[V3], m: &[Member]) -> Vec<usize> {
        pts.iter().map(|&p| self.vertex(p, m.to_vec())).collect()
    }
}

/// Unit axes `(e_r, e_d)` across a digit whose axis points along `t`: `e_r` radial (the flexion
/// axis), `e_d` dorsal; `(e_r, e_d, t)` is right-handed.
fn cross_axes(t: V3, palmar: V3) -> (V3, V3) {
    let p = normalize(reject(palmar, t));
    (normalize(cross(t, p)), mul(p, -1.0))
}

/// Points of an elliptic cross-section at the given angles (from `e_r` toward `e_d`).
fn section(center: V3, t: V3, palmar: V3, r: f64, angles: &[f64]) -> Vec<V3> {
    let (er, ed) = cross_axes(t, palmar);
    angles
        .iter()
        .map(|&a| {
            add(
                center,
                add(
                    mul(er, r * a.cos()),
                    mul(ed, r * DIGIT_FLATTENING * a.sin()),
                ),
            )
        })
        .collect()
}

fn uniform_angles(offset: f64) -> Vec<f64> {
    (0..RING)
        .map(|k| offset + 2.0 * PI * k as f64 / RING as f64)
        .collect()
}

/// Palm loop vertex → (column, on the back?).
fn column(l: usize) -> (usize, bool) {
    if l < COLS {
        (l, true)
    } else {
        (2 * COLS - 1 - l, false)
    }
}

/// The fingers a column belongs to, with the position `k` (0..=4) in the finger's half-loop.
fn column_fingers(col: usize) -> Vec<(usize, usize)> {
    let mut v = Vec::with_capacity(2);
    if col % 4 == 0 && col > 0 {
        v.push((col / 4 - 1, 4));
    }
    if col / 4 < 4 {
        v.push((col / 4, col % 4));
    }
    v
}

/// Angle of a finger's loop vertex `k` (0..=4) on the back or the palm side.
fn finger_angle(k: usize, back: bool) -> f64 {
    let q = if back { k } else { RING - 1 - k };
    (q as f64 + 0.5) * 2.0 * PI / RING as f64
}

/// Cross-section radius of a finger at `s` along it: linear between the joints, an elliptic
/// dome over the last 38 % of the distal phalanx, 0 at the tip.
fn finger_radius(f: &Finger, s: f64) -> f64 {
    let [_, s1, s2, st] = f.joint_s();
    let dome = s2 + 0.62 * f.lengths[2];
    let r = f.radii;
    let seg = |a: f64, b: f64, ra: f64, rb: f64| ra + (rb - ra) * (s - a) / (b - a);
    if s <= s1 {
        seg(0.0, s1, r[0], r[1])
    } else if s <= s2 {
        seg(s1, s2, r[1], r[2])
    } else if s <= dome {
        seg(s2, dome, r[2], r[3])
    } else {
        let u = ((s - dome) / (st - dome)).min(1.0);
        r[3] * (1.0 - u * u).max(0.0).sqrt()
    }
}

/// Where the rings of a digit sit along its last two segments (after the joint that starts
/// them), as fractions: the middle segment's interior rings, then the distal rings, then the
/// dome rings. The tip pole follows at 1.
const DISTAL_RINGS: [f64; 4] = [0.33, 0.62, 0.80, 0.93];

/// Builds the hand for shape coefficients `beta` (zero = the template).
pub(crate) fn build(beta: &[f64; 10]) -> Geometry {
    let sk = Skeleton::new(beta);
    let mut b = Builder::default();
    let mut joint_sets: Vec<Vec<usize>> = vec![Vec::new(); 16];

    // Knuckle ring: each finger's own vertices on an ellipse around its MCP, the shared crotch
    // vertices halfway between the neighbours' points.
    let knuckle: Vec<V3> = (0..LOOP)
        .map(|l| {
            let (col, back) = column(l);
            let owners = column_fingers(col);
            let mut p = [0.0; 3];
            for &(f, k) in &owners {
                let fg = &sk.fingers[f];
                let a = [finger_angle(k, back)];
                p = add(p, section(fg.mcp, fg.dir, PALMAR, fg.radii[0], &a)[0]);
            }
            mul(p, 1.0 / owners.len() as f64)
        })
        .collect();

    // Palm rings 0..=5 (all 34 vertices; the two inside the thumb's hole are dropped later).
    let mut palm: Vec<Vec<usize>> = Vec::with_capacity(KNUCKLES + 1);
    for k in 0..=KNUCKLES {
        let t = k as f64 / KNUCKLES as f64;
        let ring: Vec<usize> = (0..LOOP)
            .map(|l| {
                let p = match PALM.get(k) {
                    None => knuckle[l],
                    Some(&[zc, yc, a, bb, n, blend]) => {
                        let phi = (l as f64 + 0.5) * 2.0 * PI / LOOP as f64;
                        let e = 2.0 / n;
                        let (c, s) = (phi.cos(), phi.sin());
                        let sup = [
                            WRIST[0] + (knuckle[l][0] - WRIST[0]) * t,
                            yc + bb * sk.palm_thick * s.signum() * s.abs().powf(e),
                            (zc + a * c.signum() * c.abs().powf(e)) * sk.palm_width,
                        ];
                        lerp(sup, knuckle[l], blend)
                    }
                };
                b.vertex(p, palm_members(&sk, &knuckle, k, l, p))
            })
            .collect();
        palm.push(ring);
    }
    let hole_cell = |k: usize, l: usize| {
        (HOLE_K[0]..HOLE_K[1]).contains(&k) && (HOLE_L[0]..HOLE_L[1]).contains(&l)
    };
    for k in 0..KNUCKLES {
        for l in 0..LOOP {
            if !hole_cell(k, l) {
                let l1 = (l + 1) % LOOP;
                let q = [palm[k][l], palm[k][l1], palm[k + 1][l1], palm[k + 1][l]];
                b.quad(q, k + l);
            }
        }
    }
    joint_sets[0] = palm[0].clone();
    let wrist_centre = mean(&b.pos, &palm[0]);
    let pole = b.vertex(add(wrist_centre, [WRIST_DOME, 0.0, 0.0]), Vec::new());
    b.fan(&palm[0], pole, false);

    // Fingers.
    let mut tips = [0usize; 5];
    let mut chain_s = [[0.0; 3]; 5];
    for (f, fg) in sk.fingers.iter().enumerate() {
        let base: Vec<usize> = (4 * f..=4 * f + 4)
            .chain(LOOP - 1 - (4 * f + 4)..=LOOP - 1 - 4 * f)
            .map(|l| palm[KNUCKLES][l])
            .collect();
        let j = CHAIN_JOINT[f];
        joint_sets[j] = [1, 2, 3, 6, 7, 8].iter().map(|&q| base[q]).collect();
        let [_, s1, s2, st] = fg.joint_s();
        chain_s[f] = [0.0, s1, s2];
        let mut stations: Vec<f64> = [0.25, 0.5, 0.75, 1.0].iter().map(|x| x * s1).collect();
        stations.extend(
            [1.0 / 3.0, 2.0 / 3.0, 1.0]
                .iter()
                .map(|x| s1 + x * (s2 - s1)),
        );
        stations.extend(DISTAL_RINGS.iter().map(|x| s2 + x * (st - s2)));
        let angles = uniform_angles(PI / RING as f64);
        let mut prev = base;
        for (n, &s) in stations.iter().enumerate() {
            let centre = add(fg.mcp, mul(fg.dir, s));
            let pts = section(centre, fg.dir, PALMAR, finger_radius(fg, s), &angles);
            let m = [Member {
                chain: f,
                s,
                factor: 1.0,
            }];
            let ring = b.ring(&pts, &m);
            b.sleeve(&prev, &ring, n);
            if n == 3 || n == 6 {
                joint_sets[j + if n == 3 { 1 } else { 2 }] = ring.clone();
            }
            prev = ring;
        }
        let m = vec![Member {
            chain: f,
            s: st,
            factor: 1.0,
        }];
        let tip = b.vertex(add(fg.mcp, mul(fg.dir, st)), m);
        b.fan(&prev, tip, true);
        tips[1 + f] = tip;
    }

    // Thumb: its base is the hole's boundary, right-handed about the outward normal.
    let (k0, k1, l0, l1) = (HOLE_K[0], HOLE_K[1], HOLE_L[0], HOLE_L[1]);
    let mut hole: Vec<usize> = (l0..=l1).map(|l| palm[k0][l]).collect();
    hole.extend((k0 + 1..k1).map(|k| palm[k][l1]));
    hole.extend((l0..=l1).rev().map(|l| palm[k1][l]));
    hole.extend((k0 + 1..k1).rev().map(|k| palm[k][l0]));
    joint_sets[13] = hole.clone();
    let (tips_thumb, s_thumb) = thumb(&mut b, &sk, &hole, &mut joint_sets);
    tips[0] = tips_thumb;
    chain_s[THUMB] = s_thumb;

    for p in &mut b.pos {
        *p = mul(*p, sk.scale);
    }
    compact(b, joint_sets, tips, chain_s)
}

/// Chain memberships of palm ring `k`'s vertex `l` at `p`.
fn palm_members(sk: &Skeleton, knuckle: &[V3], k: usize, l: usize, p: V3) -> Vec<Member> {
    let reach = if k >= KNUCKLES {
        0.0
    } else {
        let dk = HOLE_K[0].saturating_sub(k).max(k.saturating_sub(HOLE_K[1]));
        let dl = if (HOLE_L[0]..=HOLE_L[1]).contains(&l) {
            0
        } else {
            let below = (HOLE_L[0] + LOOP - l) % LOOP;
            let above = (l + LOOP - HOLE_L[1]) % LOOP;
            below.min(above)
        };
        let r = THUMB_REACH.get(dk.max(dl)).copied().unwrap_or(0.0);
        if k + 1 == KNUCKLES {
            r.min(0.1)
        } else {
            r
        }
    };
    let owners = column_fingers(column(l).0);
    let share = (1.0 - reach) / owners.len() as f64;
    let mut m: Vec<Member> = owners
        .iter()
        .map(|&(f, _)| Member {
            chain: f,
            s: dot(sub(p, knuckle[l]), sk.fingers[f].dir),
            factor: share,
        })
        .collect();
    if reach > 0.0 {
        m.push(Member {
            chain: THUMB,
            s: 0.0,
            factor: reach,
        });
    }
    m
}

fn mean(pos: &[V3], idx: &[usize]) -> V3 {
    let s = idx.iter().fold([0.0; 3], |acc, &i| add(acc, pos[i]));
    mul(s, 1.0 / idx.len() as f64)
}

/// The thumb tube from the hole (its CMC joint is the hole's centroid). Returns the tip vertex
/// and the chain positions of its three joints.
fn thumb(
    b: &mut Builder,
    sk: &Skeleton,
    hole: &[usize],
    joint_sets: &mut [Vec<usize>],
) -> (usize, [f64; 3]) {
    let cmc = mean(&b.pos, hole);
    // Newell normal of the hole loop: the loop is right-handed about it.
    let mut nh = [0.0; 3];
    for q in 0..hole.len() {
        let (a, c) = (b.pos[hole[q]], b.pos[hole[(q + 1) % hole.len()]]);
        nh = add(nh, cross(a, c));
    }
    let nh = normalize(nh);
    let [d0, d1, d2] = sk.thumb_dirs;
    let [l0, l1, l2] = sk.thumb_lengths;
    let mcp = add(cmc, mul(d0, l0));
    let ip = add(mcp, mul(d1, l1));
    let tip_pos = add(ip, mul(d2, l2));

    // Angles of the hole's vertices around the thumb's base, unwrapped; rings start from them
    // and relax to evenly spaced angles with the same mean offset.
    let (er, ed) = cross_axes(nh, THUMB_PALMAR);
    let mut hole_angles: Vec<f64> = Vec::with_capacity(RING);
    let mut hole_r = 0.0;
    for &v in hole {
        let d = sub(b.pos[v], cmc);
        let a = dot(d, ed).atan2(dot(d, er));
        let a = match hole_angles.last() {
            Some(&prev) => prev + (a - prev + PI).rem_euclid(2.0 * PI) - PI,
            None => a,
        };
        hole_angles.push(a);
        hole_r += norm(reject(d, nh)) / hole.len() as f64;
    }
    let step = 2.0 * PI / RING as f64;
    let offset = hole_angles
        .iter()
        .enumerate()
        .map(|(q, a)| a - q as f64 * step)
        .sum::<f64>()
        / RING as f64;
    let even = uniform_angles(offset);
    let angles_at = |blend: f64| -> Vec<f64> {
        (0..RING)
            .map(|q| hole_angles[q] + (even[q] - hole_angles[q]) * blend)
            .collect()
    };

    // Stations: (centre, tangent, radius, s, blend toward even angles, blend from the hole's
    // shape toward the elliptic section). The metacarpal rings follow a Hermite curve that
    // leaves the hole along its normal and reaches the MCP along the bone; near the hole they
    // keep the hole's elongated shape (lifted off the palm along the curve), which makes the
    // thenar web, and become round by the MCP.
    let [rm, ri, rt] = sk.thumb_radii;
    let r0 = 0.85 * hole_r;
    let lift = THUMB_LIFT * l0;
    let hermite = |t: f64| {
        let (t2, t3) = (t * t, t * t * t);
        let p = add(
            add(
                mul(cmc, 2.0 * t3 - 3.0 * t2 + 1.0),
                mul(nh, lift * (t3 - 2.0 * t2 + t)),
            ),
            add(mul(mcp, -2.0 * t3 + 3.0 * t2), mul(d0, l0 * (t3 - t2))),
        );
        let dp = add(
            add(
                mul(cmc, 6.0 * t2 - 6.0 * t),
                mul(nh, lift * (3.0 * t2 - 4.0 * t + 1.0)),
            ),
            add(
                mul(mcp, -6.0 * t2 + 6.0 * t),
                mul(d0, l0 * (3.0 * t2 - 2.0 * t)),
            ),
        );
        (p, normalize(dp))
    };
    let mut st: Vec<(V3, V3, f64, f64, f64, f64)> = Vec::new();
    for (n, t) in [0.2, 0.4, 0.6, 0.8].into_iter().enumerate() {
        let (p, tan) = hermite(t);
        let (blend, round) = ([0.45, 0.8, 1.0, 1.0][n], THUMB_ROUND[n]);
        st.push((p, tan, r0 + (rm - r0) * t, t * l0, blend, round));
    }
    st.push((mcp, normalize(add(d0, d1)), rm, l0, 1.0, 1.0));
    for x in [0.25, 0.5, 0.75] {
        st.push((
            add(mcp, mul(d1, x * l1)),
            d1,
            rm + (ri - rm) * x,
            l0 + x * l1,
            1.0,
            1.0,
        ));
    }
    st.push((ip, normalize(add(d1, d2)), ri, l0 + l1, 1.0, 1.0));
    let dome = 0.62;
    for x in DISTAL_RINGS {
        let r = if x <= dome {
            ri + (rt - ri) * x / dome
        } else {
            let u = (x - dome) / (1.0 - dome);
            rt * (1.0 - u * u).sqrt()
        };
        st.push((add(ip, mul(d2, x * l2)), d2, r, l0 + l1 + x * l2, 1.0, 1.0));
    }

    let mut prev = hole.to_vec();
    for (n, &(c, tan, r, s, blend, round)) in st.iter().enumerate() {
        let mut pts = section(c, tan, THUMB_PALMAR, r, &angles_at(blend));
        if round < 1.0 {
            let shrink = 1.0 - 0.3 * (s / l0);
            for (p, &v) in pts.iter_mut().zip(hole) {
                let shaped = add(c, mul(sub(b.pos[v], cmc), shrink));
                *p = lerp(shaped, *p, round);
            }
        }
        let m = [Member {
            chain: THUMB,
            s,
            factor: 1.0,
        }];
        let ring = b.ring(&pts, &m);
        b.sleeve(&prev, &ring, n);
        match n {
            4 => joint_sets[14] = ring.clone(),
            8 => joint_sets[15] = ring.clone(),
            _ => {}
        }
        prev = ring;
    }
    let m = vec![Member {
        chain: THUMB,
        s: l0 + l1 + l2,
        factor: 1.0,
    }];
    let tip = b.vertex(tip_pos, m);
    b.fan(&prev, tip, true);
    (tip, [0.0, l0, l0 + l1])
}

/// Drops the vertices no face uses (the two inside the thumb's hole) and renumbers.
fn compact(
    b: Builder,
    joint_sets: Vec<Vec<usize>>,
    tips: [usize; 5],
    chain_s: [[f64; 3]; 5],
) -> Geometry {
    let mut used = vec![false; b.pos.len()];
    for f in &b.faces {
        for &v in f {
            used[v] = true;
        }
    }
    let mut new_index = vec![usize::MAX; b.pos.len()];
    let mut pos = Vec::new();
    let mut members = Vec::new();
    for (v, (p, m)) in b.pos.into_iter().zip(b.members).enumerate() {
        if used[v] {
            new_index[v] = pos.len();
            pos.push(p);
            members.push(m);
        }
    }
    Geometry {
        pos,
        faces: b.faces.iter().map(|f| f.map(|v| new_index[v])).collect(),
        members,
        joint_sets: joint_sets
            .into_iter()
            .map(|s| s.into_iter().map(|v| new_index[v]).collect())
            .collect(),
        tips: tips.map(|v| new_index[v]),
        chain_s,
    }
}
