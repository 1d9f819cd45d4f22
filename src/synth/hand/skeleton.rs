//! The designed skeleton of the procedural hand: joint positions, bone directions, lengths and
//! radii as functions of the ten shape coefficients, plus the joint frames and joint limits that
//! random poses are drawn from. Everything here is in metres (before the overall scale, which the
//! mesh applies last) and f64.

use crate::train::data::{rodrigues, rodrigues_inv};

pub(crate) type V3 = [f64; 3];

pub(crate) fn add(a: V3, b: V3) -> V3 {
    [a[0] + b[0], a[1] + b[1], a[2] + b[2]]
}
pub(crate) fn sub(a: V3, b: V3) -> V3 {
    [a[0] - b[0], a[1] - b[1], a[2] - b[2]]
}
pub(crate) fn mul(a: V3, s: f64) -> V3 {
    [a[0] * s, a[1] * s, a[2] * s]
}
pub(crate) fn dot(a: V3, b: V3) -> f64 {
    a[0] * b[0] + a[1] * b[1] + a[2] * b[2]
}
pub(crate) fn cross(a: V3, b: V3) -> V3 {
    [
        a[1] * b[2] - a[2] * b[1],
        a[2] * b[0] - a[0] * b[2],
        a[0] * b[1] - a[1] * b[0],
    ]
}
pub(crate) fn norm(a: V3) -> f64 {
    dot(a, a).sqrt()
}
/// `a / |a|`; the zero vector stays zero.
pub(crate) fn normalize(a: V3) -> V3 {
    let n = norm(a);
    if n > 0.0 {
        mul(a, 1.0 / n)
    } else {
        a
    }
}
pub(crate) fn lerp(a: V3, b: V3, t: f64) -> V3 {
    add(a, mul(sub(b, a), t))
}
/// The part of `a` perpendicular to the unit vector `d`.
pub(crate) fn reject(a: V3, d: V3) -> V3 {
    sub(a, mul(d, dot(a, d)))
}

/// The palm side of the fingers in the rest frame (the palm faces −y).
pub(crate) const PALMAR: V3 = [0.0, -1.0, 0.0];
/// The direction the thumb pad faces in the rest pose (palmar and toward the little finger).
pub(crate) const THUMB_PALMAR: V3 = [0.0, -0.447_213_595_499_958, -0.894_427_190_999_916];

/// Wrist joint (MANO's is ≈ (0.095, 0.006, 0.006) for a mean hand).
pub(crate) const WRIST: V3 = [0.095, 0.006, 0.006];

/// One finger as designed: MCP position, splay (degrees from −x toward +z), phalanx lengths
/// (proximal, middle, distal up to the tip of the skin), radii at MCP, PIP, DIP and the start
/// of the tip dome, and how much the spread coefficient splays it.
struct FingerDesign {
    mcp: V3,
    splay_deg: f64,
    lengths: [f64; 3],
    radii: [f64; 4],
    spread: f64,
}

/// Index, middle, ring, pinky (radial → ulnar).
const FINGERS: [FingerDesign; 4] = [
    FingerDesign {
        mcp: [0.011, 0.006, 0.026],
        splay_deg: 7.0,
        lengths: [0.040, 0.024, 0.023],
        radii: [0.0094, 0.0087, 0.0077, 0.0068],
        spread: 1.0,
    },
    FingerDesign {
        mcp: [0.007, 0.006, 0.006],
        splay_deg: 1.0,
        lengths: [0.044, 0.028, 0.025],
        radii: [0.0096, 0.0089, 0.0079, 0.0070],
        spread: 0.2,
    },
    FingerDesign {
        mcp: [0.012, 0.005, -0.013],
        splay_deg: -6.0,
        lengths: [0.041, 0.027, 0.024],
        radii: [0.0090, 0.0084, 0.0075, 0.0066],
        spread: -0.6,
    },
    FingerDesign {
        mcp: [0.022, 0.003, -0.030],
        splay_deg: -14.0,
        lengths: [0.032, 0.019, 0.021],
        radii: [0.0080, 0.0074, 0.0067, 0.0060],
        spread: -1.2,
    },
];

/// Thumb segments CMC→MCP, MCP→IP, IP→tip: azimuth (degrees from −x toward +z), elevation
/// (degrees, negative = palmar), length.
const THUMB_SEGMENTS: [(f64, f64, f64); 3] = [
    (35.0, -12.0, 0.042),
    (25.0, -14.0, 0.032),
    (18.0, -14.0, 0.029),
];
/// Thumb radii at MCP, IP and the start of the tip dome.
const THUMB_RADII: [f64; 3] = [0.0105, 0.0095, 0.0082];

