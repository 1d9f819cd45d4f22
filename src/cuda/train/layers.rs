//! The layers of the training forward: LayerNorm (fused with the pending residual add), the
//! linear layers in their three precisions, and one transformer decoder keeping its
//! activations.

use cudarc::driver::{CudaSlice, CudaView};

use super::params::DevParams;
use super::{copy, DecActs};
use crate::cuda::{cuda_err, CudaBackend, Dtype, Gemm};
use crate::error::{Error, Result};
use crate::model::config::ModelConfig;

/// `out = LN(x)`, or with a pending branch `x += r; out = LN(x)`, with the LayerNorm `name`.
#[allow(clippy::too_many_arguments)]
pub(super) fn norm_into<T: Dtype>(
    be: &CudaBackend,
    p: &DevParams<T>,
    name: &str,
    x: &mut CudaSlice<f32>,
    r: &CudaSlice<f32>,
    pending: bool,
    out: &mut CudaSlice<T>,
    rows: usize,
    cols: usize,
) -> Result<()> {
    let gamma = p.f(&format!("{name}.weight"))?;
    let beta = p.f(&format!("{name}.bias"))?;
    let eps = *p
        .norm_eps
        .get(name)
        .ok_or_else(|| Error::Cuda(format!("no LayerNorm named {name}")))?;
    let n = rows * cols;
    if pending {
        be.add_layernorm_fwd::<T>(
            &mut x.slice_mut(..n),
            &r.slice(..n),
            &gamma,
            &beta,
            &mut out.slice_mut(..n),
            rows,
            cols,
            eps,
        )
    } else {
        be.layernorm_fwd::<T>(
            &x.slice(..n),
            &gamma,
            &beta,
            &mut out.slice_mut(..n),
            rows,
            cols,
            eps,
        )
    }
}

/// `y = x·Wᵀ (+ b)` for the linear layer `name` on the first `rows` rows of `x` and `y`, with
/// the weight and the bias (when the layer has one) fetched by `weight` and `bias`.
#[allow(clippy::too_many_arguments)]
fn linear_named<'p, TI: Dtype, TO: Dtype>(
    g: &mut Gemm,
    has_bias: bool,
    name: &str,
    weight: impl Fn(&str) -> Result<CudaView<'p, TI>>,
    bias: impl Fn(&str) -> Result<CudaView<'p, TO>>,
    x: &CudaSlice<TI>,
    y: &mut CudaSlice<TO>,
    rows: usize,
    d_in: usize,
    d_out: usize,
) -> Result<()> {
    let b = if has_bias {
        Some(bias(&format!("{name}.bias"))?)
    } else {
        None
    };
    g.linear::<TI, TO>(
        &x.slice(..rows * d_in),
        &weight(&format!("{name}.weight"))?,
        b.as_ref(),
        &mut y.slice_mut(..rows * d_out),
        rows,
        d_in,
        d_out,
    )
}

fn has_bias<T: Dtype>(p: &DevParams<T>, name: &str) -> bool {
    p.index.has(&format!("{name}.bias"))
}

/// `y = x·Wᵀ (+ b)` with T output (bias as the bf16 working copy in bf16 mode).
#[allow(clippy::too_many_arguments)]
pub(super) fn lin_tt<T: Dtype>(
    g: &mut Gemm,
    p: &DevParams<T>,
    name: &str,
    x: &CudaSlice<T>,
    y: &mut CudaSlice<T>,
    rows: usize,
    d_in: usize,
    d_out: usize,
) -> Result<()> {
    let w = |n: &str| p.w(n);
    linear_named(g, has_bias(p, name), name, w, w, x, y, rows, d_in, d_out)
}

/// `y = x·Wᵀ (+ b)` with an f32 output (a residual branch).
#[allow(clippy::too_many_arguments)]
pub(super) fn lin_tf<T: Dtype>(
    g: &mut Gemm,
    p: &DevParams<T>,
    name: &str,
    x: &CudaSlice<T>,
    y: &mut CudaSlice<f32>,
    rows: usize,
    d_in: usize,
    d_out: usize,
) -> Result<()> {
    let (w, f) = (|n: &str| p.w(n), |n: &str| p.f(n));
    linear_named(g, has_bias(p, name), name, w, f, x, y, rows, d_in, d_out)
}

/// A head readout in f32 from the fp32 masters.
#[allow(clippy::too_many_arguments)]
pub(super) fn readout<T: Dtype>(
    g: &mut Gemm,
    p: &DevParams<T>,
    name: &str,
    x: &CudaSlice<f32>,
    y: &mut CudaSlice<f32>,
    rows: usize,
    d_in: usize,
    d_out: usize,
) -> Result<()> {
    let f = |n: &str| p.f(n);
    linear_named(g, has_bias(p, name), name, f, f, x, y, rows, d_in, d_out)
}

