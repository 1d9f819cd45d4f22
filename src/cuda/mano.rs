//! Launchers for the MANO layer forward (kernels/mano.cu): `mano_chain_fwd_f32` (kinematic
//! chain, one thread per sample) then `mano_skin_fwd_f32` (blend shapes + LBS + fingertips,
//! fused). CPU twin: `crate::ops::mano::mano_fwd_cpu`.
//!
//! [`CudaBackend::upload_mano`] copies a model to the device once, in the layout the kernels
//! read (see [`ManoDevice`]); [`CudaBackend::mano_workspace`] allocates the per-batch scratch
//! once, so steady-state [`CudaBackend::mano_fwd`] calls allocate nothing.

use cudarc::driver::{CudaSlice, CudaView, CudaViewMut, DeviceSlice, LaunchConfig, PushKernelArg};

use super::{cuda_err, CudaBackend};
use crate::error::{Error, Result};
use crate::ops::mano::{ManoData, JOINT_MAP, NUM_JOINTS, NUM_KEYPOINTS, POSE_FEATURES};

/// Largest number of shape parameters the kernels accept (`MANO_MAX_BETAS` in kernels/mano.cu).
pub const MANO_MAX_BETAS: usize = 16;
/// Largest vertex count accepted on upload: keeps `gridDim.y = ⌈V/160⌉` far below 65 535 and
/// every per-sample index below 2³¹.
pub const MANO_MAX_VERTS: usize = 1 << 22;
/// Floats of the chain's `D_j` (3×4) per sample, for the 16 joints.
const D_PER_SAMPLE: usize = NUM_JOINTS * 12;
/// Samples per block of `mano_chain_fwd_f32` (`MANO_CHAIN_THREADS`).
const CHAIN_THREADS: usize = 32;
/// Vertices per block of `mano_skin_fwd_f32` (at most `MANO_SKIN_THREADS`, its launch bound).
/// 160 cuts MANO's 778 vertices into 5 chunks with 97 % of the threads busy (128 would leave a
/// 7th chunk of 10 vertices).
const SKIN_THREADS: usize = 160;
/// Samples per block of `mano_skin_fwd_f32`: the large tile, and the small one used when the
/// large tile would leave SMs idle.
const SKIN_TILE_LARGE: usize = 16;
const SKIN_TILE_SMALL: usize = 4;

// Layout of `ManoDevice::indices` (the `MANO_IDX_*` defines in kernels/mano.cu).
const IDX_PARENTS: usize = 0;
const IDX_TIPS: usize = 16;
const IDX_TIP_SLOTS: usize = 21;
const IDX_JOINT_SLOTS: usize = 26;
const IDX_LEN: usize = 42;

/// A MANO model on the device, in the layout the kernels read. Built by
/// [`CudaBackend::upload_mano`], which checks every size and index once, so the launchers can
/// trust it (the fields are private to `crate::cuda` for that reason).
pub struct ManoDevice {
    pub(in crate::cuda) num_verts: usize,
    pub(in crate::cuda) num_betas: usize,
    /// `[V, 3]`
    pub(in crate::cuda) v_template: CudaSlice<f32>,
    /// `[nb, 3V]`: `shapedirs [V, 3, nb]` transposed, so a basis row is contiguous over columns.
    pub(in crate::cuda) shapedirs_t: CudaSlice<f32>,
    /// `[135, 3V]`, as in the checkpoint.
    pub(in crate::cuda) posedirs: CudaSlice<f32>,
    /// `[V, 16]`, as in the checkpoint (a device allocation: 16-byte aligned rows of 64 bytes).
    pub(in crate::cuda) lbs_weights: CudaSlice<f32>,
    /// `J_regressor · v_template`, `[16, 3]` (computed in f64 on upload).
    pub(in crate::cuda) j_template: CudaSlice<f32>,
    /// `J_regressor · shapedirs`, `[16, 3, nb]`: the rest joints are `j_template + j_shapedirs·β`.
    pub(in crate::cuda) j_shapedirs: CudaSlice<f32>,
    /// i32 `[42]`: parents `[16]`, fingertip vertices `[5]`, the keypoint slot of each fingertip
    /// `[5]` and of each joint `[16]` (positions in the OpenPose order of `JOINT_MAP`).
    pub(in crate::cuda) indices: CudaSlice<i32>,
}

impl ManoDevice {
    pub fn num_verts(&self) -> usize {
        self.num_verts
    }
    pub fn num_betas(&self) -> usize {
        self.num_betas
    }
}