/// Flattening of the digits' cross-sections (dorsal–palmar half-axis / radial–ulnar half-axis).
pub(crate) const DIGIT_FLATTENING: f64 = 0.88;

/// The ten shape coefficients: name and what one unit does (positive direction). The mesh is a
/// function of them; `shapedirs[:, :, l]` is the central difference at ±1 unit.
pub const SHAPE_DIRECTIONS: [(&str, &str); 10] = [
    ("scale", "whole hand ×1.03 about the origin"),
    ("finger length", "index–pinky phalanges +5 %"),
    ("palm width", "MCP spacing and palm width (z) +5 %"),
    ("palm length", "wrist–MCP distance along x +5 %"),
    ("digit thickness", "finger and thumb radii +7 %"),
    ("thumb length", "thumb segments +6 %"),
    (
        "finger spread",
        "fingers fan out: index +2.5°, middle +0.5°, ring −1.5°, pinky −3°",
    ),
    (
        "thumb abduction",
        "thumb rest direction rotated 5° away from the index",
    ),
    ("palm thickness", "palm dorsal–palmar thickness +8 %"),
    (
        "pinky length",
        "little-finger phalanges +8 % (on top of finger length)",
    ),
];

/// What one unit of each shape coefficient changes (see [`SHAPE_DIRECTIONS`]).
const SCALE_UNIT: f64 = 0.03;
const FINGER_LEN_UNIT: f64 = 0.05;
const PALM_WIDTH_UNIT: f64 = 0.05;
const PALM_LENGTH_UNIT: f64 = 0.05;
const THICK_UNIT: f64 = 0.07;
const THUMB_LEN_UNIT: f64 = 0.06;
const SPREAD_UNIT_DEG: f64 = 2.5;
const THUMB_ABD_UNIT_DEG: f64 = 5.0;
const PALM_THICK_UNIT: f64 = 0.08;
const PINKY_LEN_UNIT: f64 = 0.08;

/// A finger of the skeleton for given shape coefficients.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Finger {
    pub mcp: V3,
    /// Unit bone direction (the rest finger is straight).
    pub dir: V3,
    pub lengths: [f64; 3],
    pub radii: [f64; 4],
}

impl Finger {
    /// Positions of the MCP (0), PIP, DIP and skin tip along the finger axis.
    pub fn joint_s(&self) -> [f64; 4] {
        let l = self.lengths;
        [0.0, l[0], l[0] + l[1], l[0] + l[1] + l[2]]
    }
}

/// The skeleton for one set of shape coefficients (all but the thumb's CMC, which is where the
/// thumb leaves the palm mesh, and the overall scale, which the mesh applies last).
#[derive(Clone, Debug)]
pub(crate) struct Skeleton {
    /// Index, middle, ring, pinky.
    pub fingers: [Finger; 4],
    /// Palm scale factors: width (z), length (x offsets from the wrist), thickness (y).
    pub palm_width: f64,
    pub palm_thick: f64,
    /// Unit directions of the three thumb segments.
    pub thumb_dirs: [V3; 3],
    pub thumb_lengths: [f64; 3],
    pub thumb_radii: [f64; 3],
    pub scale: f64,
}

fn direction(azimuth_deg: f64, elevation_deg: f64) -> V3 {
    let (az, el) = (azimuth_deg.to_radians(), elevation_deg.to_radians());
    [-el.cos() * az.cos(), el.sin(), el.cos() * az.sin()]
}

impl Skeleton {
    pub fn new(beta: &[f64; 10]) -> Skeleton {
        let palm_width = 1.0 + PALM_WIDTH_UNIT * beta[2];
        let palm_length = 1.0 + PALM_LENGTH_UNIT * beta[3];
        let thick = 1.0 + THICK_UNIT * beta[4];
        let fingers = std::array::from_fn(|i| {
            let d = &FINGERS[i];
            let mut len = 1.0 + FINGER_LEN_UNIT * beta[1];
            if i == 3 {
                len += PINKY_LEN_UNIT * beta[9];
            }
            let mcp = [
                WRIST[0] + (d.mcp[0] - WRIST[0]) * palm_length,
                d.mcp[1],
                d.mcp[2] * palm_width,
            ];
            Finger {
                mcp,
                dir: direction(d.splay_deg + d.spread * SPREAD_UNIT_DEG * beta[6], 0.0),
                lengths: d.lengths.map(|l| l * len),
                radii: d.radii.map(|r| r * thick),
            }
        });
        let thumb_len = 1.0 + THUMB_LEN_UNIT * beta[5];
        let abd = THUMB_ABD_UNIT_DEG * beta[7];
        Skeleton {
            fingers,
            palm_width,
            palm_thick: 1.0 + PALM_THICK_UNIT * beta[8],
            thumb_dirs: THUMB_SEGMENTS.map(|(az, el, _)| direction(az + abd, el)),
            thumb_lengths: THUMB_SEGMENTS.map(|(_, _, l)| l * thumb_len),
            thumb_radii: THUMB_RADII.map(|r| r * thick),
            scale: 1.0 + SCALE_UNIT * beta[0],
        }
    }
}

