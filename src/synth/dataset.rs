//! The synthetic dataset: random plausible hands (poses from the prior of `synth::pose`, whose
//! joints move together as real hands' do, within the procedural hand's joint limits; shape,
//! global rotation, distance), rendered by our rasteriser over textured or noisy
//! backgrounds with random light and skin colour, then degraded by nuisances whose strength is
//! drawn per image — occluding patches over random joints, blur, noise, low contrast — so that
//! a model's true error varies from image to image and aleatoric uncertainty has something to
//! find. Every sample carries exact 2D / 3D keypoints, MANO parameters and its nuisance values.
//!
//! Written in two layouts the rest of the engine reads unchanged:
//! * `train/`: the training-set format (docs/training-data.md): `annotations.jsonl` +
//!   `images/*.jpg`, read by `train --data`;
//! * `test/`: the FreiHAND evaluation layout: `evaluation/rgb/%08d.jpg`, `evaluation_xyz.json`,
//!   `evaluation_verts.json`, `evaluation_K.json`, plus the evaluation set `eval_set.json`
//!   (`eval predict --samples`) and `nuisances.json`.
//!
//! Frames: the 3D labels (`keypoints_3d`, the evaluation GT) are in the MANO frame, exactly what
//! the model predicts (global orientation applied, no translation); the renderer's camera frame
//! is that frame translated by `t` (the engine's convention, `synth::camera`), with a focal
//! length of 5000 px per 256 px as HaMeR's. So on this data the reference's *unaligned* error
//! is the pose-and-shape error itself (on FreiHAND it also holds the hand-to-camera offset).
//!
//! Deterministic: sample `i` depends only on (seed, i) through the counter-based RNG, so a set
//! is the same bits on every machine and thread count.

use rayon::prelude::*;
use serde_json::json;
use std::io::Write;
use std::path::{Path, PathBuf};

use super::camera::{Camera, HAMER_CROP, HAMER_FOCAL};
use super::hand::pose_rotmats;
use super::pose::natural_pose;
use super::raster::{render, MeshView, Shading};
use crate::error::{Error, Result};
use crate::model::mano::Mano;
use crate::ops::image::RgbImage;
use crate::ops::mano::{mano_fwd_cpu, NUM_KEYPOINTS};
use crate::train::rng::Philox;

/// RNG stream of the generator (distinct from the trainer's streams).
const STREAM_SYNTH: u8 = 0x5d;

/// What to generate.
#[derive(Clone, Debug, PartialEq)]
pub struct SynthConfig {
    pub n_train: usize,
    pub n_test: usize,
    /// Side of the square images (pixels).
    pub image_px: usize,
    pub seed: u64,
    /// Probability that an image gets any nuisance at all. The default 0.5 was measured in the
    /// demo against 0.7: PA-MPJPE 16.6 against 17.1 mm and Pearson 0.44 against 0.41.
    pub nuisance_rate: f32,
}

impl Default for SynthConfig {
    fn default() -> Self {
        SynthConfig {
            n_train: 12_000,
            n_test: 600,
            image_px: 160,
            seed: 2025,
            nuisance_rate: 0.5,
        }
    }
}

impl SynthConfig {
    /// A short text that changes whenever the generated bits would (the cache key).
    pub fn key(&self) -> String {
        format!(
            "v7-{}-{}-{}-{}-{}",
            self.n_train, self.n_test, self.image_px, self.seed, self.nuisance_rate
        )
    }
}

/// The nuisances of one image (0 = none).
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct Nuisance {
    /// Joints (OpenPose order) whose 2D location an opaque patch covers.
    pub occluded: Vec<usize>,
    /// Patch side as a fraction of the hand box.
    pub occluder_size: f32,
    /// Gaussian blur σ in pixels.
    pub blur_sigma: f32,
    /// Additive Gaussian noise σ (0..1 intensity).
    pub noise_sigma: f32,
    /// Contrast factor (1 = unchanged).
    pub contrast: f32,
}

