//! The whole forward pass on the GPU: weights uploaded once (f32, or bf16 for the GEMM inputs),
//! a workspace of activation buffers allocated once per batch size (so steady-state inference
//! allocates nothing), the launch sequence of SPEC §2–§6 through our kernels and cuBLASLt, and an
//! optional CUDA graph of that sequence for a fixed batch size.
//!
//! This mirrors `model::HandModel::forward` (the CPU path, the reference every output is tested
//! against) op for op; it lives here because it owns device buffers, and src/cuda/ is the only
//! code that touches cudarc.
//!
//! Precision: `T = f32` is the accuracy reference (TF32 off); `T = bf16` keeps GEMM inputs and
//! outputs that feed other GEMMs in bf16, while the residual streams, LayerNorm and softmax
//! statistics, head readouts, MANO, camera and covariance stay f32.

use cudarc::driver::{CudaGraph, CudaSlice, CudaView};

use super::{cuda_err, CudaBackend, Dtype, Gemm, ManoDevice, ManoWorkspace};
use crate::error::{Error, Result};
use crate::model::config::ModelConfig;
use crate::model::decoder::TransformerDecoder;
use crate::model::heads::{Readout, NBETAS, NPOSE};
use crate::model::layers::{LayerNorm, Linear};
use crate::model::HandModel;
use crate::ops::covariance::CovParam;
use crate::ops::covariance::DIM;
use crate::ops::mano::NUM_KEYPOINTS;
use crate::ops::patch_embed::PatchGeometry;

/// A linear layer on the device: the weight in the GEMM input type, the bias in both types the
/// GEMMs of this model write (T for outputs that feed another GEMM, f32 for residual branches).
struct DevLinear<T: Dtype> {
    w: CudaSlice<T>,
    bias_t: Option<CudaSlice<T>>,
    bias_f: Option<CudaSlice<f32>>,
    d_in: usize,
    d_out: usize,
}

struct DevNorm {
    gamma: CudaSlice<f32>,
    beta: CudaSlice<f32>,
    eps: f32,
}

struct DevBlock<T: Dtype> {
    norm1: DevNorm,
    qkv: DevLinear<T>,
    proj: DevLinear<T>,
    norm2: DevNorm,
    fc1: DevLinear<T>,
    fc2: DevLinear<T>,
}

struct DevDecoderLayer<T: Dtype> {
    norm_a: DevNorm,
    /// The value rows of `to_qkv` (one query token: softmax ≡ 1).
    to_v: DevLinear<T>,
    sa_out: DevLinear<T>,
    norm_b: DevNorm,
    to_q: DevLinear<T>,
    to_kv: DevLinear<T>,
    ca_out: DevLinear<T>,
    norm_c: DevNorm,
    net0: DevLinear<T>,
    net3: DevLinear<T>,
}

struct DevDecoder<T: Dtype> {
    /// `to_token_embedding.bias + pos_embedding`, the constant query token, `[dim]`.
    token: Vec<f32>,
    layers: Vec<DevDecoderLayer<T>>,
    dim: usize,
    heads: usize,
    dim_head: usize,
}

/// Readouts run in f32 (tiny GEMMs) with the mean parameters folded into the bias.
struct DevManoHead<T: Dtype> {
    decoder: DevDecoder<T>,
    decpose: DevLinear<f32>,
    decshape: DevLinear<f32>,
    deccam: DevLinear<f32>,
}

struct DevUncertaintyHead<T: Dtype> {
    decoder: DevDecoder<T>,
    /// `[raw_len, dim]`: s (63) or, for `full`, d (63) then the 1953 off-diagonals.
    readout: DevLinear<f32>,
    param: CovParam,
}

