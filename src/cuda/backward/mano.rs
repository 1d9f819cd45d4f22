//! Launcher of the MANO backward (kernels/mano_bwd.cu): `mano_chain_bwd_f32` alone when only the
//! keypoints have a gradient (training), `mano_rechain_bwd_f32` → `mano_skin_bwd_f32` →
//! `mano_chain_bwd_f32` when the vertices have one too. CPU twin: `ops::mano::mano_bwd_cpu`.
//! The thread layout and the reduction order are described in the kernel file's header.

use cudarc::driver::{CudaView, CudaViewMut, DeviceSlice, LaunchConfig, PushKernelArg};

use super::super::elementwise::check_lens;
use super::super::{cuda_err, CudaBackend, ManoDevice, ManoWorkspace, MANO_MAX_BETAS};
use crate::error::{Error, Result};
use crate::ops::mano::{NUM_JOINTS, NUM_KEYPOINTS, POSE_FEATURES};

const MODULE: &str = "mano_bwd";
/// Samples per block of the chain kernels (`MBW_CHAIN_THREADS`).
pub(super) const CHAIN_THREADS: usize = 32;
/// Vertices per block (one chunk) of `mano_skin_bwd_f32` (`MBW_SKIN_THREADS`).
pub(super) const SKIN_THREADS: usize = 160;
/// Samples per block of `mano_skin_bwd_f32` (`MBW_TILE`).
pub(super) const TILE: usize = 4;
/// Basis columns per shared-memory stage of `mano_skin_bwd_f32` (`MBW_BCOLS`; the launcher
/// does not need it, the mirror does).
#[cfg(test)]
pub(super) const BCOLS: usize = 32;
/// Floats of the chain's `D_j` per sample.
pub(super) const D_PER_SAMPLE: usize = NUM_JOINTS * 12;

/// Floats of one row of the vertex partial sums: g_D (192), g_β (nb), g_p (135).
pub(super) fn partial_row(nb: usize) -> usize {
    D_PER_SAMPLE + nb + POSE_FEATURES
}

/// Vertex chunks of `mano_skin_bwd_f32` (`gridDim.y`).
pub(super) fn chunks(nv: usize) -> usize {
    nv.div_ceil(SKIN_THREADS)
}

pub(super) fn chain_config(b: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (b.div_ceil(CHAIN_THREADS) as u32, 1, 1),
        block_dim: (CHAIN_THREADS as u32, 1, 1),
        shared_mem_bytes: 0,
    }
}

pub(super) fn skin_config(b: usize, nv: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (b.div_ceil(TILE) as u32, chunks(nv) as u32, 1),
        block_dim: (SKIN_THREADS as u32, 1, 1),
        shared_mem_bytes: 0,
    }
}

impl CudaBackend {
    /// Floats of `scratch` that [`CudaBackend::mano_bwd`] needs with a vertex gradient, for a
    /// batch of `b` and a model of `nv` vertices (any number of betas the kernels take); the
    /// keypoint-only path (`d_verts = None`) needs none (an empty buffer will do).
    pub fn mano_bwd_scratch_len(b: usize, nv: usize) -> usize {
        chunks(nv)
            .saturating_mul(b)
            .saturating_mul(partial_row(MANO_MAX_BETAS))
    }