/// One generated hand.
pub struct Sample {
    pub image: RgbImage,
    /// Hand box centre and side in pixels.
    pub center: [f64; 2],
    pub box_side: f64,
    /// Keypoints in image pixels (OpenPose order).
    pub keypoints_2d: Vec<[f64; 2]>,
    /// Keypoints and vertices in the MANO frame, metres.
    pub keypoints_3d: Vec<[f32; 3]>,
    pub vertices: Vec<f32>,
    pub global_orient: [f32; 3],
    pub hand_pose: [f32; 45],
    pub betas: [f32; 10],
    pub cam_t: [f64; 3],
    pub focal: f64,
    pub nuisance: Nuisance,
}

/// Uniform numbers of sample `i` from the counter RNG.
struct Draw {
    p: Philox,
    k: u64,
}

impl Draw {
    fn new(seed: u64, i: u64) -> Draw {
        Draw {
            p: Philox::new(seed, STREAM_SYNTH, i, 0),
            k: 0,
        }
    }
    fn u(&mut self) -> f32 {
        self.k += 1;
        self.p.uniform(self.k)
    }
    fn range(&mut self, lo: f32, hi: f32) -> f32 {
        lo + (hi - lo) * self.u()
    }
    fn normal(&mut self) -> f32 {
        self.k += 1;
        self.p.normal(self.k)
    }
    fn below(&mut self, n: usize) -> usize {
        ((self.u() * n as f32) as usize).min(n.saturating_sub(1))
    }
}

/// A random global orientation (axis-angle): the palm (MANO's −y) turned towards the camera
/// (four in five hands) or away from it, tilted up to ~35° about a random axis, and turned
/// in-plane so the fingers (MANO's −x) point up the image give or take 40°, as most hand crops
/// show them (and as the model's 3:4 portrait window, SPEC §1.2, frames them best). Front and
/// back stay distinguishable (the thumb's side), so the pose is recoverable from the image.
fn global_orient(d: &mut Draw) -> [f32; 3] {
    use crate::train::data::{rodrigues, rodrigues_inv};
    let half_pi = std::f64::consts::FRAC_PI_2;
    let base = if d.u() < 0.8 { half_pi } else { -half_pi };
    let z = d.range(-1.0, 1.0) as f64;
    let phi = d.range(0.0, std::f32::consts::TAU) as f64;
    let r = (1.0 - z * z).max(0.0).sqrt();
    let tilt = d.range(0.0, 0.6) as f64;
    let spin = half_pi + d.range(-0.7, 0.7) as f64;
    let mul = |a: &[f64; 9], b: &[f64; 9]| {
        let mut m = [0f64; 9];
        for i in 0..3 {
            for j in 0..3 {
                m[i * 3 + j] = (0..3).map(|k| a[i * 3 + k] * b[k * 3 + j]).sum();
            }
        }
        m
    };
    let rz = rodrigues([0.0, 0.0, spin]);
    let rt = rodrigues([r * phi.cos() * tilt, r * phi.sin() * tilt, z * tilt]);
    let rx = rodrigues([base, 0.0, 0.0]);
    rodrigues_inv(&mul(&rz, &mul(&rt, &rx))).map(|v| v as f32)
}

