//! `annotations.jsonl`: parsing, validation and the per-item filters of SPEC §1.5.

use crate::error::{Error, Result};
use crate::ops::mano::NUM_KEYPOINTS;
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// The annotation file inside a training-set directory.
pub const ANNOTATIONS_FILE: &str = "annotations.jsonl";
/// `SUPPRESS_KP_CONF_THRESH`: 2D keypoints below this confidence get confidence 0.
pub const SUPPRESS_KP_CONF_THRESH: f32 = 0.3;
/// `FILTER_NUM_KP`: an item needs more than this many 2D keypoints with confidence > 0.
pub const FILTER_NUM_KP: usize = 4;
/// `FILTER_REPROJ_THRESH`: items whose fitting reprojection loss is at least this are dropped.
pub const FILTER_REPROJ_THRESH: f64 = 31000.0;
/// `SUPPRESS_BETAS_THRESH`: betas with any |β| above this are not used as labels.
pub const BETAS_THRESH: f32 = 3.0;

/// MANO parameters, axis-angle.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ManoParams {
    pub global_orient: [f32; 3],
    pub hand_pose: [f32; 45],
    pub betas: [f32; 10],
}

impl Default for ManoParams {
    fn default() -> Self {
        ManoParams {
            global_orient: [0.0; 3],
            hand_pose: [0.0; 45],
            betas: [0.0; 10],
        }
    }
}

/// Which MANO parameters of an item are labels.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HasMano {
    pub global_orient: bool,
    pub hand_pose: bool,
    pub betas: bool,
}

