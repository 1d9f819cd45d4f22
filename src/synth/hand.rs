//! A procedural right hand in MANO's layout, generated in code (no files, no randomness), so the
//! whole engine can run end to end without the MANO model (whose licence forbids shipping it).
//! [`procedural_hand`] returns the same `mano.*` buffers a converted MANO file holds (SPEC §5,
//! weights/README.md): 778 vertices, 16 joints with MANO's kinematic tree and joint order, the
//! fingertip vertices at MANO's indices `TIP_VERTICES` = [744, 320, 443, 554, 671] (thumb,
//! index, middle, ring, pinky), 10 shape and 135 pose blend shapes, LBS weights and faces.
//!
//! # Rest frame
//! MANO's: metres, right hand, flat, palm down. Fingers point along **−x** (the wrist joint is at
//! (0.095, 0.006, 0.006), the middle fingertip near x = −0.09), the back of the hand faces
//! **+y** (the palm faces −y) and the thumb is on the **+z** side. Fingers lie in the palm plane,
//! slightly fanned (index +7°, middle +1°, ring −6°, pinky −14° from −x toward +z); the thumb
//! leaves the palm's radial side with its metacarpal 35° from −x toward +z and 12° palmar.
//! Every joint's rest rotation is the identity, so a pose's axis-angles act in this frame.
//!
//! # Surface
//! One closed, consistently oriented (counter-clockwise seen from outside), connected genus-0
//! triangle mesh: a palm tube of 6 rings × 34 vertices closed at the wrist by a fan, branching at
//! the knuckle ring into four 10-vertex finger tubes (neighbours share the crotch edge), and a
//! thumb tube from a 10-vertex hole in the palm's radial side; every digit ends in an elliptic
//! dome whose pole is its tip vertex. V = 778, F = 1552, E = 2328, V − E + F = 2
//! (see `hand/mesh.rs`). Template volume ≈ 234 ml; the hand spans 19 cm from the wrist's dome
//! to the middle fingertip.
//!
//! # Joints and regressor
//! Each `J_regressor` row averages a set of vertices laid out symmetrically around its joint, so
//! it reproduces the joint for every shape: the wrist ring (34 vertices) for the wrist, six
//! knuckle-ring vertices for each finger's MCP, the 10-vertex ring through each PIP, DIP, thumb
//! MCP and IP, and the thumb hole's boundary for the thumb's CMC (which therefore sits just under
//! the skin of the thenar side).
//!
//! # Skinning
//! A vertex belongs to a chain (a digit: its three joints) at a position `s` along it; each
//! joint takes over from its parent with a smoothstep across ±10 mm (MCP), ±7 mm (PIP, thumb
//! IP), ±6 mm (DIP), ±16 mm (thumb CMC), ±8 mm (thumb MCP). Palm vertices belong to the finger
//! whose column they are in (the crotch vertices to both halves), the ones around the thumb's
//! hole partly to the thumb, the rest to the wrist. Rows sum to 1 and are ≥ 0.
//!
//! # Shape directions (`shapedirs[:, :, l]`, the central difference of the generator at ±1)
//! | l | name | one unit (positive) |
//! |---|---|---|
//! | 0 | scale | whole hand ×1.03 about the origin |
//! | 1 | finger length | index–pinky phalanges +5 % |
//! | 2 | palm width | MCP spacing and palm width (z) +5 % |
//! | 3 | palm length | wrist–MCP distance along x +5 % |
//! | 4 | digit thickness | finger and thumb radii +7 % |
//! | 5 | thumb length | thumb segments +6 % |
//! | 6 | finger spread | index +2.5°, middle +0.5°, ring −1.5°, pinky −3° |
//! | 7 | thumb abduction | thumb rest direction rotated 5° away from the index |
//! | 8 | palm thickness | palm dorsal–palmar thickness +8 % |
//! | 9 | pinky length | little-finger phalanges +8 % (on top of l = 1) |
//!
//! # Pose correctives (`posedirs`)
//! Around a bent joint the skin bulges away from the bone by 10 % of its distance at 90°
//! (`1 − cos θ`, through the trace of `R_j − I`), and the palm-side skin moves 8 % further
//! palmward per unit `sin θ` of flexion (through the antisymmetric part about the flexion axis).
//!
//! # Joint limits (degrees about each joint's [`JointFrame`]: flexion / abduction / twist)
//! | joint | flexion | abduction | twist |
//! |---|---|---|---|
//! | index MCP | −20…90 | −15…20 | −10…10 |
//! | middle MCP, ring MCP | −20…90 | −12…12 | −8…8 |
//! | pinky MCP | −20…90 | −25…10 | −10…10 |
//! | PIP (all fingers) | 0…100 | −4…4 | −5…5 |
//! | DIP (all fingers) | 0…75 | −3…3 | −4…4 |
//! | thumb CMC | −20…50 | −25…35 | −25…25 |
//! | thumb MCP | −10…60 | −10…10 | −10…10 |
//! | thumb IP | −15…80 | −4…4 | −5…5 |
//!
//! Flexion curls a digit toward the palm (the thumb across it, toward the little finger);
//! abduction moves a finger toward the thumb side; twist turns a digit about its bone.
//! [`random_pose`] maps 45 uniform numbers to a pose inside these ranges.

