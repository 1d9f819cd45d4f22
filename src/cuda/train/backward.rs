//! The backward of [`GpuTrainModel`]: from the gradients of the head outputs (computed by the
//! host losses) through the camera, MANO, rot6d, the readouts, both decoders and the ViT to
//! every parameter, in the reverse order of the forward and the same formulas as the CPU's
//! `model::backward` (the reference these kernels are compared with). Parameter gradients are
//! accumulated into `GpuTrainModel::grads` (cleared by the caller before the step); activation
//! gradients live in the workspace's `GradWs`.

mod decoder;

use cudarc::driver::{CudaSlice, CudaView, CudaViewMut};
use decoder::decoder_bwd;

use super::params::{DevBuffers, DevParams};
use super::{head, head_mut, ws_missing, GpuTrainModel, OutputGrads, TrainWs};
use crate::cuda::{cuda_err, CudaBackend, Dtype, GradGemm};
use crate::error::{Error, Result};
use crate::model::heads::{NBETAS, NPOSE};
use crate::ops::mano::{NUM_JOINTS, NUM_KEYPOINTS};

/// The exact-NLL term of `ours` (`--ours-nll exact`) computed on the device by the Cholesky
/// kernel during the backward.
#[derive(Clone, Copy, Debug)]
pub struct ExactNll<'a> {
    /// `keypoints_3d` of the batch, `[b, 21, 4]`.
    pub gt: &'a [f32],
    pub jitter: f64,
    /// The loss weight (the gradients are `weight·∂L/∂·`).
    pub weight: f64,
}

/// `dst = src` converted to T (a copy in fp32 mode, bf16 rounding in bf16 mode).
fn to_t<T: Dtype>(
    be: &CudaBackend,
    src: &CudaView<'_, f32>,
    dst: &mut CudaViewMut<'_, T>,
) -> Result<()> {
    let n = dst.len();
    if T::NAME == "f32" {
        // SAFETY: T is f32 (checked by name), so this is the same type and length.
        let mut d = unsafe { dst.transmute_mut::<f32>(n) }
            .ok_or_else(|| Error::Cuda("viewing a gradient buffer as f32".into()))?;
        be.stream()
            .memcpy_dtod(src, &mut d)
            .map_err(cuda_err("copying a gradient on the device"))
    } else if T::NAME == "bf16" {
        // SAFETY: T is bf16 (checked by name), so this is the same type and length.
        let mut d = unsafe { dst.transmute_mut::<half::bf16>(n) }
            .ok_or_else(|| Error::Cuda("viewing a gradient buffer as bf16".into()))?;
        be.cast_fwd_f32_to_bf16(src, &mut d)
    } else {
        Err(Error::Cuda(format!(
            "no f32 → {} conversion for a gradient",
            T::NAME
        )))
    }
}

/// What every parameter-gradient step of the backward borrows: the backend, the gradient
/// GEMMs, the weights, the gradients and the reductions' scratch.
struct Ctx<'a, T: Dtype> {
    be: &'a CudaBackend,
    gg: &'a mut GradGemm,
    p: &'a DevParams<T>,
    gr: &'a mut DevBuffers,
    scratch: &'a mut CudaSlice<f32>,
}

