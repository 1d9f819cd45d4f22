//! The `infer` binary end to end: tensor mode against the PyTorch fixtures, a separate MANO
//! file, and image mode (including the left-hand mirror symmetry). Bad input is in
//! tests/infer_bad_input.rs.

mod common;

use common::*;
use handcov::model::config::Uncertainty;
use handcov::model::weights::TensorFile;
use handcov::tensor::rel_err;
use std::path::Path;

#[test]
fn tensor_mode_dump_matches_pytorch() {
    let dir = scratch("cli_tensor_mode");
    let u = Uncertainty::Ours;
    let w = tiny_weights_for(u, &dir);
    let cfg = config_file(&dir, u);
    let dump = dir.join("out.safetensors");
    let run = infer(&[
        "--config",
        s(&cfg),
        "--weights",
        s(&w),
        "--input-tensor",
        s(&fixture("tiny_input.safetensors")),
        "--dump",
        s(&dump),
    ]);
    assert_eq!(run.0, 0, "{}", run.2);
    let got = TensorFile::open(&dump).unwrap();
    let want = TensorFile::open(&fixture("tiny_ours_out.safetensors")).unwrap();
    for name in want.names() {
        let (a, b) = (got.f32(name, None).unwrap(), want.f32(name, None).unwrap());
        assert_eq!(a.shape(), b.shape(), "{name}");
        // Same tolerances as tests/reference_fixtures.rs (fp32 engine vs f64 reference).
        let tol = if name == "keypoint_3d_cov" {
            1e-3
        } else {
            1e-4
        };
        assert!(rel_err(a.data(), b.data()) <= tol, "{name}");
    }
    // The dump holds exactly the documented tensors.
    let names: Vec<&str> = got.names().collect();
    for n in [
        "backbone_features",
        "global_orient",
        "hand_pose",
        "betas",
        "pred_cam",
        "pred_cam_t",
        "pred_keypoints_3d",
        "pred_keypoints_2d",
        "pred_vertices",
        "keypoint_3d_cov",
        "joint_uncertainty",
    ] {
        assert!(names.contains(&n), "dump lacks {n}");
    }
}

#[test]
fn mano_from_a_separate_file_gives_the_same_outputs() {
    let dir = scratch("cli_separate_mano");
    let all = read_all(&tiny_weights_for(Uncertainty::None, &dir));
    let (mano, rest): (Vec<RawTensor>, Vec<RawTensor>) =
        all.into_iter().partition(|t| t.name.starts_with("mano."));
    let (wp, mp) = (dir.join("model.safetensors"), dir.join("mano.safetensors"));
    write_all(&wp, &rest);
    write_all(&mp, &mano);
    let cfg = config_file(&dir, Uncertainty::None);
    let dump = dir.join("out.safetensors");
    let input = fixture("tiny_input.safetensors");
    let run = infer(&[
        "--config",
        s(&cfg),
        "--weights",
        s(&wp),
        "--mano",
        s(&mp),
        "--input-tensor",
        s(&input),
        "--dump",
        s(&dump),
    ]);
    assert_eq!(run.0, 0, "{}", run.2);
    let got = TensorFile::open(&dump).unwrap();
    let want = TensorFile::open(&fixture("tiny_none_out.safetensors")).unwrap();
    let (a, b) = (
        got.f32("pred_vertices", None).unwrap(),
        want.f32("pred_vertices", None).unwrap(),
    );
    assert!(rel_err(a.data(), b.data()) <= 1e-4);
    // Without --mano, weights lacking MANO say what to do.
    assert_clean_error(
        infer(&[
            "--config",
            s(&cfg),
            "--weights",
            s(&wp),
            "--input-tensor",
            s(&input),
            "--dump",
            s(&dump),
        ]),
        &["mano.", "--mano"],
    );
}

/// Mirrors an RGB PNG horizontally.
fn mirror_png(src: &Path, dst: &Path) -> (u32, u32) {
    let img = image::open(src).unwrap().to_rgb8();
    image::imageops::flip_horizontal(&img).save(dst).unwrap();
    img.dimensions()
}

