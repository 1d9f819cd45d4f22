//! Training forward and hand-written backward of the whole model on the CPU: each module's
//! forward keeps the activations its backward needs in a plain struct (no autograd tape), and
//! the backward walks the modules in reverse, overwriting activation gradients and accumulating
//! parameter gradients under their state-dict names.

use super::decoder::TransformerDecoder;
use super::heads::{ManoHead, Readout, UncertaintyHead};
use super::layers::{LayerNorm, Linear};
use super::vit::{Block, Vit};
use crate::error::Result;
use crate::ops::attention::{
    cross_attention_1q_bwd_cpu, cross_attention_1q_cpu, self_attention_packed_bwd_probs_cpu,
    self_attention_packed_train_cpu,
};
use crate::ops::drop_path::scale_rows;
use crate::ops::layernorm::{layernorm_bwd_acc_cpu, layernorm_bwd_cpu, layernorm_fwd_cpu};
use crate::ops::linear::{
    column_sums_acc, linear_bwd_cpu, linear_bwd_input_new, linear_bwd_params_cpu,
    linear_bwd_weight_new, linear_cpu, linear_new, Epilogue,
};
use crate::ops::math::{add_inplace_par, gelu_with_grad_par, mul_inplace_par};
use crate::ops::patch_embed::{im2col, patch_embed_bwd_cols_cpu, patch_embed_cols_cpu};
use std::borrow::Cow;
use std::collections::BTreeMap;

/// Parameter gradients by state-dict name (f32, the parameter's shape flattened).
#[derive(Default, Debug, Clone)]
pub struct Grads {
    pub map: BTreeMap<String, Vec<f32>>,
}

impl Grads {
    /// The gradient buffer of `name` (`n` values), created zeroed on first use.
    pub fn get(&mut self, name: &str, n: usize) -> &mut [f32] {
        let v = self
            .map
            .entry(name.to_string())
            .or_insert_with(|| vec![0.0; n]);
        if v.len() != n {
            *v = vec![0.0; n];
        }
        v
    }

    /// Removes the buffer of `name` (or makes a zeroed one) so that it can be filled while
    /// other buffers are borrowed; give it back with [`Grads::put`].
    pub fn take(&mut self, name: &str, n: usize) -> Vec<f32> {
        match self.map.remove(name) {
            Some(v) if v.len() == n => v,
            _ => vec![0.0; n],
        }
    }

    pub fn put(&mut self, name: &str, v: Vec<f32>) {
        self.map.insert(name.to_string(), v);
    }
}

fn ln_fwd(ln: &LayerNorm, x: &[f32], cols: usize) -> Vec<f32> {
    let mut out = vec![0f32; x.len()];
    layernorm_fwd_cpu(x, ln.weight.data(), ln.bias.data(), ln.eps, cols, &mut out);
    out
}

fn lin_fwd(l: &Linear, x: &[f32]) -> Vec<f32> {
    linear_new(
        x,
        l.weight.data(),
        l.bias.as_ref().map(|b| b.data()),
        l.d_in(),
        l.d_out(),
        Epilogue::None,
    )
}

/// Backward of a linear layer named `name` (`.weight`, `.bias`): returns dx.
fn lin_bwd(l: &Linear, name: &str, x: &[f32], dy: &[f32], g: &mut Grads) -> Vec<f32> {
    let (d_in, d_out) = (l.d_in(), l.d_out());
    let dx = linear_bwd_input_new(l.weight.data(), dy, d_in, d_out);
    let (wn, bn) = (format!("{name}.weight"), format!("{name}.bias"));
    let mut db = l.bias.as_ref().map(|_| g.take(&bn, d_out));
    // The first gradient of a weight in a step is written by the GEMM into a new buffer (no
    // zero fill, no read of zeros); a later one accumulates.
    let dw = match g.map.remove(&wn) {
        Some(mut dw) if dw.len() == d_in * d_out => {
            linear_bwd_params_cpu(x, dy, d_in, d_out, &mut dw, db.as_deref_mut());
            dw
        }
        _ => {
            if let Some(db) = db.as_deref_mut() {
                column_sums_acc(dy, d_out, db);
            }
            linear_bwd_weight_new(x, dy, d_in, d_out)
        }
    };
    g.put(&wn, dw);
    if let Some(db) = db {
        g.put(&bn, db);
    }
    dx
}