impl<T: Dtype> Ctx<'_, T> {
    /// Parameter-gradient side of a linear layer `y = x·Wᵀ + b` named `name`: `dW += dyᵀ·x`
    /// (from the T copies) and, when the layer has a bias, `db += Σ dy` from `dy_f` (f32, when
    /// the gradient exists in f32) or else from `dy`.
    #[allow(clippy::too_many_arguments)]
    fn params(
        &mut self,
        name: &str,
        x: &CudaView<'_, T>,
        dy: &CudaView<'_, T>,
        dy_f: Option<&CudaView<'_, f32>>,
        rows: usize,
        d_in: usize,
        d_out: usize,
    ) -> Result<()> {
        let (p, gr) = (self.p, &mut *self.gr);
        self.gg.linear_bwd_weight::<T>(
            x,
            dy,
            &mut gr.get_mut(&p.index, &format!("{name}.weight"))?,
            rows,
            d_in,
            d_out,
        )?;
        let bn = format!("{name}.bias");
        if p.index.has(&bn) {
            let mut db = gr.get_mut(&p.index, &bn)?;
            let mut sc = self.scratch.as_view_mut();
            match dy_f {
                Some(f) => self.be.bias_grad::<f32>(f, &mut db, &mut sc, rows, d_out)?,
                None => self.be.bias_grad::<T>(dy, &mut db, &mut sc, rows, d_out)?,
            }
        }
        Ok(())
    }

    /// The whole backward of the linear layer `name`: [`Ctx::params`], then the input gradient
    /// `dx = dy·W` (overwritten, or added with `accumulate`) in `TO`.
    #[allow(clippy::too_many_arguments)]
    fn linear<TO: Dtype>(
        &mut self,
        name: &str,
        x: &CudaView<'_, T>,
        dy: &CudaView<'_, T>,
        dy_f: Option<&CudaView<'_, f32>>,
        dx: &mut CudaViewMut<'_, TO>,
        rows: usize,
        d_in: usize,
        d_out: usize,
        accumulate: bool,
    ) -> Result<()> {
        self.params(name, x, dy, dy_f, rows, d_in, d_out)?;
        let w = self.p.w(&format!("{name}.weight"))?;
        self.gg
            .linear_bwd_input::<T, TO>(dy, &w, dx, rows, d_in, d_out, accumulate)
    }

    /// LayerNorm `name` backward: `dx_out = ∂/∂x` (overwritten); its weight and bias
    /// gradients are accumulated.
    #[allow(clippy::too_many_arguments)]
    fn layernorm(
        &mut self,
        name: &str,
        x: &CudaView<'_, f32>,
        dy: &CudaView<'_, f32>,
        dx_out: &mut CudaViewMut<'_, f32>,
        rows: usize,
        cols: usize,
    ) -> Result<()> {
        let p = self.p;
        let eps = *p
            .norm_eps
            .get(name)
            .ok_or_else(|| Error::Cuda(format!("no LayerNorm named {name}")))?;
        let gamma = p.f(&format!("{name}.weight"))?;
        let (mut dg, mut db) =
            self.gr
                .pair_mut(&p.index, &format!("{name}.weight"), &format!("{name}.bias"))?;
        self.be.layernorm_bwd(
            x,
            &gamma,
            dy,
            dx_out,
            &mut dg,
            &mut db,
            &mut self.scratch.as_view_mut(),
            rows,
            cols,
            eps,
        )
    }

    /// [`Ctx::layernorm`] into `tmp`, then added to the residual gradient `dx` (the first
    /// `rows·cols` values of each).
    #[allow(clippy::too_many_arguments)]
    fn layernorm_add(
        &mut self,
        name: &str,
        x: &CudaView<'_, f32>,
        dy: &CudaView<'_, f32>,
        tmp: &mut CudaSlice<f32>,
        dx: &mut CudaSlice<f32>,
        rows: usize,
        cols: usize,
    ) -> Result<()> {
        let n = rows * cols;
        self.layernorm(name, x, dy, &mut head_mut(tmp, n), rows, cols)?;
        self.be.add_fwd(&mut head_mut(dx, n), &head(tmp, n))
    }
}

impl<T: Dtype> GpuTrainModel<T> {
    /// The backward of the last [`GpuTrainModel::forward`] from the head outputs' gradients,
    /// plus (with `exact`) the exact NLL of `ours` on the device. Accumulates into `grads`;
    /// returns the exact NLL's value (unweighted, as `train::nll::nll_exact_lowrank`) when it
    /// was computed. `drop` must match the forward's drop-path choice.
    pub fn backward(
        &mut self,
        g: &OutputGrads,
        exact: Option<ExactNll>,
        drop: bool,
    ) -> Result<Option<f64>> {
        self.upload_output_grads(g)?;
        if let Some(e) = exact {
            self.queue_exact_nll(&e)?;
        }
        self.backward_heads()?;
        self.backward_backbone(drop)?;
        match exact {
            Some(e) => self.exact_nll_result(e.jitter).map(Some),
            None => Ok(None),
        }
    }