/// A background: smooth value noise in two random colours plus random bars and blobs.
fn background(d: &mut Draw, px: usize) -> RgbImage {
    let mut img = RgbImage::new(px, px);
    let c0 = [d.u(), d.u(), d.u()];
    let c1 = [d.u(), d.u(), d.u()];
    let cells = 2 + d.below(6);
    let grid: Vec<f32> = (0..(cells + 1) * (cells + 1)).map(|_| d.u()).collect();
    let smooth = |t: f32| t * t * (3.0 - 2.0 * t);
    for y in 0..px {
        for x in 0..px {
            let fx = x as f32 / px as f32 * cells as f32;
            let fy = y as f32 / px as f32 * cells as f32;
            let (ix, iy) = ((fx as usize).min(cells - 1), (fy as usize).min(cells - 1));
            let (tx, ty) = (smooth(fx - ix as f32), smooth(fy - iy as f32));
            let g = |a: usize, b: usize| grid[b * (cells + 1) + a];
            let top = g(ix, iy) * (1.0 - tx) + g(ix + 1, iy) * tx;
            let bot = g(ix, iy + 1) * (1.0 - tx) + g(ix + 1, iy + 1) * tx;
            let v = top * (1.0 - ty) + bot * ty;
            let o = (y * px + x) * 3;
            for c in 0..3 {
                img.data[o + c] = ((c0[c] * (1.0 - v) + c1[c] * v) * 255.0) as u8;
            }
        }
    }
    for _ in 0..d.below(6) {
        let col = [d.u(), d.u(), d.u()].map(|v| (v * 255.0) as u8);
        let (x0, y0) = (d.below(px), d.below(px));
        let (w, h) = (1 + d.below(px / 2), 1 + d.below(px / 6));
        let vertical = d.u() < 0.5;
        let (w, h) = if vertical { (h, w) } else { (w, h) };
        for y in y0..(y0 + h).min(px) {
            for x in x0..(x0 + w).min(px) {
                let o = (y * px + x) * 3;
                img.data[o..o + 3].copy_from_slice(&col);
            }
        }
    }
    img
}

/// Separable Gaussian blur in place (σ in pixels; nothing below 0.3).
fn blur(img: &mut RgbImage, sigma: f32) {
    if sigma < 0.3 {
        return;
    }
    let r = (3.0 * sigma).ceil() as i64;
    let k: Vec<f32> = (-r..=r)
        .map(|i| (-(i * i) as f32 / (2.0 * sigma * sigma)).exp())
        .collect();
    let sum: f32 = k.iter().sum();
    let (w, h) = (img.width as i64, img.height as i64);
    for pass in 0..2 {
        let src = img.data.clone();
        for y in 0..h {
            for x in 0..w {
                let mut acc = [0f32; 3];
                for (j, kv) in k.iter().enumerate() {
                    let o = j as i64 - r;
                    let (sx, sy) = if pass == 0 {
                        ((x + o).clamp(0, w - 1), y)
                    } else {
                        (x, (y + o).clamp(0, h - 1))
                    };
                    let si = ((sy * w + sx) * 3) as usize;
                    for c in 0..3 {
                        acc[c] += kv * src[si + c] as f32;
                    }
                }
                let di = ((y * w + x) * 3) as usize;
                for (dst, a) in img.data[di..di + 3].iter_mut().zip(&acc) {
                    *dst = (a / sum).round().clamp(0.0, 255.0) as u8;
                }
            }
        }
    }
}