fn ln_bwd(
    ln: &LayerNorm,
    name: &str,
    x: &[f32],
    dy: &[f32],
    cols: usize,
    g: &mut Grads,
) -> Vec<f32> {
    let mut dx = vec![0f32; x.len()];
    ln_bwd_into(ln, name, x, dy, cols, g, &mut dx, false);
    dx
}

/// Backward of the LayerNorm at the head of a residual branch: adds its input gradient into
/// the residual stream's `dx` (the same bits as [`ln_bwd`] then [`add`]).
fn ln_bwd_add(
    ln: &LayerNorm,
    name: &str,
    x: &[f32],
    dy: &[f32],
    cols: usize,
    g: &mut Grads,
    dx: &mut [f32],
) {
    ln_bwd_into(ln, name, x, dy, cols, g, dx, true)
}

#[allow(clippy::too_many_arguments)]
fn ln_bwd_into(
    ln: &LayerNorm,
    name: &str,
    x: &[f32],
    dy: &[f32],
    cols: usize,
    g: &mut Grads,
    dx: &mut [f32],
    accumulate: bool,
) {
    let (wn, bn) = (format!("{name}.weight"), format!("{name}.bias"));
    let mut dg = g.take(&wn, cols);
    let mut dbt = g.take(&bn, cols);
    let bwd = if accumulate {
        layernorm_bwd_acc_cpu
    } else {
        layernorm_bwd_cpu
    };
    bwd(x, ln.weight.data(), ln.eps, cols, dy, dx, &mut dg, &mut dbt);
    g.put(&wn, dg);
    g.put(&bn, dbt);
}

/// `a += b`, the residual add (over the thread pool, see [`add_inplace_par`]).
fn add(a: &mut [f32], b: &[f32]) {
    add_inplace_par(a, b)
}

/// The gradient reaching a drop-path branch: `dx` scaled per sample, or `dx` itself when every
/// scale is 1 (drop-path off; multiplying by 1 would change no bit).
fn drop_path_grad<'a>(dx: &'a [f32], per_sample: usize, dp: &[f32]) -> Cow<'a, [f32]> {
    if dp.iter().all(|&s| s == 1.0) {
        return Cow::Borrowed(dx);
    }
    let mut d = dx.to_vec();
    scale_rows(&mut d, per_sample, dp);
    Cow::Owned(d)
}

/// What one ViT block keeps for its backward.
pub struct BlockActs {
    x0: Vec<f32>,
    h1: Vec<f32>,
    qkv: Vec<f32>,
    /// The attention probabilities, `[b, heads, s, s]`.
    probs: Vec<f32>,
    att: Vec<f32>,
    x1: Vec<f32>,
    h2: Vec<f32>,
    /// GELU'(fc1 output), what the GELU backward multiplies by.
    dgelu: Vec<f32>,
    hid: Vec<f32>,
    /// Per-sample drop-path scales of the two branches (1 when drop-path is off).
    dp: [Vec<f32>; 2],
}

pub struct VitActs {
    /// The patch embedding's im2col (its weight gradient needs nothing else of the image).
    cols: Vec<f32>,
    b: usize,
    blocks: Vec<BlockActs>,
    x_final: Vec<f32>,
}

impl Block {
    /// `x` is the block's input on entry and its output on exit. The input and the
    /// intermediate residual stream are kept by moving them into the activations: each residual
    /// add writes into the fresh branch output (`branch + x`, the same bits as `x + branch`).
    fn forward_train(&self, x: &mut Vec<f32>, b: usize, s: usize, dp: [Vec<f32>; 2]) -> BlockActs {
        let c = x.len() / (b * s);
        let x0 = std::mem::take(x);
        let h1 = ln_fwd(&self.norm1, &x0, c);
        let qkv = lin_fwd(&self.attn.qkv, &h1);
        let heads = self.attn.num_heads;
        let d = c / heads;
        let mut att = vec![0f32; b * s * c];
        let mut probs = vec![0f32; b * heads * s * s];
        let scale = (d as f32).powf(-0.5);
        self_attention_packed_train_cpu(&qkv, b, s, heads, d, scale, &mut att, &mut probs);
        let mut x1 = lin_fwd(&self.attn.proj, &att);
        scale_rows(&mut x1, s * c, &dp[0]);
        add(&mut x1, &x0);
        let h2 = ln_fwd(&self.norm2, &x1, c);
        let mut dgelu = lin_fwd(&self.mlp.fc1, &h2);
        let hid = gelu_with_grad_par(&mut dgelu);
        let mut out = lin_fwd(&self.mlp.fc2, &hid);
        scale_rows(&mut out, s * c, &dp[1]);
        add(&mut out, &x1);
        *x = out;
        BlockActs {
            x0,
            h1,
            qkv,
            probs,
            att,
            x1,
            h2,
            dgelu,
            hid,
            dp,
        }
    }

