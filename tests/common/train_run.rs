//! Running the `train` binary on the `tiny` fixtures, shared by tests/train_cli.rs and
//! tests/train_bad_input.rs: the runner, a scratch setup, edited batches, a small training set
//! in the directory format, and the clean-error check.

use super::{fixture, read_all, run_binary, scratch, tiny_config, tiny_weights_for, write_all};
use handcov::model::config::Uncertainty;
use std::path::{Path, PathBuf};

/// Runs the `train` binary; returns (exit code, stdout, stderr).
pub fn train(args: &[&str]) -> (i32, String, String) {
    run_binary(env!("CARGO_BIN_EXE_train"), args)
}

/// A scratch directory `name` with the `tiny` weights and config for `u`: (dir, weights, config).
pub fn setup(name: &str, u: Uncertainty) -> (PathBuf, PathBuf, PathBuf) {
    let dir = scratch(name);
    let w = tiny_weights_for(u, &dir);
    let cfg = dir.join("cfg.json");
    std::fs::write(&cfg, tiny_config(u).to_json()).unwrap();
    (dir, w, cfg)
}

/// The fixture batch with tensor `name`'s values changed by `edit`, written to `dir/file`.
pub fn edited_batch(dir: &Path, file: &str, name: &str, edit: impl Fn(&mut [f32])) -> PathBuf {
    let mut t = read_all(&fixture("train_tiny_batch.safetensors"));
    let x = t.iter_mut().find(|x| x.name == name).unwrap();
    edit(bytemuck::cast_slice_mut(&mut x.data));
    let p = dir.join(file);
    write_all(&p, &t);
    p
}

/// Asserts that a failed run exited with code 2 and printed one `error:` line containing
/// `needle` (other lines, such as warnings, may come with it).
pub fn assert_clean(run: (i32, String, String), needle: &str) {
    let (code, _, err) = run;
    assert_eq!(code, 2, "{err}");
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(lines.len(), 1, "{err}");
    assert!(lines[0].contains(needle), "`{needle}` not in {}", lines[0]);
}

/// A four-hand training set in the directory format (docs/training-data.md), one image missing.
pub fn tiny_dataset(dir: &Path) -> PathBuf {
    let root = dir.join("set");
    std::fs::create_dir_all(root.join("images")).unwrap();
    let mut lines = Vec::new();
    for i in 0..4 {
        let name = format!("images/{i}.png");
        if i != 2 {
            std::fs::copy(fixture("crop_src.png"), root.join(&name)).unwrap();
        }
        let kp2: Vec<[f32; 3]> = (0..21)
            .map(|j| [60.0 + j as f32, 50.0 + (j % 5) as f32 * 4.0, 1.0])
            .collect();
        let kp3: Vec<[f32; 4]> = (0..21)
            .map(|j| [0.01 * j as f32, -0.02, 0.6 + 0.001 * j as f32, 1.0])
            .collect();
        lines.push(
            serde_json::json!({
                "image": name, "center": [70.0 + i as f32, 60.0], "scale": 0.5, "is_right": i % 2 == 0,
                "keypoints_2d": kp2, "keypoints_3d": kp3,
                "mano": {"global_orient": [0.1, 0.0, 0.2], "hand_pose": vec![0.05f32; 45], "betas": vec![0.1f32; 10]},
            })
            .to_string(),
        );
    }
    std::fs::write(root.join("annotations.jsonl"), lines.join("\n")).unwrap();
    root
}

/// The demo on a few dozen hands for a few dozen steps (CPU, 2 threads): seconds, not minutes.
pub fn small_demo(dir: &std::path::Path) -> handcov::synth::demo::DemoOptions {
    handcov::synth::demo::DemoOptions {
        synth: handcov::synth::dataset::SynthConfig {
            n_train: 96,
            n_test: 24,
            image_px: 128,
            seed: 5,
            nuisance_rate: 0.7,
        },
        cache: Some(dir.join("cache")),
        out: dir.join("out"),
        steps: Some(40),
        batch_size: 8,
        lr: 1e-3,
        device: handcov::engine::DeviceChoice::Cpu,
        threads: 2,
        seed: 3,
        pictures: 2,
    }
}