/// One sample: hand `i` of the stream `seed`.
pub fn sample(mano: &Mano, seed: u64, i: u64, px: usize, nuisance_rate: f32) -> Result<Sample> {
    let mut d = Draw::new(seed, i);
    let hand_pose = natural_pose(&mut || d.u());
    let mut betas = [0f32; 10];
    for b in betas.iter_mut() {
        *b = (0.8 * d.normal()).clamp(-2.5, 2.5);
    }
    let go = global_orient(&mut d);
    let rot = pose_rotmats(&go, &hand_pose);
    let data = mano.data();
    let nv = mano.num_verts();
    let mut verts = vec![0f32; nv * 3];
    let mut kp = vec![0f32; NUM_KEYPOINTS * 3];
    mano_fwd_cpu(&data, &rot, &betas, 1, &mut verts, &mut kp);
    // Camera: HaMeR's focal per pixel; the hand's extent fills 45–70 % of the image.
    let focal = HAMER_FOCAL / HAMER_CROP * px as f64;
    let pts: Vec<[f32; 3]> = verts.chunks(3).map(|v| [v[0], v[1], v[2]]).collect();
    let (mut lo, mut hi) = ([f64::MAX; 2], [f64::MIN; 2]);
    for p in &pts {
        for a in 0..2 {
            lo[a] = lo[a].min(p[a] as f64);
            hi[a] = hi[a].max(p[a] as f64);
        }
    }
    let extent = (hi[0] - lo[0]).max(hi[1] - lo[1]).max(1e-3);
    let fill = d.range(0.45, 0.7) as f64;
    let z = focal * extent / (fill * px as f64);
    let mid = [(lo[0] + hi[0]) / 2.0, (lo[1] + hi[1]) / 2.0];
    let jitter = 0.12 * px as f64;
    let off = [
        (d.range(-1.0, 1.0) as f64) * jitter * z / focal,
        (d.range(-1.0, 1.0) as f64) * jitter * z / focal,
    ];
    let t = [-mid[0] + off[0], -mid[1] + off[1], z];
    let cam = Camera {
        fx: focal,
        fy: focal,
        cx: px as f64 / 2.0,
        cy: px as f64 / 2.0,
        t,
    };
    // Skin colour with a little per-vertex variation; light from a random upper direction.
    let tone = d.range(0.35, 0.95);
    let base = [tone, tone * d.range(0.62, 0.8), tone * d.range(0.45, 0.65)];
    let colors: Vec<[f32; 3]> = (0..nv)
        .map(|_| {
            let k = 1.0 + 0.06 * d.normal();
            base.map(|c| (c * k).clamp(0.0, 1.0))
        })
        .collect();
    let faces = &mano.faces;
    let mesh = MeshView::new(&pts, faces).with_colors(&colors);
    let shading = Shading {
        ambient: d.range(0.25, 0.5),
        diffuse: d.range(0.5, 0.8),
        light_dir: [d.range(-0.8, 0.8), d.range(-0.2, 1.0), 1.0],
        ..Shading::default()
    };
    let r = render(&mesh, &cam, px, px, 2, &shading)?;
    let mut image = r.composite(&background(&mut d, px), 1.0)?;
    // Keypoints and the hand box.
    let kp3d: Vec<[f32; 3]> = kp.chunks(3).map(|v| [v[0], v[1], v[2]]).collect();
    let kp2d: Vec<[f64; 2]> = kp3d
        .iter()
        .map(|p| {
            cam.project(*p)
                .ok_or_else(|| Error::Input("synthetic hand behind the camera".into()))
        })
        .collect::<Result<_>>()?;
    let (mut blo, mut bhi) = ([f64::MAX; 2], [f64::MIN; 2]);
    for p in &kp2d {
        for a in 0..2 {
            blo[a] = blo[a].min(p[a]);
            bhi[a] = bhi[a].max(p[a]);
        }
    }
    let center = [(blo[0] + bhi[0]) / 2.0, (blo[1] + bhi[1]) / 2.0];
    // The training crop is the square box (SPEC §1.2: no 3:4 expansion at training) and the
    // ViT sees its central ¾ columns, so the box is sized for the hand to fit that window:
    // 1.3× the keypoints' height, or 1.3 × 4/3 × their width.
    let box_side = 1.3
        * (bhi[1] - blo[1])
            .max(4.0 / 3.0 * (bhi[0] - blo[0]))
            .max(8.0);
    // Nuisances, each with its own strength.
    let mut nz = Nuisance {
        contrast: 1.0,
        ..Default::default()
    };
    if d.u() < nuisance_rate {
        if d.u() < 0.6 {
            let k = 1 + d.below(8);
            nz.occluder_size = d.range(0.15, 0.4);
            let side = (nz.occluder_size as f64 * box_side).max(3.0);
            let col = [d.u(), d.u(), d.u()].map(|v| (v * 255.0) as u8);
            for _ in 0..k {
                let j = d.below(NUM_KEYPOINTS);
                if !nz.occluded.contains(&j) {
                    nz.occluded.push(j);
                }
                let c = kp2d[j];
                let (x0, y0) = (c[0] - side / 2.0, c[1] - side / 2.0);
                let (xs, ys) = (x0.max(0.0) as usize, y0.max(0.0) as usize);
                let (xe, ye) = (
                    ((x0 + side).max(0.0) as usize).min(px),
                    ((y0 + side).max(0.0) as usize).min(px),
                );
                for y in ys..ye {
                    for x in xs..xe {
                        let o = (y * px + x) * 3;
                        let n = (16.0 * d.normal()) as i32;
                        for (dst, &cv) in image.data[o..o + 3].iter_mut().zip(&col) {
                            *dst = (cv as i32 + n).clamp(0, 255) as u8;
                        }
                    }
                }
            }
            nz.occluded.sort_unstable();
        }
        if d.u() < 0.4 {
            nz.blur_sigma = d.range(0.5, 4.0);
            blur(&mut image, nz.blur_sigma);
        }
        if d.u() < 0.4 {
            nz.contrast = d.range(0.1, 0.8);
            let mean = image.data.iter().map(|&v| v as f32).sum::<f32>() / image.data.len() as f32;
            for v in image.data.iter_mut() {
                *v = (mean + (*v as f32 - mean) * nz.contrast)
                    .round()
                    .clamp(0.0, 255.0) as u8;
            }
        }
        if d.u() < 0.4 {
            nz.noise_sigma = d.range(0.02, 0.25);
            for v in image.data.iter_mut() {
                let n = nz.noise_sigma * 255.0 * d.normal();
                *v = (*v as f32 + n).round().clamp(0.0, 255.0) as u8;
            }
        }
    }
    Ok(Sample {
        image,
        center,
        box_side,
        keypoints_2d: kp2d,
        keypoints_3d: kp3d,
        vertices: verts,
        global_orient: go,
        hand_pose,
        betas,
        cam_t: t,
        focal,
        nuisance: nz,
    })
}