    /// `dx` is the gradient w.r.t. the block's output on entry and w.r.t. its input on exit.
    fn backward(
        &self,
        a: &BlockActs,
        name: &str,
        dx: &mut [f32],
        b: usize,
        s: usize,
        g: &mut Grads,
    ) {
        let c = dx.len() / (b * s);
        let d_branch = drop_path_grad(dx, s * c, &a.dp[1]);
        let mut d_hid = lin_bwd(
            &self.mlp.fc2,
            &format!("{name}.mlp.fc2"),
            &a.hid,
            &d_branch,
            g,
        );
        drop(d_branch);
        mul_inplace_par(&a.dgelu, &mut d_hid);
        let d_h2 = lin_bwd(&self.mlp.fc1, &format!("{name}.mlp.fc1"), &a.h2, &d_hid, g);
        ln_bwd_add(
            &self.norm2,
            &format!("{name}.norm2"),
            &a.x1,
            &d_h2,
            c,
            g,
            dx,
        );
        let d_branch = drop_path_grad(dx, s * c, &a.dp[0]);
        let d_att = lin_bwd(
            &self.attn.proj,
            &format!("{name}.attn.proj"),
            &a.att,
            &d_branch,
            g,
        );
        drop(d_branch);
        let heads = self.attn.num_heads;
        let d = c / heads;
        let mut d_qkv = vec![0f32; a.qkv.len()];
        self_attention_packed_bwd_probs_cpu(
            &a.qkv,
            &a.probs,
            b,
            s,
            heads,
            d,
            (d as f32).powf(-0.5),
            &d_att,
            &mut d_qkv,
        );
        let d_h1 = lin_bwd(
            &self.attn.qkv,
            &format!("{name}.attn.qkv"),
            &a.h1,
            &d_qkv,
            g,
        );
        ln_bwd_add(
            &self.norm1,
            &format!("{name}.norm1"),
            &a.x0,
            &d_h1,
            c,
            g,
            dx,
        );
    }
}

impl Vit {
    /// Training forward: tokens `[B, T, C]` after `last_norm`, and the activations.
    /// `drop_path(block, branch)` gives each sample's scale (0 or 1/keep; all 1 when off).
    pub fn forward_train(
        &self,
        img: &[f32],
        b: usize,
        drop_path: &dyn Fn(usize, usize) -> Vec<f32>,
    ) -> (Vec<f32>, VitActs) {
        let g = &self.patch_embed.geometry;
        let (t, c) = (g.rows * g.cols, self.embed_dim);
        let mut x = vec![0f32; b * t * c];
        let cols = im2col(img, b, g);
        patch_embed_cols_cpu(
            &cols,
            g,
            self.patch_embed.proj_weight.data(),
            self.patch_embed.proj_bias.data(),
            c,
            &mut x,
        );
        let pos = self.pos_embed.data();
        let (slot0, slots) = pos.split_at(c);
        for tok in x.chunks_mut(t * c) {
            for (row, slot) in tok.chunks_mut(c).zip(slots.chunks(c)) {
                for ((v, &p), &p0) in row.iter_mut().zip(slot).zip(slot0) {
                    *v = (*v + p) + p0;
                }
            }
        }
        let blocks = self
            .blocks
            .iter()
            .enumerate()
            .map(|(i, blk)| blk.forward_train(&mut x, b, t, [drop_path(i, 0), drop_path(i, 1)]))
            .collect();
        let tokens = ln_fwd(&self.last_norm, &x, c);
        (
            tokens,
            VitActs {
                cols,
                b,
                blocks,
                x_final: x,
            },
        )
    }

