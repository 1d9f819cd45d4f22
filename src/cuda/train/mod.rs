//! Training on the GPU: the training forward of the whole model keeping the activations its
//! backward needs (one struct per layer, as the CPU's `model::backward`), the hand-written
//! backward through our kernels and cuBLASLt's gradient GEMMs, the exact-NLL Cholesky kernel,
//! and AdamW on the device. The loss terms themselves are computed on the host from the small
//! head outputs by the same code as the CPU step (`train::step::head_losses`), so both engines
//! share one tested definition of the objective; only their gradients travel back.
//!
//! Buffers: parameters, gradients and moments are allocated once ([`params`]); the activation
//! workspace once per batch size ([`GpuTrainModel::ensure_workspace`]); a step allocates
//! nothing on the device. A failed allocation says which batch size did not fit.
//!
//! Precision follows inference: `T = f32` (TF32 off) is the reference; `T = bf16` keeps GEMM
//! inputs and the activations stored for the backward in bf16, with fp32 residual streams and
//! their gradients, LayerNorm statistics, head readouts, MANO, losses, fp32 master weights,
//! gradients and moments.
//!
//! Everything here is unverified until it has run on a GPU (KERNELS.md): the ignored tests in
//! tests/cuda_train.rs compare it with the CPU step.

mod backward;
mod layers;
pub mod params;
mod workspace;

pub use backward::ExactNll;

use std::collections::HashMap;

use cudarc::driver::{CudaSlice, CudaView, CudaViewMut};

use super::{cuda_err, CudaBackend, Dtype, Gemm, GradGemm, ManoDevice, ManoWorkspace};
use crate::error::{Error, Result};
use crate::model::config::ModelConfig;
use crate::model::heads::{Readout, NBETAS, NPOSE};
use crate::model::HandModel;
use crate::ops::mano::{NUM_JOINTS, NUM_KEYPOINTS};
use crate::ops::patch_embed::PatchGeometry;
use layers::{forward_decoder, lin_tf, lin_tt, norm_into, readout};
use params::{DevBuffers, DevParams};

/// What one ViT block keeps for its backward (the MLP's GELU output is recomputed from `pre`).
struct BlockActs<T: Dtype> {
    x0: CudaSlice<f32>,
    h1: CudaSlice<T>,
    qkv: CudaSlice<T>,
    att: CudaSlice<T>,
    x1: CudaSlice<f32>,
    h2: CudaSlice<T>,
    pre: CudaSlice<T>,
}

struct DecLayerActs<T: Dtype> {
    x0: CudaSlice<f32>,
    ha: CudaSlice<T>,
    v: CudaSlice<T>,
    x1: CudaSlice<f32>,
    hb: CudaSlice<T>,
    q: CudaSlice<T>,
    kv: CudaSlice<T>,
    att: CudaSlice<T>,
    x2: CudaSlice<f32>,
    hc: CudaSlice<T>,
    pre: CudaSlice<T>,
}

/// One decoder's activations; `x` ends as its output token `[b, dim]`.
struct DecActs<T: Dtype> {
    layers: Vec<DecLayerActs<T>>,
    x: CudaSlice<f32>,
}

/// Gradient buffers of the backward (reused by every layer).
struct GradWs<T: Dtype> {
    /// ViT residual-stream gradient, a second f32 buffer, the branch gradient in T.
    x: CudaSlice<f32>,
    tmp: CudaSlice<f32>,
    h: CudaSlice<f32>,
    branch_t: CudaSlice<T>,
    hid: CudaSlice<T>,
    att: CudaSlice<T>,
    qkv: CudaSlice<T>,
    /// ∂loss/∂tokens (both decoders add into it), f32 `[b·t, c]`.
    ctx: CudaSlice<f32>,
    /// Decoder: residual gradient, LayerNorm output, input gradient, T copies.
    dx: CudaSlice<f32>,
    dtmp: CudaSlice<f32>,
    dh: CudaSlice<f32>,
    dt: CudaSlice<T>,
    dff: CudaSlice<T>,
    datt: CudaSlice<T>,
    dq: CudaSlice<T>,
    dv: CudaSlice<T>,
    dkv: CudaSlice<T>,
    /// Head outputs' gradients (uploaded from the host losses) and their chain.
    d_kp2d: CudaSlice<f32>,
    d_kp3d: CudaSlice<f32>,
    d_kp_tmp: CudaSlice<f32>,
    d_rot: CudaSlice<f32>,
    d_rot_tmp: CudaSlice<f32>,
    d_betas: CudaSlice<f32>,
    d_betas_tmp: CudaSlice<f32>,
    d_pose6d: CudaSlice<f32>,
    d_cam: CudaSlice<f32>,
    d_raw_a: CudaSlice<f32>,
    d_raw_b: CudaSlice<f32>,
    d_wcov: CudaSlice<f32>,
    /// Exact NLL: per-sample losses, status, the NLL's own d_mu / d_s, f64 scratch.
    nll_loss: CudaSlice<f64>,
    nll_status: CudaSlice<i32>,
    nll_dmu: CudaSlice<f32>,
    nll_ds: CudaSlice<f32>,
    nll_scratch: CudaSlice<f64>,
    gt3d: CudaSlice<f32>,
    /// Scratch of the reductions (LayerNorm, bias, position embedding, attention).
    scratch: CudaSlice<f32>,
    mano_scratch: CudaSlice<f32>,
}