/// The decoder `prefix` (`mano_head` / `uncertainty_head`) over the context tokens, keeping its
/// activations; the output token ends in `a.x`.
#[allow(clippy::too_many_arguments)]
pub(super) fn forward_decoder<T: Dtype>(
    be: &CudaBackend,
    gemm: &mut Gemm,
    p: &DevParams<T>,
    cfg: &ModelConfig,
    prefix: &str,
    a: &mut DecActs<T>,
    ctx: &CudaSlice<T>,
    dr: &mut CudaSlice<f32>,
    dff: &mut CudaSlice<T>,
    b: usize,
    t: usize,
) -> Result<()> {
    let d = &cfg.decoder;
    let (dim, inner, c) = (d.dim, d.heads * d.dim_head, cfg.vit.embed_dim);
    let tr = format!("{prefix}.transformer");
    // The query token: (0 + to_token_embedding.bias) + pos_embedding, per sample.
    be.stream()
        .memset_zeros(&mut a.x)
        .map_err(cuda_err("initialising the decoder token"))?;
    let tb = format!("{tr}.to_token_embedding.bias");
    if p.index.has(&tb) {
        be.add_rows_fwd(&mut a.x.as_view_mut(), &p.f(&tb)?, b, dim)?;
    }
    be.add_rows_fwd(
        &mut a.x.as_view_mut(),
        &p.f(&format!("{tr}.pos_embedding"))?,
        b,
        dim,
    )?;
    let mut pending = false;
    for (i, l) in a.layers.iter_mut().enumerate() {
        let n = format!("{tr}.transformer.layers.{i}");
        norm_into(
            be,
            p,
            &format!("{n}.0.norm"),
            &mut a.x,
            dr,
            pending,
            &mut l.ha,
            b,
            dim,
        )?;
        copy(be, &a.x, &mut l.x0)?;
        // Self-attention over one token: the value rows of to_qkv (no bias, as the CPU).
        let wv = p.w_rows(
            &format!("{n}.0.fn.to_qkv.weight"),
            2 * inner..3 * inner,
            dim,
        )?;
        gemm.linear::<T, T>(
            &l.ha.as_view(),
            &wv,
            None,
            &mut l.v.as_view_mut(),
            b,
            dim,
            inner,
        )?;
        lin_tf(
            gemm,
            p,
            &format!("{n}.0.fn.to_out.0"),
            &l.v,
            dr,
            b,
            inner,
            dim,
        )?;
        norm_into(
            be,
            p,
            &format!("{n}.1.norm"),
            &mut a.x,
            dr,
            true,
            &mut l.hb,
            b,
            dim,
        )?;
        copy(be, &a.x, &mut l.x1)?;
        lin_tt(
            gemm,
            p,
            &format!("{n}.1.fn.to_q"),
            &l.hb,
            &mut l.q,
            b,
            dim,
            inner,
        )?;
        lin_tt(
            gemm,
            p,
            &format!("{n}.1.fn.to_kv"),
            ctx,
            &mut l.kv,
            b * t,
            c,
            2 * inner,
        )?;
        be.cross_attention_1q_fwd::<T>(
            &l.q.as_view(),
            &l.kv.as_view(),
            &mut l.att.as_view_mut(),
            b,
            t,
            d.heads,
            d.dim_head,
            (d.dim_head as f32).powf(-0.5),
        )?;
        lin_tf(
            gemm,
            p,
            &format!("{n}.1.fn.to_out.0"),
            &l.att,
            dr,
            b,
            inner,
            dim,
        )?;
        norm_into(
            be,
            p,
            &format!("{n}.2.norm"),
            &mut a.x,
            dr,
            true,
            &mut l.hc,
            b,
            dim,
        )?;
        copy(be, &a.x, &mut l.x2)?;
        lin_tt(
            gemm,
            p,
            &format!("{n}.2.fn.net.0"),
            &l.hc,
            &mut l.pre,
            b,
            dim,
            d.mlp_dim,
        )?;
        copy(be, &l.pre, dff)?;
        be.bias_gelu_fwd::<T>(&mut dff.as_view_mut(), None, b, d.mlp_dim, true)?;
        lin_tf(
            gemm,
            p,
            &format!("{n}.2.fn.net.3"),
            dff,
            dr,
            b,
            d.mlp_dim,
            dim,
        )?;
        pending = true;
    }
    if pending {
        be.add_fwd(&mut a.x.as_view_mut(), &dr.as_view())?;
    }
    Ok(())
}