    /// Backward from `d_tokens` (gradient w.r.t. the `last_norm` output) to every backbone
    /// parameter (`backbone.*`).
    pub fn backward(&self, a: &VitActs, d_tokens: &[f32], g: &mut Grads) {
        let geo = &self.patch_embed.geometry;
        let (t, c, b) = (geo.rows * geo.cols, self.embed_dim, a.b);
        let mut dx = ln_bwd(
            &self.last_norm,
            "backbone.last_norm",
            &a.x_final,
            d_tokens,
            c,
            g,
        );
        for (i, (blk, acts)) in self.blocks.iter().zip(&a.blocks).enumerate().rev() {
            blk.backward(acts, &format!("backbone.blocks.{i}"), &mut dx, b, t, g);
        }
        // Position embedding: slot 1+t gets Σ_b dx[b, t]; slot 0 gets Σ_b Σ_t dx[b, t].
        let dpos = g.get("backbone.pos_embed", (1 + t) * c);
        let (d0, dslots) = dpos.split_at_mut(c);
        for tok in dx.chunks(t * c) {
            for (row, dslot) in tok.chunks(c).zip(dslots.chunks_mut(c)) {
                for ((&v, ds), d0) in row.iter().zip(dslot.iter_mut()).zip(d0.iter_mut()) {
                    *ds += v;
                    *d0 += v;
                }
            }
        }
        let plen = geo.patch_len();
        let mut dw = g.take("backbone.patch_embed.proj.weight", c * plen);
        let mut dbias = g.take("backbone.patch_embed.proj.bias", c);
        patch_embed_bwd_cols_cpu(&a.cols, geo, &dx, c, &mut dw, &mut dbias);
        g.put("backbone.patch_embed.proj.weight", dw);
        g.put("backbone.patch_embed.proj.bias", dbias);
    }
}

/// What one decoder layer keeps.
pub struct DecLayerActs {
    x0: Vec<f32>,
    ha: Vec<f32>,
    v: Vec<f32>,
    x1: Vec<f32>,
    hb: Vec<f32>,
    q: Vec<f32>,
    kv: Vec<f32>,
    att: Vec<f32>,
    x2: Vec<f32>,
    hc: Vec<f32>,
    /// GELU'(net0 output).
    dgelu: Vec<f32>,
    hid: Vec<f32>,
}

pub struct DecoderActs {
    b: usize,
    t: usize,
    layers: Vec<DecLayerActs>,
}

impl TransformerDecoder {
    /// Training forward over `ctx [B, T, context_dim]`: the output token `[B, dim]`.
    pub fn forward_train(&self, ctx: &[f32], b: usize) -> Result<(Vec<f32>, DecoderActs)> {
        let cd = self
            .layers
            .first()
            .map(|l| l.cross_attn.to_kv.d_in())
            .unwrap_or(1);
        let t = ctx.len() / (b * cd);
        let inner = self.heads * self.dim_head;
        let scale = (self.dim_head as f32).powf(-0.5);
        let token: Vec<f32> = {
            let bias = self
                .to_token_embedding
                .bias
                .as_ref()
                .map(|x| x.data().to_vec())
                .unwrap_or_else(|| vec![0.0; self.dim]);
            bias.iter()
                .zip(self.pos_embedding.data())
                .map(|(a, p)| a + p)
                .collect()
        };
        let mut x: Vec<f32> = (0..b).flat_map(|_| token.iter().copied()).collect();
        let mut layers = Vec::with_capacity(self.layers.len());
        for l in &self.layers {
            let x0 = x.to_vec();
            let ha = ln_fwd(&l.self_attn.norm, &x, self.dim);
            let w = &l.self_attn.to_qkv.weight.data()[2 * inner * self.dim..];
            let mut v = vec![0f32; b * inner];
            linear_cpu(&ha, w, None, self.dim, inner, Epilogue::None, &mut v);
            add(&mut x, &lin_fwd(&l.self_attn.to_out, &v));
            let x1 = x.to_vec();
            let hb = ln_fwd(&l.cross_attn.norm, &x, self.dim);
            let q = lin_fwd(&l.cross_attn.to_q, &hb);
            let kv = lin_fwd(&l.cross_attn.to_kv, ctx);
            let mut att = vec![0f32; b * inner];
            cross_attention_1q_cpu(&q, &kv, b, t, self.heads, self.dim_head, scale, &mut att);
            add(&mut x, &lin_fwd(&l.cross_attn.to_out, &att));
            let x2 = x.clone();
            let hc = ln_fwd(&l.ff.norm, &x, self.dim);
            let mut dgelu = lin_fwd(&l.ff.net0, &hc);
            let hid = gelu_with_grad_par(&mut dgelu);
            add(&mut x, &lin_fwd(&l.ff.net3, &hid));
            layers.push(DecLayerActs {
                x0,
                ha,
                v,
                x1,
                hb,
                q,
                kv,
                att,
                x2,
                hc,
                dgelu,
                hid,
            });
        }
        Ok((x, DecoderActs { b, t, layers }))
    }