    fn upload_output_grads(&mut self, g: &OutputGrads) -> Result<()> {
        let ws = self.ws.as_mut().ok_or_else(ws_missing)?;
        let b = ws.b;
        let stream = self.backend.stream().clone();
        let up = |src: &[f32], dst: &mut CudaSlice<f32>, what: &str, n: usize| -> Result<()> {
            if src.len() != n {
                return Err(Error::Input(format!(
                    "GPU backward: {what} has {} values, expected {n}",
                    src.len()
                )));
            }
            stream
                .memcpy_htod(src, &mut dst.slice_mut(..n))
                .map_err(cuda_err(format_args!("copying {what} to the device")))
        };
        let gw = &mut ws.g;
        up(
            g.d_kp2d,
            &mut gw.d_kp2d,
            "d keypoints_2d",
            b * NUM_KEYPOINTS * 2,
        )?;
        up(
            g.d_kp3d,
            &mut gw.d_kp3d,
            "d keypoints_3d",
            b * NUM_KEYPOINTS * 3,
        )?;
        up(g.d_rot, &mut gw.d_rot, "d rotations", b * NUM_JOINTS * 9)?;
        up(g.d_betas, &mut gw.d_betas, "d betas", b * NBETAS)?;
        match (g.d_raw, self.unc_readout.as_deref()) {
            (Some(d), Some(parts)) => {
                let na = parts[0].1;
                let nb = parts.get(1).map_or(0, |p| p.1);
                if d.len() != b * (na + nb) {
                    return Err(Error::Input(format!(
                        "GPU backward: d raw has {} values, expected {}",
                        d.len(),
                        b * (na + nb)
                    )));
                }
                let (mut a, mut bb) = (Vec::with_capacity(b * na), Vec::with_capacity(b * nb));
                for r in d.chunks(na + nb) {
                    a.extend_from_slice(&r[..na]);
                    bb.extend_from_slice(&r[na..]);
                }
                up(&a, &mut gw.d_raw_a, "d raw", b * na)?;
                if nb > 0 {
                    up(&bb, &mut gw.d_raw_b, "d raw (off-diagonals)", b * nb)?;
                }
            }
            (None, None) => {}
            _ => {
                return Err(Error::Input(
                    "GPU backward: d raw given without an uncertainty head, or missing".into(),
                ))
            }
        }
        if let Some(dw) = g.d_wcov {
            up(dw, &mut gw.d_wcov, "d W", 63 * 63)?;
            let mut gw_w = self
                .grads
                .get_mut(&self.params.index, "out_layer_keypoints_3d.weight")?;
            self.backend
                .add_fwd(&mut gw_w, &head(&gw.d_wcov, 63 * 63))?;
        }
        Ok(())
    }

    /// Queues the exact NLL: its d_mu and d_s are added to the head gradients, d_W to W's.
    fn queue_exact_nll(&mut self, e: &ExactNll) -> Result<()> {
        let GpuTrainModel {
            backend: be,
            params: p,
            grads: gr,
            ws,
            ..
        } = self;
        let ws = ws.as_mut().ok_or_else(ws_missing)?;
        let b = ws.b;
        let n_gt = b * NUM_KEYPOINTS * 4;
        if e.gt.len() != n_gt {
            return Err(Error::Input(format!(
                "exact NLL: keypoints_3d has {} values, expected {n_gt}",
                e.gt.len()
            )));
        }
        let gw = &mut ws.g;
        be.stream()
            .memcpy_htod(e.gt, &mut gw.gt3d.slice_mut(..n_gt))
            .map_err(cuda_err("copying keypoints_3d to the device"))?;
        let w = p.f("out_layer_keypoints_3d.weight")?;
        let mut dw = gr.get_mut(&p.index, "out_layer_keypoints_3d.weight")?;
        be.cholesky_nll_bwd(
            &head(&ws.kp3d, b * 63),
            &head(&ws.raw_a, b * 63),
            &w,
            &head(&gw.gt3d, n_gt),
            e.jitter,
            e.weight,
            &mut head_mut(&mut gw.nll_loss, b),
            &mut head_mut(&mut gw.nll_status, b),
            &mut head_mut(&mut gw.nll_dmu, b * 63),
            &mut head_mut(&mut gw.nll_ds, b * 63),
            &mut dw,
            &mut gw.nll_scratch.as_view_mut(),
            b,
        )?;
        be.add_fwd(
            &mut head_mut(&mut gw.d_kp3d, b * 63),
            &head(&gw.nll_dmu, b * 63),
        )?;
        be.add_fwd(
            &mut head_mut(&mut gw.d_raw_a, b * 63),
            &head(&gw.nll_ds, b * 63),
        )
    }