/// Activations for one batch size.
struct TrainWs<T: Dtype> {
    b: usize,
    img: CudaSlice<f32>,
    cols: CudaSlice<T>,
    /// Residual stream (ends as the input of `last_norm`) and the pending branch.
    x: CudaSlice<f32>,
    r: CudaSlice<f32>,
    /// GELU output scratch (recomputed in the backward).
    hid: CudaSlice<T>,
    blocks: Vec<BlockActs<T>>,
    ctx: CudaSlice<T>,
    /// Decoder branch and GELU scratch, `[b, dim]` and `[b, mlp]`.
    dr: CudaSlice<f32>,
    dff: CudaSlice<T>,
    mano_dec: DecActs<T>,
    unc_dec: Option<DecActs<T>>,
    pose6d: CudaSlice<f32>,
    betas: CudaSlice<f32>,
    cam: CudaSlice<f32>,
    rot: CudaSlice<f32>,
    verts: CudaSlice<f32>,
    kp3d: CudaSlice<f32>,
    cam_t: CudaSlice<f32>,
    kp2d: CudaSlice<f32>,
    mano_ws: ManoWorkspace,
    /// Uncertainty readout: s (63) or, for `full`, d (63) and the off-diagonals (1953).
    raw_a: CudaSlice<f32>,
    raw_b: CudaSlice<f32>,
    /// Drop-path scales `[blocks, 2, b]` (used only when a step passes them).
    drop: CudaSlice<f32>,
    g: GradWs<T>,
}

/// Host copies of the outputs the losses read.
pub struct TrainOutputs {
    pub rot: Vec<f32>,
    pub betas: Vec<f32>,
    pub kp3d: Vec<f32>,
    pub kp2d: Vec<f32>,
    /// `[b, raw_len]` in the layout of `UncertaintyHead::forward` (d then off-diagonals for
    /// `full`).
    pub raw: Option<Vec<f32>>,
}

/// The gradients the backward starts from (the host losses' `HeadGrads`, borrowed).
pub struct OutputGrads<'a> {
    pub d_kp2d: &'a [f32],
    pub d_kp3d: &'a [f32],
    pub d_rot: &'a [f32],
    pub d_betas: &'a [f32],
    pub d_raw: Option<&'a [f32]>,
    pub d_wcov: Option<&'a [f32]>,
}

/// The model on the GPU for training.
pub struct GpuTrainModel<T: Dtype> {
    backend: CudaBackend,
    gemm: Gemm,
    ggemm: GradGemm,
    cfg: ModelConfig,
    geometry: PatchGeometry,
    pub params: DevParams<T>,
    pub grads: DevBuffers,
    /// Mean parameters added to the MANO readouts.
    init_pose: CudaSlice<f32>,
    init_betas: CudaSlice<f32>,
    init_cam: CudaSlice<f32>,
    /// Uncertainty readout: (state-dict prefix, outputs) of one or two linear layers.
    unc_readout: Option<Vec<(String, usize)>>,
    mano: ManoDevice,
    num_verts: usize,
    ws: Option<TrainWs<T>>,
}

fn alloc<U: cudarc::driver::DeviceRepr + cudarc::driver::ValidAsZeroBits>(
    be: &CudaBackend,
    n: usize,
    b: usize,
) -> Result<CudaSlice<U>> {
    be.stream().alloc_zeros::<U>(n.max(1)).map_err(|e| {
        Error::Cuda(format!(
            "out of device memory (or the allocation failed) at training batch size {b}: {n} \
             values of {} ({e}); try a smaller --batch-size",
            std::any::type_name::<U>()
        ))
    })
}