mod mesh;
mod rig;
mod skeleton;

pub use skeleton::{JointFrame, JointLimit, JOINT_LIMITS, SHAPE_DIRECTIONS};

use crate::error::Result;
use crate::model::mano::{Mano, NUM_BETAS};
use crate::model::weights::save_tensors;
use crate::ops::mano::{JOINT_MAP, NUM_JOINTS, PARENTS, POSE_FEATURES, TIP_VERTICES};
use crate::tensor::Tensor;
use crate::train::data::rodrigues;
use skeleton::V3;
use std::path::Path;
use std::sync::OnceLock;

/// Vertices of the procedural hand (MANO's count).
pub const NUM_VERTS: usize = 778;
/// Triangles of the procedural hand (closed genus-0 surface: 2V − 4).
pub const NUM_FACES: usize = 2 * NUM_VERTS - 4;

/// The procedural hand's buffers, in MANO's layout (row-major, f32).
#[derive(Clone, Debug, PartialEq)]
pub struct ProceduralHand {
    /// `[778, 3]`
    pub v_template: Vec<f32>,
    /// `[778, 3, 10]`
    pub shapedirs: Vec<f32>,
    /// `[135, 778·3]`, row `9(j−1) + 3r + c`, column `3v + axis`.
    pub posedirs: Vec<f32>,
    /// `[16, 778]`
    pub j_regressor: Vec<f32>,
    /// `[778, 16]`
    pub lbs_weights: Vec<f32>,
    /// `[1552]` triangles, counter-clockwise seen from outside.
    pub faces: Vec<[u32; 3]>,
    /// Rest joints (`J_regressor · v_template`), MANO joint order.
    pub joints: [[f32; 3]; NUM_JOINTS],
    /// Rotation axes of joints 1..15 in the rest frame (for [`JOINT_LIMITS`]).
    pub frames: [JointFrame; 15],
}

fn to_f32(v: V3) -> [f32; 3] {
    v.map(|x| x as f32)
}