    /// Waits for the step and returns Σ_b of the exact NLL (an error naming a sample whose Σ
    /// was not positive definite).
    fn exact_nll_result(&self, jitter: f64) -> Result<f64> {
        let ws = self.ws.as_ref().ok_or_else(ws_missing)?;
        let stream = self.backend.stream();
        let loss: Vec<f64> = stream
            .clone_dtoh(&head(&ws.g.nll_loss, ws.b))
            .map_err(cuda_err("copying the exact NLL back"))?;
        let status: Vec<i32> = stream
            .clone_dtoh(&head(&ws.g.nll_status, ws.b))
            .map_err(cuda_err("copying the exact NLL status back"))?;
        CudaBackend::cholesky_nll_check(&status, jitter)?;
        Ok(loss.iter().sum())
    }

    /// Camera, MANO, rot6d, readouts and both decoders; leaves ∂/∂tokens in `g.ctx`.
    fn backward_heads(&mut self) -> Result<()> {
        let GpuTrainModel {
            backend: be,
            ggemm: gg,
            cfg,
            params: p,
            grads: gr,
            unc_readout,
            mano,
            ws,
            ..
        } = self;
        let ws = ws.as_mut().ok_or_else(ws_missing)?;
        let b = ws.b;
        let dim = cfg.decoder.dim;
        let TrainWs {
            g: gw,
            mano_dec,
            unc_dec,
            ctx,
            dff,
            cam,
            kp3d,
            rot,
            betas,
            pose6d,
            mano_ws,
            ..
        } = ws;
        // Camera and projection, then MANO (its vertex gradient is zero: no loss reads them).
        be.camera_bwd(
            &cam.as_view(),
            &kp3d.as_view(),
            &gw.d_kp2d.as_view(),
            &mut gw.d_kp_tmp.as_view_mut(),
            &mut gw.d_cam.as_view_mut(),
            b,
            NUM_KEYPOINTS,
            cfg.focal_length as f32,
            cfg.image_size as f32,
        )?;
        be.add_fwd(&mut gw.d_kp3d.as_view_mut(), &gw.d_kp_tmp.as_view())?;
        be.mano_bwd(
            mano,
            mano_ws,
            &rot.as_view(),
            &betas.as_view(),
            None,
            &gw.d_kp3d.as_view(),
            &mut gw.d_rot_tmp.as_view_mut(),
            &mut gw.d_betas_tmp.as_view_mut(),
            &mut gw.mano_scratch.as_view_mut(),
            b,
        )?;
        be.add_fwd(&mut gw.d_rot.as_view_mut(), &gw.d_rot_tmp.as_view())?;
        be.add_fwd(&mut gw.d_betas.as_view_mut(), &gw.d_betas_tmp.as_view())?;
        be.rot6d_bwd(
            &pose6d.as_view(),
            &gw.d_rot.as_view(),
            &mut gw.d_pose6d.as_view_mut(),
            b * NUM_JOINTS,
        )?;
        // The MANO head's readouts → ∂/∂token in gw.dx.
        let tok = &mano_dec.x;
        let reads: [(&str, &CudaSlice<f32>, usize); 3] = [
            ("mano_head.decpose", &gw.d_pose6d, NPOSE),
            ("mano_head.decshape", &gw.d_betas, NBETAS),
            ("mano_head.deccam", &gw.d_cam, 3),
        ];
        for (k, (name, dy, n)) in reads.into_iter().enumerate() {
            readout_bwd(
                be,
                gg,
                p,
                gr,
                &mut gw.scratch,
                name,
                tok,
                dy,
                &mut gw.dx,
                b,
                dim,
                n,
                k > 0,
            )?;
        }
        be.stream()
            .memset_zeros(&mut gw.ctx)
            .map_err(cuda_err("zeroing the token gradient"))?;
        decoder_bwd(be, gg, p, gr, cfg, "mano_head", mano_dec, ctx, gw, dff, b)?;
        if let (Some(dec), Some(ro)) = (unc_dec.as_mut(), unc_readout.as_ref()) {
            for (k, (name, n)) in ro.iter().enumerate() {
                // Two readouts (`full`) read the same token: the second accumulates.
                let dy = if k == 0 { &gw.d_raw_a } else { &gw.d_raw_b };
                readout_bwd(
                    be,
                    gg,
                    p,
                    gr,
                    &mut gw.scratch,
                    name,
                    &dec.x,
                    dy,
                    &mut gw.dx,
                    b,
                    dim,
                    *n,
                    k > 0,
                )?;
            }
            decoder_bwd(be, gg, p, gr, cfg, "uncertainty_head", dec, ctx, gw, dff, b)?;
        }
        Ok(())
    }

