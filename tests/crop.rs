//! The crop pipeline against OpenCV 4.x (fixtures from tests/reference/make_crop_fixture.py):
//! the affine must match `cv2.getAffineTransform` to 1e-9 relative (in practice bit for bit)
//! and the warp must match `cv2.warpAffine(INTER_LINEAR, BORDER_CONSTANT, 0)` bit-exactly.

use std::path::{Path, PathBuf};

use handcov::ops::image::*;
use safetensors::{Dtype, SafeTensors};
use serde_json::Value;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

struct Case {
    name: String,
    params: [f64; 5], // cx, cy, box_size, rot, scale (exact, from the safetensors file)
    scale_px: Option<[f64; 2]>,
    flip: bool,
    out: usize,
    matrix: [f64; 6],
    expected: Vec<u8>,
}

fn f64s(st: &SafeTensors, name: &str) -> Vec<f64> {
    let t = st.tensor(name).unwrap();
    assert_eq!(t.dtype(), Dtype::F64, "{name}");
    t.data()
        .chunks_exact(8)
        .map(|b| f64::from_le_bytes(b.try_into().unwrap()))
        .collect()
}

fn num(v: &Value) -> f64 {
    v.as_f64().unwrap()
}

fn load_cases() -> Vec<Case> {
    let json: Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("crop_cases.json")).unwrap())
            .unwrap();
    let bytes = std::fs::read(fixtures().join("crop_expected.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut cases = Vec::new();
    for c in json["cases"].as_array().unwrap() {
        let name = c["name"].as_str().unwrap().to_string();
        let params: [f64; 5] = f64s(&st, &format!("{name}.params")).try_into().unwrap();
        let matrix: [f64; 6] = f64s(&st, &format!("{name}.matrix")).try_into().unwrap();
        // The JSON numbers are the same values (JSON float parsing may be off by an ulp).
        let json_params = [
            num(&c["center"][0]),
            num(&c["center"][1]),
            num(&c["box_size"]),
            num(&c["rot"]),
            num(&c["scale"]),
        ];
        for (a, b) in json_params.iter().zip(params.iter()).chain(
            c["matrix"]
                .as_array()
                .unwrap()
                .iter()
                .map(num)
                .collect::<Vec<_>>()
                .iter()
                .zip(matrix.iter()),
        ) {
            assert!(
                (a - b).abs() <= 1e-12 * b.abs().max(1.0),
                "{name}: json {a} vs safetensors {b}"
            );
        }
        let out = c["out_size"].as_u64().unwrap() as usize;
        let t = st.tensor(&name).unwrap();
        assert_eq!(t.dtype(), Dtype::U8);
        assert_eq!(t.shape(), [out, out, 3]);
        cases.push(Case {
            name,
            params,
            scale_px: c.get("scale_px").map(|v| [num(&v[0]), num(&v[1])]),
            flip: c["flip"].as_bool().unwrap(),
            out,
            matrix,
            expected: t.data().to_vec(),
        });
    }
    assert!(cases.len() >= 9, "expected the full case list");
    cases
}

/// Largest element-wise |a−b| relative to max|b|, and the largest difference in ulps.
fn matrix_error(a: &[f64; 6], b: &[f64; 6]) -> (f64, u64) {
    let scale = b.iter().fold(0f64, |m, v| m.max(v.abs()));
    let rel = a.iter().zip(b).fold(0f64, |m, (x, y)| m.max((x - y).abs())) / scale;
    let ulps = a
        .iter()
        .zip(b)
        .map(|(x, y)| (x.to_bits() as i64 - y.to_bits() as i64).unsigned_abs())
        .max()
        .unwrap();
    (rel, ulps)
}

#[test]
fn crops_match_opencv_bit_exactly() {
    let img = load_rgb(&fixtures().join("crop_src.png")).unwrap();
    assert_eq!((img.width, img.height), (173, 131));
    let mirrored = flip_horizontal(&img);
    let mut failures = Vec::new();
    for c in load_cases() {
        let [cx, cy, box_size, rot, scale] = c.params;
        if let Some(s) = c.scale_px {
            assert_eq!(eval_box_size(s), box_size, "{}: eval box size", c.name);
        }
        let (src, cx) = if c.flip {
            (&mirrored, flip_x(cx, img.width))
        } else {
            (&img, cx)
        };
        let m = crop_affine([cx, cy], box_size, c.out, rot, scale);
        let (rel, ulps) = matrix_error(&m, &c.matrix);
        // Tolerance: float64 solve of the same float32 points; 1e-9 leaves room for a last-bit
        // difference in sin/cos between libm and numpy.
        assert!(
            rel <= 1e-9,
            "{}: matrix {m:?} vs cv2 {:?} (rel {rel:e})",
            c.name,
            c.matrix
        );
        // The warp is checked with cv2's own matrix, so that it is tested on its own.
        let got = warp_affine_bilinear(src, &c.matrix, c.out, c.out);
        let diff: Vec<i32> = got
            .iter()
            .zip(&c.expected)
            .map(|(a, b)| *a as i32 - *b as i32)
            .collect();
        let n_px = diff
            .chunks_exact(3)
            .filter(|p| p.iter().any(|d| *d != 0))
            .count();
        let max = diff.iter().map(|d| d.abs()).max().unwrap_or(0);
        println!(
            "{:18} matrix rel {rel:.1e} ({ulps} ulp), differing pixels {n_px} (max |d| {max})",
            c.name
        );
        if n_px > 0 {
            failures.push(format!(
                "{}: {n_px} of {} pixels differ, by up to {max}",
                c.name,
                c.out * c.out
            ));
        }
        // With our own matrix the crop is the same.
        if m == c.matrix {
            assert_eq!(warp_affine_bilinear(src, &m, c.out, c.out), got);
        }
    }
    assert!(
        failures.is_empty(),
        "warp differs from cv2.warpAffine: {}",
        failures.join("; ")
    );
}

#[test]
fn crop_for_model_is_the_normalised_reference_crop() {
    let img = load_rgb(&fixtures().join("crop_src.png")).unwrap();
    for c in load_cases()
        .into_iter()
        .filter(|c| c.params[3] == 0.0 && c.params[4] == 1.0)
    {
        let b = CropBox {
            center: [c.params[0], c.params[1]],
            box_size: c.params[2],
            is_right: !c.flip,
        };
        b.validate().unwrap();
        let (x, m) = crop_for_model(&img, &b, c.out);
        assert_eq!(m, c.matrix, "{}", c.name);
        assert_eq!(x, normalize_crop(&c.expected, c.out), "{}", c.name);
        // The crop centre maps back to the box centre in the original image.
        let back = crop_to_image(&m, [c.out as f64 / 2.0; 2], c.flip, img.width);
        assert!(
            (back[0] - b.center[0]).abs() < 1e-4 && (back[1] - b.center[1]).abs() < 1e-4,
            "{}",
            c.name
        );
    }
}

#[test]
fn load_rgb_errors_name_the_path() {
    let dir = std::env::temp_dir().join(format!("handcov_crop_test_{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();

    let missing = dir.join("no_such_image.png");
    let err = load_rgb(&missing).unwrap_err();
    assert!(matches!(err, handcov::Error::Io { .. }), "{err:?}");
    assert!(err.to_string().contains("no_such_image.png"), "{err}");

    let text = dir.join("not_an_image.png");
    std::fs::write(&text, "this is a text file, not a PNG\n").unwrap();
    let err = load_rgb(&text).unwrap_err();
    assert!(matches!(err, handcov::Error::Input(_)), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("not_an_image.png") && msg.contains("not a readable image"),
        "{msg}"
    );

    // A truncated PNG (valid signature, cut-off data) is an input error too.
    let png = std::fs::read(fixtures().join("crop_src.png")).unwrap();
    let cut = dir.join("truncated.png");
    std::fs::write(&cut, &png[..png.len() / 3]).unwrap();
    let err = load_rgb(&cut).unwrap_err();
    assert!(err.to_string().contains("truncated.png"), "{err}");

    // Grey + alpha PNGs come back as RGB.
    let grey = dir.join("grey_alpha.png");
    image::GrayAlphaImage::from_fn(4, 3, |x, y| image::LumaA([(10 * x + y) as u8, 7]))
        .save(&grey)
        .unwrap();
    let g = load_rgb(&grey).unwrap();
    assert_eq!((g.width, g.height, g.data.len()), (4, 3, 36));
    assert_eq!(g.data[3 * 5..3 * 6], [11, 11, 11]);

    std::fs::remove_dir_all(&dir).ok();
}