/// One validated line of `annotations.jsonl`.
#[derive(Clone, Debug, PartialEq)]
pub struct Annotation {
    /// Image path relative to the data directory.
    pub image: PathBuf,
    pub center: [f64; 2],
    /// Box side(s) / 200, `[w, h]` (a single value is tiled).
    pub scale: [f64; 2],
    pub is_right: bool,
    /// `[x, y, conf]`, image pixels.
    pub keypoints_2d: [[f32; 3]; NUM_KEYPOINTS],
    /// `[x, y, z, conf]`, metres.
    pub keypoints_3d: [[f32; 4]; NUM_KEYPOINTS],
    pub mano: ManoParams,
    pub has_mano: HasMano,
    pub reprojection_loss: Option<f64>,
    pub key: Option<String>,
    /// 1-based line number in `annotations.jsonl` (0 when built in code).
    pub line: usize,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawItem {
    image: String,
    center: Vec<f64>,
    scale: serde_json::Value,
    is_right: bool,
    keypoints_2d: Vec<Vec<f64>>,
    keypoints_3d: Vec<Vec<f64>>,
    #[serde(default)]
    mano: Option<RawMano>,
    #[serde(default)]
    has_mano: Option<RawHasMano>,
    #[serde(default)]
    reprojection_loss: Option<f64>,
    #[serde(default)]
    key: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMano {
    global_orient: Vec<f64>,
    hand_pose: Vec<f64>,
    betas: Vec<f64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHasMano {
    global_orient: bool,
    hand_pose: bool,
    betas: bool,
}

/// `v` as `N` finite f32 values, or a message naming `what`.
fn fixed<const N: usize>(what: &str, v: &[f64]) -> std::result::Result<[f32; N], String> {
    if v.len() != N {
        return Err(format!("`{what}` has {} values, expected {N}", v.len()));
    }
    let mut out = [0f32; N];
    for (i, (o, &x)) in out.iter_mut().zip(v).enumerate() {
        *o = x as f32;
        if !o.is_finite() {
            return Err(format!("`{what}`[{i}] = {x:e} is not a finite float32"));
        }
    }
    Ok(out)
}

/// A `[NUM_KEYPOINTS][N]` array of finite f32 values.
fn keypoints<const N: usize>(
    what: &str,
    rows: &[Vec<f64>],
) -> std::result::Result<[[f32; N]; NUM_KEYPOINTS], String> {
    if rows.len() != NUM_KEYPOINTS {
        return Err(format!(
            "`{what}` has {} rows, expected {NUM_KEYPOINTS} × {N}",
            rows.len()
        ));
    }
    let mut out = [[0f32; N]; NUM_KEYPOINTS];
    for (k, (o, r)) in out.iter_mut().zip(rows).enumerate() {
        *o = fixed::<N>(&format!("{what}[{k}]"), r)?;
    }
    Ok(out)
}

/// The confidences (last column) of keypoint rows lie in [0, 1].
fn confidences<const N: usize>(
    what: &str,
    rows: &[[f32; N]; NUM_KEYPOINTS],
) -> std::result::Result<(), String> {
    for (k, r) in rows.iter().enumerate() {
        let c = r[N - 1];
        if !(0.0..=1.0).contains(&c) {
            return Err(format!(
                "`{what}[{k}]` has confidence {}, expected a value in [0, 1]",
                if c.abs() < 1e6 {
                    format!("{c}")
                } else {
                    format!("{c:e}")
                }
            ));
        }
    }
    Ok(())
}

/// Parses and validates one line of `annotations.jsonl` (no filters applied). The error is a
/// message without the file/line prefix, which [`TrainSet::open`] adds.
pub fn parse_annotation(line: &str) -> std::result::Result<Annotation, String> {
    let raw: RawItem = serde_json::from_str(line).map_err(|e| e.to_string())?;
    if raw.image.is_empty() {
        return Err("`image` is empty".into());
    }
    let image = PathBuf::from(&raw.image);
    if image.is_absolute() || raw.image.starts_with('/') || raw.image.starts_with('\\') {
        return Err(format!(
            "`image` {:?} must be relative to the data directory",
            raw.image
        ));
    }
    if raw.image.split(['/', '\\']).any(|c| c == "..") {
        return Err(format!(
            "`image` {:?} must stay inside the data directory (no `..`)",
            raw.image
        ));
    }
    if raw.center.len() != 2 {
        return Err(format!(
            "`center` has {} values, expected 2",
            raw.center.len()
        ));
    }
    let center = [raw.center[0], raw.center[1]];
    if let Some(v) = center.iter().find(|v| !(**v as f32).is_finite()) {
        return Err(format!("`center` value {v:e} is not a finite float32"));
    }
    let scale = match &raw.scale {
        serde_json::Value::Number(n) => {
            let s = n.as_f64().unwrap_or(f64::NAN);
            [s, s]
        }
        serde_json::Value::Array(a) if a.len() == 1 || a.len() == 2 => {
            let v: Vec<f64> = a.iter().map(|x| x.as_f64().unwrap_or(f64::NAN)).collect();
            [v[0], v[v.len() - 1]]
        }
        other => {
            return Err(format!(
                "`scale` must be a number or [w, h], got {}",
                short(other)
            ))
        }
    };
    if !scale.iter().all(|s| s.is_finite() && *s > 0.0) {
        return Err(format!(
            "`scale` {} must hold positive finite numbers",
            short(&raw.scale)
        ));
    }
    // The crop is computed in float32 (SPEC §1.4), from the box side scale·200.
    for s in scale {
        let side = (s * 200.0) as f32;
        if !side.is_finite() {
            return Err(format!(
                "`scale` {s:e} is too large: the box side scale·200 is not a finite float32"
            ));
        }
        if !(s as f32).is_normal() || !side.is_normal() {
            return Err(format!(
                "`scale` {s:e} is too small: it is zero (or denormal) as a float32"
            ));
        }
    }
    // The crop's corners are float32 centre ± half the side: far enough out, float32 cannot
    // tell them apart and the crop degenerates. Ask for 1/1024 of the side (a fraction of a
    // crop pixel) or better.
    let side = scale[0].max(scale[1]) * 200.0;
    for c in center {
        let c32 = (c as f32).abs();
        let ulp = f32::from_bits(c32.to_bits() + 1) - c32;
        if ulp as f64 > side / 1024.0 {
            return Err(format!(
                "`center` value {c:e} is too far out for a box of side {side:e} px: float32 \
                 cannot place the crop there"
            ));
        }
    }
    let keypoints_2d = keypoints::<3>("keypoints_2d", &raw.keypoints_2d)?;
    let keypoints_3d = keypoints::<4>("keypoints_3d", &raw.keypoints_3d)?;
    confidences("keypoints_2d", &keypoints_2d)?;
    confidences("keypoints_3d", &keypoints_3d)?;
    let (mano, has_mano) = match (raw.mano, raw.has_mano) {
        (Some(m), has) => {
            let p = ManoParams {
                global_orient: fixed("mano.global_orient", &m.global_orient)?,
                hand_pose: fixed("mano.hand_pose", &m.hand_pose)?,
                betas: fixed("mano.betas", &m.betas)?,
            };
            let h = has.map_or(
                HasMano {
                    global_orient: true,
                    hand_pose: true,
                    betas: true,
                },
                |h| HasMano {
                    global_orient: h.global_orient,
                    hand_pose: h.hand_pose,
                    betas: h.betas,
                },
            );
            (p, h)
        }
        (None, Some(h)) if h.global_orient || h.hand_pose || h.betas => {
            return Err("`has_mano` marks parameters as present but there is no `mano`".into())
        }
        (None, _) => (ManoParams::default(), HasMano::default()),
    };
    Ok(Annotation {
        image,
        center,
        scale,
        is_right: raw.is_right,
        keypoints_2d,
        keypoints_3d,
        mano,
        has_mano,
        reprojection_loss: raw.reprojection_loss,
        key: raw.key,
        line: 0,
    })
}

fn short(v: &serde_json::Value) -> String {
    let s = v.to_string();
    if s.len() > 40 {
        format!(
            "{}…",
            &s[..s.char_indices().nth(40).map_or(s.len(), |(i, _)| i)]
        )
    } else {
        s
    }
}

/// Why the filters dropped an item.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dropped {
    /// At most [`FILTER_NUM_KP`] 2D keypoints with confidence > 0 (after suppression).
    FewKeypoints,
    /// `reprojection_loss ≥` [`FILTER_REPROJ_THRESH`].
    Reprojection,
}

/// The filters of SPEC §1.5 in the reference's order (see the module documentation). Returns
/// the item as training sees it, or why it is dropped; `betas_suppressed` is set when rule 4
/// cleared the betas flag.
pub fn apply_filters(
    mut a: Annotation,
    betas_suppressed: &mut bool,
) -> std::result::Result<Annotation, Dropped> {
    *betas_suppressed = false;
    for kp in a.keypoints_2d.iter_mut() {
        if kp[2] < SUPPRESS_KP_CONF_THRESH {
            kp[2] = 0.0;
        }
    }
    let visible = a.keypoints_2d.iter().filter(|k| k[2] > 0.0).count();
    if visible <= FILTER_NUM_KP {
        return Err(Dropped::FewKeypoints);
    }
    if a.reprojection_loss
        .is_some_and(|r| r >= FILTER_REPROJ_THRESH)
    {
        return Err(Dropped::Reprojection);
    }
    let h = &mut a.has_mano;
    if h.betas && a.mano.betas.iter().any(|b| b.abs() > BETAS_THRESH) {
        h.betas = false;
        *betas_suppressed = true;
    }
    let both = h.hand_pose && h.betas;
    h.hand_pose = both;
    h.betas = both;
    h.global_orient = h.global_orient && both;
    if !h.betas {
        h.betas = true;
        a.mano.betas = [0.0; 10];
    }
    Ok(a)
}

/// What [`TrainSet::open`] read and what the filters removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FilterStats {
    /// Annotation lines read (blank lines not counted).
    pub read: usize,
    pub kept: usize,
    pub dropped_few_keypoints: usize,
    pub dropped_reprojection: usize,
    /// Kept items whose betas were discarded for |β| > 3.
    pub betas_suppressed: usize,
}

impl std::fmt::Display for FilterStats {
    /// In words: `16 lines read, 0 kept: 16 with at most 4 keypoints of confidence ≥ 0.3,
    /// 0 with reprojection_loss ≥ 31000`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} annotation lines read, {} kept; dropped: {} with at most {FILTER_NUM_KP} 2D \
             keypoints of confidence ≥ {SUPPRESS_KP_CONF_THRESH}, {} with reprojection_loss ≥ \
             {FILTER_REPROJ_THRESH}",
            self.read, self.kept, self.dropped_few_keypoints, self.dropped_reprojection
        )
    }
}