/// Activation buffers for one batch size.
struct Workspace<T: Dtype> {
    b: usize,
    img: CudaSlice<f32>,
    cols: CudaSlice<T>,
    /// ViT residual stream `[b·t, c]` and the pending branch output.
    x: CudaSlice<f32>,
    r: CudaSlice<f32>,
    h: CudaSlice<T>,
    qkv: CudaSlice<T>,
    att: CudaSlice<T>,
    hid: CudaSlice<T>,
    /// Final tokens (the decoders' context), `[b·t, c]`.
    ctx: CudaSlice<T>,
    /// Decoder state: residual `[b, dim]`, pending branch, normalised, and attention buffers.
    dx: CudaSlice<f32>,
    dr: CudaSlice<f32>,
    dh: CudaSlice<T>,
    dv: CudaSlice<T>,
    dq: CudaSlice<T>,
    dkv: CudaSlice<T>,
    dattn: CudaSlice<T>,
    dff: CudaSlice<T>,
    /// `[b, dim]` constant query tokens, one copy per head (uploaded once).
    token_mano: CudaSlice<f32>,
    token_unc: Option<CudaSlice<f32>>,
    pose6d: CudaSlice<f32>,
    betas: CudaSlice<f32>,
    cam: CudaSlice<f32>,
    rot: CudaSlice<f32>,
    verts: CudaSlice<f32>,
    kp3d: CudaSlice<f32>,
    cam_t: CudaSlice<f32>,
    kp2d: CudaSlice<f32>,
    mano_ws: ManoWorkspace,
    raw: Option<CudaSlice<f32>>,
    cov: Option<CudaSlice<f32>>,
    unc: Option<CudaSlice<f32>>,
    graph: Option<CudaGraph>,
}

/// Host copies of every output of one forward pass (the names of `model::Prediction`).
pub struct GpuOutputs {
    pub batch: usize,
    /// Tokens after `last_norm`, `[b, t, c]` (as computed: bf16-rounded in bf16 mode).
    pub tokens: Vec<f32>,
    pub pose6d: Vec<f32>,
    pub rotmats: Vec<f32>,
    pub betas: Vec<f32>,
    pub cam: Vec<f32>,
    pub cam_t: Vec<f32>,
    pub keypoints_3d: Vec<f32>,
    pub keypoints_2d: Vec<f32>,
    pub vertices: Vec<f32>,
    pub uncertainty_raw: Option<Vec<f32>>,
    pub keypoint_3d_cov: Option<Vec<f32>>,
    pub joint_uncertainty: Option<Vec<f32>>,
}

pub struct GpuModel<T: Dtype> {
    backend: CudaBackend,
    gemm: Gemm,
    cfg: ModelConfig,
    geometry: PatchGeometry,
    patch: DevLinear<T>,
    pos_embed: CudaSlice<f32>,
    blocks: Vec<DevBlock<T>>,
    last_norm: DevNorm,
    mano_head: DevManoHead<T>,
    unc_head: Option<DevUncertaintyHead<T>>,
    w_cov: Option<CudaSlice<f32>>,
    mano: ManoDevice,
    num_verts: usize,
    ws: Option<Workspace<T>>,
    /// Capture the forward into a CUDA graph per batch size and replay it.
    pub use_graph: bool,
}

fn upload_linear<T: Dtype>(be: &CudaBackend, l: &Linear) -> Result<DevLinear<T>> {
    upload_linear_rows(be, l, 0..l.d_out())
}

/// A linear layer restricted to output rows `rows`.
fn upload_linear_rows<T: Dtype>(
    be: &CudaBackend,
    l: &Linear,
    rows: std::ops::Range<usize>,
) -> Result<DevLinear<T>> {
    let d_in = l.d_in();
    let w = &l.weight.data()[rows.start * d_in..rows.end * d_in];
    let bias = l.bias.as_ref().map(|b| &b.data()[rows.clone()]);
    Ok(DevLinear {
        w: be.upload::<T>(w)?,
        bias_t: bias.map(|b| be.upload::<T>(b)).transpose()?,
        bias_f: bias.map(|b| be.upload::<f32>(b)).transpose()?,
        d_in,
        d_out: rows.len(),
    })
}

/// Several f32 linear layers stacked along the output dimension, with an addend per row folded
/// into the bias.
fn upload_stacked(be: &CudaBackend, parts: &[(&Linear, Option<&[f32]>)]) -> Result<DevLinear<f32>> {
    let d_in = parts[0].0.d_in();
    let (mut w, mut bias) = (Vec::new(), Vec::new());
    for (l, add) in parts {
        if l.d_in() != d_in {
            return Err(Error::Config(
                "stacked readouts must share their input width".into(),
            ));
        }
        w.extend_from_slice(l.weight.data());
        for o in 0..l.d_out() {
            let b = l.bias.as_ref().map_or(0.0, |b| b.data()[o]);
            bias.push(b + add.map_or(0.0, |a| a[o]));
        }
    }
    let d_out = bias.len();
    Ok(DevLinear {
        w: be.upload::<f32>(&w)?,
        bias_t: None,
        bias_f: Some(be.upload::<f32>(&bias)?),
        d_in,
        d_out,
    })
}