/// Builds the hand. Deterministic: every call returns the same bits.
pub fn procedural_hand() -> ProceduralHand {
    let g = mesh::build(&[0.0; NUM_BETAS]);
    let nv = g.pos.len();
    // Shape directions: central differences of the generator at ±1 unit.
    let shapes: Vec<Vec<V3>> = (0..NUM_BETAS)
        .map(|l| {
            let mut beta = [0.0; NUM_BETAS];
            beta[l] = 1.0;
            let plus = mesh::build(&beta).pos;
            beta[l] = -1.0;
            let minus = mesh::build(&beta).pos;
            plus.iter()
                .zip(&minus)
                .map(|(&p, &m)| skeleton::mul(skeleton::sub(p, m), 0.5))
                .collect()
        })
        .collect();

    // Builder order → MANO order: the tip vertices go to MANO's fingertip indices, the others
    // fill the remaining slots in builder order.
    let mut new_index = vec![usize::MAX; nv];
    for (&v, &slot) in g.tips.iter().zip(TIP_VERTICES.iter()) {
        new_index[v] = slot;
    }
    let mut free = (0..nv).filter(|i| !TIP_VERTICES.contains(i));
    for slot in new_index.iter_mut().filter(|s| **s == usize::MAX) {
        *slot = free.next().unwrap_or(0);
    }

    let joints = rig::joints(&g);
    let weights = rig::lbs_weights(&g);
    let pose = rig::posedirs(&g, &joints);
    let bones = rig::bones(&g, &joints);

    let mut v_template = vec![0f32; nv * 3];
    let mut shapedirs = vec![0f32; nv * 3 * NUM_BETAS];
    let mut lbs_weights = vec![0f32; nv * NUM_JOINTS];
    let mut posedirs = vec![0f32; POSE_FEATURES * nv * 3];
    for (v, &n) in new_index.iter().enumerate() {
        for c in 0..3 {
            v_template[n * 3 + c] = g.pos[v][c] as f32;
            for (l, dir) in shapes.iter().enumerate() {
                shapedirs[(n * 3 + c) * NUM_BETAS + l] = dir[v][c] as f32;
            }
            for e in 0..POSE_FEATURES {
                posedirs[e * nv * 3 + n * 3 + c] = pose[e * nv * 3 + v * 3 + c] as f32;
            }
        }
        for j in 0..NUM_JOINTS {
            lbs_weights[n * NUM_JOINTS + j] = weights[v][j] as f32;
        }
    }
    let mut j_regressor = vec![0f32; NUM_JOINTS * nv];
    for (j, set) in g.joint_sets.iter().enumerate() {
        for &v in set {
            j_regressor[j * nv + new_index[v]] = 1.0 / set.len() as f32;
        }
    }
    let faces = g
        .faces
        .iter()
        .map(|f| f.map(|v| new_index[v] as u32))
        .collect();
    ProceduralHand {
        v_template,
        shapedirs,
        posedirs,
        j_regressor,
        lbs_weights,
        faces,
        joints: joints.map(to_f32),
        frames: bones.map(|(_, [flex, abd, twist])| JointFrame {
            flex: to_f32(flex),
            abd: to_f32(abd),
            twist: to_f32(twist),
        }),
    }
}

impl ProceduralHand {
    pub fn num_verts(&self) -> usize {
        self.v_template.len() / 3
    }

    /// The float `mano.*` tensors, with the names and shapes `Mano::load` expects.
    pub fn float_tensors(&self) -> Result<Vec<(String, Tensor)>> {
        let nv = self.num_verts();
        let t = |name: &str, shape: &[usize], data: &[f32]| -> Result<(String, Tensor)> {
            Ok((name.to_string(), Tensor::from_vec(shape, data.to_vec())?))
        };
        Ok(vec![
            t("mano.v_template", &[nv, 3], &self.v_template)?,
            t("mano.shapedirs", &[nv, 3, NUM_BETAS], &self.shapedirs)?,
            t("mano.posedirs", &[POSE_FEATURES, 3 * nv], &self.posedirs)?,
            t("mano.J_regressor", &[NUM_JOINTS, nv], &self.j_regressor)?,
            t("mano.lbs_weights", &[nv, NUM_JOINTS], &self.lbs_weights)?,
        ])
    }