    /// The MANO backward for `b` samples, as `mano_bwd_cpu`: from `rotmats [b, 16, 3, 3]`,
    /// `betas [b, nb]` and the gradients `d_keypoints [b, 21, 3]` (OpenPose order) and, if
    /// given, `d_verts [b, V, 3]`, writes (OVERWRITES) `d_rotmats [b, 16, 3, 3]` and
    /// `d_betas [b, nb]`. The forward's intermediates are recomputed; nothing from a forward
    /// call is needed.
    ///
    /// With `d_verts = None` (no loss reads the vertices) one kernel runs and neither `ws` nor
    /// `scratch` is touched. With `d_verts`, `ws` (the forward's workspace, capacity ≥ `b`)
    /// receives the recomputed chain `D_j` (the same values the forward writes there) and
    /// `scratch` (at least [`CudaBackend::mano_bwd_scratch_len`] floats) the per-vertex-chunk
    /// partial sums; three kernels run. Deterministic: the same bits on every run and GPU.
    #[allow(clippy::too_many_arguments)] // the op's own argument list
    pub fn mano_bwd(
        &self,
        m: &ManoDevice,
        ws: &mut ManoWorkspace,
        rotmats: &CudaView<'_, f32>,
        betas: &CudaView<'_, f32>,
        d_verts: Option<&CudaView<'_, f32>>,
        d_keypoints: &CudaView<'_, f32>,
        d_rotmats: &mut CudaViewMut<'_, f32>,
        d_betas: &mut CudaViewMut<'_, f32>,
        scratch: &mut CudaViewMut<'_, f32>,
        b: usize,
    ) -> Result<()> {
        const K: &str = "mano_bwd";
        let (nv, nb) = (m.num_verts, m.num_betas);
        if b > i32::MAX as usize / 2 {
            return crate::input_err!("{K}: batch {b} is too large for the kernels");
        }
        let shape = format!("batch {b} with {nv} vertices and {nb} betas");
        check_lens(
            K,
            &shape,
            &[
                ("rotmats", rotmats.len(), b * NUM_JOINTS * 9),
                ("betas", betas.len(), b * nb),
                ("d_keypoints", d_keypoints.len(), b * NUM_KEYPOINTS * 3),
                ("d_rotmats", d_rotmats.len(), b * NUM_JOINTS * 9),
                ("d_betas", d_betas.len(), b * nb),
            ],
        )?;
        let mut streams = vec![
            ("rotmats", rotmats.stream()),
            ("betas", betas.stream()),
            ("d_keypoints", d_keypoints.stream()),
            ("d_rotmats", d_rotmats.stream()),
            ("d_betas", d_betas.stream()),
            ("the model", m.posedirs.stream()),
        ];
        let nchunk = chunks(nv);
        let pl = partial_row(nb);
        let need = nchunk * b * pl; // < 2^63: nv ≤ 2^22, b < 2^30, pl ≤ 343
        if let Some(dv) = d_verts {
            let n_verts = b
                .checked_mul(3 * nv)
                .filter(|&n| n <= isize::MAX as usize / 4)
                .ok_or_else(|| Error::Input(format!("{K}: {shape} is too large")))?;
            check_lens(K, &shape, &[("d_verts", dv.len(), n_verts)])?;
            if b > ws.capacity {
                return crate::input_err!(
                    "{K}: batch {b} but the MANO workspace holds {} samples; make one with \
                     mano_workspace({b})",
                    ws.capacity
                );
            }
            if scratch.len() < need {
                return crate::input_err!(
                    "{K}: the scratch buffer holds {} floats but {shape} needs at least {need} \
                     (CudaBackend::mano_bwd_scratch_len)",
                    scratch.len()
                );
            }
            streams.push(("d_verts", dv.stream()));
            streams.push(("the workspace", ws.chain_d.stream()));
            streams.push(("scratch", scratch.stream()));
        }
        self.check_device(K, &streams)?;
        if b == 0 {
            return Ok(());
        }
        let (b_i, nv_i, nb_i) = (b as i32, nv as i32, nb as i32);

        let mut nchunk_i = 0i32;
        if let Some(dv) = d_verts {
            let f = self.function(MODULE, "mano_rechain_bwd_f32")?;
            let mut launch = self.stream.launch_builder(&f);
            launch
                .arg(rotmats)
                .arg(betas)
                .arg(&m.j_template)
                .arg(&m.j_shapedirs)
                .arg(&m.indices)
                .arg(&mut ws.chain_d)
                .arg(&b_i)
                .arg(&nb_i);
            // SAFETY: (const float* ×4, const int*, float*, int, int) as declared. Lengths:
            // rotmats b·144, betas b·nb (checked), j_template 48, j_shapedirs 48·nb, indices 42
            // with parents < j (upload_mano checked them); chain_d ≥ b·192 (capacity ≥ b). Grid
            // ⌈b/32⌉ blocks of 32 threads, as the kernel requires; it writes chain_d[0..b·192].
            unsafe { launch.launch(chain_config(b)) }.map_err(cuda_err(format_args!(
                "launching mano_rechain_bwd_f32 ({shape})"
            )))?;

            let f = self.function(MODULE, "mano_skin_bwd_f32")?;
            let mut part = scratch.slice_mut(..need);
            let mut launch = self.stream.launch_builder(&f);
            launch
                .arg(rotmats)
                .arg(betas)
                .arg(&m.v_template)
                .arg(&m.shapedirs_t)
                .arg(&m.posedirs)
                .arg(&m.lbs_weights)
                .arg(&ws.chain_d)
                .arg(dv)
                .arg(&mut part)
                .arg(&b_i)
                .arg(&nv_i)
                .arg(&nb_i);
            // SAFETY: (const float* ×8, float*, int, int, int) as declared. Lengths: rotmats
            // b·144, betas b·nb, d_verts b·3V (checked); v_template 3V, shapedirs_t nb·3V,
            // posedirs 135·3V, lbs_weights 16V (its own allocation: 16-byte aligned rows for the
            // float4 loads), checked by upload_mano; chain_d ≥ b·192 written by the kernel above
            // (same stream). Grid ⌈b/4⌉ × ⌈V/160⌉ blocks of 160 threads, as required; block
            // (x, y) writes rows (y, 4x ..) of part, [⌈V/160⌉, b, 192 + nb + 135] = `need`.
            unsafe { launch.launch(skin_config(b, nv)) }.map_err(cuda_err(format_args!(
                "launching mano_skin_bwd_f32 ({shape})"
            )))?;
            nchunk_i = nchunk as i32;
        }

        let f = self.function(MODULE, "mano_chain_bwd_f32")?;
        let null: u64 = 0;
        let part = scratch.slice(..need.min(scratch.len()));
        let mut launch = self.stream.launch_builder(&f);
        launch
            .arg(rotmats)
            .arg(betas)
            .arg(d_keypoints)
            .arg(&m.v_template)
            .arg(&m.shapedirs_t)
            .arg(&m.posedirs)
            .arg(&m.lbs_weights)
            .arg(&m.j_template)
            .arg(&m.j_shapedirs)
            .arg(&m.indices);
        if d_verts.is_some() {
            launch.arg(&part);
        } else {
            launch.arg(&null); // nchunk = 0: never dereferenced
        }
        launch
            .arg(&nchunk_i)
            .arg(&mut *d_rotmats)
            .arg(&mut *d_betas)
            .arg(&b_i)
            .arg(&nv_i)
            .arg(&nb_i);
        // SAFETY: (const float* ×9, const int*, const float*, int, float*, float*, int, int,
        // int) as declared. Lengths: rotmats, d_rotmats b·144, betas, d_betas b·nb, d_keypoints
        // b·63 (checked); the model buffers as above (fingertips < V, slots < 21, parents < j);
        // part holds nchunk·b·(192 + nb + 135) floats when nchunk > 0 (written by
        // mano_skin_bwd_f32 on this stream) and is not read when nchunk = 0. Grid ⌈b/32⌉ blocks
        // of 32 threads; each thread writes its sample's rows of d_rotmats and d_betas, which
        // are distinct mutable borrows.
        unsafe { launch.launch(chain_config(b)) }.map_err(cuda_err(format_args!(
            "launching mano_chain_bwd_f32 ({shape})"
        )))?;
        Ok(())
    }
}
