//! Backward of one transformer decoder of the training forward (the MANO head's or the
//! uncertainty head's), layer by layer in reverse: feed-forward, cross-attention over the
//! backbone tokens (whose gradient it adds to), and the one-token self-attention.

use cudarc::driver::CudaSlice;

use super::super::params::{DevBuffers, DevParams};
use super::super::{head, head_mut, DecActs, GradWs};
use super::{to_t, Ctx};
use crate::cuda::{cuda_err, CudaBackend, Dtype, GradGemm};
use crate::error::Result;
use crate::model::config::ModelConfig;

/// Backward of one decoder from ∂/∂(output token) in `gw.dx`; adds ∂/∂context into `gw.ctx`.
#[allow(clippy::too_many_arguments)]
pub(super) fn decoder_bwd<T: Dtype>(
    be: &CudaBackend,
    gg: &mut GradGemm,
    p: &DevParams<T>,
    gr: &mut DevBuffers,
    cfg: &ModelConfig,
    prefix: &str,
    a: &DecActs<T>,
    ctx: &CudaSlice<T>,
    gw: &mut GradWs<T>,
    hid: &mut CudaSlice<T>,
    b: usize,
) -> Result<()> {
    let d = &cfg.decoder;
    let (dim, inner, mlp) = (d.dim, d.heads * d.dim_head, d.mlp_dim);
    let t = cfg.num_tokens();
    let c = cfg.vit.embed_dim;
    let nd = b * dim;
    let tr = format!("{prefix}.transformer");
    let mut k = Ctx {
        be,
        gg,
        p,
        gr,
        scratch: &mut gw.scratch,
    };
    for (i, l) in a.layers.iter().enumerate().rev() {
        let n = format!("{tr}.transformer.layers.{i}");
        // Feed-forward branch.
        to_t(be, &head(&gw.dx, nd), &mut head_mut(&mut gw.dt, nd))?;
        be.stream()
            .memcpy_dtod(&l.pre, hid)
            .map_err(cuda_err("recomputing the decoder GELU input"))?;
        be.bias_gelu_fwd::<T>(&mut hid.as_view_mut(), None, b, mlp, true)?;
        k.linear(
            &format!("{n}.2.fn.net.3"),
            &hid.as_view(),
            &gw.dt.as_view(),
            Some(&head(&gw.dx, nd)),
            &mut gw.dff.as_view_mut(),
            b,
            mlp,
            dim,
            false,
        )?;
        be.gelu_bwd::<T>(&l.pre.as_view(), &mut gw.dff.as_view_mut())?;
        k.linear(
            &format!("{n}.2.fn.net.0"),
            &l.hc.as_view(),
            &gw.dff.as_view(),
            None,
            &mut gw.dh.as_view_mut(),
            b,
            dim,
            mlp,
            false,
        )?;
        k.layernorm_add(
            &format!("{n}.2.norm"),
            &l.x2.as_view(),
            &gw.dh.as_view(),
            &mut gw.dtmp,
            &mut gw.dx,
            b,
            dim,
        )?;
        // Cross-attention branch.
        to_t(be, &head(&gw.dx, nd), &mut head_mut(&mut gw.dt, nd))?;
        k.linear(
            &format!("{n}.1.fn.to_out.0"),
            &l.att.as_view(),
            &gw.dt.as_view(),
            Some(&head(&gw.dx, nd)),
            &mut gw.datt.as_view_mut(),
            b,
            inner,
            dim,
            false,
        )?;
        be.cross_attention_1q_bwd::<T>(
            &l.q.as_view(),
            &l.kv.as_view(),
            &gw.datt.as_view(),
            &mut gw.dq.as_view_mut(),
            &mut gw.dkv.as_view_mut(),
            b,
            t,
            d.heads,
            d.dim_head,
            (d.dim_head as f32).powf(-0.5),
        )?;
        // The context gradient accumulates over both decoders and all their layers.
        k.linear(
            &format!("{n}.1.fn.to_kv"),
            &ctx.as_view(),
            &gw.dkv.as_view(),
            None,
            &mut gw.ctx.as_view_mut(),
            b * t,
            c,
            2 * inner,
            true,
        )?;
        k.linear(
            &format!("{n}.1.fn.to_q"),
            &l.hb.as_view(),
            &gw.dq.as_view(),
            None,
            &mut gw.dh.as_view_mut(),
            b,
            dim,
            inner,
            false,
        )?;
        k.layernorm_add(
            &format!("{n}.1.norm"),
            &l.x1.as_view(),
            &gw.dh.as_view(),
            &mut gw.dtmp,
            &mut gw.dx,
            b,
            dim,
        )?;
        // Self-attention over one token: only the value rows of to_qkv get a gradient.
        to_t(be, &head(&gw.dx, nd), &mut head_mut(&mut gw.dt, nd))?;
        k.linear(
            &format!("{n}.0.fn.to_out.0"),
            &l.v.as_view(),
            &gw.dt.as_view(),
            Some(&head(&gw.dx, nd)),
            &mut gw.dv.as_view_mut(),
            b,
            inner,
            dim,
            false,
        )?;
        let qkv_w = format!("{n}.0.fn.to_qkv.weight");
        {
            let mut full = k.gr.get_mut(&p.index, &qkv_w)?;
            let mut rows = full.slice_mut(2 * inner * dim..3 * inner * dim);
            k.gg.linear_bwd_weight::<T>(
                &l.ha.as_view(),
                &gw.dv.as_view(),
                &mut rows,
                b,
                dim,
                inner,
            )?;
        }
        let wv = p.w_rows(&qkv_w, 2 * inner..3 * inner, dim)?;
        k.gg.linear_bwd_input::<T, f32>(
            &gw.dv.as_view(),
            &wv,
            &mut gw.dh.as_view_mut(),
            b,
            dim,
            inner,
            false,
        )?;
        k.layernorm_add(
            &format!("{n}.0.norm"),
            &l.x0.as_view(),
            &gw.dh.as_view(),
            &mut gw.dtmp,
            &mut gw.dx,
            b,
            dim,
        )?;
    }
    // The query token (bias + pos_embedding per sample): both get Σ_b dx.
    for name in [
        format!("{tr}.to_token_embedding.bias"),
        format!("{tr}.pos_embedding"),
    ] {
        if p.index.has(&name) {
            be.bias_grad::<f32>(
                &head(&gw.dx, nd),
                &mut k.gr.get_mut(&p.index, &name)?,
                &mut k.scratch.as_view_mut(),
                b,
                dim,
            )?;
        }
    }
    Ok(())
}