/// Scratch for [`CudaBackend::mano_fwd`] for batches of up to `capacity` samples: the chain's
/// `D_j = A_j − [I | 0]`, `[b, 16, 3, 4]` (which a backward pass can reuse).
pub struct ManoWorkspace {
    pub(in crate::cuda) capacity: usize,
    pub(in crate::cuda) chain_d: CudaSlice<f32>,
}

impl ManoWorkspace {
    /// Largest batch this workspace serves.
    pub fn capacity(&self) -> usize {
        self.capacity
    }
    /// `D_j` of the last forward, `[capacity, 16, 3, 4]` (the first `b` samples are valid).
    pub fn chain_d(&self) -> &CudaSlice<f32> {
        &self.chain_d
    }
}

/// The host-side arrays `upload_mano` copies (besides `posedirs` and `lbs_weights`, which go up
/// as they are), built and checked on the CPU.
pub(in crate::cuda) struct ManoPacked {
    pub(in crate::cuda) shapedirs_t: Vec<f32>,
    pub(in crate::cuda) j_template: Vec<f32>,
    pub(in crate::cuda) j_shapedirs: Vec<f32>,
    pub(in crate::cuda) indices: Vec<i32>,
}

/// Position of `src` in `JOINT_MAP` (the keypoint slot that receives source point `src`).
fn keypoint_slot(src: usize) -> Result<i32> {
    JOINT_MAP
        .iter()
        .position(|&s| s == src)
        .map(|p| p as i32)
        .ok_or_else(|| Error::Input(format!("MANO: JOINT_MAP has no slot for point {src}")))
}

/// Checks `m` and builds the transposed and folded buffers (see kernels/mano.cu, header).
pub(in crate::cuda) fn pack(m: &ManoData) -> Result<ManoPacked> {
    let (nv, nb) = (m.num_verts, m.num_betas);
    if nv == 0 || nv > MANO_MAX_VERTS {
        return crate::input_err!("MANO: {nv} vertices; the kernels take 1 to {MANO_MAX_VERTS}");
    }
    if nb == 0 || nb > MANO_MAX_BETAS {
        return crate::input_err!(
            "MANO: {nb} shape parameters; the kernels take 1 to {MANO_MAX_BETAS}"
        );
    }
    let n3 = 3 * nv;
    for (what, len, want) in [
        ("v_template", m.v_template.len(), n3),
        ("shapedirs", m.shapedirs.len(), n3 * nb),
        ("posedirs", m.posedirs.len(), POSE_FEATURES * n3),
        ("J_regressor", m.j_regressor.len(), NUM_JOINTS * nv),
        ("lbs_weights", m.lbs_weights.len(), NUM_JOINTS * nv),
    ] {
        if len != want {
            return crate::input_err!(
                "MANO: {what} holds {len} floats but {nv} vertices and {nb} betas need {want}"
            );
        }
    }
    for (j, &p) in m.parents.iter().enumerate().skip(1) {
        if p >= j {
            return crate::input_err!(
                "MANO: joint {j} has parent {p}; each parent must come before its child"
            );
        }
    }
    for (k, &t) in m.tips.iter().enumerate() {
        if t >= nv {
            return crate::input_err!("MANO: fingertip {k} is vertex {t}, outside 0..{nv}");
        }
    }

    let mut shapedirs_t = vec![0f32; nb * n3];
    for col in 0..n3 {
        for l in 0..nb {
            shapedirs_t[l * n3 + col] = m.shapedirs[col * nb + l];
        }
    }
    // J_regressor folded into the template and the shape basis, accumulated in f64.
    let mut j_template = vec![0f32; NUM_JOINTS * 3];
    let mut j_shapedirs = vec![0f32; NUM_JOINTS * 3 * nb];
    let mut acc = vec![0f64; 3 * (nb + 1)];
    for j in 0..NUM_JOINTS {
        acc.iter_mut().for_each(|a| *a = 0.0);
        for v in 0..nv {
            let w = m.j_regressor[j * nv + v] as f64;
            if w == 0.0 {
                continue;
            }
            for c in 0..3 {
                acc[c * (nb + 1)] += w * m.v_template[v * 3 + c] as f64;
                for l in 0..nb {
                    acc[c * (nb + 1) + 1 + l] += w * m.shapedirs[(v * 3 + c) * nb + l] as f64;
                }
            }
        }
        for c in 0..3 {
            j_template[j * 3 + c] = acc[c * (nb + 1)] as f32;
            for l in 0..nb {
                j_shapedirs[(j * 3 + c) * nb + l] = acc[c * (nb + 1) + 1 + l] as f32;
            }
        }
    }

    let mut indices = vec![0i32; IDX_LEN];
    for j in 1..NUM_JOINTS {
        indices[IDX_PARENTS + j] = m.parents[j] as i32;
    }
    for k in 0..5 {
        indices[IDX_TIPS + k] = m.tips[k] as i32;
        indices[IDX_TIP_SLOTS + k] = keypoint_slot(NUM_JOINTS + k)?;
    }
    for j in 0..NUM_JOINTS {
        indices[IDX_JOINT_SLOTS + j] = keypoint_slot(j)?;
    }
    Ok(ManoPacked {
        shapedirs_t,
        j_template,
        j_shapedirs,
        indices,
    })
}

