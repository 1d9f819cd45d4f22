//! The synthetic set's pose prior: hand poses whose joints move together as real hands' do,
//! within the procedural hand's [`JOINT_LIMITS`].
//!
//! Real finger joints are not independent: a finger's DIP flexes with its PIP (the tendon
//! coupling, about ⅔ of the PIP angle), neighbouring fingers curl together, curled fingers close
//! their spread, and the thumb follows the grip loosely. Sampling the 45 angles independently
//! gives mostly implausible hands (a straight PIP under a bent DIP) spread over a 45-D box,
//! which a small model cannot learn in minutes. This prior draws a few hand-level quantities
//! and builds every angle from them plus a small per-joint jitter:
//!
//! * **grip** `g ∈ [0, 1]`: open (a quarter of the hands), closed (a quarter) or anywhere;
//! * **finger curls** `c_f = g + 0.18·n_f` (clamped), with a gesture in 30 % of the hands that
//!   straightens the index (pointing), index and middle (V), the pinky, or index and pinky;
//! * **flexion** from the curl: MCP `−10° + 100°·c`, PIP `100°·c`, DIP `0.7·PIP`, each with a
//!   few degrees of jitter;
//! * **spread** `s ∈ [0, 1]` per hand, closed by the curl: MCP abduction index `+18°·s(1−c)`,
//!   middle 0, ring `−10°·s(1−c)`, pinky `−22°·s(1−c)`, with jitter;
//! * **thumb**: curl `t = 0.6·g + 0.4·U` with jitter, CMC flexion `−15° + 60°·t`, MCP `60°·t`,
//!   IP `−5° + 80°·t`; the CMC abduction (opposition) is free over most of its range;
//! * **twists** and the small PIP/DIP abductions: jitter only.
//!
//! Every angle is clamped to its limit. The uniform sampler [`random_pose`] stays the reference
//! for the limits themselves (tests of the mesh under extreme poses).
//!
//! [`JOINT_LIMITS`]: super::hand::JOINT_LIMITS
//! [`random_pose`]: super::hand::random_pose

use super::hand::{random_pose, JOINT_LIMITS};

/// Digits in MANO's joint order (joints 1..15 are index, middle, pinky, ring, thumb × 3).
const INDEX: usize = 0;
const MIDDLE: usize = 1;
const PINKY: usize = 2;
const RING: usize = 3;
const THUMB: usize = 4;

/// MCP abduction at full spread (degrees, + toward the thumb), per finger in MANO order.
const SPREAD_DEG: [f32; 4] = [18.0, 0.0, -22.0, -10.0];

/// Axis-angle hand pose (MANO joints 1..15) from the prior; `uniform` yields independent
/// numbers in [0, 1) (the caller's RNG, so a sample stays a function of its seed).
pub fn natural_pose(uniform: &mut dyn FnMut() -> f32) -> [f32; 45] {
    let mut r = Rand(uniform);
    let mut deg = [[0f32; 3]; 15];
    // The draws, in a fixed order.
    let mode = r.u();
    let g0 = r.u();
    let grip = if mode < 0.25 {
        0.25 * g0
    } else if mode < 0.5 {
        0.65 + 0.35 * g0
    } else {
        g0
    };
    let mut curl = [0f32; 4];
    for c in curl.iter_mut() {
        *c = (grip + 0.18 * r.n()).clamp(0.0, 1.0);
    }
    if r.u() < 0.3 {
        let straight: &[usize] = match (r.u() * 4.0) as usize {
            0 => &[INDEX],
            1 => &[INDEX, MIDDLE],
            2 => &[PINKY],
            _ => &[INDEX, PINKY],
        };
        for &f in straight {
            curl[f] = 0.15 * r.u();
        }
    }
    let spread = r.u();
    for f in [INDEX, MIDDLE, PINKY, RING] {
        let c = curl[f];
        let (mcp, pip, dip) = (3 * f, 3 * f + 1, 3 * f + 2);
        deg[mcp] = [
            -10.0 + 100.0 * c + 6.0 * r.n(),
            SPREAD_DEG[f] * spread * (1.0 - c) + 3.0 * r.n(),
            3.0 * r.n(),
        ];
        let pip_flex = 100.0 * (c + 0.1 * r.n()).clamp(0.0, 1.0);
        deg[pip] = [pip_flex, 1.5 * r.n(), 2.0 * r.n()];
        deg[dip] = [0.7 * pip_flex + 6.0 * r.n(), 1.5 * r.n(), 2.0 * r.n()];
    }
    let t = (0.6 * grip + 0.4 * r.u() + 0.1 * r.n()).clamp(0.0, 1.0);
    let (cmc, mcp, ip) = (3 * THUMB, 3 * THUMB + 1, 3 * THUMB + 2);
    deg[cmc] = [
        -15.0 + 60.0 * t + 8.0 * r.n(),
        -20.0 + 50.0 * r.u(),
        10.0 * r.n(),
    ];
    deg[mcp] = [60.0 * t + 8.0 * r.n(), 3.0 * r.n(), 3.0 * r.n()];
    deg[ip] = [-5.0 + 80.0 * t + 10.0 * r.n(), 1.5 * r.n(), 2.0 * r.n()];
    // Degrees → the uniform sampler's [0, 1] coordinates (which clamps to the limits).
    let mut u = [0.5f32; 45];
    for (j, (d, lim)) in deg.iter().zip(&JOINT_LIMITS).enumerate() {
        for (k, r) in [lim.flex, lim.abd, lim.twist].iter().enumerate() {
            u[3 * j + k] = (d[k] - r[0]) / (r[1] - r[0]);
        }
    }
    random_pose(&u)
}

/// The caller's uniforms, and normals made from them.
struct Rand<'a>(&'a mut dyn FnMut() -> f32);

impl Rand<'_> {
    fn u(&mut self) -> f32 {
        (self.0)()
    }
    /// Box–Muller from two uniforms (1 − u, floored, keeps the logarithm finite).
    fn n(&mut self) -> f32 {
        let (u1, u2) = ((1.0 - self.u() as f64).max(1e-12), self.u() as f64);
        ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
    }
}
