//! Helpers shared by the integration tests.
#![allow(dead_code)]

pub mod eval_set;
pub mod train_run;

use handcov::model::config::{ModelConfig, Uncertainty};
use safetensors::SafeTensors;
use std::path::{Path, PathBuf};

/// A path as the `&str` of a command line argument.
pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
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
    if name.starts_with("backbone.") || name.starts_with("mano_head.") || name.starts_with("mano.")
    {
        return true;
    }
    match u {
        Uncertainty::None => false,
        _ if name.starts_with("uncertainty_head.transformer.")
            || name.starts_with("uncertainty_head.init_") =>
        {
            true
        }
        Uncertainty::Diag => name.starts_with("uncertainty_head.dec3dkeypoint.0."),
        Uncertainty::Full => {
            name.starts_with("uncertainty_head.dec3dkeypoint_cov.")
                || name.starts_with("uncertainty_head.dec3dkeypoint_diag.")
        }
        Uncertainty::Ours => {
            name.starts_with("uncertainty_head.dec3dkeypoint.") && !name.contains(".0.")
                || name == "out_layer_keypoints_3d.weight"
        }
        Uncertainty::OursWoLinear => {
            name.starts_with("uncertainty_head.dec3dkeypoint.") && !name.contains(".0.")
        }
    }
}

/// Copies the tensors of `src` for which `keep` holds into a new safetensors file `dst`.
pub fn write_subset(src: &Path, dst: &Path, keep: impl Fn(&str) -> bool) {
    let bytes = std::fs::read(src).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let views: Vec<(String, safetensors::tensor::TensorView)> = st
        .iter()
        .filter(|(n, _)| keep(n))
        .map(|(n, v)| (n.to_string(), v))
        .collect();
    let out = safetensors::serialize(views, None).unwrap();
    std::fs::write(dst, out).unwrap();
}

/// The `tiny` fixture weights for uncertainty type `u`, written to `dir`.
pub fn tiny_weights_for(u: Uncertainty, dir: &Path) -> PathBuf {
    let dst = dir.join(format!("tiny_{}.safetensors", u.name()));
    write_subset(&fixture("tiny_weights.safetensors"), &dst, |n| {
        needed_by(u, n)
    });
    dst
}

pub fn tiny_config(u: Uncertainty) -> ModelConfig {
    let mut cfg = ModelConfig::from_file(&fixture("tiny_config.json")).unwrap();
    cfg.uncertainty = u;
    cfg
}

/// The `tiny` config file with the given uncertainty type, written into `dir`.
pub fn config_file(dir: &Path, u: Uncertainty) -> PathBuf {
    let p = dir.join(format!("tiny_{}.json", u.name()));
    std::fs::write(&p, tiny_config(u).to_json()).unwrap();
    p
}

/// One tensor of a safetensors file, owned.
pub struct RawTensor {
    pub name: String,
    pub dtype: safetensors::Dtype,
    pub shape: Vec<usize>,
    pub data: Vec<u8>,
}

pub fn read_all(path: &Path) -> Vec<RawTensor> {
    let bytes = std::fs::read(path).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut v: Vec<RawTensor> = st
        .iter()
        .map(|(n, t)| RawTensor {
            name: n.to_string(),
            dtype: t.dtype(),
            shape: t.shape().to_vec(),
            data: t.data().to_vec(),
        })
        .collect();
    v.sort_by(|a, b| a.name.cmp(&b.name));
    v
}

pub fn write_all(path: &Path, tensors: &[RawTensor]) {
    write_all_with_metadata(path, tensors, None)
}

/// [`write_all`] with the file's `__metadata__` map.
pub fn write_all_with_metadata(
    path: &Path,
    tensors: &[RawTensor],
    metadata: Option<std::collections::HashMap<String, String>>,
) {
    let views: Vec<(String, safetensors::tensor::TensorView)> = tensors
        .iter()
        .map(|t| {
            (
                t.name.clone(),
                safetensors::tensor::TensorView::new(t.dtype, t.shape.clone(), &t.data).unwrap(),
            )
        })
        .collect();
    std::fs::write(path, safetensors::serialize(views, metadata).unwrap()).unwrap();
}

pub fn f32_tensor(name: &str, shape: &[usize], values: &[f32]) -> RawTensor {
    RawTensor {
        name: name.into(),
        dtype: safetensors::Dtype::F32,
        shape: shape.to_vec(),
        data: bytemuck::cast_slice(values).to_vec(),
    }
}

/// Runs one of the crate's binaries (`env!("CARGO_BIN_EXE_<name>")`); returns (exit code,
/// stdout, stderr).
pub fn run_binary(exe: &str, args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(exe).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// [`run_binary`], but a run still going after `secs` seconds is killed and reported as exit
/// code -1 (an input that blocks, such as a FIFO, must fail the test, not hang it).
pub fn run_binary_within(exe: &str, args: &[&str], secs: u64) -> (i32, String, String) {
    let mut child = std::process::Command::new(exe)
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let start = std::time::Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed().as_secs() >= secs {
            let _ = child.kill();
            let _ = child.wait();
            return (-1, String::new(), format!("still running after {secs} s"));
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs the `infer` binary; returns (exit code, stdout, stderr).
pub fn infer(args: &[&str]) -> (i32, String, String) {
    run_binary(env!("CARGO_BIN_EXE_infer"), args)
}

/// Asserts that a failed run printed exactly one line, `error: ...` containing every `needle`,
/// and exited with code 2.
pub fn assert_clean_error(run: (i32, String, String), needles: &[&str]) {
    let (code, _, err) = run;
    assert_eq!(code, 2, "exit code (stderr: {err})");
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected one stderr line, got: {err}");
    assert!(lines[0].starts_with("error: "), "{err}");
    for n in needles {
        assert!(lines[0].contains(n), "`{n}` not in: {}", lines[0]);
    }
}

/// A JSON file, parsed.
pub fn json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// Every number of a JSON value in a fixed order (arrays in order, object keys sorted), each
/// with the key path leading to it (`/hands/mano/betas`).
pub fn json_numbers(v: &serde_json::Value) -> Vec<(String, f64)> {
    fn walk(v: &serde_json::Value, path: &str, out: &mut Vec<(String, f64)>) {
        match v {
            serde_json::Value::Number(n) => out.push((path.to_string(), n.as_f64().unwrap())),
            serde_json::Value::Array(a) => a.iter().for_each(|e| walk(e, path, out)),
            serde_json::Value::Object(o) => {
                let mut keys: Vec<_> = o.keys().collect();
                keys.sort();
                for k in keys {
                    walk(&o[k], &format!("{path}/{k}"), out);
                }
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(v, "", &mut out);
    out
}

/// The numbers of a JSON value, in [`json_numbers`]' order.
pub fn floats(v: &serde_json::Value) -> Vec<f64> {
    json_numbers(v).into_iter().map(|(_, x)| x).collect()
}