fn write_jpeg(path: &Path, img: &RgbImage) -> Result<()> {
    let mut buf = Vec::new();
    let mut enc = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut buf, 92);
    enc.encode(
        &img.data,
        img.width as u32,
        img.height as u32,
        image::ExtendedColorType::Rgb8,
    )
    .map_err(|e| Error::Input(format!("{}: JPEG encoding failed: {e}", path.display())))?;
    std::fs::write(path, buf).map_err(|e| Error::io(path, e))
}

fn round6(v: f64) -> f64 {
    (v * 1e6).round() / 1e6
}

/// Where a generated set lives.
#[derive(Clone, Debug)]
pub struct SynthPaths {
    pub root: PathBuf,
    /// Training-set directory (`train --data`).
    pub train: PathBuf,
    /// FreiHAND-layout evaluation root (GT json files) and its evaluation set.
    pub test: PathBuf,
    pub eval_set: PathBuf,
}

impl SynthPaths {
    pub fn new(root: &Path) -> SynthPaths {
        let test = root.join("test");
        SynthPaths {
            root: root.to_path_buf(),
            train: root.join("train"),
            eval_set: test.join("eval_set.json"),
            test,
        }
    }
}

/// A fingerprint of what the generator makes now for `cfg`: a 64-bit FNV-1a hash of the first
/// training and the first test sample (image, labels, nuisances). A set cached by an older
/// generator, or with another hand model, has another fingerprint even where the configuration
/// key is the same, so it is regenerated instead of silently reused.
pub fn fingerprint(cfg: &SynthConfig, mano: &Mano) -> Result<String> {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for &b in bytes {
            h = (h ^ b as u64).wrapping_mul(0x0100_0000_01b3);
        }
    };
    for i in [0, cfg.n_train as u64] {
        let s = sample(mano, cfg.seed, i, cfg.image_px, cfg.nuisance_rate)?;
        eat(&s.image.data);
        for v in s
            .keypoints_3d
            .iter()
            .flatten()
            .chain(&s.vertices)
            .chain(&s.hand_pose)
        {
            eat(&v.to_le_bytes());
        }
        for v in s.keypoints_2d.iter().flatten().chain(&s.cam_t) {
            eat(&v.to_le_bytes());
        }
        eat(format!("{:?}", s.nuisance).as_bytes());
    }
    Ok(format!("{h:016x}"))
}