/// Samples per block of the skin kernel: the large tile when it still gives every SM a block.
fn skin_tile(b: usize, nv: usize, num_sms: usize) -> usize {
    let chunks = nv.div_ceil(SKIN_THREADS);
    if b.div_ceil(SKIN_TILE_LARGE) * chunks >= num_sms {
        SKIN_TILE_LARGE
    } else {
        SKIN_TILE_SMALL
    }
}

fn chain_config(b: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (b.div_ceil(CHAIN_THREADS) as u32, 1, 1),
        block_dim: (CHAIN_THREADS as u32, 1, 1),
        shared_mem_bytes: 0,
    }
}

fn skin_config(b: usize, nv: usize, tile: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (b.div_ceil(tile) as u32, nv.div_ceil(SKIN_THREADS) as u32, 1),
        block_dim: (SKIN_THREADS as u32, 1, 1),
        shared_mem_bytes: 0,
    }
}

impl CudaBackend {
    /// Copies a MANO model to the device (once; reuse the result). Checks every buffer's length,
    /// the parents (each before its child), the fingertip vertices and the number of betas
    /// (1 to [`MANO_MAX_BETAS`]); folds `J_regressor` into the template and the shape basis.
    pub fn upload_mano(&self, m: &ManoData) -> Result<ManoDevice> {
        let packed = pack(m)?;
        let up_i32 = |host: &[i32]| {
            self.stream.clone_htod(host).map_err(cuda_err(format_args!(
                "copying {} ints to the device",
                host.len()
            )))
        };
        Ok(ManoDevice {
            num_verts: m.num_verts,
            num_betas: m.num_betas,
            v_template: self.htod(m.v_template)?,
            shapedirs_t: self.htod(&packed.shapedirs_t)?,
            posedirs: self.htod(m.posedirs)?,
            lbs_weights: self.htod(m.lbs_weights)?,
            j_template: self.htod(&packed.j_template)?,
            j_shapedirs: self.htod(&packed.j_shapedirs)?,
            indices: up_i32(&packed.indices)?,
        })
    }

    /// Scratch for [`CudaBackend::mano_fwd`] with batches of up to `capacity` samples.
    pub fn mano_workspace(&self, capacity: usize) -> Result<ManoWorkspace> {
        let len = capacity.max(1).checked_mul(D_PER_SAMPLE).ok_or_else(|| {
            Error::Input(format!(
                "MANO: a workspace for {capacity} samples is too large"
            ))
        })?;
        Ok(ManoWorkspace {
            capacity,
            chain_d: self.zeros(len)?,
        })
    }

