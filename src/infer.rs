//! Image-mode inference: the boxes file, the crops (SPEC §1.2–1.3, evaluation rule), batching,
//! un-flipping left hands, and the per-image result files (JSON, OBJ).

use crate::error::{Error, Result};
use crate::model::config::{ModelConfig, Uncertainty};
use crate::model::weights::TensorFile;
use crate::model::{detect_uncertainty, ExtraTensors, HandModel, Prediction};
use crate::ops::image::{
    crop_for_model, crop_to_image, eval_box_size, load_rgb, CropBox, RgbImage,
};
use crate::tensor::Tensor;
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// HaMeR's demo enlarges a tight detector box by this factor before the 3:4 expansion.
pub const DEFAULT_BBOX_RESCALE: f64 = 2.0;

/// Which model to load, as the command-line tools (`infer`, `eval predict`) take it.
#[derive(Clone, Debug)]
pub struct ModelSpec {
    /// A preset name (`hamer`, `tiny`) or a model config JSON file.
    pub config: String,
    /// Overrides the config's uncertainty type; with a preset and no override, the type is
    /// detected from the weights' tensor names.
    pub uncertainty: Option<String>,
    pub weights: PathBuf,
    /// The MANO model from this file instead of the weights' `mano.*` tensors.
    pub mano: Option<PathBuf>,
    /// Accept tensors in the weights that the model does not use.
    pub allow_extra: bool,
}

/// Loads the model a [`ModelSpec`] describes (every tensor checked; see [`HandModel::load_with`]).
pub fn load_model(spec: &ModelSpec) -> Result<HandModel> {
    let weights = TensorFile::open(&spec.weights)?;
    let mano = spec.mano.as_deref().map(TensorFile::open).transpose()?;
    let mut config = ModelConfig::load(&spec.config)?;
    match &spec.uncertainty {
        Some(u) => config.uncertainty = Uncertainty::parse(u)?,
        None if ModelConfig::preset(&spec.config).is_some() => {
            config.uncertainty = detect_uncertainty(&weights)
        }
        None => {}
    }
    let extra = if spec.allow_extra {
        ExtraTensors::Ignore
    } else {
        ExtraTensors::Error
    };
    HandModel::load_with(config, &weights, mano.as_ref(), extra)
}

/// One hand in the boxes file: either the evaluation-set form (`center` + `scale`, the side in
/// units of 200 px, as HaMeR's datasets use it after dividing the npz files' pixel sides by 200;
/// see eval/README.md) or a detector box (`bbox` = x0, y0, x1, y1).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BoxEntry {
    pub center: Option<[f64; 2]>,
    pub scale: Option<Scale>,
    pub bbox: Option<[f64; 4]>,
    pub rescale: Option<f64>,
    pub is_right: Option<bool>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
pub enum Scale {
    One(f64),
    Two([f64; 2]),
}

impl BoxEntry {
    /// The square crop box by the evaluation rule: side = max of the box expanded to 3:4 (w:h).
    pub fn to_crop_box(&self) -> std::result::Result<CropBox, String> {
        let is_right = self.is_right.unwrap_or(true);
        let (center, side_px) = match (self.center, &self.scale, self.bbox) {
            (Some(c), Some(s), None) => {
                if self.rescale.is_some() {
                    return Err("`rescale` applies to `bbox` boxes only".into());
                }
                let s = match s {
                    Scale::One(v) => [*v, *v],
                    Scale::Two(v) => *v,
                };
                (c, [s[0] * 200.0, s[1] * 200.0])
            }
            (None, None, Some([x0, y0, x1, y1])) => {
                let r = self.rescale.unwrap_or(DEFAULT_BBOX_RESCALE);
                if !(x1 > x0 && y1 > y0) {
                    return Err(format!(
                        "bbox {:?} must have x1 > x0 and y1 > y0",
                        [x0, y0, x1, y1]
                    ));
                }
                if !(r > 0.0 && r.is_finite()) {
                    return Err(format!("rescale {r} must be a positive number"));
                }
                (
                    [(x0 + x1) / 2.0, (y0 + y1) / 2.0],
                    [r * (x1 - x0), r * (y1 - y0)],
                )
            }
            _ => return Err("a hand needs either `center` and `scale`, or `bbox`".into()),
        };
        if !(side_px.iter().all(|v| v.is_finite() && *v > 0.0)) {
            return Err(format!("box side {side_px:?} px must be positive"));
        }
        let b = CropBox {
            center,
            box_size: eval_box_size(side_px),
            is_right,
        };
        b.validate().map_err(|e| e.to_string())?;
        Ok(b)
    }
}

