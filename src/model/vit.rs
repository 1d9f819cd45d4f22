//! The ViT backbone (SPEC §2): padded patch embedding, the 193-slot position embedding, pre-norm
//! blocks and the final LayerNorm. Field names mirror `backbone.*` in the state dict.

use super::config::ModelConfig;
use super::layers::{add_assign, LayerNorm, Linear, Loader};
use crate::error::Result;
use crate::ops::attention::self_attention_packed_cpu;
use crate::ops::linear::Epilogue;
use crate::ops::patch_embed::{patch_embed_cpu, PatchGeometry};
use crate::tensor::Tensor;

pub struct PatchEmbed {
    /// `proj` is a Conv2d; its weight `[C, 3, P, P]` is used flattened as `[C, 3·P·P]`.
    pub proj_weight: Tensor,
    pub proj_bias: Tensor,
    pub geometry: PatchGeometry,
}

pub struct Attention {
    pub qkv: Linear,
    pub proj: Linear,
    pub num_heads: usize,
}

pub struct Mlp {
    pub fc1: Linear,
    pub fc2: Linear,
}

pub struct Block {
    pub norm1: LayerNorm,
    pub attn: Attention,
    pub norm2: LayerNorm,
    pub mlp: Mlp,
}

pub struct Vit {
    pub patch_embed: PatchEmbed,
    /// `[1, 1 + T, C]`: slot 0 is added to every token, slots 1.. per token.
    pub pos_embed: Tensor,
    pub blocks: Vec<Block>,
    pub last_norm: LayerNorm,
    pub embed_dim: usize,
}

impl Vit {
    pub fn load(cfg: &ModelConfig, ld: &Loader) -> Result<Vit> {
        let v = &cfg.vit;
        let c = v.embed_dim;
        let (rows, cols) = cfg.grid();
        let p = v.patch_size;
        let geometry = PatchGeometry {
            image_size: cfg.image_size,
            win_h: v.img_size[0],
            win_w: v.img_size[1],
            col0: cfg.crop_col0(),
            patch: p,
            pad: v.patch_padding,
            rows,
            cols,
        };
        let pe = ld.sub("patch_embed.proj");
        let proj_weight = pe
            .tensor("weight", &[c, 3, p, p])?
            .reshape(&[c, 3 * p * p])?;
        let patch_embed = PatchEmbed {
            proj_weight,
            proj_bias: pe.tensor("bias", &[c])?,
            geometry,
        };
        let pos_embed = ld.tensor("pos_embed", &[1, 1 + rows * cols, c])?;
        let hidden = cfg.vit_mlp_hidden();
        let blocks = (0..v.depth)
            .map(|i| {
                let b = ld.sub(&format!("blocks.{i}"));
                Ok(Block {
                    norm1: b.layernorm("norm1", c, v.ln_eps)?,
                    attn: Attention {
                        qkv: b.linear("attn.qkv", c, 3 * c, v.qkv_bias)?,
                        proj: b.linear("attn.proj", c, c, true)?,
                        num_heads: v.num_heads,
                    },
                    norm2: b.layernorm("norm2", c, v.ln_eps)?,
                    mlp: Mlp {
                        fc1: b.linear("mlp.fc1", c, hidden, true)?,
                        fc2: b.linear("mlp.fc2", hidden, c, true)?,
                    },
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Vit {
            patch_embed,
            pos_embed,
            blocks,
            last_norm: ld.layernorm("last_norm", c, v.ln_eps)?,
            embed_dim: c,
        })
    }

    /// `img [B, 3, S, S]` (normalised crop) → tokens `[B, T, C]` after `last_norm`.
    pub fn forward(&self, img: &Tensor) -> Result<Tensor> {
        let b = img.dim(0);
        let g = &self.patch_embed.geometry;
        let (t, c) = (g.rows * g.cols, self.embed_dim);
        let mut x = Tensor::zeros(&[b, t, c]);
        patch_embed_cpu(
            img.data(),
            b,
            g,
            self.patch_embed.proj_weight.data(),
            self.patch_embed.proj_bias.data(),
            c,
            x.data_mut(),
        );
        let pos = self.pos_embed.data();
        let (slot0, slots) = pos.split_at(c);
        for tok in x.data_mut().chunks_mut(t * c) {
            for (i, v) in tok.iter_mut().enumerate() {
                *v = (*v + slots[i]) + slot0[i % c];
            }
        }
        for block in &self.blocks {
            block.forward(&mut x)?;
        }
        self.last_norm.forward(&x)
    }
}

impl Block {
    /// `x = x + Attn(LN1(x)); x = x + MLP(LN2(x))`, in place.
    pub fn forward(&self, x: &mut Tensor) -> Result<()> {
        let (b, s, c) = (x.dim(0), x.dim(1), x.dim(2));
        let h = self.norm1.forward(x)?;
        let qkv = self.attn.qkv.forward(&h, Epilogue::None)?;
        let heads = self.attn.num_heads;
        let d = c / heads;
        let mut att = Tensor::zeros(&[b, s, c]);
        self_attention_packed_cpu(
            qkv.data(),
            b,
            s,
            heads,
            d,
            (d as f32).powf(-0.5),
            att.data_mut(),
        );
        add_assign(x, &self.attn.proj.forward(&att, Epilogue::None)?);
        let h = self.norm2.forward(x)?;
        let hidden = self.mlp.fc1.forward(&h, Epilogue::Gelu)?;
        add_assign(x, &self.mlp.fc2.forward(&hidden, Epilogue::None)?);
        Ok(())
    }
}