fn upload_norm(be: &CudaBackend, n: &LayerNorm) -> Result<DevNorm> {
    Ok(DevNorm {
        gamma: be.upload::<f32>(n.weight.data())?,
        beta: be.upload::<f32>(n.bias.data())?,
        eps: n.eps,
    })
}

fn upload_decoder<T: Dtype>(be: &CudaBackend, d: &TransformerDecoder) -> Result<DevDecoder<T>> {
    let inner = d.heads * d.dim_head;
    let bias = d
        .to_token_embedding
        .bias
        .as_ref()
        .map(|b| b.data().to_vec())
        .unwrap_or_else(|| vec![0.0; d.dim]);
    let token = bias
        .iter()
        .zip(d.pos_embedding.data())
        .map(|(b, p)| b + p)
        .collect();
    let layers = d
        .layers
        .iter()
        .map(|l| {
            Ok(DevDecoderLayer {
                norm_a: upload_norm(be, &l.self_attn.norm)?,
                to_v: upload_linear_rows(be, &l.self_attn.to_qkv, 2 * inner..3 * inner)?,
                sa_out: upload_linear(be, &l.self_attn.to_out)?,
                norm_b: upload_norm(be, &l.cross_attn.norm)?,
                to_q: upload_linear(be, &l.cross_attn.to_q)?,
                to_kv: upload_linear(be, &l.cross_attn.to_kv)?,
                ca_out: upload_linear(be, &l.cross_attn.to_out)?,
                norm_c: upload_norm(be, &l.ff.norm)?,
                net0: upload_linear(be, &l.ff.net0)?,
                net3: upload_linear(be, &l.ff.net3)?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(DevDecoder {
        token,
        layers,
        dim: d.dim,
        heads: d.heads,
        dim_head: d.dim_head,
    })
}

fn alloc<U: Dtype>(be: &CudaBackend, n: usize) -> Result<CudaSlice<U>> {
    be.stream
        .alloc_zeros::<U>(n.max(1))
        .map_err(cuda_err(format_args!(
            "allocating {n} values on the device"
        )))
}

impl<T: Dtype> GpuModel<T> {
    /// Uploads a loaded model to GPU `backend`.
    pub fn upload(backend: CudaBackend, model: &HandModel) -> Result<GpuModel<T>> {
        let be = &backend;
        let cfg = model.config.clone();
        let vit = &model.backbone;
        let pe = &vit.patch_embed;
        let patch = DevLinear {
            w: be.upload::<T>(pe.proj_weight.data())?,
            bias_t: None,
            bias_f: Some(be.upload::<f32>(pe.proj_bias.data())?),
            d_in: pe.proj_weight.dim(1),
            d_out: pe.proj_weight.dim(0),
        };
        let blocks = vit
            .blocks
            .iter()
            .map(|b| {
                Ok(DevBlock {
                    norm1: upload_norm(be, &b.norm1)?,
                    qkv: upload_linear(be, &b.attn.qkv)?,
                    proj: upload_linear(be, &b.attn.proj)?,
                    norm2: upload_norm(be, &b.norm2)?,
                    fc1: upload_linear(be, &b.mlp.fc1)?,
                    fc2: upload_linear(be, &b.mlp.fc2)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let mh = &model.mano_head;
        let mano_head = DevManoHead {
            decoder: upload_decoder(be, &mh.transformer)?,
            decpose: upload_stacked(be, &[(&mh.decpose, Some(mh.init_hand_pose.data()))])?,
            decshape: upload_stacked(be, &[(&mh.decshape, Some(mh.init_betas.data()))])?,
            deccam: upload_stacked(be, &[(&mh.deccam, Some(mh.init_cam.data()))])?,
        };
        let unc_head = match &model.uncertainty_head {
            None => None,
            Some(u) => Some(DevUncertaintyHead {
                decoder: upload_decoder(be, &u.transformer)?,
                readout: match &u.readout {
                    Readout::LogVar(l) => upload_stacked(be, &[(l, None)])?,
                    Readout::Full { diag, cov } => {
                        upload_stacked(be, &[(diag, None), (cov, None)])?
                    }
                },
                param: u.param,
            }),
        };
        let w_cov = model
            .out_layer_keypoints_3d
            .as_ref()
            .map(|w| be.upload::<f32>(w.data()))
            .transpose()?;
        let m = &model.mano;
        let mano = be.upload_mano(&m.data())?;
        let gemm = Gemm::new(be)?;
        Ok(GpuModel {
            geometry: pe.geometry,
            pos_embed: be.upload::<f32>(vit.pos_embed.data())?,
            last_norm: upload_norm(be, &vit.last_norm)?,
            num_verts: m.num_verts(),
            backend,
            gemm,
            cfg,
            patch,
            blocks,
            mano_head,
            unc_head,
            w_cov,
            mano,
            ws: None,
            use_graph: false,
        })
    }

    pub fn backend(&self) -> &CudaBackend {
        &self.backend
    }

    /// Allocates the workspace for batch `b` (and drops the one of another batch size).
    fn ensure_workspace(&mut self, b: usize) -> Result<()> {
        if self.ws.as_ref().is_some_and(|w| w.b == b) {
            return Ok(());
        }
        self.ws = None;
        let be = &self.backend;
        let c = self.cfg.vit.embed_dim;
        let t = self.cfg.num_tokens();
        let s = self.cfg.image_size;
        let hidden = self.cfg.vit_mlp_hidden();
        let d = &self.cfg.decoder;
        let inner = d.heads * d.dim_head;
        let bt = b * t;
        let tile = |tok: &[f32]| -> Result<CudaSlice<f32>> {
            let v: Vec<f32> = (0..b).flat_map(|_| tok.iter().copied()).collect();
            be.upload::<f32>(&v)
        };
        let unc = self.unc_head.as_ref();
        self.ws = Some(Workspace {
            b,
            img: alloc(be, b * 3 * s * s)?,
            cols: alloc(be, bt * self.geometry.patch_len())?,
            x: alloc(be, bt * c)?,
            r: alloc(be, bt * c)?,
            h: alloc(be, bt * c)?,
            qkv: alloc(be, bt * 3 * c)?,
            att: alloc(be, bt * c)?,
            hid: alloc(be, bt * hidden)?,
            ctx: alloc(be, bt * c)?,
            dx: alloc(be, b * d.dim)?,
            dr: alloc(be, b * d.dim)?,
            dh: alloc(be, b * d.dim)?,
            dv: alloc(be, b * inner)?,
            dq: alloc(be, b * inner)?,
            dkv: alloc(be, bt * 2 * inner)?,
            dattn: alloc(be, b * inner)?,
            dff: alloc(be, b * d.mlp_dim)?,
            token_mano: tile(&self.mano_head.decoder.token)?,
            token_unc: unc.map(|u| tile(&u.decoder.token)).transpose()?,
            pose6d: alloc(be, b * NPOSE)?,
            betas: alloc(be, b * NBETAS)?,
            cam: alloc(be, b * 3)?,
            rot: alloc(be, b * 16 * 9)?,
            verts: alloc(be, b * self.num_verts * 3)?,
            kp3d: alloc(be, b * NUM_KEYPOINTS * 3)?,
            cam_t: alloc(be, b * 3)?,
            kp2d: alloc(be, b * NUM_KEYPOINTS * 2)?,
            mano_ws: be.mano_workspace(b)?,
            raw: unc.map(|u| alloc(be, b * u.param.raw_len())).transpose()?,
            cov: unc.map(|_| alloc(be, b * DIM * DIM)).transpose()?,
            unc: unc.map(|_| alloc(be, b * DIM / 3)).transpose()?,
            graph: None,
        });
        Ok(())
    }

    /// Runs the model on `img` (`[b, 3, S, S]` normalised crops, host memory) and copies every
    /// output back.
    pub fn forward(&mut self, img: &[f32], b: usize) -> Result<GpuOutputs> {
        self.launch(img, b)?;
        self.download()
    }

    /// Copies the input and queues the forward (eagerly, or as the captured graph) without
    /// waiting for it and without copying outputs back: what a throughput benchmark times.
    pub fn launch(&mut self, img: &[f32], b: usize) -> Result<()> {
        let s = self.cfg.image_size;
        if b == 0 || img.len() != b * 3 * s * s {
            return Err(Error::Input(format!(
                "GPU forward: {} values is not [b = {b}, 3, {s}, {s}]",
                img.len()
            )));
        }
        self.ensure_workspace(b)?;
        let ws = self
            .ws
            .as_mut()
            .ok_or_else(|| Error::Cuda("workspace missing".into()))?;
        self.backend
            .stream
            .memcpy_htod(img, &mut ws.img)
            .map_err(cuda_err("copying the input to the device"))?;
        match (&ws.graph, self.use_graph) {
            (Some(g), true) => g
                .launch()
                .map_err(cuda_err("launching the forward graph"))?,
            (None, true) => {
                // The first pass at this batch size runs eagerly (it loads modules and creates
                // GEMM plans, which a capture must not do), then the sequence is captured for
                // the next calls.
                self.enqueue()?;
                self.capture()?;
            }
            (_, false) => self.enqueue()?,
        }
        Ok(())
    }

    /// Replays the captured graph of the current batch size on the input already on the device
    /// (for benchmarks; [`GpuModel::launch`] captures it first).
    pub fn replay(&self) -> Result<()> {
        match self.ws.as_ref().and_then(|w| w.graph.as_ref()) {
            Some(g) => g.launch().map_err(cuda_err("launching the forward graph")),
            None => Err(Error::Cuda(
                "no captured graph: call launch with use_graph first".into(),
            )),
        }
    }

    /// Captures the launch sequence for the current workspace into a CUDA graph.
    fn capture(&mut self) -> Result<()> {
        let stream = self.backend.stream.clone();
        stream
            .begin_capture(
                cudarc::driver::sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL,
            )
            .map_err(cuda_err("beginning graph capture"))?;
        let run = self.enqueue();
        let graph = stream
            .end_capture(cudarc::driver::sys::CUgraphInstantiate_flags(0))
            .map_err(cuda_err("ending graph capture"));
        run?;
        let graph = graph?.ok_or_else(|| Error::Cuda("graph capture recorded nothing".into()))?;
        graph
            .upload()
            .map_err(cuda_err("uploading the forward graph"))?;
        if let Some(ws) = self.ws.as_mut() {
            ws.graph = Some(graph);
        }
        Ok(())
    }

    /// Queues the whole forward on the stream (no allocation, no synchronisation: capturable).
    fn enqueue(&mut self) -> Result<()> {
        let GpuModel {
            backend: be,
            gemm,
            cfg,
            geometry,
            patch,
            pos_embed,
            blocks,
            last_norm,
            mano_head,
            unc_head,
            w_cov,
            mano,
            ws,
            ..
        } = self;
        let ws = ws
            .as_mut()
            .ok_or_else(|| Error::Cuda("workspace missing".into()))?;
        let b = ws.b;
        let c = cfg.vit.embed_dim;
        let t = cfg.num_tokens();
        let bt = b * t;
        let heads = cfg.vit.num_heads;
        let hd = c / heads;
        let hidden = cfg.vit_mlp_hidden();

        // Patch embedding + position embedding into the residual stream.
        be.im2col_fwd::<T>(&ws.img.as_view(), b, geometry, &mut ws.cols.as_view_mut())?;
        gemm.linear::<T, f32>(
            &ws.cols.as_view(),
            &patch.w.as_view(),
            patch.bias_f.as_ref().map(|x| x.as_view()).as_ref(),
            &mut ws.x.as_view_mut(),
            bt,
            patch.d_in,
            patch.d_out,
        )?;
        be.add_pos_embed_fwd(&mut ws.x.as_view_mut(), &pos_embed.as_view(), b, t, c)?;

        // Blocks; each residual branch is added by the next LayerNorm (fused add + LN).
        let mut pending = false;
        for blk in blocks.iter() {
            norm_into(be, &mut ws.x, &ws.r, pending, &blk.norm1, &mut ws.h, bt, c)?;
            lin_t(gemm, &blk.qkv, &ws.h, &mut ws.qkv, bt)?;
            be.self_attention_fwd::<T>(
                &ws.qkv.as_view(),
                &mut ws.att.as_view_mut(),
                b,
                t,
                heads,
                hd,
                (hd as f32).powf(-0.5),
            )?;
            lin_f(gemm, &blk.proj, &ws.att, &mut ws.r, bt)?;
            norm_into(be, &mut ws.x, &ws.r, true, &blk.norm2, &mut ws.h, bt, c)?;
            lin_t(gemm, &blk.fc1, &ws.h, &mut ws.hid, bt)?;
            be.bias_gelu_fwd::<T>(&mut ws.hid.as_view_mut(), None, bt, hidden, true)?;
            lin_f(gemm, &blk.fc2, &ws.hid, &mut ws.r, bt)?;
            pending = true;
        }
        norm_into(be, &mut ws.x, &ws.r, pending, last_norm, &mut ws.ctx, bt, c)?;

        // MANO head: decoder, the three readouts, rotations, MANO, camera.
        run_decoder(be, gemm, &mano_head.decoder, ws, b, t, true)?;
        lin_f32(gemm, &mano_head.decpose, &ws.dx, &mut ws.pose6d, b)?;
        lin_f32(gemm, &mano_head.decshape, &ws.dx, &mut ws.betas, b)?;
        lin_f32(gemm, &mano_head.deccam, &ws.dx, &mut ws.cam, b)?;
        be.rot6d_fwd(&ws.pose6d.as_view(), &mut ws.rot.as_view_mut(), b * 16)?;
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

        // Uncertainty head: decoder, readout, covariance.
        if let Some(u) = unc_head.as_ref() {
            run_decoder(be, gemm, &u.decoder, ws, b, t, false)?;
            let (Some(raw), Some(cov), Some(unc)) =
                (ws.raw.as_mut(), ws.cov.as_mut(), ws.unc.as_mut())
            else {
                return Err(Error::Cuda("uncertainty buffers missing".into()));
            };
            lin_f32(gemm, &u.readout, &ws.dx, raw, b)?;
            let w = w_cov.as_ref().map(|w| w.as_view());
            be.covariance_fwd(
                u.param,
                &raw.as_view(),
                w.as_ref(),
                &mut cov.as_view_mut(),
                &mut unc.as_view_mut(),
                b,
            )?;
        }
        Ok(())
    }

    fn download(&self) -> Result<GpuOutputs> {
        let be = &self.backend;
        let ws = self
            .ws
            .as_ref()
            .ok_or_else(|| Error::Cuda("workspace missing".into()))?;
        let get = |s: &CudaSlice<f32>| be.download_f32::<f32>(&s.as_view());
        let out = GpuOutputs {
            batch: ws.b,
            tokens: be.download_f32::<T>(&ws.ctx.as_view())?,
            pose6d: get(&ws.pose6d)?,
            rotmats: get(&ws.rot)?,
            betas: get(&ws.betas)?,
            cam: get(&ws.cam)?,
            cam_t: get(&ws.cam_t)?,
            keypoints_3d: get(&ws.kp3d)?,
            keypoints_2d: get(&ws.kp2d)?,
            vertices: get(&ws.verts)?,
            uncertainty_raw: ws.raw.as_ref().map(get).transpose()?,
            keypoint_3d_cov: ws.cov.as_ref().map(get).transpose()?,
            joint_uncertainty: ws.unc.as_ref().map(get).transpose()?,
        };
        be.synchronize()?;
        Ok(out)
    }
}

/// `out = LN(x)`, or, when a residual branch `r` is pending, `x += r; out = LN(x)`.
#[allow(clippy::too_many_arguments)]
fn norm_into<T: Dtype>(
    be: &CudaBackend,
    x: &mut CudaSlice<f32>,
    r: &CudaSlice<f32>,
    pending: bool,
    n: &DevNorm,
    out: &mut CudaSlice<T>,
    rows: usize,
    cols: usize,
) -> Result<()> {
    if pending {
        be.add_layernorm_fwd::<T>(
            &mut x.as_view_mut(),
            &r.as_view(),
            &n.gamma.as_view(),
            &n.beta.as_view(),
            &mut out.as_view_mut(),
            rows,
            cols,
            n.eps,
        )
    } else {
        be.layernorm_fwd::<T>(
            &x.as_view(),
            &n.gamma.as_view(),
            &n.beta.as_view(),
            &mut out.as_view_mut(),
            rows,
            cols,
            n.eps,
        )
    }
}

/// A GEMM whose output feeds another GEMM (stays in T, bias in T).
fn lin_t<T: Dtype>(
    g: &mut Gemm,
    l: &DevLinear<T>,
    x: &CudaSlice<T>,
    y: &mut CudaSlice<T>,
    rows: usize,
) -> Result<()> {
    let bias: Option<CudaView<T>> = l.bias_t.as_ref().map(|b| b.as_view());
    g.linear::<T, T>(
        &x.as_view(),
        &l.w.as_view(),
        bias.as_ref(),
        &mut y.as_view_mut(),
        rows,
        l.d_in,
        l.d_out,
    )
}

/// A GEMM that writes a residual branch (f32 output, f32 bias).
fn lin_f<T: Dtype>(
    g: &mut Gemm,
    l: &DevLinear<T>,
    x: &CudaSlice<T>,
    y: &mut CudaSlice<f32>,
    rows: usize,
) -> Result<()> {
    let bias: Option<CudaView<f32>> = l.bias_f.as_ref().map(|b| b.as_view());
    g.linear::<T, f32>(
        &x.as_view(),
        &l.w.as_view(),
        bias.as_ref(),
        &mut y.as_view_mut(),
        rows,
        l.d_in,
        l.d_out,
    )
}

/// An all-f32 GEMM (head readouts).
fn lin_f32(
    g: &mut Gemm,
    l: &DevLinear<f32>,
    x: &CudaSlice<f32>,
    y: &mut CudaSlice<f32>,
    rows: usize,
) -> Result<()> {
    lin_f(g, l, x, y, rows)
}

/// One TransformerDecoder over the context tokens in `ws.ctx`; the output token ends in `ws.dx`
/// (f32).
fn run_decoder<T: Dtype>(
    be: &CudaBackend,
    gemm: &mut Gemm,
    d: &DevDecoder<T>,
    ws: &mut Workspace<T>,
    b: usize,
    t: usize,
    mano: bool,
) -> Result<()> {
    let token = if mano {
        Some(&ws.token_mano)
    } else {
        ws.token_unc.as_ref()
    };
    let token = token.ok_or_else(|| Error::Cuda("decoder token missing".into()))?;
    be.stream
        .memcpy_dtod(token, &mut ws.dx)
        .map_err(cuda_err("initialising the decoder token"))?;
    let mut pending = false;
    for l in &d.layers {
        norm_into(
            be, &mut ws.dx, &ws.dr, pending, &l.norm_a, &mut ws.dh, b, d.dim,
        )?;
        lin_t(gemm, &l.to_v, &ws.dh, &mut ws.dv, b)?;
        lin_f(gemm, &l.sa_out, &ws.dv, &mut ws.dr, b)?;
        norm_into(
            be, &mut ws.dx, &ws.dr, true, &l.norm_b, &mut ws.dh, b, d.dim,
        )?;
        lin_t(gemm, &l.to_q, &ws.dh, &mut ws.dq, b)?;
        lin_t(gemm, &l.to_kv, &ws.ctx, &mut ws.dkv, b * t)?;
        be.cross_attention_1q_fwd::<T>(
            &ws.dq.as_view(),
            &ws.dkv.as_view(),
            &mut ws.dattn.as_view_mut(),
            b,
            t,
            d.heads,
            d.dim_head,
            (d.dim_head as f32).powf(-0.5),
        )?;
        lin_f(gemm, &l.ca_out, &ws.dattn, &mut ws.dr, b)?;
        norm_into(
            be, &mut ws.dx, &ws.dr, true, &l.norm_c, &mut ws.dh, b, d.dim,
        )?;
        lin_t(gemm, &l.net0, &ws.dh, &mut ws.dff, b)?;
        be.bias_gelu_fwd::<T>(&mut ws.dff.as_view_mut(), None, b, l.net0.d_out, true)?;
        lin_f(gemm, &l.net3, &ws.dff, &mut ws.dr, b)?;
        pending = true;
    }
    if pending {
        be.add_fwd(&mut ws.dx.as_view_mut(), &ws.dr.as_view())?;
    }
    Ok(())
}
