//! Model configuration: the JSON format other tools write, the `hamer` and `tiny` presets, and
//! the consistency checks every config passes before a model is built from it.

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Which uncertainty head (SPEC §6) the model carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Uncertainty {
    /// Plain HaMeR, no uncertainty head.
    None,
    Diag,
    Full,
    Ours,
    OursWoLinear,
}

impl Uncertainty {
    pub const ALL: [Uncertainty; 5] = [
        Uncertainty::None,
        Uncertainty::Diag,
        Uncertainty::Full,
        Uncertainty::Ours,
        Uncertainty::OursWoLinear,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Uncertainty::None => "none",
            Uncertainty::Diag => "diag",
            Uncertainty::Full => "full",
            Uncertainty::Ours => "ours",
            Uncertainty::OursWoLinear => "ours_wo_linear",
        }
    }

    pub fn parse(s: &str) -> Result<Uncertainty> {
        Uncertainty::ALL.into_iter().find(|u| u.name() == s).ok_or_else(|| {
            Error::Config(format!(
                "unknown uncertainty type \"{s}\" (expected one of none, diag, full, ours, ours_wo_linear)"
            ))
        })
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VitConfig {
    /// Input (height, width) of the backbone: the central columns of the square crop.
    pub img_size: [usize; 2],
    pub patch_size: usize,
    pub patch_padding: usize,
    pub embed_dim: usize,
    pub depth: usize,
    pub num_heads: usize,
    pub mlp_ratio: f64,
    pub qkv_bias: bool,
    pub ln_eps: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecoderConfig {
    pub dim: usize,
    pub depth: usize,
    pub heads: usize,
    pub dim_head: usize,
    pub mlp_dim: usize,
    pub context_dim: usize,
    pub ln_eps: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    pub vit: VitConfig,
    pub decoder: DecoderConfig,
    pub uncertainty: Uncertainty,
    /// Side of the square crop fed to the model (SPEC §1.1).
    pub image_size: usize,
    pub focal_length: f64,
}

/// The largest size (a dimension, a depth, a head count, an image side) a model config may
/// give.
pub const MAX_CONFIG_SIZE: usize = 1 << 16;

impl ModelConfig {
    /// HaMeR's exact sizes: ViT-H/16 at 256×192 and the 6-layer decoder heads (SPEC §2.1, §3.1).
    pub fn hamer() -> ModelConfig {
        ModelConfig {
            vit: VitConfig {
                img_size: [256, 192],
                patch_size: 16,
                patch_padding: 2,
                embed_dim: 1280,
                depth: 32,
                num_heads: 16,
                mlp_ratio: 4.0,
                qkv_bias: true,
                ln_eps: 1e-6,
            },
            decoder: DecoderConfig {
                dim: 1024,
                depth: 6,
                heads: 8,
                dim_head: 64,
                mlp_dim: 1024,
                context_dim: 1280,
                ln_eps: 1e-5,
            },
            uncertainty: Uncertainty::None,
            image_size: 256,
            focal_length: 5000.0,
        }
    }

    /// A small model of the same architecture: 128×128 crops (8×6 = 48 tokens), a 4-block
    /// ViT of width 128 and 2-layer decoders of width 128. Used by the tests, the PyTorch
    /// reference fixtures and the synthetic demo.
    pub fn tiny() -> ModelConfig {
        ModelConfig {
            vit: VitConfig {
                img_size: [128, 96],
                patch_size: 16,
                patch_padding: 2,
                embed_dim: 128,
                depth: 4,
                num_heads: 4,
                mlp_ratio: 4.0,
                qkv_bias: true,
                ln_eps: 1e-6,
            },
            decoder: DecoderConfig {
                dim: 128,
                depth: 2,
                heads: 4,
                dim_head: 32,
                mlp_dim: 256,
                context_dim: 128,
                ln_eps: 1e-5,
            },
            uncertainty: Uncertainty::None,
            image_size: 128,
            focal_length: 5000.0,
        }
    }

    pub fn preset(name: &str) -> Option<ModelConfig> {
        match name {
            "hamer" => Some(ModelConfig::hamer()),
            "tiny" => Some(ModelConfig::tiny()),
            _ => None,
        }
    }

    pub fn from_json(text: &str, origin: &str) -> Result<ModelConfig> {
        let cfg: ModelConfig =
            serde_json::from_str(text).map_err(|e| Error::Config(format!("{origin}: {e}")))?;
        cfg.validate().map_err(|e| match e {
            Error::Config(m) => Error::Config(format!("{origin}: {m}")),
            other => other,
        })?;
        Ok(cfg)
    }

    pub fn from_file(path: &Path) -> Result<ModelConfig> {
        let text = crate::textfile::read_text(path, "model config", 1 << 20)?;
        ModelConfig::from_json(&text, &path.display().to_string())
    }

    /// A preset name (`hamer`, `tiny`) or the path of a JSON file.
    pub fn load(spec: &str) -> Result<ModelConfig> {
        match ModelConfig::preset(spec) {
            Some(cfg) => Ok(cfg),
            None if !Path::new(spec).exists() => Err(Error::Config(format!(
                "{spec:?} is neither a preset (hamer, tiny) nor an existing config file"
            ))),
            None => ModelConfig::from_file(Path::new(spec)),
        }
    }

    pub fn to_json(&self) -> String {
        // Serialising plain structs of numbers and strings cannot fail.
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// ViT token grid (rows, cols) after the padded patch convolution (SPEC §2.2.1).
    pub fn grid(&self) -> (usize, usize) {
        let v = &self.vit;
        let n = |x: usize| (x + 2 * v.patch_padding - v.patch_size) / v.patch_size + 1;
        (n(v.img_size[0]), n(v.img_size[1]))
    }

    pub fn num_tokens(&self) -> usize {
        let (h, w) = self.grid();
        h * w
    }

    pub fn vit_head_dim(&self) -> usize {
        self.vit.embed_dim / self.vit.num_heads
    }

    pub fn vit_mlp_hidden(&self) -> usize {
        (self.vit.embed_dim as f64 * self.vit.mlp_ratio).round() as usize
    }

    /// First crop column the backbone sees: it takes the central `img_size[1]` columns.
    pub fn crop_col0(&self) -> usize {
        (self.image_size - self.vit.img_size[1]) / 2
    }

    /// Checks every size the model code relies on: each positive and at most
    /// [`MAX_CONFIG_SIZE`].
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Config(m));
        let v = &self.vit;
        let d = &self.decoder;
        for (name, x) in [
            ("vit.patch_size", v.patch_size),
            ("vit.embed_dim", v.embed_dim),
            ("vit.depth", v.depth),
            ("vit.num_heads", v.num_heads),
            ("decoder.dim", d.dim),
            ("decoder.depth", d.depth),
            ("decoder.heads", d.heads),
            ("decoder.dim_head", d.dim_head),
            ("decoder.mlp_dim", d.mlp_dim),
            ("decoder.context_dim", d.context_dim),
            ("image_size", self.image_size),
        ] {
            if x == 0 {
                return bad(format!("{name} must be positive"));
            }
            // Far beyond any real model, and small enough that no size computed from these
            // (grid, token count, parameter shapes) can overflow.
            if x > MAX_CONFIG_SIZE {
                return bad(format!("{name} = {x} is larger than {MAX_CONFIG_SIZE}"));
            }
        }
        if v.patch_padding > v.patch_size {
            return bad(format!(
                "vit.patch_padding = {} must be at most vit.patch_size = {}",
                v.patch_padding, v.patch_size
            ));
        }
        for x in v.img_size {
            if x > MAX_CONFIG_SIZE {
                return bad(format!(
                    "vit.img_size {:?} exceeds {MAX_CONFIG_SIZE}",
                    v.img_size
                ));
            }
        }
        if !(v.mlp_ratio > 0.0 && v.mlp_ratio <= 64.0) {
            return bad(format!(
                "vit.mlp_ratio = {} must be in (0, 64]",
                v.mlp_ratio
            ));
        }
        if v.embed_dim % v.num_heads != 0 {
            return bad(format!(
                "vit.embed_dim {} is not divisible by vit.num_heads {}",
                v.embed_dim, v.num_heads
            ));
        }
        let hidden = v.embed_dim as f64 * v.mlp_ratio;
        if !(hidden >= 1.0 && hidden.fract() == 0.0) {
            return bad(format!(
                "vit.embed_dim × vit.mlp_ratio = {hidden} is not a positive integer"
            ));
        }
        if v.img_size[0] != self.image_size {
            return bad(format!(
                "vit.img_size[0] = {} must equal image_size = {} (the backbone sees full crop rows)",
                v.img_size[0], self.image_size
            ));
        }
        if v.img_size[1] > self.image_size || (self.image_size - v.img_size[1]) % 2 != 0 {
            return bad(format!(
                "vit.img_size[1] = {} must be at most image_size = {} and differ from it by an even number",
                v.img_size[1], self.image_size
            ));
        }
        for x in v.img_size {
            if x + 2 * v.patch_padding < v.patch_size {
                return bad(format!(
                    "vit.img_size {:?} is smaller than one patch ({} with padding {})",
                    v.img_size, v.patch_size, v.patch_padding
                ));
            }
        }
        if d.context_dim != v.embed_dim {
            return bad(format!(
                "decoder.context_dim = {} must equal vit.embed_dim = {}",
                d.context_dim, v.embed_dim
            ));
        }
        for (name, eps) in [("vit.ln_eps", v.ln_eps), ("decoder.ln_eps", d.ln_eps)] {
            if !(eps > 0.0 && eps.is_finite()) {
                return bad(format!("{name} must be a positive number, got {eps}"));
            }
        }
        if !(self.focal_length > 0.0 && self.focal_length.is_finite()) {
            return bad(format!(
                "focal_length must be a positive number, got {}",
                self.focal_length
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_validate_and_roundtrip() {
        for cfg in [ModelConfig::hamer(), ModelConfig::tiny()] {
            cfg.validate().unwrap();
            let back = ModelConfig::from_json(&cfg.to_json(), "roundtrip").unwrap();
            assert_eq!(back, cfg);
        }
        assert_eq!(ModelConfig::hamer().grid(), (16, 12));
        assert_eq!(ModelConfig::hamer().crop_col0(), 32);
        assert_eq!(ModelConfig::tiny().grid(), (8, 6));
    }

    #[test]
    fn unknown_field_is_an_error() {
        let mut v: serde_json::Value =
            serde_json::from_str(&ModelConfig::tiny().to_json()).unwrap();
        v["vit"]["depht"] = serde_json::json!(3);
        let err = ModelConfig::from_json(&v.to_string(), "x.json")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("unknown field") && err.contains("depht"),
            "{err}"
        );
    }

    #[test]
    fn inconsistent_sizes_are_errors() {
        let mut cfg = ModelConfig::tiny();
        cfg.vit.num_heads = 3;
        assert!(cfg
            .validate()
            .unwrap_err()
            .to_string()
            .contains("divisible"));
        let mut cfg = ModelConfig::tiny();
        cfg.decoder.context_dim = 64;
        assert!(cfg.validate().is_err());
    }

    #[test]
    fn sizes_that_would_overflow_are_errors() {
        // Each of these wrapped around in the grid or head arithmetic and gave wrong output.
        let edits: [fn(&mut ModelConfig); 6] = [
            |c| c.vit.patch_padding = 1 << 63,
            |c| c.vit.patch_padding = 17,
            |c| c.decoder.heads = 1 << 62,
            |c| c.vit.img_size = [128, usize::MAX],
            |c| c.vit.mlp_ratio = 1e300,
            |c| c.vit.depth = 1 << 40,
        ];
        for edit in edits {
            let mut cfg = ModelConfig::tiny();
            edit(&mut cfg);
            let e = cfg.validate().unwrap_err().to_string();
            assert!(e.starts_with("config: "), "{e}");
        }
        let mut cfg = ModelConfig::tiny();
        cfg.vit.patch_padding = 16;
        cfg.validate().unwrap();
    }
}