/// The epsilon of every LayerNorm by state-dict prefix (the ViT's and the decoders' differ).
fn norm_eps(model: &HandModel) -> HashMap<String, f32> {
    let mut m = HashMap::new();
    for (i, b) in model.backbone.blocks.iter().enumerate() {
        m.insert(format!("backbone.blocks.{i}.norm1"), b.norm1.eps);
        m.insert(format!("backbone.blocks.{i}.norm2"), b.norm2.eps);
    }
    m.insert("backbone.last_norm".into(), model.backbone.last_norm.eps);
    let mut dec = |prefix: &str, d: &crate::model::decoder::TransformerDecoder| {
        for (i, l) in d.layers.iter().enumerate() {
            let n = format!("{prefix}.transformer.transformer.layers.{i}");
            m.insert(format!("{n}.0.norm"), l.self_attn.norm.eps);
            m.insert(format!("{n}.1.norm"), l.cross_attn.norm.eps);
            m.insert(format!("{n}.2.norm"), l.ff.norm.eps);
        }
    };
    dec("mano_head", &model.mano_head.transformer);
    if let Some(u) = &model.uncertainty_head {
        dec("uncertainty_head", &u.transformer);
    }
    m
}

impl<T: Dtype> GpuTrainModel<T> {
    /// Uploads `model` (its parameters by state-dict name, the mean parameters and MANO).
    pub fn upload(backend: CudaBackend, model: &mut HandModel) -> Result<GpuTrainModel<T>> {
        let be = &backend;
        let mut params = DevParams::<T>::upload(be, model)?;
        params.norm_eps = norm_eps(model);
        let grads = DevBuffers::zeros(be, &params.index)?;
        let mh = &model.mano_head;
        let unc_readout = model.uncertainty_head.as_ref().map(|u| match &u.readout {
            Readout::LogVar(l) => vec![(u.readout_name.clone(), l.d_out())],
            Readout::Full { diag, cov } => vec![
                (
                    "uncertainty_head.dec3dkeypoint_diag".to_string(),
                    diag.d_out(),
                ),
                (
                    "uncertainty_head.dec3dkeypoint_cov".to_string(),
                    cov.d_out(),
                ),
            ],
        });
        let m = &model.mano;
        Ok(GpuTrainModel {
            gemm: Gemm::new(be)?,
            ggemm: GradGemm::new(be)?,
            cfg: model.config.clone(),
            geometry: model.backbone.patch_embed.geometry,
            init_pose: be.upload::<f32>(mh.init_hand_pose.data())?,
            init_betas: be.upload::<f32>(mh.init_betas.data())?,
            init_cam: be.upload::<f32>(mh.init_cam.data())?,
            mano: be.upload_mano(&m.data())?,
            num_verts: m.num_verts(),
            unc_readout,
            params,
            grads,
            ws: None,
            backend,
        })
    }

    pub fn backend(&self) -> &CudaBackend {
        &self.backend
    }

    pub fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    /// The training forward on `img` (`[b, 3, S, S]`, host): keeps the activations and returns
    /// the outputs the losses read. `drop_path`, when given, holds each sample's scale per
    /// (block, branch), `[blocks, 2, b]` (0 or 1/keep); `None` is drop-path off.
    pub fn forward(
        &mut self,
        img: &[f32],
        b: usize,
        drop_path: Option<&[f32]>,
    ) -> Result<TrainOutputs> {
        let s = self.cfg.image_size;
        if b == 0 || img.len() != b * 3 * s * s {
            return Err(Error::Input(format!(
                "GPU training forward: {} values is not [b = {b}, 3, {s}, {s}]",
                img.len()
            )));
        }
        self.ensure_workspace(b)?;
        let nblocks = self.cfg.vit.depth;
        let ws = self.ws.as_mut().ok_or_else(ws_missing)?;
        let stream = self.backend.stream().clone();
        stream
            .memcpy_htod(img, &mut ws.img)
            .map_err(cuda_err("copying the batch to the device"))?;
        if let Some(dp) = drop_path {
            if dp.len() != nblocks * 2 * b {
                return Err(Error::Input(format!(
                    "drop-path scales: {} values, expected [{nblocks}, 2, {b}]",
                    dp.len()
                )));
            }
            stream
                .memcpy_htod(dp, &mut ws.drop)
                .map_err(cuda_err("copying the drop-path scales"))?;
        }
        self.forward_backbone(drop_path.is_some())?;
        self.forward_heads()?;
        self.download_outputs()
    }