/// The sizes of the files of a complete set under `root`: every single file by its path, and
/// the images of each split as one total. `Err` names the first missing file.
fn survey(root: &Path, cfg: &SynthConfig) -> std::result::Result<Vec<(String, u64)>, String> {
    let size = |rel: &str| -> std::result::Result<u64, String> {
        match std::fs::metadata(root.join(rel)) {
            Ok(m) if m.is_file() => Ok(m.len()),
            _ => Err(format!("{rel} is missing")),
        }
    };
    let mut out = Vec::new();
    for rel in [
        "train/annotations.jsonl",
        "test/evaluation_xyz.json",
        "test/evaluation_verts.json",
        "test/evaluation_K.json",
        "test/eval_set.json",
        "test/nuisances.json",
    ] {
        out.push((rel.to_string(), size(rel)?));
    }
    let mut total = 0;
    for i in 0..cfg.n_train {
        total += size(&format!("train/images/{i:06}.jpg"))?;
    }
    out.push((format!("train/images ({} files)", cfg.n_train), total));
    let mut total = 0;
    for k in 0..cfg.n_test {
        total += size(&format!("test/evaluation/rgb/{k:08}.jpg"))?;
    }
    out.push((format!("test/evaluation/rgb ({} files)", cfg.n_test), total));
    Ok(out)
}

/// Whether the set under `root` is the one `marker_text` (the `.complete` marker) describes:
/// the same stamp, and every file there with the size it had when the set was written.
/// `Err` says what differs.
fn check_complete(
    root: &Path,
    cfg: &SynthConfig,
    stamp: &str,
    marker_text: &str,
) -> std::result::Result<(), String> {
    let Some(sizes) = marker_text
        .strip_prefix(stamp)
        .and_then(|r| r.strip_prefix('\n'))
    else {
        return Err("it is from another configuration or generator version".into());
    };
    let now = survey(root, cfg)?;
    let recorded: Vec<&str> = sizes.lines().collect();
    if recorded.len() != now.len() {
        return Err("its completion marker lists other files".into());
    }
    for ((what, bytes), line) in now.iter().zip(recorded) {
        match line.split_once('\t') {
            Some((w, b)) if w == what && b == bytes.to_string() => {}
            Some((w, b)) if w == what => {
                return Err(format!("{what} has {bytes} bytes, {b} when it was written"))
            }
            _ => return Err("its completion marker lists other files".into()),
        }
    }
    Ok(())
}

/// Generates the set under `root` unless a complete one with the same configuration and
/// [`fingerprint`] is there. The `.complete` marker, written last, holds both and the size of
/// every file: a set that is incomplete (the generator was stopped), from another generator,
/// or damaged since (a file removed, emptied or cut short) is replaced by a new one.
///
/// The set is written into a staging folder beside `root` and renamed into place when
/// complete, and a stale set is renamed away before it is deleted, so that runs sharing the
/// cache never see a half-written set or delete each other's files: when two generate at
/// once, the first rename wins and the other uses its set. Returns the paths.
pub fn generate(root: &Path, cfg: &SynthConfig, mano: &Mano, log: bool) -> Result<SynthPaths> {
    let stamp = format!("{}\n{}", cfg.key(), fingerprint(cfg, mano)?);
    let why = match usable(root, cfg, &stamp) {
        Ok(()) => return Ok(SynthPaths::new(root)),
        Err(why) => why,
    };
    if root.exists() {
        if log {
            eprintln!(
                "synthetic set: {} is not usable ({why}); regenerating",
                root.display()
            );
        }
        discard(root, &format!("is not usable ({why})"))?;
    }
    let staging = sibling(root, "partial");
    let written = write_set(&staging, cfg, mano, &stamp, log);
    let published = written.and_then(|()| match std::fs::rename(&staging, root) {
        Ok(()) => Ok(()),
        // Another run published a set first: use it if it is complete.
        Err(_) if usable(root, cfg, &stamp).is_ok() => Ok(()),
        Err(e) => Err(Error::io(root, e)),
    });
    if staging.exists() {
        // Best effort: a left-over staging folder only wastes space.
        let _ = std::fs::remove_dir_all(&staging);
    }
    published?;
    Ok(SynthPaths::new(root))
}