/// The boxes file: `{"image name or path": hand | [hand, ...]}`. Every field is read on its
/// own, so an error names the image, the hand and the field.
pub fn parse_boxes(text: &str, origin: &str) -> Result<BTreeMap<String, Vec<CropBox>>> {
    let malformed = |e: &dyn std::fmt::Display| {
        Error::Input(format!(
            "{origin}: malformed boxes file ({e}); expected {{\"image.jpg\": {{\"center\": [x, y], \"scale\": s, \"is_right\": true}} or {{\"bbox\": [x0, y0, x1, y1]}}, ...}}"
        ))
    };
    let StrictValue(root) = serde_json::from_str(text).map_err(|e| malformed(&e))?;
    let Value::Object(raw) = root else {
        return Err(malformed(&"the top level is not an object"));
    };
    let mut out = BTreeMap::new();
    for (name, hands) in raw {
        let list = match hands {
            Value::Array(v) => v,
            other => vec![other],
        };
        let boxes = list
            .into_iter()
            .enumerate()
            .map(|(k, h)| {
                box_entry(h)
                    .and_then(|b| b.to_crop_box())
                    .map_err(|m| Error::Input(format!("{origin}: \"{name}\" hand {k}: {m}")))
            })
            .collect::<Result<Vec<_>>>()?;
        out.insert(name, boxes);
    }
    Ok(out)
}

/// A JSON value like serde_json's `Value`, except that an object naming a key twice is an
/// error (`Value` silently keeps the last, so `{"center": [1, 2], "center": [9, 9]}` would
/// crop somewhere the user did not mean).
struct StrictValue(Value);

impl<'de> serde::Deserialize<'de> for StrictValue {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        d.deserialize_any(StrictVisitor)
    }
}

struct StrictVisitor;