    /// The MANO forward for `b` samples: `rotmats [b, 16, 3, 3]` (global orientation first),
    /// `betas [b, nb]` → `verts [b, V, 3]` and `keypoints [b, 21, 3]` (OpenPose order), as
    /// `mano_fwd_cpu`. `ws` must hold at least `b` samples. Two kernels, queued on the stream.
    #[allow(clippy::too_many_arguments)]
    pub fn mano_fwd(
        &self,
        m: &ManoDevice,
        ws: &mut ManoWorkspace,
        rotmats: &CudaView<'_, f32>,
        betas: &CudaView<'_, f32>,
        verts: &mut CudaViewMut<'_, f32>,
        keypoints: &mut CudaViewMut<'_, f32>,
        b: usize,
    ) -> Result<()> {
        let (nv, nb) = (m.num_verts, m.num_betas);
        if b > i32::MAX as usize / 2 {
            return crate::input_err!("MANO: batch {b} is too large for the kernels");
        }
        if b > ws.capacity {
            return crate::input_err!(
                "MANO: batch {b} but the workspace holds {} samples; make one with \
                 mano_workspace({b})",
                ws.capacity
            );
        }
        let too_big = || Error::Input(format!("MANO: batch {b} × {nv} vertices is too large"));
        let n_verts = b
            .checked_mul(3 * nv)
            .filter(|&n| n <= isize::MAX as usize / 4)
            .ok_or_else(too_big)?;
        for (what, len, want) in [
            ("rotmats", rotmats.len(), b * NUM_JOINTS * 9),
            ("betas", betas.len(), b * nb),
            ("verts", verts.len(), n_verts),
            ("keypoints", keypoints.len(), b * NUM_KEYPOINTS * 3),
        ] {
            if len != want {
                return crate::input_err!(
                    "MANO: {what} holds {len} floats but batch {b} with {nv} vertices and {nb} \
                     betas needs {want}"
                );
            }
        }
        for (what, ctx) in [
            ("rotmats", DeviceSlice::stream(rotmats).context()),
            ("betas", DeviceSlice::stream(betas).context()),
            ("verts", DeviceSlice::stream(verts).context()),
            ("keypoints", DeviceSlice::stream(keypoints).context()),
            ("the model", m.posedirs.context()),
            ("the workspace", ws.chain_d.context()),
        ] {
            if **ctx != *self.ctx {
                return crate::input_err!("MANO: {what} lives on another CUDA device");
            }
        }
        if b == 0 {
            return Ok(());
        }
        let (b_i, nv_i, nb_i) = (b as i32, nv as i32, nb as i32);

        let chain = self.function("mano", "mano_chain_fwd_f32")?;
        let mut launch = self.stream.launch_builder(&chain);
        launch
            .arg(rotmats)
            .arg(betas)
            .arg(&m.j_template)
            .arg(&m.j_shapedirs)
            .arg(&m.indices)
            .arg(&mut ws.chain_d)
            .arg(&mut *keypoints)
            .arg(&b_i)
            .arg(&nb_i);
        // SAFETY: the arguments match mano_chain_fwd_f32(const float*, const float*,
        // const float*, const float*, const int*, float*, float*, int, int) in order. Lengths:
        // rotmats b·144, betas b·nb, keypoints b·63 (checked above), j_template 48, j_shapedirs
        // 48·nb, indices 42 with parents < j and slots < 21 (checked by upload_mano), chain_d
        // ≥ b·192 (capacity ≥ b). The kernel writes only chain_d[0..b·192] and the joint slots of
        // keypoints; outputs are borrowed mutably, so nothing aliases (__restrict__ holds).
        unsafe { launch.launch(chain_config(b)) }.map_err(cuda_err(format_args!(
            "launching mano_chain_fwd_f32 (batch {b})"
        )))?;

        let tile = skin_tile(b, nv, self.num_sms);
        let tile_i = tile as i32;
        let skin = self.function("mano", "mano_skin_fwd_f32")?;
        let mut launch = self.stream.launch_builder(&skin);
        launch
            .arg(rotmats)
            .arg(betas)
            .arg(&m.v_template)
            .arg(&m.shapedirs_t)
            .arg(&m.posedirs)
            .arg(&m.lbs_weights)
            .arg(&ws.chain_d)
            .arg(&m.indices)
            .arg(verts)
            .arg(keypoints)
            .arg(&b_i)
            .arg(&nv_i)
            .arg(&nb_i)
            .arg(&tile_i);
        // SAFETY: the arguments match mano_skin_fwd_f32(const float* × 7, const int*, float*,
        // float*, int, int, int, int) in order. Lengths: rotmats b·144, betas b·nb, verts b·3V,
        // keypoints b·63 (checked above); v_template 3V, shapedirs_t nb·3V, posedirs 135·3V,
        // lbs_weights 16V (a fresh allocation, so its 64-byte rows are 16-byte aligned for the
        // float4 loads), indices 42 (tips < V, slots < 21), all checked by upload_mano;
        // chain_d ≥ b·192. The grid is ⌈b/tile⌉ × ⌈V/160⌉ blocks of 160 threads with tile ∈
        // {4, 16}, as the kernel requires; it writes verts[0..b·3V] and the tip slots of
        // keypoints, each element by one thread, and nothing it reads.
        unsafe { launch.launch(skin_config(b, nv, tile)) }.map_err(cuda_err(format_args!(
            "launching mano_skin_fwd_f32 (batch {b}, {nv} vertices)"
        )))?;
        Ok(())
    }
}

#[cfg(test)]
pub(in crate::cuda) mod tests;