/// Whether `root` holds a complete set of this configuration and generator; why not if not.
fn usable(root: &Path, cfg: &SynthConfig, stamp: &str) -> std::result::Result<(), String> {
    match std::fs::read_to_string(root.join(".complete")) {
        Ok(text) => check_complete(root, cfg, stamp, &text),
        Err(_) => Err("it has no completion marker (an interrupted generation?)".into()),
    }
}

/// A folder name beside `root` that no other process or thread uses:
/// `<root>.<what>-<pid>-<ns>-<count>`.
fn sibling(root: &Path, what: &str) -> PathBuf {
    static COUNT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let k = COUNT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let ns = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let mut name = root.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".{what}-{}-{ns}-{k}", std::process::id()));
    root.with_file_name(name)
}

/// Moves the stale set at `root` aside (atomically: a concurrent run either sees it or not)
/// and deletes it. One that another run moved first is already gone.
fn discard(root: &Path, why: &str) -> Result<()> {
    let aside = sibling(root, "stale");
    match std::fs::rename(root, &aside) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => {
            return Err(Error::Input(format!(
                "synthetic set {} {why} and cannot be moved away ({e}): delete it to regenerate",
                root.display()
            )))
        }
    }
    std::fs::remove_dir_all(&aside).map_err(|e| {
        Error::Input(format!(
            "the stale synthetic set moved to {} cannot be deleted ({e}): delete it",
            aside.display()
        ))
    })
}

