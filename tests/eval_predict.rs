//! `eval predict` end to end on the `tiny` fixtures: the three result files against the library
//! model run directly on the same crops, the left-hand mirror, the HO-3D joint re-indexing, the
//! per-joint uncertainty as the trace of the covariance's diagonal blocks, a deterministic model,
//! `--limit` / `--data`, and one clean error line with exit code 2 for every kind of bad input.

mod common;

use common::*;
use handcov::eval::files::HO3D_ORDER;
use handcov::infer::{
    hand_covariance, hand_keypoints_3d, hand_vertices, load_image, make_crop, stack, HandCrop,
};
use handcov::model::config::Uncertainty;
use handcov::model::weights::TensorFile;
use handcov::model::HandModel;
use handcov::ops::image::CropBox;
use std::path::{Path, PathBuf};

const NV: usize = 778;

/// Runs `eval predict ARGS`; returns (exit code, stdout, stderr). A run still going after two
/// minutes (an input that blocks, such as a FIFO) is killed and reported as exit code -1.
fn eval_predict(args: &[&str]) -> (i32, String, String) {
    let args: Vec<&str> = std::iter::once("predict")
        .chain(args.iter().copied())
        .collect();
    common::run_binary_within(env!("CARGO_BIN_EXE_eval"), &args, 120)
}

/// Every number of a JSON text of nested arrays, in order, each parsed by `str::parse::<f64>`
/// (correctly rounded; serde_json's default float parser is not, and the files hold the exact
/// shortest digits of each value).
fn numbers(text: &str) -> Vec<f64> {
    text.split(|c: char| c == '[' || c == ']' || c == ',' || c.is_whitespace())
        .filter(|t| !t.is_empty())
        .map(|t| t.parse::<f64>().unwrap_or_else(|e| panic!("{t:?}: {e}")))
        .collect()
}

/// The shape of a nested JSON array (the first element at every level; every element checked).
fn json_shape(v: &serde_json::Value) -> Vec<usize> {
    match v {
        serde_json::Value::Array(a) => {
            let inner: Vec<Vec<usize>> = a.iter().map(json_shape).collect();
            assert!(inner.windows(2).all(|w| w[0] == w[1]), "ragged array");
            let mut shape = vec![a.len()];
            shape.extend(inner.first().cloned().unwrap_or_default());
            shape
        }
        _ => vec![],
    }
}

/// The sample boxes of the test set (image file, centre, scale, is_right).
struct Sample {
    image: &'static str,
    center: [f64; 2],
    scale: serde_json::Value,
    is_right: bool,
}

/// A small evaluation set in `dir/data`: the fixture image, its mirror (as a left hand, the
/// mirrored box), a synthetic JPEG, and a left-hand box on the unmirrored image. Returns the
/// data root, the samples file and the samples.
fn build_set(dir: &Path) -> (PathBuf, PathBuf, Vec<Sample>) {
    let root = dir.join("data");
    std::fs::create_dir_all(root.join("rgb")).unwrap();
    let src = image::open(fixture("crop_src.png")).unwrap().to_rgb8();
    let width = src.width() as f64;
    src.save(root.join("rgb/right.png")).unwrap();
    image::imageops::flip_horizontal(&src)
        .save(root.join("rgb/mirrored.png"))
        .unwrap();
    let jpg = image::RgbImage::from_fn(90, 70, |x, y| {
        image::Rgb([(x * 3) as u8, (y * 3) as u8, ((x + y) * 2) as u8])
    });
    jpg.save(root.join("rgb/synthetic.jpg")).unwrap();
    let (cx, cy) = (70.5, 60.0);
    let samples = vec![
        Sample {
            image: "rgb/right.png",
            center: [cx, cy],
            scale: serde_json::json!(0.4),
            is_right: true,
        },
        Sample {
            image: "rgb/mirrored.png",
            center: [width - 1.0 - cx, cy],
            scale: serde_json::json!(0.4),
            is_right: false,
        },
        Sample {
            image: "rgb/synthetic.jpg",
            center: [40.0, 30.0],
            scale: serde_json::json!([0.3, 0.5]),
            is_right: true,
        },
        Sample {
            image: "rgb/right.png",
            center: [50.0, 70.0],
            scale: serde_json::json!(0.25),
            is_right: false,
        },
        Sample {
            image: "rgb/synthetic.jpg",
            center: [20.0, 50.0],
            scale: serde_json::json!(0.2),
            is_right: true,
        },
    ];
    let set = dir.join("set.json");
    write_set(&set, Some("freihand"), &samples);
    (root, set, samples)
}

