//! The procedural hand's rig on top of its surface: joint regressor, skinning weights and pose
//! corrective shapes (all computed on the template, like MANO's, in builder vertex order).

use super::mesh::{Geometry, CHAIN_JOINT, THUMB};
use super::skeleton::*;
use crate::ops::mano::{NUM_JOINTS, POSE_FEATURES};

/// Half-widths (metres along the chain) of the skinning transitions at a finger's MCP, PIP and
/// DIP, and at the thumb's CMC, MCP and IP.
const FINGER_BLEND: [f64; 3] = [0.010, 0.007, 0.006];
const THUMB_BLEND: [f64; 3] = [0.016, 0.008, 0.007];
/// Pose correctives at a bend of 90° (they grow as `1 − cos θ` and `sin θ`): the skin around a
/// joint moves away from the bone by `BULGE`× its distance to the bone, and the palm-side skin
/// by another `PAD`× its palmar distance, toward the palm.
const BULGE: f64 = 0.10;
const PAD: f64 = 0.08;
/// Corrective shares below this are left at exactly zero.
const NEGLIGIBLE: f64 = 1e-4;

fn blend_widths(chain: usize) -> [f64; 3] {
    if chain == THUMB {
        THUMB_BLEND
    } else {
        FINGER_BLEND
    }
}

fn chain_palmar(chain: usize) -> V3 {
    if chain == THUMB {
        THUMB_PALMAR
    } else {
        PALMAR
    }
}

fn smoothstep(x: f64) -> f64 {
    let x = x.clamp(0.0, 1.0);
    x * x * (3.0 - 2.0 * x)
}

/// Skinning weights of (wrist, first, second, third joint) of a chain at `s` along it: each
/// joint takes over from its parent across `[s_j − h, s_j + h]`.
fn chain_weights(joint_s: [f64; 3], h: [f64; 3], s: f64) -> [f64; 4] {
    let c: [f64; 3] = std::array::from_fn(|k| smoothstep((s - joint_s[k] + h[k]) / (2.0 * h[k])));
    [
        1.0 - c[0],
        c[0] * (1.0 - c[1]),
        c[0] * c[1] * (1.0 - c[2]),
        c[0] * c[1] * c[2],
    ]
}

/// `[V][16]` skinning weights: each membership's share spread over its chain, the rest on the
/// wrist. Rows sum to 1 and are ≥ 0.
pub(crate) fn lbs_weights(g: &Geometry) -> Vec<[f64; NUM_JOINTS]> {
    g.members
        .iter()
        .map(|ms| {
            let mut w = [0.0; NUM_JOINTS];
            let mut rest = 1.0;
            for m in ms {
                let cw = chain_weights(g.chain_s[m.chain], blend_widths(m.chain), m.s);
                w[0] += m.factor * cw[0];
                for k in 0..3 {
                    w[CHAIN_JOINT[m.chain] + k] += m.factor * cw[k + 1];
                }
                rest -= m.factor;
            }
            w[0] += rest;
            w
        })
        .collect()
}

/// Rest joints: the mean of each joint's vertex set.
pub(crate) fn joints(g: &Geometry) -> [V3; NUM_JOINTS] {
    std::array::from_fn(|j| {
        let set = &g.joint_sets[j];
        let s = set.iter().fold([0.0; 3], |acc, &v| add(acc, g.pos[v]));
        mul(s, 1.0 / set.len() as f64)
    })
}

/// Chain and position in it (0..3) of non-root joint `j`.
fn chain_of(j: usize) -> (usize, usize) {
    let chain = CHAIN_JOINT
        .iter()
        .position(|&c| (c..c + 3).contains(&j))
        .unwrap_or(0);
    (chain, j - CHAIN_JOINT[chain])
}

/// Bone direction of each non-root joint (toward its child joint, or the tip vertex for the
/// last joint of a chain), and the joint frames built from them.
pub(crate) fn bones(g: &Geometry, joints: &[V3; NUM_JOINTS]) -> [(V3, [V3; 3]); 15] {
    std::array::from_fn(|i| {
        let j = i + 1;
        let (chain, k) = chain_of(j);
        let child = if k < 2 {
            joints[j + 1]
        } else {
            // tips are thumb, index, middle, ring, pinky; chains are index, middle, ring,
            // pinky, thumb.
            g.pos[g.tips[(chain + 1) % 5]]
        };
        let d = normalize(sub(child, joints[j]));
        (d, joint_frame(d, chain_palmar(chain)))
    })
}

/// Pose corrective shapes `[135][3V]` in MANO's layout (row `9(j−1) + 3r + c` multiplies
/// `(R_j − I)[r][c]`, column `3v + axis`). Around each joint the skin bulges away from the
/// bone by `BULGE·(1 − cos θ)` of its distance (through the trace of `R_j − I`, whatever the
/// axis), and the palm-side skin moves palmward by `PAD·sin θ_flex` of its palmar distance
/// (through the antisymmetric part of `R_j − I` about the flexion axis).
pub(crate) fn posedirs(g: &Geometry, joints: &[V3; NUM_JOINTS]) -> Vec<f64> {
    let nv = g.pos.len();
    let mut out = vec![0.0; POSE_FEATURES * 3 * nv];
    for (i, (d, frame)) in bones(g, joints).iter().enumerate() {
        let j = i + 1;
        let (chain, k) = chain_of(j);
        let (sj, h) = (g.chain_s[chain][k], blend_widths(chain)[k]);
        let palmar = normalize(reject(chain_palmar(chain), *d));
        let a = frame[0];
        for v in 0..nv {
            let share: f64 = g.members[v]
                .iter()
                .filter(|m| m.chain == chain)
                .map(|m| m.factor * (-((m.s - sj) / h).powi(2)).exp())
                .sum();
            if share < NEGLIGIBLE {
                continue;
            }
            let rho = reject(sub(g.pos[v], joints[j]), *d);
            let bulge = mul(rho, BULGE * share);
            let pad = mul(palmar, PAD * share * dot(rho, palmar).max(0.0));
            // (r, c, coefficient of sin θ about a) for the antisymmetric part.
            let anti = [
                (2, 1, a[0]),
                (1, 2, -a[0]),
                (0, 2, a[1]),
                (2, 0, -a[1]),
                (1, 0, a[2]),
                (0, 1, -a[2]),
            ];
            for ax in 0..3 {
                for diag in 0..3 {
                    out[(9 * i + 4 * diag) * 3 * nv + 3 * v + ax] -= 0.5 * bulge[ax];
                }
                for &(r, c, coef) in &anti {
                    out[(9 * i + 3 * r + c) * 3 * nv + 3 * v + ax] += 0.5 * coef * pad[ax];
                }
            }
        }
    }
    out
}