/// Writes a whole set under `root` (a fresh folder), the completion marker last.
fn write_set(root: &Path, cfg: &SynthConfig, mano: &Mano, stamp: &str, log: bool) -> Result<()> {
    let paths = SynthPaths::new(root);
    let marker = root.join(".complete");
    let t0 = std::time::Instant::now();
    let mkdir = |p: &Path| std::fs::create_dir_all(p).map_err(|e| Error::io(p, e));
    mkdir(&paths.train.join("images"))?;
    mkdir(&paths.test.join("evaluation").join("rgb"))?;
    // Training split: samples 0..n_train.
    let lines: Vec<String> = (0..cfg.n_train)
        .into_par_iter()
        .map(|i| -> Result<String> {
            let s = sample(mano, cfg.seed, i as u64, cfg.image_px, cfg.nuisance_rate)?;
            let rel = format!("images/{i:06}.jpg");
            write_jpeg(&paths.train.join(&rel), &s.image)?;
            let line = json!({
                "image": rel,
                "center": [round6(s.center[0]), round6(s.center[1])],
                "scale": round6(s.box_side / 200.0),
                "is_right": true,
                "keypoints_2d": s.keypoints_2d.iter().map(|p| [round6(p[0]), round6(p[1]), 1.0]).collect::<Vec<_>>(),
                "keypoints_3d": s.keypoints_3d.iter().map(|p| [p[0], p[1], p[2], 1.0]).collect::<Vec<_>>(),
                "mano": {"global_orient": s.global_orient, "hand_pose": s.hand_pose.to_vec(), "betas": s.betas},
                "key": format!("synth/{i}"),
            });
            Ok(line.to_string())
        })
        .collect::<Result<_>>()?;
    let ann = paths.train.join("annotations.jsonl");
    let mut f = std::fs::File::create(&ann).map_err(|e| Error::io(&ann, e))?;
    for l in &lines {
        writeln!(f, "{l}").map_err(|e| Error::io(&ann, e))?;
    }
    if log {
        eprintln!(
            "synthetic set: {} training hands in {:.1} s",
            cfg.n_train,
            t0.elapsed().as_secs_f64()
        );
    }
    // Test split: samples n_train.. (disjoint draws of the same stream).
    let test: Vec<Sample> = (0..cfg.n_test)
        .into_par_iter()
        .map(|k| {
            let i = (cfg.n_train + k) as u64;
            let s = sample(mano, cfg.seed, i, cfg.image_px, cfg.nuisance_rate)?;
            let p = paths.test.join(format!("evaluation/rgb/{k:08}.jpg"));
            write_jpeg(&p, &s.image)?;
            Ok(s)
        })
        .collect::<Result<_>>()?;
    let n = test.len();
    let xyz: Vec<f32> = test
        .iter()
        .flat_map(|s| s.keypoints_3d.iter().flatten().copied())
        .collect();
    let verts: Vec<f32> = test
        .iter()
        .flat_map(|s| s.vertices.iter().copied())
        .collect();
    let to_points = |flat: &[f32], per: usize| {
        crate::eval::files::PointSets::new(n, per, flat.iter().map(|&v| v as f64).collect())
    };
    crate::eval::files::write_gt_points(
        &paths.test.join("evaluation_xyz.json"),
        &to_points(&xyz, NUM_KEYPOINTS)?,
    )?;
    crate::eval::files::write_gt_points(
        &paths.test.join("evaluation_verts.json"),
        &to_points(&verts, mano.num_verts())?,
    )?;
    let k_mats: Vec<_> = test
        .iter()
        .map(|s| {
            let c = cfg.image_px as f64 / 2.0;
            json!([[s.focal, 0.0, c], [0.0, s.focal, c], [0.0, 0.0, 1.0]])
        })
        .collect();
    let write_json = |p: PathBuf, v: serde_json::Value| {
        std::fs::write(&p, v.to_string()).map_err(|e| Error::io(&p, e))
    };
    write_json(paths.test.join("evaluation_K.json"), json!(k_mats))?;
    // The evaluation crop expands a box to 3:4 before taking its longer side (SPEC §1.2), the
    // training crop does not: a square box of ¾ the side gives the evaluation crop exactly the
    // training crop, so the model sees the hands at the scale it was trained on.
    let samples: Vec<_> = test
        .iter()
        .enumerate()
        .map(|(k, s)| {
            json!({
                "image": format!("evaluation/rgb/{k:08}.jpg"),
                "center": [round6(s.center[0]), round6(s.center[1])],
                "scale": round6(0.75 * s.box_side / 200.0),
                "is_right": true,
            })
        })
        .collect();
    write_json(
        paths.eval_set.clone(),
        json!({"dataset": "freihand", "source": "handcov synthetic", "samples": samples}),
    )?;
    let nz: Vec<_> = test
        .iter()
        .map(|s| json!({"nuisance": s.nuisance, "cam_t": s.cam_t}))
        .collect();
    write_json(paths.test.join("nuisances.json"), json!(nz))?;
    // The marker last: a set without it is incomplete.
    let sizes = survey(root, cfg).map_err(|m| {
        Error::Input(format!(
            "synthetic set {}: {m} after writing it",
            root.display()
        ))
    })?;
    let mut text = stamp.to_string();
    for (what, bytes) in sizes {
        text.push_str(&format!("\n{what}\t{bytes}"));
    }
    std::fs::write(&marker, &text).map_err(|e| Error::io(&marker, e))?;
    if log {
        eprintln!(
            "synthetic set: {} + {} hands in {:.1} s",
            cfg.n_train,
            n,
            t0.elapsed().as_secs_f64()
        );
    }
    Ok(())
}