fn write_set(path: &Path, dataset: Option<&str>, samples: &[Sample]) {
    let list: Vec<serde_json::Value> = samples
        .iter()
        .map(|x| {
            serde_json::json!({"image": x.image, "center": x.center, "scale": x.scale, "is_right": x.is_right})
        })
        .collect();
    let mut doc = serde_json::json!({ "samples": list });
    if let Some(d) = dataset {
        doc["dataset"] = serde_json::json!(d);
    }
    std::fs::write(path, doc.to_string()).unwrap();
}

/// What `eval predict` should write, computed with the library model on the same crops and the
/// same batches, joints in OpenPose order: (xyz, verts, per-joint uncertainty, covariance).
fn direct(
    u: Uncertainty,
    weights: &Path,
    root: &Path,
    samples: &[Sample],
    batch: usize,
) -> (Vec<f32>, Vec<f32>, Vec<f32>, Vec<f32>) {
    let file = TensorFile::open(weights).unwrap();
    let model = HandModel::load(tiny_config(u), &file, None).unwrap();
    let size = model.config.image_size;
    let crops: Vec<HandCrop> = samples
        .iter()
        .enumerate()
        .map(|(i, x)| {
            let img = load_image(&root.join(x.image)).unwrap();
            let side: Vec<f64> = match &x.scale {
                serde_json::Value::Array(a) => a.iter().map(|v| v.as_f64().unwrap()).collect(),
                v => vec![v.as_f64().unwrap(); 2],
            };
            let cbox = CropBox {
                center: x.center,
                // The evaluation rule: the box expanded to 3:4 (w:h), then its longer side.
                box_size: (side[1] * 200.0).max(side[0] * 200.0 * 4.0 / 3.0),
                is_right: x.is_right,
            };
            make_crop(i, &img, cbox, size)
        })
        .collect();
    let (mut xyz, mut verts, mut unc, mut cov) = (vec![], vec![], vec![], vec![]);
    for chunk in crops.chunks(batch) {
        let refs: Vec<&HandCrop> = chunk.iter().collect();
        let pred = model.forward(&stack(&refs, size).unwrap()).unwrap();
        for (i, c) in chunk.iter().enumerate() {
            let right = c.cbox.is_right;
            xyz.extend(hand_keypoints_3d(&pred, i, right));
            verts.extend(hand_vertices(&pred, i, right));
            if let Some(uo) = &pred.uncertainty {
                unc.extend_from_slice(&uo.joint_uncertainty.data()[i * 21..(i + 1) * 21]);
                cov.extend(hand_covariance(&pred, i, right).unwrap());
            }
        }
    }
    (xyz, verts, unc, cov)
}

/// Reads the three result files of a run: (xyz, verts, uncertainty, covariance, metadata type),
/// checking the nesting of each JSON file.
fn read_outputs(dir: &Path, dataset: &str) -> (Vec<f64>, Vec<f64>, Vec<f64>, Vec<f32>, String) {
    let text = std::fs::read_to_string(dir.join(format!("{dataset}-val.json"))).unwrap();
    let pred: serde_json::Value = serde_json::from_str(&text).unwrap();
    let parts = pred.as_array().unwrap();
    assert_eq!(parts.len(), 2, "[xyz_list, verts_list]");
    let n = parts[0].as_array().unwrap().len();
    assert_eq!(json_shape(&parts[0]), vec![n, 21, 3]);
    assert_eq!(json_shape(&parts[1]), vec![n, NV, 3]);
    let mut all = numbers(&text);
    let verts = all.split_off(n * 63);
    let utext =
        std::fs::read_to_string(dir.join(format!("{dataset}-val_uncertainty.json"))).unwrap();
    let unc: serde_json::Value = serde_json::from_str(&utext).unwrap();
    assert_eq!(json_shape(&unc), vec![1, n, 21], "[uncertainty_list]");
    let cov_file =
        TensorFile::open(&dir.join(format!("{dataset}-val_covariance.safetensors"))).unwrap();
    let names: Vec<&str> = cov_file.names().collect();
    assert_eq!(names, vec!["covariance"]);
    let cov = cov_file.f32("covariance", Some(&[n, 63, 63])).unwrap();
    let meta = cov_file
        .metadata()
        .and_then(|m| m.get("uncertainty").cloned())
        .unwrap_or_default();
    (all, verts, numbers(&utext), cov.data().to_vec(), meta)
}