impl<'de> serde::de::Visitor<'de> for StrictVisitor {
    type Value = StrictValue;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> std::result::Result<StrictValue, E> {
        Ok(StrictValue(Value::Bool(v)))
    }
    fn visit_i64<E>(self, v: i64) -> std::result::Result<StrictValue, E> {
        Ok(StrictValue(Value::from(v)))
    }
    fn visit_u64<E>(self, v: u64) -> std::result::Result<StrictValue, E> {
        Ok(StrictValue(Value::from(v)))
    }
    fn visit_f64<E>(self, v: f64) -> std::result::Result<StrictValue, E> {
        Ok(StrictValue(Value::from(v)))
    }
    fn visit_str<E>(self, v: &str) -> std::result::Result<StrictValue, E> {
        Ok(StrictValue(Value::from(v)))
    }
    fn visit_unit<E>(self) -> std::result::Result<StrictValue, E> {
        Ok(StrictValue(Value::Null))
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(
        self,
        mut a: A,
    ) -> std::result::Result<StrictValue, A::Error> {
        let mut v = Vec::new();
        while let Some(StrictValue(x)) = a.next_element()? {
            v.push(x);
        }
        Ok(StrictValue(Value::Array(v)))
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(
        self,
        mut a: A,
    ) -> std::result::Result<StrictValue, A::Error> {
        let mut m = serde_json::Map::new();
        while let Some(k) = a.next_key::<String>()? {
            if m.contains_key(&k) {
                return Err(serde::de::Error::custom(format!(
                    "\"{k}\" appears twice in one object"
                )));
            }
            let StrictValue(v) = a.next_value()?;
            m.insert(k, v);
        }
        Ok(StrictValue(Value::Object(m)))
    }
}

/// One hand of the boxes file, field by field.
fn box_entry(v: Value) -> std::result::Result<BoxEntry, String> {
    let Value::Object(fields) = v else {
        return Err(format!(
            "expected an object {{\"center\": [x, y], \"scale\": s}} or {{\"bbox\": [x0, y0, x1, y1]}}, found {v}"
        ));
    };
    fn field<T: serde::de::DeserializeOwned>(
        key: &str,
        v: Value,
        expected: &str,
    ) -> std::result::Result<T, String> {
        serde_json::from_value(v.clone())
            .map_err(|_| format!("`{key}` is {v}, expected {expected}"))
    }
    let mut b = BoxEntry {
        center: None,
        scale: None,
        bbox: None,
        rescale: None,
        is_right: None,
    };
    for (key, v) in fields {
        match key.as_str() {
            "center" => b.center = Some(field(&key, v, "[x, y]")?),
            "scale" => b.scale = Some(field(&key, v, "a number or [sx, sy]")?),
            "bbox" => b.bbox = Some(field(&key, v, "[x0, y0, x1, y1]")?),
            "rescale" => b.rescale = Some(field(&key, v, "a number")?),
            "is_right" => b.is_right = Some(field(&key, v, "true or false")?),
            _ => {
                return Err(format!(
                    "unknown field `{key}` (expected center, scale, bbox, rescale, is_right)"
                ))
            }
        }
    }
    Ok(b)
}

/// Expands files and directories into the image files to process (directories: their `.jpg`,
/// `.jpeg` and `.png` files, sorted).
pub fn collect_images(inputs: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for p in inputs {
        if p.is_dir() {
            let mut found: Vec<PathBuf> = std::fs::read_dir(p)
                .map_err(|e| Error::io(p, e))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|f| {
                    f.extension()
                        .map(|e| e.to_string_lossy().to_lowercase())
                        .is_some_and(|e| e == "jpg" || e == "jpeg" || e == "png")
                })
                .collect();
            found.sort();
            if found.is_empty() {
                return Err(Error::Input(format!(
                    "{}: no .jpg/.jpeg/.png images in this directory",
                    p.display()
                )));
            }
            out.extend(found);
        } else if p.exists() {
            out.push(p.clone());
        } else {
            return Err(Error::io(
                p,
                std::io::Error::new(std::io::ErrorKind::NotFound, "no such file or directory"),
            ));
        }
    }
    Ok(out)
}

/// The boxes of one image: looked up by the path as given, then by file name. Without a boxes
/// file the whole image is one right hand.
pub fn boxes_for(
    image: &Path,
    img: &RgbImage,
    boxes: Option<&BTreeMap<String, Vec<CropBox>>>,
) -> Result<Vec<CropBox>> {
    match boxes {
        None => {
            let (w, h) = (img.width as f64, img.height as f64);
            Ok(vec![CropBox {
                center: [(w - 1.0) / 2.0, (h - 1.0) / 2.0],
                box_size: eval_box_size([w, h]),
                is_right: true,
            }])
        }
        Some(map) => {
            let full = image.to_string_lossy().to_string();
            let name = image
                .file_name()
                .map(|n| n.to_string_lossy().to_string())
                .unwrap_or_default();
            map.get(&full).or_else(|| map.get(&name)).cloned().ok_or_else(|| {
                Error::Input(format!("no entry for image \"{name}\" in the boxes file (keys are file names or paths as given)"))
            })
        }
    }
}

/// One hand to run: its source image, box and crop.
pub struct HandCrop {
    pub image_index: usize,
    pub cbox: CropBox,
    /// Source pixel → crop pixel (in the mirrored image for a left hand).
    pub affine: [f64; 6],
    pub crop: Vec<f32>,
}

pub fn make_crop(image_index: usize, img: &RgbImage, cbox: CropBox, size: usize) -> HandCrop {
    let (crop, affine) = crop_for_model(img, &cbox, size);
    HandCrop {
        image_index,
        cbox,
        affine,
        crop,
    }
}

/// Stacks crops into the model input `[B, 3, S, S]`.
pub fn stack(crops: &[&HandCrop], size: usize) -> Result<Tensor> {
    let mut data = Vec::with_capacity(crops.len() * 3 * size * size);
    for c in crops {
        data.extend_from_slice(&c.crop);
    }
    Tensor::from_vec(&[crops.len(), 3, size, size], data)
}

fn rows(v: &[f32], n: usize) -> Vec<Vec<f32>> {
    v.chunks(n).map(|c| c.to_vec()).collect()
}

/// Negates x of every point for a left hand (the network saw the mirrored image).
fn unmirror(points: &[f32], is_right: bool) -> Vec<f32> {
    let sign = if is_right { 1.0 } else { -1.0 };
    points
        .chunks(3)
        .flat_map(|p| [sign * p[0], p[1], p[2]])
        .collect()
}

/// Vertices of hand `i` of a batch in its own handedness, flat `[V·3]`.
pub fn hand_vertices(pred: &Prediction, i: usize, is_right: bool) -> Vec<f32> {
    let nv = pred.pred_vertices.dim(1);
    unmirror(
        &pred.pred_vertices.data()[i * nv * 3..(i + 1) * nv * 3],
        is_right,
    )
}

/// The 21 3D joints of hand `i` of a batch in its own handedness, flat `[21·3]` (MANO frame,
/// metres, OpenPose order).
pub fn hand_keypoints_3d(pred: &Prediction, i: usize, is_right: bool) -> Vec<f32> {
    unmirror(
        &pred.pred_keypoints_3d.data()[i * 63..(i + 1) * 63],
        is_right,
    )
}

/// The 63×63 joint covariance of hand `i` of a batch in its own handedness, flat row-major
/// (`None` without an uncertainty head). For a left hand Σ ↦ DΣD, D negating every x: entries
/// pairing an x with a y or z change sign.
pub fn hand_covariance(pred: &Prediction, i: usize, is_right: bool) -> Option<Vec<f32>> {
    let u = pred.uncertainty.as_ref()?;
    let mut cov = u.keypoint_3d_cov.data()[i * 3969..(i + 1) * 3969].to_vec();
    if !is_right {
        for r in 0..63 {
            for c in 0..63 {
                if (r % 3 == 0) != (c % 3 == 0) {
                    cov[r * 63 + c] = -cov[r * 63 + c];
                }
            }
        }
    }
    Some(cov)
}

/// `pred_cam` `(s, tx, ty)` of hand `i` of a batch in its own handedness (`tx` negated for a
/// left hand).
fn hand_pred_cam(pred: &Prediction, i: usize, is_right: bool) -> [f32; 3] {
    let sign = if is_right { 1.0f32 } else { -1.0 };
    let cam = &pred.pred_cam.data()[i * 3..i * 3 + 3];
    [cam[0], sign * cam[1], cam[2]]
}

/// The full-image camera of HaMeR's demo `cam_crop_to_full` (SPEC §4): `(cam_t_full,
/// focal_full)` with `focal_full = focal / image_size · max(W, H)`, for the principal point at
/// the image centre `(W/2, H/2)` (see [`crate::synth::camera::Camera::full_image`]).
pub fn full_camera(
    model: &HandModel,
    cbox: &CropBox,
    cam: [f32; 3],
    img: &RgbImage,
) -> ([f64; 3], f64) {
    let (w, h) = (img.width as f64, img.height as f64);
    let f_full = model.config.focal_length / model.config.image_size as f64 * w.max(h);
    let bs = cbox.box_size * cam[0] as f64 + 1e-9;
    let cam_t_full = [
        2.0 * (cbox.center[0] - w / 2.0) / bs + cam[1] as f64,
        2.0 * (cbox.center[1] - h / 2.0) / bs + cam[2] as f64,
        2.0 * f_full / bs,
    ];
    (cam_t_full, f_full)
}

/// The result of hand `i` of a batch as JSON, in the original image's frame: left hands are
/// un-mirrored (x of joints and vertices negated, `tx` negated; the covariance follows, Σ ↦ DΣD
/// with D flipping every x), 2D keypoints in image pixels, the camera for the full image.
pub fn hand_json(
    model: &HandModel,
    pred: &Prediction,
    i: usize,
    hand: &HandCrop,
    img: &RgbImage,
) -> Value {
    let size = model.config.image_size as f64;
    let sign = if hand.cbox.is_right { 1.0f32 } else { -1.0 };
    let kp3 = hand_keypoints_3d(pred, i, hand.cbox.is_right);
    let verts = hand_vertices(pred, i, hand.cbox.is_right);
    let cam = hand_pred_cam(pred, i, hand.cbox.is_right);
    let cam_t = &pred.pred_cam_t.data()[i * 3..i * 3 + 3];
    let cam_t = [sign * cam_t[0], cam_t[1], cam_t[2]];
    let (cam_t_full, f_full) = full_camera(model, &hand.cbox, cam, img);
    let kp2: Vec<[f64; 2]> = pred.pred_keypoints_2d.data()[i * 42..(i + 1) * 42]
        .chunks(2)
        .map(|k| {
            let uv = [(k[0] as f64 + 0.5) * size, (k[1] as f64 + 0.5) * size];
            crop_to_image(&hand.affine, uv, !hand.cbox.is_right, img.width)
        })
        .collect();
    let mut v = json!({
        "is_right": hand.cbox.is_right,
        "box": {"center": hand.cbox.center, "size": hand.cbox.box_size},
        "mano": {
            "note": "rotation matrices and betas of the right hand the network saw (mirrored input for a left hand)",
            "global_orient": rows(&pred.global_orient.data()[i * 9..(i + 1) * 9], 3),
            "hand_pose": pred.hand_pose.data()[i * 135..(i + 1) * 135].chunks(9).map(|r| rows(r, 3)).collect::<Vec<_>>(),
            "betas": &pred.betas.data()[i * 10..(i + 1) * 10],
        },
        "pred_cam": cam,
        "cam_t": cam_t,
        "cam_t_full": cam_t_full,
        "focal_length_full": f_full,
        "keypoints_3d": rows(&kp3, 3),
        "keypoints_2d": kp2,
        "vertices": rows(&verts, 3),
    });
    if let (Some(u), Some(cov)) = (
        &pred.uncertainty,
        hand_covariance(pred, i, hand.cbox.is_right),
    ) {
        v["joint_uncertainty"] = json!(&u.joint_uncertainty.data()[i * 21..(i + 1) * 21]);
        v["keypoint_3d_cov"] = json!(rows(&cov, 63));
    }
    v
}

/// A mesh as Wavefront OBJ text (`verts` flat `[V·3]`, 1-based faces). A left hand's mesh is
/// mirrored, so its faces are written with the opposite winding to keep normals outward.
pub fn obj_text(verts: &[f32], faces: &[[u32; 3]], is_right: bool) -> String {
    let mut s = String::with_capacity(verts.len() * 14 + faces.len() * 20);
    for p in verts.chunks(3) {
        s.push_str(&format!("v {:.6} {:.6} {:.6}\n", p[0], p[1], p[2]));
    }
    for f in faces {
        let (a, b, c) = if is_right {
            (f[0], f[1], f[2])
        } else {
            (f[0], f[2], f[1])
        };
        s.push_str(&format!("f {} {} {}\n", a + 1, b + 1, c + 1));
    }
    s
}

/// What `infer --render` draws of one hand: mesh, keypoints and per-joint 3×3 covariance blocks
/// in the hand's own handedness (MANO frame), and the full-image camera.
pub struct HandRender {
    pub vertices: Vec<f32>,
    pub keypoints_3d: Vec<f32>,
    pub joint_cov: Option<Vec<[f64; 9]>>,
    pub cam_t_full: [f64; 3],
    pub focal_full: f64,
    /// Side of the hand's crop box in image pixels (sets the line widths).
    pub box_size: f64,
}

/// The [`HandRender`] of hand `i` of a batch.
pub fn hand_render(
    model: &HandModel,
    pred: &Prediction,
    i: usize,
    hand: &HandCrop,
    img: &RgbImage,
) -> Result<HandRender> {
    let is_right = hand.cbox.is_right;
    let cam = hand_pred_cam(pred, i, is_right);
    let (cam_t_full, focal_full) = full_camera(model, &hand.cbox, cam, img);
    let joint_cov = hand_covariance(pred, i, is_right)
        .map(|c| crate::synth::camera::joint_blocks(&c, 21))
        .transpose()?;
    Ok(HandRender {
        vertices: hand_vertices(pred, i, is_right),
        keypoints_3d: hand_keypoints_3d(pred, i, is_right),
        joint_cov,
        cam_t_full,
        focal_full,
        box_size: hand.cbox.box_size,
    })
}

/// `infer --render`: the image with every hand's shaded mesh, skeleton and per-joint 2σ
/// ellipses at full-image scale, through the full-image camera ([`full_camera`]).
pub fn render_image(img: &RgbImage, hands: &[HandRender], faces: &[[u32; 3]]) -> Result<RgbImage> {
    use crate::synth::camera::Camera;
    use crate::synth::overlay::{overlay_hands, HandDraw, OverlayStyle};
    use crate::synth::raster::{points_from_flat, MeshView};
    let draws = hands
        .iter()
        .map(|h| {
            Ok(HandDraw {
                mesh: MeshView::from_flat(&h.vertices, faces)?,
                cam: Camera::full_image(h.focal_full, img.width, img.height, h.cam_t_full),
                keypoints_3d: points_from_flat(&h.keypoints_3d)?,
                joint_cov: h.joint_cov.as_deref(),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    overlay_hands(
        img,
        &draws,
        &OverlayStyle::scaled_for(hands.iter().map(|h| h.box_size).fold(0.0, f64::max) as usize),
    )
}

/// Loads an image for inference (a clear error for a missing file or a non-image).
pub fn load_image(path: &Path) -> Result<RgbImage> {
    load_rgb(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boxes_parse_both_forms() {
        let b = parse_boxes(
            r#"{"a.jpg": {"center": [100, 80], "scale": 0.5, "is_right": false},
                "b.png": [{"bbox": [10, 20, 50, 60]}, {"center": [5, 5], "scale": [0.3, 0.6]}]}"#,
            "boxes.json",
        )
        .unwrap();
        let a = &b["a.jpg"][0];
        assert!(!a.is_right);
        assert_eq!(a.box_size, 100.0 * 4.0 / 3.0); // 100×100 px box expanded to 3:4
        assert_eq!(b["b.png"].len(), 2);
        assert_eq!(b["b.png"][0].center, [30.0, 40.0]);
        assert_eq!(b["b.png"][0].box_size, 80.0 * 4.0 / 3.0);
        assert_eq!(b["b.png"][1].box_size, 120.0);
    }

    #[test]
    fn malformed_boxes_are_errors() {
        for bad in [
            "[1, 2",
            r#"{"a.jpg": {"center": [1, 2]}}"#,
            r#"{"a.jpg": {"bbox": [5, 5, 1, 1]}}"#,
            r#"{"a.jpg": {"center": [1, 2], "scale": -1}}"#,
            r#"{"a.jpg": {"center": [1, 2], "scale": 1, "colour": "red"}}"#,
        ] {
            let e = parse_boxes(bad, "boxes.json").unwrap_err().to_string();
            assert!(e.contains("boxes.json"), "{e}");
        }
        // Each type error names the image, the hand and the field.
        for (bad, want) in [
            (
                r#"{"a.jpg": {"center": 1, "scale": 1}}"#,
                "\"a.jpg\" hand 0: `center` is 1",
            ),
            (
                r#"{"a.jpg": [{"bbox": [1, 2, 3, 4]}, {"center": [1, 2], "scale": "x"}]}"#,
                "hand 1: `scale` is \"x\"",
            ),
            (
                r#"{"a.jpg": {"center": [1, 2], "scale": 1, "is_right": "yes"}}"#,
                "`is_right` is \"yes\", expected true or false",
            ),
            (r#"{"a.jpg": null}"#, "hand 0: expected an object"),
            (
                r#"{"a.jpg": {"center": [1e300, 2], "scale": 1}}"#,
                "not within",
            ),
            (
                r#"{"a.jpg": {"center": [1, 2], "scale": 1e300}}"#,
                "must be between 1 and",
            ),
            (
                r#"{"a.jpg": {"center": [1, 2], "center": [9, 9], "scale": 1}}"#,
                "\"center\" appears twice",
            ),
            (
                r#"{"a.jpg": {"bbox": [1, 2, 3, 4]}, "a.jpg": {"bbox": [1, 2, 3, 4]}}"#,
                "\"a.jpg\" appears twice",
            ),
            (r#"[{"bbox": [1, 2, 3, 4]}]"#, "top level is not an object"),
        ] {
            let e = parse_boxes(bad, "boxes.json").unwrap_err().to_string();
            assert!(e.contains(want), "{bad}: {e}");
        }
    }
}
