//! Helpers shared by the integration tests.
#![allow(dead_code)]

use handcov::model::config::{ModelConfig, Uncertainty};
use safetensors::SafeTensors;
use std::path::{Path, PathBuf};

pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

/// A fresh scratch directory under the target dir, unique per test.
pub fn scratch(test: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(test);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Whether the weights of a model with uncertainty `u` include the tensor `name`.
pub fn needed_by(u: Uncertainty, name: &str) -> bool {
    if name.starts_with("backbone.") || name.starts_with("mano_head.") || name.starts_with("mano.") {
        return true;
    }
    match u {
        Uncertainty::None => false,
        _ if name.starts_with("uncertainty_head.transformer.") || name.starts_with("uncertainty_head.init_") => true,
        Uncertainty::Diag => name.starts_with("uncertainty_head.dec3dkeypoint.0."),
        Uncertainty::Full => name.starts_with("uncertainty_head.dec3dkeypoint_cov.") || name.starts_with("uncertainty_head.dec3dkeypoint_diag."),
        Uncertainty::Ours => name.starts_with("uncertainty_head.dec3dkeypoint.") && !name.contains(".0.") || name == "out_layer_keypoints_3d.weight",
        Uncertainty::OursWoLinear => name.starts_with("uncertainty_head.dec3dkeypoint.") && !name.contains(".0."),
    }
}

/// Copies the tensors of `src` for which `keep` holds into a new safetensors file `dst`.
pub fn write_subset(src: &Path, dst: &Path, keep: impl Fn(&str) -> bool) {
    let bytes = std::fs::read(src).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let views: Vec<(String, safetensors::tensor::TensorView)> = st.iter().filter(|(n, _)| keep(n)).map(|(n, v)| (n.to_string(), v)).collect();
    let out = safetensors::serialize(views, None).unwrap();
    std::fs::write(dst, out).unwrap();
}

/// The `tiny` fixture weights for uncertainty type `u`, written to `dir`.
pub fn tiny_weights_for(u: Uncertainty, dir: &Path) -> PathBuf {
    let dst = dir.join(format!("tiny_{}.safetensors", u.name()));
    write_subset(&fixture("tiny_weights.safetensors"), &dst, |n| needed_by(u, n));
    dst
}

pub fn tiny_config(u: Uncertainty) -> ModelConfig {
    let mut cfg = ModelConfig::from_file(&fixture("tiny_config.json")).unwrap();
    cfg.uncertainty = u;
    cfg
}