/// The f32 values as Python's json of `tensor.tolist()` holds them (f64 of each f32).
fn widen(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

fn run_set(
    cfg: &Path,
    weights: &Path,
    set: &Path,
    dataset: &str,
    out: &Path,
    exp: &str,
    extra: &[&str],
) -> (i32, String, String) {
    let mut args = vec![
        "--dataset",
        dataset,
        "--samples",
        s(set),
        "--weights",
        s(weights),
        "--config",
        s(cfg),
        "--exp",
        exp,
        "--out",
        s(out),
        "--device",
        "cpu",
    ];
    args.extend_from_slice(extra);
    eval_predict(&args)
}

fn check_against_library(u: Uncertainty) {
    let dir = scratch(&format!("eval_predict_{}", u.name()));
    let w = tiny_weights_for(u, &dir);
    let cfg = config_file(&dir, u);
    let (root, set, samples) = build_set(&dir);
    let out = dir.join("results");
    // Batches of 3 and 2 (the samples file's directory is not the data root: --data).
    let run = run_set(
        &cfg,
        &w,
        &set,
        "freihand",
        &out,
        "exp1",
        &["--data", s(&root), "--batch", "3"],
    );
    assert_eq!(run.0, 0, "{}", run.2);
    assert!(run.2.contains("5 / 5 images"), "{}", run.2);
    let (xyz, verts, unc, cov, meta) = read_outputs(&out.join("exp1"), "freihand");
    assert_eq!(meta, u.name());
    let n = samples.len();
    assert_eq!(xyz.len(), n * 63);

    // The same crops through the library model, in the same batches: identical numbers (the
    // JSON holds each f32 as the f64 it converts to exactly).
    let (dx, dv, du, dc) = direct(u, &w, &root, &samples, 3);
    assert_eq!(xyz, widen(&dx), "xyz");
    assert_eq!(verts, widen(&dv), "verts");
    assert_eq!(unc, widen(&du), "uncertainty");
    assert_eq!(cov, dc, "covariance");

    // Sample 1 is the mirror image of sample 0 with the mirrored box, as a left hand: the crop
    // the network sees is identical, so the output must be the exact mirror (x negated, Σ ↦ DΣD).
    for k in 0..63 {
        let want = if k % 3 == 0 { -xyz[k] } else { xyz[k] };
        assert_eq!(xyz[63 + k], want, "left-hand joint coordinate {k}");
    }
    for k in 0..NV * 3 {
        let want = if k % 3 == 0 { -verts[k] } else { verts[k] };
        assert_eq!(verts[NV * 3 + k], want, "left-hand vertex coordinate {k}");
    }
    assert_eq!(unc[..21], unc[21..42]);
    for r in 0..63 {
        for c in 0..63 {
            let a = cov[r * 63 + c];
            let want = if (r % 3 == 0) != (c % 3 == 0) { -a } else { a };
            assert_eq!(cov[3969 + r * 63 + c], want, "left-hand Σ[{r},{c}]");
        }
    }

    // The per-joint uncertainty is the trace of each joint's 3×3 diagonal block. The model
    // computes it by its own formula (SPEC §6) in fp32, so compare with a relative tolerance.
    for i in 0..n {
        for j in 0..21 {
            let m = &cov[i * 3969..(i + 1) * 3969];
            let tr: f64 = (0..3).map(|c| m[(3 * j + c) * 63 + 3 * j + c] as f64).sum();
            let got = unc[i * 21 + j];
            assert!(
                (got - tr).abs() <= 1e-5 * tr.abs().max(1e-12),
                "sample {i} joint {j}: uncertainty {got} vs trace {tr}"
            );
        }
    }
    // Every covariance is symmetric with a positive diagonal.
    for i in 0..n {
        let m = &cov[i * 3969..(i + 1) * 3969];
        for r in 0..63 {
            assert!(m[r * 63 + r] > 0.0);
            for c in 0..r {
                let (a, b) = (m[r * 63 + c], m[c * 63 + r]);
                assert!((a - b).abs() <= 1e-5 * (m[r * 63 + r] * m[c * 63 + c]).sqrt());
            }
        }
    }

    // HO-3D: the same samples, joints (and Σ's rows and columns) in HO-3D order, vertices as is.
    let ho = dir.join("ho3d.json");
    write_set(&ho, Some("ho3d"), &samples);
    let run = run_set(
        &cfg,
        &w,
        &ho,
        "ho3d",
        &out,
        "exp1",
        &["--data", s(&root), "--batch", "3"],
    );
    assert_eq!(run.0, 0, "{}", run.2);
    let (hx, hv, hu, hc, _) = read_outputs(&out.join("exp1"), "ho3d");
    assert_eq!(hv, verts);
    for i in 0..n {
        for (k, &j) in HO3D_ORDER.iter().enumerate() {
            assert_eq!(hu[i * 21 + k], unc[i * 21 + j]);
            for c in 0..3 {
                assert_eq!(hx[i * 63 + 3 * k + c], xyz[i * 63 + 3 * j + c]);
            }
            for (l, &m) in HO3D_ORDER.iter().enumerate() {
                for c in 0..3 {
                    for d in 0..3 {
                        assert_eq!(
                            hc[i * 3969 + (3 * k + c) * 63 + 3 * l + d],
                            cov[i * 3969 + (3 * j + c) * 63 + 3 * m + d]
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn ours_matches_the_library_model() {
    check_against_library(Uncertainty::Ours);
}

#[test]
fn full_matches_the_library_model() {
    check_against_library(Uncertainty::Full);
}

#[test]
fn deterministic_model_writes_only_predictions_and_limit_works() {
    let dir = scratch("eval_predict_none");
    let u = Uncertainty::None;
    let w = tiny_weights_for(u, &dir);
    let cfg = config_file(&dir, u);
    let (root, _, samples) = build_set(&dir);
    // The samples file inside the data root (images relative to its directory), no `dataset`.
    let set = root.join("set.json");
    write_set(&set, None, &samples);
    let out = dir.join("results");
    let run = run_set(&cfg, &w, &set, "freihand", &out, "plain", &["--limit", "2"]);
    assert_eq!(run.0, 0, "{}", run.2);
    assert!(run.2.contains("no uncertainty head"), "{}", run.2);
    let exp = out.join("plain");
    assert!(!exp.join("freihand-val_uncertainty.json").exists());
    assert!(!exp.join("freihand-val_covariance.safetensors").exists());
    let text = std::fs::read_to_string(exp.join("freihand-val.json")).unwrap();
    let pred: serde_json::Value = serde_json::from_str(&text).unwrap();
    let parts = pred.as_array().unwrap();
    assert_eq!(json_shape(&parts[0]), vec![2, 21, 3]);
    assert_eq!(json_shape(&parts[1]), vec![2, NV, 3]);
    let (mut dx, dv, _, _) = direct(u, &w, &root, &samples[..2], 16);
    dx.extend(dv);
    assert_eq!(numbers(&text), widen(&dx));
}

// ---- bad input: one clean line, exit code 2 -------------------------------------------------

struct Bad {
    dir: PathBuf,
    cfg: PathBuf,
    weights: PathBuf,
    root: PathBuf,
    samples: Vec<Sample>,
}

impl Bad {
    fn new(name: &str) -> Bad {
        let dir = scratch(name);
        let weights = tiny_weights_for(Uncertainty::Diag, &dir);
        let cfg = config_file(&dir, Uncertainty::Diag);
        let (root, _, samples) = build_set(&dir);
        Bad {
            dir,
            cfg,
            weights,
            root,
            samples,
        }
    }

    /// Runs on a samples file with the given text.
    fn run_text(&self, text: &str, extra: &[&str]) -> (i32, String, String) {
        let set = self.dir.join("bad_set.json");
        std::fs::write(&set, text).unwrap();
        let out = self.dir.join("out");
        let mut args = vec!["--data", s(&self.root)];
        args.extend_from_slice(extra);
        run_set(&self.cfg, &self.weights, &set, "freihand", &out, "e", &args)
    }

    fn run_samples(&self, samples: &[Sample]) -> (i32, String, String) {
        let set = self.dir.join("bad_set.json");
        write_set(&set, Some("freihand"), samples);
        let out = self.dir.join("out");
        run_set(
            &self.cfg,
            &self.weights,
            &set,
            "freihand",
            &out,
            "e",
            &["--data", s(&self.root)],
        )
    }
}

#[test]
fn missing_and_unreadable_images() {
    let b = Bad::new("eval_predict_err_images");
    let mut v = b.samples.iter().map(clone_sample).collect::<Vec<_>>();
    v[1].image = "rgb/missing.png";
    assert_clean_error(b.run_samples(&v), &["sample 1", "missing.png"]);
    std::fs::write(b.root.join("rgb/text.png"), "not an image").unwrap();
    v[1].image = "rgb/text.png";
    assert_clean_error(
        b.run_samples(&v),
        &["sample 1", "text.png", "not a readable image"],
    );
    // A valid header with truncated data fails when its batch is decoded, after the start line:
    // the run stops with the error naming the sample, and writes nothing.
    let bytes = std::fs::read(b.root.join("rgb/right.png")).unwrap();
    std::fs::write(b.root.join("rgb/cut.png"), &bytes[..bytes.len() / 2]).unwrap();
    v[1].image = "rgb/right.png";
    v[4].image = "rgb/cut.png";
    let (code, _, err) = b.run_samples(&v);
    assert_eq!(code, 2, "{err}");
    let last = err.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("error: ") && last.contains("sample 4") && last.contains("cut.png"),
        "{err}"
    );
    assert!(!b.dir.join("out/e/freihand-val.json").exists());
}

fn clone_sample(x: &Sample) -> Sample {
    Sample {
        image: x.image,
        center: x.center,
        scale: x.scale.clone(),
        is_right: x.is_right,
    }
}

#[test]
fn malformed_evaluation_sets() {
    let b = Bad::new("eval_predict_err_sets");
    assert_clean_error(
        b.run_text("{\"samples\": [", &[]),
        &["bad_set.json", "malformed"],
    );
    assert_clean_error(b.run_text("{\"samples\": []}", &[]), &["no samples"]);
    assert_clean_error(
        b.run_text(
            r#"{"samples": [{"image": "rgb/right.png", "center": [1, 2]}]}"#,
            &[],
        ),
        &["sample 0", "scale"],
    );
    assert_clean_error(
        b.run_text(
            r#"{"samples": [{"image": "rgb/right.png", "center": [1, 2], "scale": 0}]}"#,
            &[],
        ),
        &["sample 0", "right.png", "positive"],
    );
    assert_clean_error(
        b.run_text(
            r#"{"samples": [{"image": "rgb/right.png", "center": [1, 2], "scale": [0.1, "x"]}]}"#,
            &[],
        ),
        &["sample 0"],
    );
    assert_clean_error(
        b.run_text(
            r#"{"dataset": "ho3d", "samples": [{"image": "rgb/right.png", "center": [1, 2], "scale": 1}]}"#,
            &[],
        ),
        &["\"ho3d\"", "--dataset is freihand"],
    );
    assert_clean_error(
        b.run_text(
            r#"{"samples": [{"image": "rgb/right.png", "center": [1, 2], "scale": 1, "flip": true}]}"#,
            &[],
        ),
        &["sample 0", "unknown field"],
    );
    let nope = b.dir.join("nope.json");
    let out = b.dir.join("out");
    assert_clean_error(
        run_set(&b.cfg, &b.weights, &nope, "freihand", &out, "e", &[]),
        &["nope.json"],
    );
}

#[test]
fn bad_flags() {
    let b = Bad::new("eval_predict_err_flags");
    let set = b.dir.join("set.json");
    let out = b.dir.join("out");
    let run = |dataset: &str, exp: &str, extra: &[&str]| {
        run_set(&b.cfg, &b.weights, &set, dataset, &out, exp, extra)
    };
    assert_clean_error(run("coco", "e", &[]), &["unknown dataset", "coco"]);
    assert_clean_error(run("freihand", "a/b", &[]), &["--exp", "a/b"]);
    assert_clean_error(run("freihand", "e", &["--limit", "0"]), &["--limit"]);
    assert_clean_error(run("freihand", "e", &["--batch", "0"]), &["--batch"]);
    assert_clean_error(run("freihand", "e", &["--batch", "x"]), &["--batch"]);
    assert_clean_error(
        eval_predict(&[
            "--dataset",
            "freihand",
            "--samples",
            s(&set),
            "--weights",
            s(&b.weights),
            "--exp",
            "e",
            "--device",
            "tpu",
        ]),
        &["--device", "tpu"],
    );
    assert_clean_error(
        run("freihand", "e", &["--uncertainty", "gauss"]),
        &["gauss"],
    );
    assert_clean_error(run("freihand", "e", &["--frobnicate"]), &["--frobnicate"]);
    // Weights of another head than the config's: the loader's message.
    let w = tiny_weights_for(Uncertainty::Ours, &b.dir);
    assert_clean_error(
        run_set(
            &b.cfg,
            &w,
            &set,
            "freihand",
            &out,
            "e",
            &["--data", s(&b.root)],
        ),
        &["tiny_ours.safetensors", "missing tensor"],
    );
    assert_clean_error(
        eval_predict(&["--dataset", "freihand", "--samples", s(&set), "--exp", "e"]),
        &["missing --weights"],
    );
    let (code, help, _) = eval_predict(&["--help"]);
    assert_eq!(code, 0);
    assert!(help.contains("--samples") && help.contains("-val_covariance.safetensors"));
    let _ = &b.samples;
}

#[test]
fn outputs_are_checked_before_any_work() {
    let b = Bad::new("eval_predict_err_outputs");
    let set = b.dir.join("set.json");
    let data = ["--data", s(&b.root)];
    // --out is a regular file: said at once, not after predicting the whole set.
    let file = b.dir.join("a_file");
    std::fs::write(&file, "x").unwrap();
    assert_clean_error(
        run_set(&b.cfg, &b.weights, &set, "freihand", &file, "e", &data),
        &["--out", "a_file", "cannot create the output directory"],
    );
    // An output file that is a directory.
    let out = b.dir.join("out");
    std::fs::create_dir_all(out.join("e/freihand-val_uncertainty.json")).unwrap();
    assert_clean_error(
        run_set(&b.cfg, &b.weights, &set, "freihand", &out, "e", &data),
        &["freihand-val_uncertainty.json", "is a directory"],
    );
    // Outputs that are inputs: the evaluation set, the weights.
    let out = b.dir.join("clobber");
    std::fs::create_dir_all(out.join("e")).unwrap();
    let set2 = out.join("e/freihand-val.json");
    std::fs::copy(&set, &set2).unwrap();
    let weights2 = out.join("e/freihand-val_covariance.safetensors");
    std::fs::copy(&b.weights, &weights2).unwrap();
    assert_clean_error(
        run_set(&b.cfg, &b.weights, &set2, "freihand", &out, "e", &data),
        &["is the same file as --samples"],
    );
    assert_clean_error(
        run_set(&b.cfg, &weights2, &set, "freihand", &out, "e", &data),
        &["is the same file as --weights"],
    );
    assert_eq!(std::fs::read(&set2).unwrap(), std::fs::read(&set).unwrap());
    assert_eq!(
        std::fs::read(&weights2).unwrap(),
        std::fs::read(&b.weights).unwrap()
    );
}

#[test]
fn count_flags_are_bounded() {
    let b = Bad::new("eval_predict_err_counts");
    let set = b.dir.join("set.json");
    let out = b.dir.join("out");
    let run = |extra: &[&str]| {
        let mut args = vec!["--data", s(&b.root)];
        args.extend_from_slice(extra);
        run_set(&b.cfg, &b.weights, &set, "freihand", &out, "e", &args)
    };
    // --threads 0 was one thread, --threads 100000 stalled for minutes.
    assert_clean_error(
        run(&["--threads", "0"]),
        &["--threads 0: expected 1 to 1024"],
    );
    assert_clean_error(run(&["--threads", "100000"]), &["--threads 100000"]);
    assert_clean_error(
        run(&["--batch", "100000"]),
        &["--batch 100000: expected 1 to 1024"],
    );
    assert_clean_error(
        run(&["--limit", "6"]),
        &["--limit 6: expected 1 to 5, the number of samples in"],
    );
    assert_clean_error(
        run(&["--batch", "2", "--batch", "3"]),
        &["--batch is given more than once"],
    );
    assert!(!out.exists(), "nothing is written");
}

#[test]
fn inputs_that_are_not_regular_files() {
    let b = Bad::new("eval_predict_err_fifo");
    let set = b.dir.join("set.json");
    let out = b.dir.join("out");
    let fifo = b.root.join("rgb/fifo.png");
    assert!(std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    let data = ["--data", s(&b.root)];
    // Each of these blocked forever on the FIFO.
    assert_clean_error(
        run_set(&b.cfg, &b.weights, &fifo, "freihand", &out, "e", &data),
        &["fifo.png", "not a regular file"],
    );
    assert_clean_error(
        run_set(&b.cfg, &fifo, &set, "freihand", &out, "e", &data),
        &["fifo.png", "not a regular file"],
    );
    assert_clean_error(
        run_set(&fifo, &b.weights, &set, "freihand", &out, "e", &data),
        &["fifo.png", "not a regular file"],
    );
    let mut v = b.samples.iter().map(clone_sample).collect::<Vec<_>>();
    v[2].image = "rgb/fifo.png";
    assert_clean_error(
        b.run_samples(&v),
        &["sample 2", "fifo.png", "not a regular file"],
    );
}