    fn forward_backbone(&mut self, drop: bool) -> Result<()> {
        let GpuTrainModel {
            backend: be,
            gemm,
            cfg,
            geometry,
            params: p,
            ws,
            ..
        } = self;
        let ws = ws.as_mut().ok_or_else(ws_missing)?;
        let (b, c, t) = (ws.b, cfg.vit.embed_dim, cfg.num_tokens());
        let bt = b * t;
        let heads = cfg.vit.num_heads;
        let hd = c / heads;
        let hidden = cfg.vit_mlp_hidden();
        be.im2col_fwd::<T>(&ws.img.as_view(), b, geometry, &mut ws.cols.as_view_mut())?;
        let plen = geometry.patch_len();
        let pbias = p.f("backbone.patch_embed.proj.bias")?;
        gemm.linear::<T, f32>(
            &ws.cols.as_view(),
            &p.w("backbone.patch_embed.proj.weight")?,
            Some(&pbias),
            &mut ws.x.as_view_mut(),
            bt,
            plen,
            c,
        )?;
        be.add_pos_embed_fwd(
            &mut ws.x.as_view_mut(),
            &p.f("backbone.pos_embed")?,
            b,
            t,
            c,
        )?;
        let mut pending = false;
        for (i, a) in ws.blocks.iter_mut().enumerate() {
            let n = format!("backbone.blocks.{i}");
            norm_into(
                be,
                p,
                &format!("{n}.norm1"),
                &mut ws.x,
                &ws.r,
                pending,
                &mut a.h1,
                bt,
                c,
            )?;
            copy(be, &ws.x, &mut a.x0)?;
            lin_tt(
                gemm,
                p,
                &format!("{n}.attn.qkv"),
                &a.h1,
                &mut a.qkv,
                bt,
                c,
                3 * c,
            )?;
            be.self_attention_fwd::<T>(
                &a.qkv.as_view(),
                &mut a.att.as_view_mut(),
                b,
                t,
                heads,
                hd,
                (hd as f32).powf(-0.5),
            )?;
            lin_tf(
                gemm,
                p,
                &format!("{n}.attn.proj"),
                &a.att,
                &mut ws.r,
                bt,
                c,
                c,
            )?;
            if drop {
                let sc = ws.drop.slice((2 * i) * b..(2 * i + 1) * b);
                be.scale_rows(&mut ws.r.as_view_mut(), &sc, t * c)?;
            }
            norm_into(
                be,
                p,
                &format!("{n}.norm2"),
                &mut ws.x,
                &ws.r,
                true,
                &mut a.h2,
                bt,
                c,
            )?;
            copy(be, &ws.x, &mut a.x1)?;
            lin_tt(
                gemm,
                p,
                &format!("{n}.mlp.fc1"),
                &a.h2,
                &mut a.pre,
                bt,
                c,
                hidden,
            )?;
            copy(be, &a.pre, &mut ws.hid)?;
            be.bias_gelu_fwd::<T>(&mut ws.hid.as_view_mut(), None, bt, hidden, true)?;
            lin_tf(
                gemm,
                p,
                &format!("{n}.mlp.fc2"),
                &ws.hid,
                &mut ws.r,
                bt,
                hidden,
                c,
            )?;
            if drop {
                let sc = ws.drop.slice((2 * i + 1) * b..(2 * i + 2) * b);
                be.scale_rows(&mut ws.r.as_view_mut(), &sc, t * c)?;
            }
            pending = true;
        }
        norm_into(
            be,
            p,
            "backbone.last_norm",
            &mut ws.x,
            &ws.r,
            pending,
            &mut ws.ctx,
            bt,
            c,
        )
    }

