//! The trainable tensors of a model under their state-dict names (what the optimiser steps and
//! checkpoints store). Buffers (`init_*`, `mano.*`) are not parameters.

use super::decoder::TransformerDecoder;
use super::heads::Readout;
use super::layers::{LayerNorm, Linear};
use super::HandModel;
use crate::tensor::Tensor;

type Params<'a> = Vec<(String, &'a mut Tensor)>;

fn linear<'a>(out: &mut Params<'a>, name: &str, l: &'a mut Linear) {
    out.push((format!("{name}.weight"), &mut l.weight));
    if let Some(b) = l.bias.as_mut() {
        out.push((format!("{name}.bias"), b));
    }
}

fn norm<'a>(out: &mut Params<'a>, name: &str, n: &'a mut LayerNorm) {
    out.push((format!("{name}.weight"), &mut n.weight));
    out.push((format!("{name}.bias"), &mut n.bias));
}

fn decoder<'a>(out: &mut Params<'a>, prefix: &str, d: &'a mut TransformerDecoder) {
    linear(
        out,
        &format!("{prefix}.to_token_embedding"),
        &mut d.to_token_embedding,
    );
    out.push((format!("{prefix}.pos_embedding"), &mut d.pos_embedding));
    for (i, l) in d.layers.iter_mut().enumerate() {
        let p = format!("{prefix}.transformer.layers.{i}");
        norm(out, &format!("{p}.0.norm"), &mut l.self_attn.norm);
        linear(out, &format!("{p}.0.fn.to_qkv"), &mut l.self_attn.to_qkv);
        linear(out, &format!("{p}.0.fn.to_out.0"), &mut l.self_attn.to_out);
        norm(out, &format!("{p}.1.norm"), &mut l.cross_attn.norm);
        linear(out, &format!("{p}.1.fn.to_q"), &mut l.cross_attn.to_q);
        linear(out, &format!("{p}.1.fn.to_kv"), &mut l.cross_attn.to_kv);
        linear(out, &format!("{p}.1.fn.to_out.0"), &mut l.cross_attn.to_out);
        norm(out, &format!("{p}.2.norm"), &mut l.ff.norm);
        linear(out, &format!("{p}.2.fn.net.0"), &mut l.ff.net0);
        linear(out, &format!("{p}.2.fn.net.3"), &mut l.ff.net3);
    }
}

impl HandModel {
    /// Every trainable tensor, by state-dict name: backbone, MANO head, uncertainty head and W.
    pub fn params_mut(&mut self) -> Params<'_> {
        let mut out = Vec::new();
        let v = &mut self.backbone;
        out.push((
            "backbone.patch_embed.proj.weight".to_string(),
            &mut v.patch_embed.proj_weight,
        ));
        out.push((
            "backbone.patch_embed.proj.bias".to_string(),
            &mut v.patch_embed.proj_bias,
        ));
        out.push(("backbone.pos_embed".to_string(), &mut v.pos_embed));
        for (i, b) in v.blocks.iter_mut().enumerate() {
            let p = format!("backbone.blocks.{i}");
            norm(&mut out, &format!("{p}.norm1"), &mut b.norm1);
            linear(&mut out, &format!("{p}.attn.qkv"), &mut b.attn.qkv);
            linear(&mut out, &format!("{p}.attn.proj"), &mut b.attn.proj);
            norm(&mut out, &format!("{p}.norm2"), &mut b.norm2);
            linear(&mut out, &format!("{p}.mlp.fc1"), &mut b.mlp.fc1);
            linear(&mut out, &format!("{p}.mlp.fc2"), &mut b.mlp.fc2);
        }
        norm(&mut out, "backbone.last_norm", &mut v.last_norm);
        let m = &mut self.mano_head;
        decoder(&mut out, "mano_head.transformer", &mut m.transformer);
        linear(&mut out, "mano_head.decpose", &mut m.decpose);
        linear(&mut out, "mano_head.decshape", &mut m.decshape);
        linear(&mut out, "mano_head.deccam", &mut m.deccam);
        if let Some(u) = self.uncertainty_head.as_mut() {
            decoder(&mut out, "uncertainty_head.transformer", &mut u.transformer);
            match &mut u.readout {
                Readout::LogVar(l) => linear(&mut out, &u.readout_name.clone(), l),
                Readout::Full { diag, cov } => {
                    linear(&mut out, "uncertainty_head.dec3dkeypoint_diag", diag);
                    linear(&mut out, "uncertainty_head.dec3dkeypoint_cov", cov);
                }
            }
        }
        if let Some(w) = self.out_layer_keypoints_3d.as_mut() {
            out.push(("out_layer_keypoints_3d.weight".to_string(), w));
        }
        out
    }
}
