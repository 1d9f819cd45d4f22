//! The `infer` binary on bad input: one clean error line with exit code 2 for every kind of bad
//! weights, config, input tensor, image, boxes file and flag, and outputs that would overwrite
//! an input. Correct runs are in tests/cli.rs.

mod common;

use common::*;
use handcov::model::config::Uncertainty;
use std::path::{Path, PathBuf};

struct Setup {
    dir: PathBuf,
    cfg: PathBuf,
    weights: PathBuf,
    input: PathBuf,
}

fn setup(name: &str) -> Setup {
    let dir = scratch(name);
    let weights = tiny_weights_for(Uncertainty::None, &dir);
    let cfg = config_file(&dir, Uncertainty::None);
    Setup {
        input: fixture("tiny_input.safetensors"),
        dir,
        cfg,
        weights,
    }
}

impl Setup {
    fn run_with_weights(&self, w: &Path) -> (i32, String, String) {
        let dump = self.dir.join("dump.safetensors");
        infer(&[
            "--config",
            s(&self.cfg),
            "--weights",
            s(w),
            "--input-tensor",
            s(&self.input),
            "--dump",
            s(&dump),
        ])
    }

    fn run_with_input(&self, x: &Path) -> (i32, String, String) {
        let dump = self.dir.join("dump.safetensors");
        infer(&[
            "--config",
            s(&self.cfg),
            "--weights",
            s(&self.weights),
            "--input-tensor",
            s(x),
            "--dump",
            s(&dump),
        ])
    }

    /// Image mode on one image (or folder) into `out`, with an optional boxes file.
    fn run_images(&self, img: &Path, boxes: Option<&Path>, out: &Path) -> (i32, String, String) {
        let mut a = vec![
            "--config",
            s(&self.cfg),
            "--weights",
            s(&self.weights),
            "--images",
            s(img),
            "--out",
            s(out),
        ];
        if let Some(b) = boxes {
            a.extend(["--boxes", s(b)]);
        }
        infer(&a)
    }

    /// The weights with one change applied, written to a new file.
    fn weights_edited(&self, name: &str, edit: impl FnOnce(&mut Vec<RawTensor>)) -> PathBuf {
        let mut all = read_all(&self.weights);
        edit(&mut all);
        let p = self.dir.join(name);
        write_all(&p, &all);
        p
    }
}

#[test]
fn truncated_weights() {
    let st = setup("err_truncated");
    let bytes = std::fs::read(&st.weights).unwrap();
    let p = st.dir.join("truncated.safetensors");
    std::fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
    assert_clean_error(
        st.run_with_weights(&p),
        &["truncated.safetensors", "not a valid safetensors file"],
    );
    std::fs::write(&p, &bytes[..3]).unwrap();
    assert_clean_error(st.run_with_weights(&p), &["too short"]);
}

#[test]
fn corrupt_weights() {
    let st = setup("err_corrupt");
    let mut bytes = std::fs::read(&st.weights).unwrap();
    for b in bytes[8..40].iter_mut() {
        *b = b'#';
    }
    let p = st.dir.join("corrupt.safetensors");
    std::fs::write(&p, &bytes).unwrap();
    assert_clean_error(
        st.run_with_weights(&p),
        &["corrupt.safetensors", "not a valid safetensors file"],
    );
}

#[test]
fn missing_weights_file() {
    let st = setup("err_missing_file");
    assert_clean_error(
        st.run_with_weights(&st.dir.join("nope.safetensors")),
        &["nope.safetensors"],
    );
}

#[test]
fn missing_tensor() {
    let st = setup("err_missing_tensor");
    let p = st.weights_edited("missing.safetensors", |v| {
        v.retain(|t| t.name != "backbone.blocks.1.attn.qkv.weight")
    });
    assert_clean_error(
        st.run_with_weights(&p),
        &[
            "missing tensor `backbone.blocks.1.attn.qkv.weight`",
            "[384, 128]",
        ],
    );
}

#[test]
fn misshaped_tensor() {
    let st = setup("err_misshaped");
    let p = st.weights_edited("misshaped.safetensors", |v| {
        let t = v
            .iter_mut()
            .find(|t| t.name == "mano_head.decpose.bias")
            .unwrap();
        t.shape = vec![48, 2];
    });
    assert_clean_error(
        st.run_with_weights(&p),
        &["`mano_head.decpose.bias`", "[48, 2]", "[96]"],
    );
}

