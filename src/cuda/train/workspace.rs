//! The activation workspace of [`GpuTrainModel`] for one batch size: every buffer the training
//! forward keeps for the backward, and the backward's own gradient buffers, allocated once.

use super::{alloc, BlockActs, DecActs, DecLayerActs, GpuTrainModel, GradWs, TrainWs};
use crate::cuda::{CudaBackend, Dtype};
use crate::error::Result;
use crate::model::heads::{NBETAS, NPOSE};
use crate::ops::mano::{NUM_JOINTS, NUM_KEYPOINTS};

impl<T: Dtype> GpuTrainModel<T> {
    /// Allocates the activations of batch size `b` (dropping those of another size). Running
    /// out of device memory here is an error naming the batch size.
    pub fn ensure_workspace(&mut self, b: usize) -> Result<()> {
        if self.ws.as_ref().is_some_and(|w| w.b == b) {
            return Ok(());
        }
        self.ws = None;
        let be = &self.backend;
        let cfg = &self.cfg;
        let (c, t, s) = (cfg.vit.embed_dim, cfg.num_tokens(), cfg.image_size);
        let hidden = cfg.vit_mlp_hidden();
        let d = &cfg.decoder;
        let inner = d.heads * d.dim_head;
        let bt = b * t;
        let nblocks = cfg.vit.depth;
        let a32 = |n: usize| alloc::<f32>(be, n, b);
        let at = |n: usize| alloc::<T>(be, n, b);
        let blocks = (0..nblocks)
            .map(|_| {
                Ok(BlockActs {
                    x0: a32(bt * c)?,
                    h1: at(bt * c)?,
                    qkv: at(bt * 3 * c)?,
                    att: at(bt * c)?,
                    x1: a32(bt * c)?,
                    h2: at(bt * c)?,
                    pre: at(bt * hidden)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let dec = || -> Result<DecActs<T>> {
            let layers = (0..d.depth)
                .map(|_| {
                    Ok(DecLayerActs {
                        x0: a32(b * d.dim)?,
                        ha: at(b * d.dim)?,
                        v: at(b * inner)?,
                        x1: a32(b * d.dim)?,
                        hb: at(b * d.dim)?,
                        q: at(b * inner)?,
                        kv: at(bt * 2 * inner)?,
                        att: at(b * inner)?,
                        x2: a32(b * d.dim)?,
                        hc: at(b * d.dim)?,
                        pre: at(b * d.mlp_dim)?,
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            Ok(DecActs {
                layers,
                x: a32(b * d.dim)?,
            })
        };
        let raw_lens: Vec<usize> = self
            .unc_readout
            .as_ref()
            .map(|r| r.iter().map(|(_, n)| *n).collect())
            .unwrap_or_default();
        let raw_a_len = raw_lens.first().copied().unwrap_or(0);
        let raw_b_len = raw_lens.get(1).copied().unwrap_or(0);
        let scratch = [
            CudaBackend::layernorm_bwd_scratch_len(bt, c),
            CudaBackend::bias_grad_scratch_len(bt, hidden.max(3 * c)),
            CudaBackend::bias_grad_scratch_len(bt, 2 * inner),
            CudaBackend::pos_embed_bwd_scratch_len(t, c),
            CudaBackend::self_attention_bwd_scratch_len(b, t, cfg.vit.num_heads),
            CudaBackend::layernorm_bwd_scratch_len(b, d.dim),
            // Every bias of a decoder or readout: to_q (inner), to_out / net.3 / the query
            // token (dim), net.0 (mlp), the readouts (96, 10, 3, raw_a, raw_b).
            CudaBackend::bias_grad_scratch_len(
                b,
                d.mlp_dim
                    .max(inner)
                    .max(d.dim)
                    .max(raw_a_len)
                    .max(raw_b_len)
                    .max(NPOSE),
            ),
        ]
        .into_iter()
        .max()
        .unwrap_or(1);
        let g = GradWs {
            x: a32(bt * c)?,
            tmp: a32(bt * c)?,
            h: a32(bt * c)?,
            branch_t: at(bt * c)?,
            hid: at(bt * hidden)?,
            att: at(bt * c)?,
            qkv: at(bt * 3 * c)?,
            ctx: a32(bt * c)?,
            dx: a32(b * d.dim)?,
            dtmp: a32(b * d.dim)?,
            dh: a32(b * d.dim)?,
            dt: at(b * d.dim)?,
            dff: at(b * d.mlp_dim)?,
            datt: at(b * inner)?,
            dq: at(b * inner)?,
            dv: at(b * inner)?,
            dkv: at(bt * 2 * inner)?,
            d_kp2d: a32(b * NUM_KEYPOINTS * 2)?,
            d_kp3d: a32(b * NUM_KEYPOINTS * 3)?,
            d_kp_tmp: a32(b * NUM_KEYPOINTS * 3)?,
            d_rot: a32(b * NUM_JOINTS * 9)?,
            d_rot_tmp: a32(b * NUM_JOINTS * 9)?,
            d_betas: a32(b * NBETAS)?,
            d_betas_tmp: a32(b * NBETAS)?,
            d_pose6d: a32(b * NPOSE)?,
            d_cam: a32(b * 3)?,
            d_raw_a: a32(b * raw_a_len)?,
            d_raw_b: a32(b * raw_b_len)?,
            d_wcov: a32(63 * 63)?,
            nll_loss: alloc::<f64>(be, b, b)?,
            nll_status: alloc::<i32>(be, b, b)?,
            nll_dmu: a32(b * 63)?,
            nll_ds: a32(b * 63)?,
            nll_scratch: alloc::<f64>(be, CudaBackend::cholesky_nll_scratch_len(b), b)?,
            gt3d: a32(b * NUM_KEYPOINTS * 4)?,
            scratch: a32(scratch)?,
            mano_scratch: a32(CudaBackend::mano_bwd_scratch_len(b, self.num_verts))?,
        };
        self.ws = Some(TrainWs {
            b,
            img: a32(b * 3 * s * s)?,
            cols: at(bt * self.geometry.patch_len())?,
            x: a32(bt * c)?,
            r: a32(bt * c)?,
            hid: at(bt * hidden)?,
            blocks,
            ctx: at(bt * c)?,
            dr: a32(b * d.dim)?,
            dff: at(b * d.mlp_dim)?,
            mano_dec: dec()?,
            unc_dec: self.unc_readout.as_ref().map(|_| dec()).transpose()?,
            pose6d: a32(b * NPOSE)?,
            betas: a32(b * NBETAS)?,
            cam: a32(b * 3)?,
            rot: a32(b * NUM_JOINTS * 9)?,
            verts: a32(b * self.num_verts * 3)?,
            kp3d: a32(b * NUM_KEYPOINTS * 3)?,
            cam_t: a32(b * 3)?,
            kp2d: a32(b * NUM_KEYPOINTS * 2)?,
            mano_ws: be.mano_workspace(b)?,
            raw_a: a32(b * raw_a_len)?,
            raw_b: a32(b * raw_b_len)?,
            drop: a32(nblocks * 2 * b)?,
            g,
        });
        Ok(())
    }
}