    /// last_norm, the blocks in reverse, position and patch embeddings.
    fn backward_backbone(&mut self, drop: bool) -> Result<()> {
        let GpuTrainModel {
            backend: be,
            ggemm: gg,
            cfg,
            geometry,
            params: p,
            grads: gr,
            ws,
            ..
        } = self;
        let ws = ws.as_mut().ok_or_else(ws_missing)?;
        let (b, c, t) = (ws.b, cfg.vit.embed_dim, cfg.num_tokens());
        let bt = b * t;
        let n = bt * c;
        let heads = cfg.vit.num_heads;
        let hd = c / heads;
        let hidden = cfg.vit_mlp_hidden();
        let be: &CudaBackend = be;
        let gw = &mut ws.g;
        let mut k = Ctx {
            be,
            gg,
            p,
            gr,
            scratch: &mut gw.scratch,
        };
        k.layernorm(
            "backbone.last_norm",
            &head(&ws.x, n),
            &head(&gw.ctx, n),
            &mut head_mut(&mut gw.x, n),
            bt,
            c,
        )?;
        for (i, a) in ws.blocks.iter().enumerate().rev() {
            let nm = format!("backbone.blocks.{i}");
            // MLP branch: d_branch = dx (× drop-path scale).
            copy_f(be, &gw.x, &mut gw.tmp)?;
            if drop {
                let sc = ws.drop.slice((2 * i + 1) * b..(2 * i + 2) * b);
                be.scale_rows(&mut gw.tmp.as_view_mut(), &sc, t * c)?;
            }
            to_t(be, &head(&gw.tmp, n), &mut head_mut(&mut gw.branch_t, n))?;
            be.stream()
                .memcpy_dtod(&a.pre, &mut ws.hid)
                .map_err(cuda_err("recomputing the GELU input"))?;
            be.bias_gelu_fwd::<T>(&mut ws.hid.as_view_mut(), None, bt, hidden, true)?;
            k.linear(
                &format!("{nm}.mlp.fc2"),
                &ws.hid.as_view(),
                &gw.branch_t.as_view(),
                Some(&head(&gw.tmp, n)),
                &mut gw.hid.as_view_mut(),
                bt,
                hidden,
                c,
                false,
            )?;
            be.gelu_bwd::<T>(&a.pre.as_view(), &mut gw.hid.as_view_mut())?;
            k.linear(
                &format!("{nm}.mlp.fc1"),
                &a.h2.as_view(),
                &gw.hid.as_view(),
                None,
                &mut head_mut(&mut gw.h, n),
                bt,
                c,
                hidden,
                false,
            )?;
            k.layernorm_add(
                &format!("{nm}.norm2"),
                &head(&a.x1, n),
                &head(&gw.h, n),
                &mut gw.tmp,
                &mut gw.x,
                bt,
                c,
            )?;
            // Attention branch.
            copy_f(be, &gw.x, &mut gw.tmp)?;
            if drop {
                let sc = ws.drop.slice((2 * i) * b..(2 * i + 1) * b);
                be.scale_rows(&mut gw.tmp.as_view_mut(), &sc, t * c)?;
            }
            to_t(be, &head(&gw.tmp, n), &mut head_mut(&mut gw.branch_t, n))?;
            k.linear(
                &format!("{nm}.attn.proj"),
                &a.att.as_view(),
                &gw.branch_t.as_view(),
                Some(&head(&gw.tmp, n)),
                &mut gw.att.as_view_mut(),
                bt,
                c,
                c,
                false,
            )?;
            be.self_attention_bwd::<T>(
                &a.qkv.as_view(),
                &a.att.as_view(),
                &gw.att.as_view(),
                &mut gw.qkv.as_view_mut(),
                &mut k.scratch.as_view_mut(),
                b,
                t,
                heads,
                hd,
                (hd as f32).powf(-0.5),
            )?;
            k.linear(
                &format!("{nm}.attn.qkv"),
                &a.h1.as_view(),
                &gw.qkv.as_view(),
                None,
                &mut head_mut(&mut gw.h, n),
                bt,
                c,
                3 * c,
                false,
            )?;
            k.layernorm_add(
                &format!("{nm}.norm1"),
                &head(&a.x0, n),
                &head(&gw.h, n),
                &mut gw.tmp,
                &mut gw.x,
                bt,
                c,
            )?;
        }
        // Position embedding, then the patch projection (its input, the image, needs nothing).
        be.pos_embed_bwd(
            &head(&gw.x, n),
            &mut k.gr.get_mut(&p.index, "backbone.pos_embed")?,
            &mut k.scratch.as_view_mut(),
            b,
            t,
            c,
        )?;
        to_t(be, &head(&gw.x, n), &mut head_mut(&mut gw.branch_t, n))?;
        k.params(
            "backbone.patch_embed.proj",
            &ws.cols.as_view(),
            &gw.branch_t.as_view(),
            Some(&head(&gw.x, n)),
            bt,
            geometry.patch_len(),
            c,
        )
    }
}