#[test]
fn wrong_dtype() {
    let st = setup("err_dtype");
    let p = st.weights_edited("dtype.safetensors", |v| {
        let t = v
            .iter_mut()
            .find(|t| t.name == "backbone.last_norm.weight")
            .unwrap();
        t.dtype = safetensors::Dtype::I32;
    });
    assert_clean_error(
        st.run_with_weights(&p),
        &["`backbone.last_norm.weight`", "I32", "float"],
    );
}

#[test]
fn extra_tensor() {
    let st = setup("err_extra");
    let p = st.weights_edited("extra.safetensors", |v| {
        v.push(f32_tensor(
            "backbone.blocks.99.norm1.weight",
            &[4],
            &[1.0; 4],
        ))
    });
    assert_clean_error(
        st.run_with_weights(&p),
        &["unexpected tensor `backbone.blocks.99.norm1.weight`", "[4]"],
    );
}

#[test]
fn uncertainty_head_with_a_plain_config() {
    let st = setup("err_type_mismatch");
    let w = tiny_weights_for(Uncertainty::Ours, &st.dir);
    assert_clean_error(
        st.run_with_weights(&w),
        &[
            "unexpected tensor",
            "look like a `ours` model",
            "says `none`",
        ],
    );
}

#[test]
fn nan_in_input_tensor() {
    let st = setup("err_nan");
    let mut x = read_all(&st.input);
    let vals: &mut [f32] = bytemuck::cast_slice_mut(&mut x[0].data);
    vals[3 * 128 * 128 + 5 * 128 + 7] = f32::NAN;
    let p = st.dir.join("nan.safetensors");
    write_all(&p, &x);
    assert_clean_error(st.run_with_input(&p), &["non-finite", "[1, 0, 5, 7]"]);
}

#[test]
fn input_tensor_of_the_wrong_shape_or_name() {
    let st = setup("err_input_shape");
    let p = st.dir.join("small.safetensors");
    write_all(
        &p,
        &[f32_tensor("img", &[1, 3, 64, 64], &vec![0.0; 3 * 64 * 64])],
    );
    assert_clean_error(
        st.run_with_input(&p),
        &["[1, 3, 64, 64]", "[B, 3, 128, 128]"],
    );
    write_all(
        &p,
        &[f32_tensor(
            "image",
            &[1, 3, 64, 64],
            &vec![0.0; 3 * 64 * 64],
        )],
    );
    assert_clean_error(st.run_with_input(&p), &["no tensor named `img`"]);
}

#[test]
fn unknown_config_field() {
    let st = setup("err_config");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&st.cfg).unwrap()).unwrap();
    v["decoder"]["droput"] = serde_json::json!(0.1);
    let bad = st.dir.join("bad.json");
    std::fs::write(&bad, v.to_string()).unwrap();
    let dump = st.dir.join("d.safetensors");
    let run = infer(&[
        "--config",
        s(&bad),
        "--weights",
        s(&st.weights),
        "--input-tensor",
        s(&st.input),
        "--dump",
        s(&dump),
    ]);
    assert_clean_error(run, &["bad.json", "unknown field `droput`"]);
    std::fs::write(&bad, "{\"vit\": ").unwrap();
    let run = infer(&[
        "--config",
        s(&bad),
        "--weights",
        s(&st.weights),
        "--input-tensor",
        s(&st.input),
        "--dump",
        s(&dump),
    ]);
    assert_clean_error(run, &["bad.json"]);
}

#[test]
fn image_errors() {
    let st = setup("err_images");
    let out = st.dir.join("out");
    let run = |img: &Path, boxes: Option<&Path>| st.run_images(img, boxes, &out);
    assert_clean_error(run(&st.dir.join("missing.jpg"), None), &["missing.jpg"]);
    let fake = st.dir.join("fake.jpg");
    std::fs::write(&fake, "this is not a jpeg").unwrap();
    assert_clean_error(run(&fake, None), &["fake.jpg", "not a readable image"]);
    let boxes = st.dir.join("boxes.json");
    std::fs::write(
        &boxes,
        "{\"crop_src.png\": {\"center\": [1, 2], \"scale\": }",
    )
    .unwrap();
    assert_clean_error(
        run(&fixture("crop_src.png"), Some(&boxes)),
        &["boxes.json", "malformed"],
    );
    std::fs::write(
        &boxes,
        "{\"other.png\": {\"center\": [1, 2], \"scale\": 1}}",
    )
    .unwrap();
    assert_clean_error(
        run(&fixture("crop_src.png"), Some(&boxes)),
        &["no entry for image \"crop_src.png\""],
    );
    assert!(
        !out.join("crop_src.json").exists(),
        "nothing is written when an input is bad"
    );
}