/// The rotation axes of one joint in the rest frame (unit vectors): positive flexion curls the
/// digit toward the palm, positive abduction moves it toward the radial (thumb) side (for the
/// thumb: toward `flex`), twist turns it about its own bone.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct JointFrame {
    pub flex: [f32; 3],
    pub abd: [f32; 3],
    pub twist: [f32; 3],
}

/// Frame of a joint whose bone points along `bone` and whose digit's pad faces `palmar`.
pub(crate) fn joint_frame(bone: V3, palmar: V3) -> [V3; 3] {
    let d = normalize(bone);
    let p = normalize(reject(palmar, d));
    let flex = normalize(cross(d, p));
    let abd = normalize(cross(d, flex));
    [flex, abd, d]
}

/// Range of one joint's rotation about its [`JointFrame`] axes, degrees `[min, max]`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct JointLimit {
    pub flex: [f32; 2],
    pub abd: [f32; 2],
    pub twist: [f32; 2],
}

const fn limit(flex: [f32; 2], abd: [f32; 2], twist: [f32; 2]) -> JointLimit {
    JointLimit { flex, abd, twist }
}
const PIP: JointLimit = limit([0.0, 100.0], [-4.0, 4.0], [-5.0, 5.0]);
const DIP: JointLimit = limit([0.0, 75.0], [-3.0, 3.0], [-4.0, 4.0]);

/// Plausible rotation ranges of MANO joints 1..15 (index MCP, PIP, DIP; middle ×3; pinky ×3;
/// ring ×3; thumb CMC, MCP, IP), degrees about each joint's [`JointFrame`] axes.
pub const JOINT_LIMITS: [JointLimit; 15] = [
    limit([-20.0, 90.0], [-15.0, 20.0], [-10.0, 10.0]),
    PIP,
    DIP,
    limit([-20.0, 90.0], [-12.0, 12.0], [-8.0, 8.0]),
    PIP,
    DIP,
    limit([-20.0, 90.0], [-25.0, 10.0], [-10.0, 10.0]),
    PIP,
    DIP,
    limit([-20.0, 90.0], [-12.0, 12.0], [-8.0, 8.0]),
    PIP,
    DIP,
    limit([-20.0, 50.0], [-25.0, 35.0], [-25.0, 25.0]),
    limit([-10.0, 60.0], [-10.0, 10.0], [-10.0, 10.0]),
    limit([-15.0, 80.0], [-4.0, 4.0], [-5.0, 5.0]),
];

/// Axis-angle pose (MANO joints 1..15) from 45 numbers in [0, 1]: joint `j`'s flexion,
/// abduction and twist are `min + u·(max − min)` of [`JOINT_LIMITS`] (values outside [0, 1]
/// are clamped, non-finite ones read as 0.5), and its rotation is
/// `R = R_flex · R_abd · R_twist` about the joint's frame axes.
pub(crate) fn pose_within_limits(frames: &[JointFrame; 15], u: &[f32; 45]) -> [f32; 45] {
    let mut out = [0f32; 45];
    for (j, (frame, lim)) in frames.iter().zip(&JOINT_LIMITS).enumerate() {
        let pick = |k: usize, r: [f32; 2]| {
            let x = u[3 * j + k];
            let x = if x.is_finite() {
                x.clamp(0.0, 1.0)
            } else {
                0.5
            };
            ((r[0] + x * (r[1] - r[0])) as f64).to_radians()
        };
        let axis_rot = |axis: [f32; 3], angle: f64| rodrigues(axis.map(|a| a as f64 * angle));
        let r = matmul3(
            &axis_rot(frame.flex, pick(0, lim.flex)),
            &matmul3(
                &axis_rot(frame.abd, pick(1, lim.abd)),
                &axis_rot(frame.twist, pick(2, lim.twist)),
            ),
        );
        let aa = rodrigues_inv(&r);
        for k in 0..3 {
            out[3 * j + k] = aa[k] as f32;
        }
    }
    out
}

fn matmul3(a: &[f64; 9], b: &[f64; 9]) -> [f64; 9] {
    std::array::from_fn(|e| {
        let (i, j) = (e / 3, e % 3);
        (0..3).map(|k| a[i * 3 + k] * b[k * 3 + j]).sum()
    })
}