#[test]
fn image_mode_left_hand_is_the_mirror_of_the_right_hand() {
    let dir = scratch("cli_image_mode");
    let u = Uncertainty::Ours;
    let w = tiny_weights_for(u, &dir);
    let cfg = config_file(&dir, u);
    let right = fixture("crop_src.png");
    let left = dir.join("mirrored.png");
    let (width, _) = mirror_png(&right, &left);
    let (cx, cy) = (70.5, 60.0);
    let boxes = dir.join("boxes.json");
    std::fs::write(
        &boxes,
        serde_json::json!({
            "crop_src.png": {"center": [cx, cy], "scale": 0.4, "is_right": true},
            "mirrored.png": {"center": [width as f64 - 1.0 - cx, cy], "scale": 0.4, "is_right": false},
        })
        .to_string(),
    )
    .unwrap();
    let out = dir.join("out");
    let run = infer(&[
        "--config",
        s(&cfg),
        "--weights",
        s(&w),
        "--images",
        s(&right),
        "--images",
        s(&left),
        "--boxes",
        s(&boxes),
        "--out",
        s(&out),
        "--obj",
    ]);
    assert_eq!(run.0, 0, "{}", run.2);
    let r = json(&out.join("crop_src.json"));
    let l = json(&out.join("mirrored.json"));
    let (rh, lh) = (&r["hands"][0], &l["hands"][0]);
    assert_eq!(rh["is_right"], true);
    assert_eq!(lh["is_right"], false);
    // The mirrored crop is bit-identical to the right-hand crop, so the network outputs are the
    // same and the reported left hand must be their exact mirror image.
    for key in ["keypoints_3d", "vertices"] {
        let (a, b) = (floats(&rh[key]), floats(&lh[key]));
        assert_eq!(a.len(), b.len());
        for (i, (x, y)) in a.iter().zip(&b).enumerate() {
            let want = if i % 3 == 0 { -x } else { *x };
            assert_eq!(*y, want, "{key}[{i}]");
        }
    }
    let (a, b) = (floats(&rh["keypoints_2d"]), floats(&lh["keypoints_2d"]));
    for (i, (x, y)) in a.iter().zip(&b).enumerate() {
        let want = if i % 2 == 0 {
            width as f64 - 1.0 - x
        } else {
            *x
        };
        assert!((y - want).abs() < 1e-6, "keypoints_2d[{i}]: {y} vs {want}");
    }
    assert_eq!(
        floats(&rh["joint_uncertainty"]),
        floats(&lh["joint_uncertainty"])
    );
    assert_eq!(floats(&rh["keypoint_3d_cov"]).len(), 63 * 63);
    // 2D keypoints are the projection of the 3D keypoints: check one through the crop camera.
    assert_eq!(floats(&rh["vertices"]).len(), 778 * 3);
    let obj = std::fs::read_to_string(out.join("crop_src_0.obj")).unwrap();
    assert_eq!(obj.lines().filter(|l| l.starts_with("v ")).count(), 778);
    assert_eq!(obj.lines().filter(|l| l.starts_with("f ")).count(), 1538);
}

#[test]
fn image_mode_without_boxes_uses_the_whole_image() {
    let dir = scratch("cli_image_whole");
    let w = tiny_weights_for(Uncertainty::None, &dir);
    let cfg = config_file(&dir, Uncertainty::None);
    let imgdir = dir.join("imgs");
    std::fs::create_dir_all(&imgdir).unwrap();
    std::fs::copy(fixture("crop_src.png"), imgdir.join("a.png")).unwrap();
    std::fs::copy(fixture("crop_src.png"), imgdir.join("b.png")).unwrap();
    let out = dir.join("out");
    let run = infer(&[
        "--config",
        s(&cfg),
        "--weights",
        s(&w),
        "--images",
        s(&imgdir),
        "--out",
        s(&out),
        "--batch",
        "1",
    ]);
    assert_eq!(run.0, 0, "{}", run.2);
    let (a, b) = (json(&out.join("a.json")), json(&out.join("b.json")));
    assert_eq!(a["hands"].as_array().unwrap().len(), 1);
    assert_eq!(a["hands"][0]["keypoints_3d"], b["hands"][0]["keypoints_3d"]);
    assert!(a["hands"][0].get("joint_uncertainty").is_none());
}