    /// The integer `mano.*` tensors (stored as I64): parents, faces, fingertip vertices and the
    /// OpenPose joint map.
    pub fn int_tensors(&self) -> Vec<(String, Vec<usize>, Vec<i64>)> {
        vec![
            ("mano.parents".into(), vec![NUM_JOINTS], PARENTS.to_vec()),
            (
                "mano.faces_tensor".into(),
                vec![self.faces.len(), 3],
                self.faces.iter().flatten().map(|&v| v as i64).collect(),
            ),
            (
                "mano.extra_joints_idxs".into(),
                vec![5],
                TIP_VERTICES.iter().map(|&v| v as i64).collect(),
            ),
            (
                "mano.joint_map".into(),
                vec![JOINT_MAP.len()],
                JOINT_MAP.iter().map(|&v| v as i64).collect(),
            ),
        ]
    }

    /// Writes the hand as a safetensors file that `Mano::load` reads like a converted MANO.
    pub fn save(&self, path: &Path) -> Result<()> {
        let floats = self.float_tensors()?;
        let refs: Vec<(&str, &Tensor)> = floats.iter().map(|(n, t)| (n.as_str(), t)).collect();
        let ints = self.int_tensors();
        let int_refs: Vec<(&str, Vec<usize>, Vec<i64>)> = ints
            .iter()
            .map(|(n, s, v)| (n.as_str(), s.clone(), v.clone()))
            .collect();
        let meta = [
            ("format", "pt"),
            ("source", "handcov procedural hand (synth::hand)"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        save_tensors(path, &refs, &int_refs, Some(meta))
    }

    /// The hand as a [`Mano`], in memory.
    pub fn mano(&self) -> Result<Mano> {
        let nv = self.num_verts();
        let mut parents = [0usize; NUM_JOINTS];
        for (p, &q) in parents.iter_mut().zip(PARENTS.iter()).skip(1) {
            *p = q as usize;
        }
        Ok(Mano {
            v_template: Tensor::from_vec(&[nv, 3], self.v_template.clone())?,
            shapedirs: Tensor::from_vec(&[nv, 3, NUM_BETAS], self.shapedirs.clone())?,
            posedirs: Tensor::from_vec(&[POSE_FEATURES, 3 * nv], self.posedirs.clone())?,
            j_regressor: Tensor::from_vec(&[NUM_JOINTS, nv], self.j_regressor.clone())?,
            lbs_weights: Tensor::from_vec(&[nv, NUM_JOINTS], self.lbs_weights.clone())?,
            parents,
            tips: TIP_VERTICES,
            faces: self.faces.clone(),
        })
    }

    /// A pose (axis-angles of joints 1..15) within [`JOINT_LIMITS`] from 45 numbers in [0, 1]
    /// (3 per joint: flexion, abduction, twist; 0 = the range's minimum, 1 its maximum; values
    /// outside are clamped, non-finite ones read as 0.5). The rotation of joint `j` is
    /// `R_flex·R_abd·R_twist` about its [`JointFrame`] axes. The caller owns the RNG.
    pub fn random_pose(&self, u: &[f32; 45]) -> [f32; 45] {
        skeleton::pose_within_limits(&self.frames, u)
    }
}

/// [`ProceduralHand::random_pose`] of the procedural hand (its frames are built once).
pub fn random_pose(u: &[f32; 45]) -> [f32; 45] {
    static FRAMES: OnceLock<[JointFrame; 15]> = OnceLock::new();
    let frames = FRAMES.get_or_init(|| procedural_hand().frames);
    skeleton::pose_within_limits(frames, u)
}

/// `[16, 3, 3]` rotation matrices (row-major) of a global orientation and a 45-D hand pose,
/// both axis-angle, in the order the MANO layer takes them.
pub fn pose_rotmats(global_orient: &[f32; 3], hand_pose: &[f32; 45]) -> Vec<f32> {
    let mut out = Vec::with_capacity(NUM_JOINTS * 9);
    for j in 0..NUM_JOINTS {
        let aa = if j == 0 {
            *global_orient
        } else {
            [
                hand_pose[3 * j - 3],
                hand_pose[3 * j - 2],
                hand_pose[3 * j - 1],
            ]
        };
        out.extend(rodrigues(aa.map(|x| x as f64)).map(|x| x as f32));
    }
    out
}
