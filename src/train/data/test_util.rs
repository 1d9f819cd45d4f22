//! Tiny data sets on disk for the data tests.

use crate::ops::image::RgbImage;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

/// A scratch directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(name: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!(
            "handcov-data-{name}-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A deterministic, textured `w×h` RGB image (distinct per `seed`).
pub fn test_image(w: usize, h: usize, seed: u32) -> RgbImage {
    let mut data = Vec::with_capacity(w * h * 3);
    for y in 0..h {
        for x in 0..w {
            for c in 0..3u32 {
                let v = (x as u32 * (7 + c) + y as u32 * (13 + 2 * c) + seed * 31 + c * 50)
                    .wrapping_mul(2654435761)
                    >> 24;
                data.push(v as u8);
            }
        }
    }
    RgbImage::from_raw(w, h, data).unwrap()
}

/// Writes `img` as a PNG at `path` (directories created).
pub fn write_png(path: &Path, img: &RgbImage) {
    if let Some(p) = path.parent() {
        std::fs::create_dir_all(p).unwrap();
    }
    image::RgbImage::from_raw(img.width as u32, img.height as u32, img.data.clone())
        .unwrap()
        .save(path)
        .unwrap();
}

/// A valid annotation: 21 visible 2D keypoints around `center`, 3D keypoints whose joint-0
/// z is `10 + id` (so an item can be recognised after augmentation: z is unchanged by the
/// flip and the in-plane rotation), MANO parameters with all flags.
pub fn annotation(image: &str, center: [f64; 2], scale: f64, is_right: bool, id: usize) -> Value {
    let kp2: Vec<Value> = (0..21)
        .map(|k| {
            json!([
                center[0] + k as f64 - 10.0,
                center[1] + 0.5 * k as f64 - 5.0,
                0.9
            ])
        })
        .collect();
    let kp3: Vec<Value> = (0..21)
        .map(|k| {
            let z = if k == 0 { 10.0 + id as f64 } else { 0.5 };
            json!([0.01 * k as f64, -0.02 * k as f64, z, 1.0])
        })
        .collect();
    let hp: Vec<f64> = (0..45).map(|i| 0.01 * i as f64 - 0.2).collect();
    json!({
        "image": image,
        "center": center,
        "scale": scale,
        "is_right": is_right,
        "keypoints_2d": kp2,
        "keypoints_3d": kp3,
        "mano": {
            "global_orient": [0.3, -0.2, 0.1],
            "hand_pose": hp,
            "betas": [0.5, -0.5, 0.1, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0]
        },
        "has_mano": {"global_orient": true, "hand_pose": true, "betas": true}
    })
}

/// Writes `annotations.jsonl` (one line per value) into `dir`.
pub fn write_annotations(dir: &Path, items: &[Value]) {
    let text: String = items.iter().map(|v| format!("{v}\n")).collect();
    std::fs::write(dir.join(super::ANNOTATIONS_FILE), text).unwrap();
}

/// A data set of `n` items in `dir`: images `img/{i}.png` of varying sizes (the image of every
/// index in `missing` is not written), alternating right and left hands.
pub fn build_set(dir: &Path, n: usize, missing: &[usize]) {
    let mut anns = Vec::new();
    for i in 0..n {
        let (w, h) = (40 + 4 * i, 30 + 2 * (i % 3));
        let name = format!("img/{i}.png");
        if !missing.contains(&i) {
            write_png(&dir.join(&name), &test_image(w, h, i as u32));
        }
        anns.push(annotation(
            &name,
            [w as f64 / 2.0 + 1.0, h as f64 / 2.0 - 1.0],
            0.1 + 0.01 * i as f64,
            i % 2 == 0,
            i,
        ));
    }
    write_annotations(dir, &anns);
}