/// `dst = src` for two f32 buffers of the same length.
fn copy_f(be: &CudaBackend, src: &CudaSlice<f32>, dst: &mut CudaSlice<f32>) -> Result<()> {
    be.stream()
        .memcpy_dtod(src, dst)
        .map_err(cuda_err("copying a gradient on the device"))
}

/// Backward of an f32 head readout `y = tok·Wᵀ + b` (+ a constant): parameter gradients, and
/// `d_tok` (`[b, d_in]`) overwritten, or accumulated when `accumulate`.
#[allow(clippy::too_many_arguments)]
fn readout_bwd<T: Dtype>(
    be: &CudaBackend,
    gg: &mut GradGemm,
    p: &DevParams<T>,
    gr: &mut DevBuffers,
    scratch: &mut CudaSlice<f32>,
    name: &str,
    tok: &CudaSlice<f32>,
    dy: &CudaSlice<f32>,
    d_tok: &mut CudaSlice<f32>,
    b: usize,
    d_in: usize,
    d_out: usize,
    accumulate: bool,
) -> Result<()> {
    let dy = head(dy, b * d_out);
    gg.linear_bwd_weight::<f32>(
        &head(tok, b * d_in),
        &dy,
        &mut gr.get_mut(&p.index, &format!("{name}.weight"))?,
        b,
        d_in,
        d_out,
    )?;
    let bn = format!("{name}.bias");
    if p.index.has(&bn) {
        be.bias_grad::<f32>(
            &dy,
            &mut gr.get_mut(&p.index, &bn)?,
            &mut scratch.as_view_mut(),
            b,
            d_out,
        )?;
    }
    gg.linear_bwd_input::<f32, f32>(
        &dy,
        &p.f(&format!("{name}.weight"))?,
        &mut head_mut(d_tok, b * d_in),
        b,
        d_in,
        d_out,
        accumulate,
    )
}