#[test]
fn bad_flags() {
    let st = setup("err_flags");
    assert_clean_error(
        infer(&["--weights", s(&st.weights), "--frobnicate"]),
        &["--frobnicate"],
    );
    assert_clean_error(infer(&["--input-tensor", "x"]), &["--weights"]);
    assert_clean_error(
        infer(&["--weights", s(&st.weights)]),
        &["either --input-tensor"],
    );
    let dump = st.dir.join("d.safetensors");
    let base = [
        "--config",
        s(&st.cfg),
        "--weights",
        s(&st.weights),
        "--input-tensor",
        s(&st.input),
        "--dump",
        s(&dump),
    ];
    assert_clean_error(
        infer(&[&base[..], &["--device", "tpu"]].concat()),
        &["--device tpu"],
    );
    assert_clean_error(
        infer(&[&base[..], &["--batch", "zero"]].concat()),
        &["--batch"],
    );
    assert_clean_error(
        infer(&[&base[..], &["--uncertainty", "gaussian"]].concat()),
        &["unknown uncertainty type \"gaussian\""],
    );
    assert_clean_error(
        infer(&[
            "--config",
            "nonexistent_preset",
            "--weights",
            s(&st.weights),
            "--input-tensor",
            "x",
            "--dump",
            "y",
        ]),
        &["\"nonexistent_preset\" is neither a preset (hamer, tiny)"],
    );
}

#[test]
fn cuda_device_without_a_gpu_is_a_clean_error() {
    if handcov::cuda::CudaBackend::new(0).is_ok() {
        return; // a GPU is present: nothing to check here
    }
    let st = setup("err_cuda");
    let dump = st.dir.join("d.safetensors");
    let run = infer(&[
        "--config",
        s(&st.cfg),
        "--weights",
        s(&st.weights),
        "--input-tensor",
        s(&st.input),
        "--dump",
        s(&dump),
        "--device",
        "cuda",
    ]);
    assert_clean_error(run, &["cuda:"]);
}

#[test]
fn non_finite_weights_are_refused_at_load() {
    let st = setup("err_nan_weights");
    let p = st.weights_edited("nan.safetensors", |v| {
        let t = v
            .iter_mut()
            .find(|t| t.name == "backbone.blocks.2.mlp.fc1.weight")
            .unwrap();
        let vals: &mut [f32] = bytemuck::cast_slice_mut(&mut t.data);
        vals[77] = f32::NAN;
    });
    assert_clean_error(
        st.run_with_weights(&p),
        &[
            "nan.safetensors",
            "`backbone.blocks.2.mlp.fc1.weight`",
            "non-finite",
            "index 77",
        ],
    );
    let p = st.weights_edited("inf_mano.safetensors", |v| {
        let t = v.iter_mut().find(|t| t.name == "mano.v_template").unwrap();
        let vals: &mut [f32] = bytemuck::cast_slice_mut(&mut t.data);
        vals[5] = f32::INFINITY;
    });
    assert_clean_error(st.run_with_weights(&p), &["`mano.v_template`", "inf"]);
    assert!(
        !st.dir.join("dump.safetensors").exists(),
        "nothing is written"
    );
}

#[test]
fn a_broken_kinematic_tree_is_refused_at_load() {
    let st = setup("err_parents");
    let edit = |name: &str, joint: usize, parent: i64| {
        st.weights_edited(name, |v| {
            let t = v.iter_mut().find(|t| t.name == "mano.parents").unwrap();
            // i64 little-endian; a Vec<u8> need not be 8-aligned for a cast.
            t.data[joint * 8..][..8].copy_from_slice(&parent.to_le_bytes());
        })
    };
    let p = edit("root.safetensors", 0, 3);
    assert_clean_error(
        st.run_with_weights(&p),
        &["`mano.parents`", "joint 0", "-1", "holds 3"],
    );
    let p = edit("forward.safetensors", 5, 9);
    assert_clean_error(
        st.run_with_weights(&p),
        &["`mano.parents`", "joint 5 has parent 9"],
    );
    let p = edit("negative.safetensors", 7, -1);
    assert_clean_error(
        st.run_with_weights(&p),
        &["`mano.parents`", "joint 7 has parent -1"],
    );
}