    /// Backward from the output token's gradient; adds the context gradient into `d_ctx` and
    /// the parameter gradients under `prefix` (`mano_head.transformer`, …).
    pub fn backward(
        &self,
        a: &DecoderActs,
        d_out: &[f32],
        ctx: &[f32],
        prefix: &str,
        d_ctx: &mut [f32],
        g: &mut Grads,
    ) {
        let (b, t) = (a.b, a.t);
        let inner = self.heads * self.dim_head;
        let scale = (self.dim_head as f32).powf(-0.5);
        let mut dx = d_out.to_vec();
        for (i, (l, acts)) in self.layers.iter().zip(&a.layers).enumerate().rev() {
            let p = format!("{prefix}.transformer.transformer.layers.{i}");
            // Feed-forward branch.
            let mut d_hid = lin_bwd(&l.ff.net3, &format!("{p}.2.fn.net.3"), &acts.hid, &dx, g);
            mul_inplace_par(&acts.dgelu, &mut d_hid);
            let d_hc = lin_bwd(&l.ff.net0, &format!("{p}.2.fn.net.0"), &acts.hc, &d_hid, g);
            ln_bwd_add(
                &l.ff.norm,
                &format!("{p}.2.norm"),
                &acts.x2,
                &d_hc,
                self.dim,
                g,
                &mut dx,
            );
            // Cross-attention branch.
            let d_att = lin_bwd(
                &l.cross_attn.to_out,
                &format!("{p}.1.fn.to_out.0"),
                &acts.att,
                &dx,
                g,
            );
            let mut dq = vec![0f32; acts.q.len()];
            let mut dkv = vec![0f32; acts.kv.len()];
            cross_attention_1q_bwd_cpu(
                &acts.q,
                &acts.kv,
                b,
                t,
                self.heads,
                self.dim_head,
                scale,
                &d_att,
                &mut dq,
                &mut dkv,
            );
            add(
                d_ctx,
                &lin_bwd(
                    &l.cross_attn.to_kv,
                    &format!("{p}.1.fn.to_kv"),
                    ctx,
                    &dkv,
                    g,
                ),
            );
            let d_hb = lin_bwd(
                &l.cross_attn.to_q,
                &format!("{p}.1.fn.to_q"),
                &acts.hb,
                &dq,
                g,
            );
            ln_bwd_add(
                &l.cross_attn.norm,
                &format!("{p}.1.norm"),
                &acts.x1,
                &d_hb,
                self.dim,
                g,
                &mut dx,
            );
            // Self-attention over one token: only the value rows of to_qkv get a gradient (the
            // softmax over one key is constant, so q and k rows get exactly zero).
            let d_v = lin_bwd(
                &l.self_attn.to_out,
                &format!("{p}.0.fn.to_out.0"),
                &acts.v,
                &dx,
                g,
            );
            let w = &l.self_attn.to_qkv.weight.data()[2 * inner * self.dim..];
            let mut d_ha = vec![0f32; acts.ha.len()];
            let full = g.get(&format!("{p}.0.fn.to_qkv.weight"), 3 * inner * self.dim);
            linear_bwd_cpu(
                &acts.ha,
                w,
                &d_v,
                self.dim,
                inner,
                Some(&mut d_ha),
                &mut full[2 * inner * self.dim..],
                None,
            );
            ln_bwd_add(
                &l.self_attn.norm,
                &format!("{p}.0.norm"),
                &acts.x0,
                &d_ha,
                self.dim,
                g,
                &mut dx,
            );
        }
        // The query token: to_token_embedding(0) + pos_embedding → bias and pos get Σ_b dx;
        // the embedding weight multiplies a zero input (gradient exactly 0).
        let mut sum = vec![0f32; self.dim];
        for row in dx.chunks(self.dim) {
            add(&mut sum, row);
        }
        add(
            g.get(
                &format!("{prefix}.transformer.to_token_embedding.bias"),
                self.dim,
            ),
            &sum,
        );
        add(
            g.get(&format!("{prefix}.transformer.pos_embedding"), self.dim),
            &sum,
        );
        g.get(
            &format!("{prefix}.transformer.to_token_embedding.weight"),
            self.dim,
        );
        let _ = b;
    }
}

