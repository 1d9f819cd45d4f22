//! The MANO hand model's buffers (`mano.*`, SPEC §5.4) and its forward pass. Sizes come from the
//! tensors, so any model in MANO's layout (16 joints, 10 betas, 5 fingertip vertices) works.

use super::weights::TensorFile;
use crate::error::{Error, Result};
use crate::ops::mano::{
    mano_fwd_cpu, ManoData, JOINT_MAP, NUM_JOINTS, NUM_KEYPOINTS, POSE_FEATURES, TIP_VERTICES,
};
use crate::tensor::Tensor;

pub const NUM_BETAS: usize = 10;

pub struct Mano {
    pub v_template: Tensor,
    pub shapedirs: Tensor,
    pub posedirs: Tensor,
    pub j_regressor: Tensor,
    pub lbs_weights: Tensor,
    pub parents: [usize; NUM_JOINTS],
    pub tips: [usize; 5],
    /// Triangles, vertex indices checked to be in range.
    pub faces: Vec<[u32; 3]>,
}

/// MANO buffers that checkpoints carry but the forward pass does not use.
pub const UNUSED_BUFFERS: [&str; 4] = [
    "mano.hand_components",
    "mano.hand_mean",
    "mano.pose_mean",
    "mano.vertex_joint_selector.extra_joints_idxs",
];

impl Mano {
    pub fn load(f: &TensorFile) -> Result<Mano> {
        let shown = f.path().display().to_string();
        let err = |m: String| Error::Weights(format!("{shown}: {m}"));
        let v_template = f.f32_finite("mano.v_template", None)?;
        if v_template.shape().len() != 2 || v_template.dim(1) != 3 || v_template.dim(0) == 0 {
            return Err(err(format!(
                "tensor `mano.v_template` has shape {:?}, expected [V, 3]",
                v_template.shape()
            )));
        }
        let nv = v_template.dim(0);
        let shapedirs = f.f32_finite("mano.shapedirs", Some(&[nv, 3, NUM_BETAS]))?;
        let posedirs = f.f32_finite("mano.posedirs", Some(&[POSE_FEATURES, 3 * nv]))?;
        let j_regressor = f.f32_finite("mano.J_regressor", Some(&[NUM_JOINTS, nv]))?;
        let lbs_weights = f.f32_finite("mano.lbs_weights", Some(&[nv, NUM_JOINTS]))?;
        let raw_parents = f.i64("mano.parents", Some(&[NUM_JOINTS]))?;
        if raw_parents[0] != -1 {
            return Err(err(format!(
                "`mano.parents` must mark joint 0 as the root with -1; it holds {}",
                raw_parents[0]
            )));
        }
        let mut parents = [0usize; NUM_JOINTS];
        for (j, &p) in raw_parents.iter().enumerate().skip(1) {
            if p < 0 || p as usize >= j {
                return Err(err(format!("`mano.parents` must list each joint's parent before it; joint {j} has parent {p}")));
            }
            parents[j] = p as usize;
        }
        let tips = if f.contains("mano.extra_joints_idxs") {
            let t = f.i64("mano.extra_joints_idxs", Some(&[5]))?;
            let mut tips = [0usize; 5];
            for (k, &v) in t.iter().enumerate() {
                if v < 0 || v as usize >= nv {
                    return Err(err(format!(
                        "`mano.extra_joints_idxs` holds vertex {v}, outside 0..{nv}"
                    )));
                }
                tips[k] = v as usize;
            }
            tips
        } else if TIP_VERTICES.iter().all(|&v| v < nv) {
            TIP_VERTICES
        } else {
            return Err(err(format!("no `mano.extra_joints_idxs` and MANO's fingertip vertices do not exist in a {nv}-vertex model")));
        };
        if f.contains("mano.joint_map") {
            let map = f.i64("mano.joint_map", Some(&[NUM_KEYPOINTS]))?;
            if map.iter().zip(JOINT_MAP).any(|(&a, b)| a != b as i64) {
                return Err(err(format!(
                    "`mano.joint_map` is {map:?}, expected the OpenPose order {JOINT_MAP:?}"
                )));
            }
        }
        let mut faces = Vec::new();
        if f.contains("mano.faces_tensor") {
            let shape = f.shape("mano.faces_tensor").unwrap_or(&[]).to_vec();
            if shape.len() != 2 || shape[1] != 3 {
                return Err(err(format!(
                    "tensor `mano.faces_tensor` has shape {shape:?}, expected [F, 3]"
                )));
            }
            let raw = f.i64("mano.faces_tensor", None)?;
            for tri in raw.chunks_exact(3) {
                if tri.iter().any(|&v| v < 0 || v as usize >= nv) {
                    return Err(err(format!(
                        "`mano.faces_tensor` holds a face {tri:?} with a vertex outside 0..{nv}"
                    )));
                }
                faces.push([tri[0] as u32, tri[1] as u32, tri[2] as u32]);
            }
        }
        for name in UNUSED_BUFFERS {
            f.skip(name);
        }
        Ok(Mano {
            v_template,
            shapedirs,
            posedirs,
            j_regressor,
            lbs_weights,
            parents,
            tips,
            faces,
        })
    }

    pub fn num_verts(&self) -> usize {
        self.v_template.dim(0)
    }

    /// The buffers as the MANO ops take them.
    pub fn data(&self) -> ManoData<'_> {
        ManoData {
            num_verts: self.num_verts(),
            num_betas: NUM_BETAS,
            v_template: self.v_template.data(),
            shapedirs: self.shapedirs.data(),
            posedirs: self.posedirs.data(),
            j_regressor: self.j_regressor.data(),
            lbs_weights: self.lbs_weights.data(),
            parents: &self.parents,
            tips: &self.tips,
        }
    }

    /// `rotmats [B, 16, 3, 3]`, `betas [B, 10]` → (`vertices [B, V, 3]`, `keypoints [B, 21, 3]`).
    pub fn forward(&self, rotmats: &Tensor, betas: &Tensor) -> Result<(Tensor, Tensor)> {
        let b = rotmats.dim(0);
        rotmats.expect_shape("MANO rotations", &[b, NUM_JOINTS, 3, 3])?;
        betas.expect_shape("MANO betas", &[b, NUM_BETAS])?;
        let mut verts = Tensor::zeros(&[b, self.num_verts(), 3]);
        let mut kp = Tensor::zeros(&[b, NUM_KEYPOINTS, 3]);
        mano_fwd_cpu(
            &self.data(),
            rotmats.data(),
            betas.data(),
            b,
            verts.data_mut(),
            kp.data_mut(),
        );
        Ok((verts, kp))
    }
}