#[test]
fn an_input_that_overflows_the_model_is_an_error_not_nan_output() {
    let st = setup("err_huge_input");
    let mut x = read_all(&st.input);
    let vals: &mut [f32] = bytemuck::cast_slice_mut(&mut x[0].data);
    vals.iter_mut().for_each(|v| *v = 3e38);
    let p = st.dir.join("huge.safetensors");
    write_all(&p, &x);
    assert_clean_error(
        st.run_with_input(&p),
        &["not finite", "image 0", "normalised crop"],
    );
    assert!(
        !st.dir.join("dump.safetensors").exists(),
        "nothing is written"
    );
}

#[test]
fn flags_out_of_range_repeated_or_of_the_other_mode() {
    let st = setup("err_flag_ranges");
    let dump = st.dir.join("d.safetensors");
    let base = [
        "--config",
        s(&st.cfg),
        "--weights",
        s(&st.weights),
        "--input-tensor",
        s(&st.input),
        "--dump",
        s(&dump),
    ];
    let with = |extra: &[&str]| infer(&[&base[..], extra].concat());
    assert_clean_error(
        with(&["--repeat", "99999999999999"]),
        &["--repeat", "expected 1 to"],
    );
    assert_clean_error(
        with(&["--threads", "100000"]),
        &["--threads 100000", "expected 1 to 1024"],
    );
    assert_clean_error(with(&["--threads", "0"]), &["--threads 0"]);
    assert_clean_error(
        with(&["--threads", "2", "--threads", "3"]),
        &["--threads is given more than once"],
    );
    assert_clean_error(with(&["--obj"]), &["--obj applies to image mode only"]);
    assert_clean_error(
        with(&["--batch", "4"]),
        &["--batch applies to image mode only"],
    );
    assert_clean_error(
        with(&["--cuda-graph", "--device", "cpu"]),
        &["--cuda-graph"],
    );
    let out = st.dir.join("out");
    let img = fixture("crop_src.png");
    assert_clean_error(
        infer(&[
            "--config",
            s(&st.cfg),
            "--weights",
            s(&st.weights),
            "--images",
            s(&img),
            "--out",
            s(&out),
            "--repeat",
            "3",
        ]),
        &["--repeat applies to tensor mode only"],
    );
    assert_clean_error(
        infer(&[
            "--config",
            s(&st.cfg),
            "--weights",
            "",
            "--input-tensor",
            s(&st.input),
            "--dump",
            s(&dump),
        ]),
        &["--weights: the path is empty"],
    );
    assert_clean_error(st.run_with_weights(&st.dir), &["is a directory"]);
    assert_clean_error(
        st.run_with_weights(Path::new("/dev/null")),
        &["not a regular file"],
    );
}

#[test]
fn outputs_never_overwrite_inputs_or_each_other() {
    let st = setup("err_clobber");
    // --dump onto the weights or the input.
    let w = st.dir.join("w.safetensors");
    std::fs::copy(&st.weights, &w).unwrap();
    let before = std::fs::read(&w).unwrap();
    let dotted = st.dir.join(".").join("w.safetensors");
    let run = infer(&[
        "--config",
        s(&st.cfg),
        "--weights",
        s(&w),
        "--input-tensor",
        s(&st.input),
        "--dump",
        s(&dotted),
    ]);
    assert_clean_error(run, &["is the --weights file"]);
    assert_eq!(
        std::fs::read(&w).unwrap(),
        before,
        "the weights are untouched"
    );
    // A dump into a missing directory names the path asked for, not a temporary file.
    let missing = st.dir.join("nodir").join("x.safetensors");
    let run = infer(&[
        "--config",
        s(&st.cfg),
        "--weights",
        s(&w),
        "--input-tensor",
        s(&st.input),
        "--dump",
        s(&missing),
    ]);
    assert_clean_error(run, &["nodir/x.safetensors", "not an existing directory"]);
    // Two images with the same stem in different folders.
    for d in ["a", "b"] {
        std::fs::create_dir_all(st.dir.join(d)).unwrap();
    }
    std::fs::copy(fixture("crop_src.png"), st.dir.join("a/x.png")).unwrap();
    std::fs::copy(fixture("crop_src.png"), st.dir.join("b/x.png")).unwrap();
    let out = st.dir.join("out");
    let run = infer(&[
        "--config",
        s(&st.cfg),
        "--weights",
        s(&w),
        "--images",
        s(&st.dir.join("a")),
        "--images",
        s(&st.dir.join("b")),
        "--out",
        s(&out),
    ]);
    assert_clean_error(run, &["a/x.png", "b/x.png", "x.json"]);
    assert!(!out.join("x.json").exists());
    // --out that is a file.
    let run = infer(&[
        "--config",
        s(&st.cfg),
        "--weights",
        s(&w),
        "--images",
        s(&st.dir.join("a")),
        "--out",
        s(&w),
    ]);
    assert_clean_error(run, &["is a file"]);
}