/// MANO-head training outputs.
pub struct ManoHeadOut {
    pub token: Vec<f32>,
    pub pose6d: Vec<f32>,
    pub betas: Vec<f32>,
    pub cam: Vec<f32>,
    pub acts: DecoderActs,
}

impl ManoHead {
    pub fn forward_train(&self, ctx: &[f32], b: usize) -> Result<ManoHeadOut> {
        let (token, acts) = self.transformer.forward_train(ctx, b)?;
        let readout = |l: &Linear, init: &[f32]| {
            let mut y = lin_fwd(l, &token);
            for row in y.chunks_mut(init.len()) {
                add(row, init);
            }
            y
        };
        Ok(ManoHeadOut {
            pose6d: readout(&self.decpose, self.init_hand_pose.data()),
            betas: readout(&self.decshape, self.init_betas.data()),
            cam: readout(&self.deccam, self.init_cam.data()),
            token,
            acts,
        })
    }

    /// Backward from the readouts' gradients; adds into `d_ctx`.
    #[allow(clippy::too_many_arguments)]
    pub fn backward(
        &self,
        o: &ManoHeadOut,
        d_pose6d: &[f32],
        d_betas: &[f32],
        d_cam: &[f32],
        ctx: &[f32],
        d_ctx: &mut [f32],
        g: &mut Grads,
    ) {
        let mut d_tok = lin_bwd(&self.decpose, "mano_head.decpose", &o.token, d_pose6d, g);
        add(
            &mut d_tok,
            &lin_bwd(&self.decshape, "mano_head.decshape", &o.token, d_betas, g),
        );
        add(
            &mut d_tok,
            &lin_bwd(&self.deccam, "mano_head.deccam", &o.token, d_cam, g),
        );
        self.transformer
            .backward(&o.acts, &d_tok, ctx, "mano_head", d_ctx, g);
    }
}

pub struct UncHeadOut {
    pub token: Vec<f32>,
    /// `[B, raw_len]` as `UncertaintyHead::forward`.
    pub raw: Vec<f32>,
    pub acts: DecoderActs,
}

impl UncertaintyHead {
    pub fn forward_train(&self, ctx: &[f32], b: usize) -> Result<UncHeadOut> {
        let (token, acts) = self.transformer.forward_train(ctx, b)?;
        let raw = match &self.readout {
            Readout::LogVar(l) => lin_fwd(l, &token),
            Readout::Full { diag, cov } => {
                let (d, o) = (lin_fwd(diag, &token), lin_fwd(cov, &token));
                let (nd, no) = (diag.d_out(), cov.d_out());
                d.chunks(nd)
                    .zip(o.chunks(no))
                    .flat_map(|(a, c)| a.iter().chain(c).copied().collect::<Vec<_>>())
                    .collect()
            }
        };
        Ok(UncHeadOut { token, raw, acts })
    }

    /// Backward from the readout's gradient (same layout as `raw`); adds into `d_ctx`.
    pub fn backward(
        &self,
        o: &UncHeadOut,
        d_raw: &[f32],
        ctx: &[f32],
        d_ctx: &mut [f32],
        g: &mut Grads,
    ) {
        let d_tok = match &self.readout {
            Readout::LogVar(l) => lin_bwd(l, &self.readout_name, &o.token, d_raw, g),
            Readout::Full { diag, cov } => {
                let (nd, no) = (diag.d_out(), cov.d_out());
                let mut dd = Vec::with_capacity(d_raw.len() / (nd + no) * nd);
                let mut dofs = Vec::with_capacity(d_raw.len() / (nd + no) * no);
                for r in d_raw.chunks(nd + no) {
                    dd.extend_from_slice(&r[..nd]);
                    dofs.extend_from_slice(&r[nd..]);
                }
                let mut d = lin_bwd(
                    diag,
                    "uncertainty_head.dec3dkeypoint_diag",
                    &o.token,
                    &dd,
                    g,
                );
                add(
                    &mut d,
                    &lin_bwd(
                        cov,
                        "uncertainty_head.dec3dkeypoint_cov",
                        &o.token,
                        &dofs,
                        g,
                    ),
                );
                d
            }
        };
        self.transformer
            .backward(&o.acts, &d_tok, ctx, "uncertainty_head", d_ctx, g);
    }
}
