//! The transformer decoder of the MANO and uncertainty heads (SPEC §3.1–3.2): one constant
//! query token, pre-norm self-attention, cross-attention to the backbone tokens and a GELU MLP
//! per layer. Field names mirror `transformer.*` in the state dict (`layers.{l}.{0,1,2}`).

use super::config::DecoderConfig;
use super::layers::{add_assign, LayerNorm, Linear, Loader};
use crate::error::Result;
use crate::ops::attention::cross_attention_1q_cpu;
use crate::ops::linear::Epilogue;
use crate::tensor::Tensor;

/// `layers.{l}.0`: pre-norm self-attention over the single query token.
pub struct SelfAttention {
    pub norm: LayerNorm,
    /// `fn.to_qkv`, no bias, `[3·inner, dim]`.
    pub to_qkv: Linear,
    /// `fn.to_out.0`, `[dim, inner]` with bias.
    pub to_out: Linear,
}

/// `layers.{l}.1`: pre-norm cross-attention to the context tokens.
pub struct CrossAttention {
    pub norm: LayerNorm,
    pub to_q: Linear,
    /// `[2·inner, context_dim]`: keys then values.
    pub to_kv: Linear,
    pub to_out: Linear,
}

/// `layers.{l}.2`: pre-norm MLP `net.0` → GELU → `net.3`.
pub struct FeedForward {
    pub norm: LayerNorm,
    pub net0: Linear,
    pub net3: Linear,
}

pub struct DecoderLayer {
    pub self_attn: SelfAttention,
    pub cross_attn: CrossAttention,
    pub ff: FeedForward,
}

pub struct TransformerDecoder {
    /// `to_token_embedding`: Linear(1 → dim) applied to a zero token, i.e. its bias.
    pub to_token_embedding: Linear,
    /// `[1, 1, dim]`
    pub pos_embedding: Tensor,
    pub layers: Vec<DecoderLayer>,
    pub heads: usize,
    pub dim_head: usize,
    pub dim: usize,
}

impl TransformerDecoder {
    /// Loads `<prefix>to_token_embedding`, `<prefix>pos_embedding`, `<prefix>transformer.layers.*`.
    pub fn load(cfg: &DecoderConfig, ld: &Loader) -> Result<TransformerDecoder> {
        let (dim, inner) = (cfg.dim, cfg.heads * cfg.dim_head);
        let layers = (0..cfg.depth)
            .map(|l| {
                let p = ld.sub(&format!("transformer.layers.{l}"));
                let (a, c, f) = (p.sub("0"), p.sub("1"), p.sub("2"));
                Ok(DecoderLayer {
                    self_attn: SelfAttention {
                        norm: a.layernorm("norm", dim, cfg.ln_eps)?,
                        to_qkv: a.linear("fn.to_qkv", dim, 3 * inner, false)?,
                        to_out: a.linear("fn.to_out.0", inner, dim, true)?,
                    },
                    cross_attn: CrossAttention {
                        norm: c.layernorm("norm", dim, cfg.ln_eps)?,
                        to_q: c.linear("fn.to_q", dim, inner, false)?,
                        to_kv: c.linear("fn.to_kv", cfg.context_dim, 2 * inner, false)?,
                        to_out: c.linear("fn.to_out.0", inner, dim, true)?,
                    },
                    ff: FeedForward {
                        norm: f.layernorm("norm", dim, cfg.ln_eps)?,
                        net0: f.linear("fn.net.0", dim, cfg.mlp_dim, true)?,
                        net3: f.linear("fn.net.3", cfg.mlp_dim, dim, true)?,
                    },
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(TransformerDecoder {
            to_token_embedding: ld.linear("to_token_embedding", 1, dim, true)?,
            pos_embedding: ld.tensor("pos_embedding", &[1, 1, dim])?,
            layers,
            heads: cfg.heads,
            dim_head: cfg.dim_head,
            dim,
        })
    }

    /// The input-independent query token: `to_token_embedding(0) + pos_embedding`.
    fn query_token(&self, b: usize) -> Result<Tensor> {
        let zero = Tensor::zeros(&[b, 1]);
        let mut x = self.to_token_embedding.forward(&zero, Epilogue::None)?;
        for row in x.data_mut().chunks_mut(self.dim) {
            for (v, p) in row.iter_mut().zip(self.pos_embedding.data()) {
                *v += p;
            }
        }
        Ok(x)
    }

    /// `ctx [B, T, context_dim]` → the output token `[B, dim]`.
    pub fn forward(&self, ctx: &Tensor) -> Result<Tensor> {
        let (b, t) = (ctx.dim(0), ctx.dim(1));
        let inner = self.heads * self.dim_head;
        let scale = (self.dim_head as f32).powf(-0.5);
        let mut x = self.query_token(b)?;
        for layer in &self.layers {
            // Self-attention over one token: softmax ≡ 1, so the output is to_out(W_v·LN(x)).
            let sa = &layer.self_attn;
            let v = sa
                .to_qkv
                .forward_rows(&sa.norm.forward(&x)?, 2 * inner..3 * inner)?;
            add_assign(&mut x, &sa.to_out.forward(&v, Epilogue::None)?);
            // Cross-attention: keys and values from the raw context.
            let ca = &layer.cross_attn;
            let q = ca.to_q.forward(&ca.norm.forward(&x)?, Epilogue::None)?;
            let kv = ca.to_kv.forward(ctx, Epilogue::None)?;
            let mut o = Tensor::zeros(&[b, inner]);
            cross_attention_1q_cpu(
                q.data(),
                kv.data(),
                b,
                t,
                self.heads,
                self.dim_head,
                scale,
                o.data_mut(),
            );
            add_assign(&mut x, &ca.to_out.forward(&o, Epilogue::None)?);
            let ff = &layer.ff;
            let h = ff.net0.forward(&ff.norm.forward(&x)?, Epilogue::Gelu)?;
            add_assign(&mut x, &ff.net3.forward(&h, Epilogue::None)?);
        }
        Ok(x)
    }
}