#[test]
fn images_and_boxes_beyond_what_can_be_read_faithfully() {
    let st = setup("err_image_limits");
    let out = st.dir.join("out");
    let run = |img: &Path, boxes: Option<&Path>| st.run_images(img, boxes, &out);
    // A JPEG whose frame header claims 60000 × 60000 pixels: refused before allocating.
    let src = image::open(fixture("crop_src.png")).unwrap().to_rgb8();
    let mut jpg = std::io::Cursor::new(Vec::new());
    src.write_to(&mut jpg, image::ImageFormat::Jpeg).unwrap();
    let mut jpg = jpg.into_inner();
    let sof = jpg.windows(2).position(|w| w == [0xFF, 0xC0]).unwrap();
    jpg[sof + 5..sof + 9].copy_from_slice(&[0xEA, 0x60, 0xEA, 0x60]);
    let huge = st.dir.join("huge.jpg");
    std::fs::write(&huge, &jpg).unwrap();
    assert_clean_error(run(&huge, None), &["huge.jpg", "60000×60000 pixels"]);
    // A box far outside float32's faithful range, and a type error naming its field.
    let boxes = st.dir.join("boxes.json");
    std::fs::write(
        &boxes,
        r#"{"crop_src.png": {"center": [1e300, 5], "scale": 1}}"#,
    )
    .unwrap();
    assert_clean_error(
        run(&fixture("crop_src.png"), Some(&boxes)),
        &["boxes.json", "centre", "not within"],
    );
    std::fs::write(
        &boxes,
        r#"{"crop_src.png": {"center": [100, 5], "scale": "big"}}"#,
    )
    .unwrap();
    assert_clean_error(
        run(&fixture("crop_src.png"), Some(&boxes)),
        &["`scale` is \"big\""],
    );
    assert!(!out.join("crop_src.json").exists());
}

#[test]
fn text_inputs_that_are_not_regular_files_or_name_a_key_twice() {
    let st = setup("err_text_inputs");
    let out = st.dir.join("out");
    let img = fixture("crop_src.png");
    // /dev/zero as the boxes file or the config grew memory without end.
    let run = infer(&[
        "--config",
        s(&st.cfg),
        "--weights",
        s(&st.weights),
        "--images",
        s(&img),
        "--out",
        s(&out),
        "--boxes",
        "/dev/zero",
    ]);
    assert_clean_error(run, &["/dev/zero", "not a regular file"]);
    let dump = st.dir.join("d.safetensors");
    let run = infer(&[
        "--config",
        "/dev/zero",
        "--weights",
        s(&st.weights),
        "--input-tensor",
        s(&st.input),
        "--dump",
        s(&dump),
    ]);
    assert_clean_error(run, &["/dev/zero", "not a regular file"]);
    // A field given twice was silently the last one.
    let boxes = st.dir.join("boxes.json");
    std::fs::write(
        &boxes,
        r#"{"crop_src.png": {"center": [60, 60], "scale": 0.5, "center": [1, 1]}}"#,
    )
    .unwrap();
    assert_clean_error(
        st.run_images(&img, Some(&boxes), &out),
        &["\"center\" appears twice"],
    );
    // A line break in a file name stays inside the one error line.
    let odd = st.dir.join("two\nlines.safetensors");
    assert_clean_error(st.run_with_weights(&odd), &["two\\nlines.safetensors"]);
}