/// A training set: the filtered items of one directory.
#[derive(Clone, Debug)]
pub struct TrainSet {
    dir: PathBuf,
    items: Vec<Annotation>,
    stats: FilterStats,
}

impl TrainSet {
    /// Reads `dir/annotations.jsonl`, validates every line and applies the filters. A malformed
    /// line is an error naming the file and the line number.
    pub fn open(dir: &Path) -> Result<TrainSet> {
        let path = dir.join(ANNOTATIONS_FILE);
        let text = crate::textfile::read_text(&path, "annotations file", 1 << 34)?;
        // A byte-order mark (some editors write one) is not part of the first line.
        let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
        let mut anns = Vec::new();
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let mut a = parse_annotation(line)
                .map_err(|m| Error::Input(format!("{}: line {}: {m}", path.display(), i + 1)))?;
            a.line = i + 1;
            anns.push(a);
        }
        Ok(TrainSet::from_annotations(dir, anns))
    }

    /// A training set from annotations built in code (images relative to `dir`); the filters
    /// are applied as by [`TrainSet::open`].
    pub fn from_annotations(dir: &Path, anns: Vec<Annotation>) -> TrainSet {
        let mut stats = FilterStats {
            read: anns.len(),
            ..FilterStats::default()
        };
        let mut items = Vec::with_capacity(anns.len());
        for a in anns {
            let mut suppressed = false;
            match apply_filters(a, &mut suppressed) {
                Ok(a) => {
                    stats.betas_suppressed += suppressed as usize;
                    items.push(a);
                }
                Err(Dropped::FewKeypoints) => stats.dropped_few_keypoints += 1,
                Err(Dropped::Reprojection) => stats.dropped_reprojection += 1,
            }
        }
        stats.kept = items.len();
        TrainSet {
            dir: dir.to_path_buf(),
            items,
            stats,
        }
    }

    /// Number of items after filtering.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The filtered items (flags and confidences as training sees them).
    pub fn items(&self) -> &[Annotation] {
        &self.items
    }

    pub fn stats(&self) -> FilterStats {
        self.stats
    }

    /// Full path of item `i`'s image.
    pub fn image_path(&self, i: usize) -> Option<PathBuf> {
        self.items.get(i).map(|a| self.dir.join(&a.image))
    }
}