    fn forward_heads(&mut self) -> Result<()> {
        let GpuTrainModel {
            backend: be,
            gemm,
            cfg,
            params: p,
            init_pose,
            init_betas,
            init_cam,
            unc_readout,
            mano,
            ws,
            ..
        } = self;
        let ws = ws.as_mut().ok_or_else(ws_missing)?;
        let b = ws.b;
        let t = cfg.num_tokens();
        let dim = cfg.decoder.dim;
        forward_decoder(
            be,
            gemm,
            p,
            cfg,
            "mano_head",
            &mut ws.mano_dec,
            &ws.ctx,
            &mut ws.dr,
            &mut ws.dff,
            b,
            t,
        )?;
        let tok = &ws.mano_dec.x;
        readout(
            gemm,
            p,
            "mano_head.decpose",
            tok,
            &mut ws.pose6d,
            b,
            dim,
            NPOSE,
        )?;
        be.add_rows_fwd(&mut ws.pose6d.as_view_mut(), &init_pose.as_view(), b, NPOSE)?;
        readout(
            gemm,
            p,
            "mano_head.decshape",
            tok,
            &mut ws.betas,
            b,
            dim,
            NBETAS,
        )?;
        be.add_rows_fwd(
            &mut ws.betas.as_view_mut(),
            &init_betas.as_view(),
            b,
            NBETAS,
        )?;
        readout(gemm, p, "mano_head.deccam", tok, &mut ws.cam, b, dim, 3)?;
        be.add_rows_fwd(&mut ws.cam.as_view_mut(), &init_cam.as_view(), b, 3)?;
        be.rot6d_fwd(
            &ws.pose6d.as_view(),
            &mut ws.rot.as_view_mut(),
            b * NUM_JOINTS,
        )?;
        be.mano_fwd(
            mano,
            &mut ws.mano_ws,
            &ws.rot.as_view(),
            &ws.betas.as_view(),
            &mut ws.verts.as_view_mut(),
            &mut ws.kp3d.as_view_mut(),
            b,
        )?;
        be.camera_fwd(
            &ws.cam.as_view(),
            &ws.kp3d.as_view(),
            &mut ws.cam_t.as_view_mut(),
            &mut ws.kp2d.as_view_mut(),
            b,
            NUM_KEYPOINTS,
            cfg.focal_length as f32,
            cfg.image_size as f32,
        )?;
        if let (Some(dec), Some(ro)) = (ws.unc_dec.as_mut(), unc_readout.as_ref()) {
            forward_decoder(
                be,
                gemm,
                p,
                cfg,
                "uncertainty_head",
                dec,
                &ws.ctx,
                &mut ws.dr,
                &mut ws.dff,
                b,
                t,
            )?;
            let outs = [&mut ws.raw_a, &mut ws.raw_b];
            for ((name, n), out) in ro.iter().zip(outs) {
                readout(gemm, p, name, &dec.x, out, b, dim, *n)?;
            }
        }
        Ok(())
    }

    fn download_outputs(&self) -> Result<TrainOutputs> {
        let be = &self.backend;
        let ws = self.ws.as_ref().ok_or_else(ws_missing)?;
        let get = |s: &CudaSlice<f32>| be.download_f32::<f32>(&s.as_view());
        let raw = match self.unc_readout.as_deref() {
            None => None,
            Some([_]) => Some(get(&ws.raw_a)?),
            Some(parts) => {
                // `full`: per sample, d (63) then the off-diagonals, as the CPU head writes.
                let (na, nb) = (parts[0].1, parts.get(1).map_or(0, |p| p.1));
                let (a, bb) = (get(&ws.raw_a)?, get(&ws.raw_b)?);
                let mut out = Vec::with_capacity(a.len() + bb.len());
                for i in 0..ws.b {
                    out.extend_from_slice(&a[i * na..(i + 1) * na]);
                    out.extend_from_slice(&bb[i * nb..(i + 1) * nb]);
                }
                Some(out)
            }
        };
        Ok(TrainOutputs {
            rot: get(&ws.rot)?,
            betas: get(&ws.betas)?,
            kp3d: get(&ws.kp3d)?,
            kp2d: get(&ws.kp2d)?,
            raw,
        })
    }

    /// Zeroes every parameter gradient (before a step's backward).
    pub fn clear_grads(&mut self) -> Result<()> {
        self.grads.clear(&self.backend)
    }

    /// Host copies of the gradients by state-dict name.
    pub fn download_grads(&self) -> Result<crate::model::backward::Grads> {
        self.grads.download(&self.backend, &self.params.index)
    }

    /// The backend, the parameters (mutably) and the gradients at once: what the optimiser
    /// step needs (it writes the weights while it reads the gradients on this backend, whose
    /// module cache then keeps the AdamW kernels loaded from one step to the next).
    pub fn optimiser_parts(&mut self) -> (&CudaBackend, &mut DevParams<T>, &DevBuffers) {
        (&self.backend, &mut self.params, &self.grads)
    }
}

fn ws_missing() -> Error {
    Error::Cuda("training workspace missing (run a forward first)".into())
}

/// `dst[..src.len()] = src` on the stream.
fn copy<U: Dtype>(be: &CudaBackend, src: &CudaSlice<U>, dst: &mut CudaSlice<U>) -> Result<()> {
    be.stream()
        .memcpy_dtod(src, dst)
        .map_err(cuda_err("copying an activation on the device"))
}

/// Views of a buffer's first `n` values.
fn head<U: cudarc::driver::DeviceRepr>(s: &CudaSlice<U>, n: usize) -> CudaView<'_, U> {
    s.slice(..n)
}

fn head_mut<U: cudarc::driver::DeviceRepr>(s: &mut CudaSlice<U>, n: usize) -> CudaViewMut<'_, U> {
    s.slice_mut(..n)
}
