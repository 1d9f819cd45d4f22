//! A small deterministic software rasteriser for triangle meshes: perspective pinhole camera
//! ([`Camera`], the engine's axis and pixel conventions), near-plane and guard-band clipping,
//! a z-buffer, perspective-correct interpolation, smooth per-pixel shading from vertex normals
//! with one directional light plus ambient, optional per-vertex colours, supersampled coverage,
//! and compositing onto an RGB image.
//!
//! **Sampling and fill rule.** Each pixel is sampled at its centre, which is `(i, j)` in the
//! camera's pixel coordinates (= `(i + 0.5, j + 0.5)` with the image spanning `[0, W]×[0, H]`).
//! With `supersample = k` a pixel holds k×k samples on a regular grid, at the centres of its k×k
//! sub-pixels. Projected vertices are snapped to 1/256 of a sample and the edge functions are
//! evaluated exactly in integers, with the top-left rule (a sample exactly on an edge belongs to
//! the triangle for which that edge is a top edge — horizontal with the interior below, y down —
//! or a left edge). Two triangles sharing an edge therefore never both cover a sample and leave
//! no gap between them: a closed mesh renders without cracks or double coverage.
//!
//! **Depth.** The z-buffer holds camera-frame depth `z` (f32, metres), interpolated
//! perspective-correctly (`1/z` is affine in screen space); the nearer surface wins, and at an
//! exact tie the triangle drawn first. Triangles are clipped against the plane `z = near`
//! (and, so that projected coordinates stay bounded, against planes [`GUARD_BAND`] pixels
//! outside the image), so geometry behind the camera never draws. Degenerate triangles (zero
//! area after snapping, non-finite vertices) are skipped.
//!
//! **Shading.** Vertex normals are the area-weighted sums of the face normals. Lighting is
//! two-sided (a normal facing away from the viewer is flipped), so a mirrored mesh (a left hand,
//! whose faces wind the other way) shades the same. Colour =
//! `c · (ambient + diffuse · max(0, n·l)) + specular · max(0, n·h)^shininess`, `l` towards the
//! light, `h` the half vector; [`Shading::unlit`] outputs the interpolated colour unchanged.
//!
//! Work is split over bands of rows with rayon; every sample is written by one band, in the
//! fixed order of the faces, so the result does not depend on the thread count.

use super::camera::Camera;
use crate::error::{Error, Result};
use crate::ops::image::RgbImage;
use rayon::prelude::*;

/// Sub-sample precision of snapped vertex positions: 1/256 of a sample.
const SUBPIXEL: f64 = 256.0;
/// Triangles are clipped this many samples outside the image (keeps snapped coordinates small).
pub const GUARD_BAND: f64 = 2048.0;
/// Largest image side in samples (width or height × supersample).
pub const MAX_SAMPLES_SIDE: usize = 16384;
/// Rows of samples per parallel band.
const BAND: usize = 16;

/// A triangle mesh to draw: vertices in the model frame (the camera adds its translation),
/// faces as vertex indices, optional per-vertex RGB colours in `[0, 1]`.
#[derive(Clone, Copy, Debug)]
pub struct MeshView<'a> {
    pub vertices: &'a [[f32; 3]],
    pub faces: &'a [[u32; 3]],
    pub colors: Option<&'a [[f32; 3]]>,
}

impl<'a> MeshView<'a> {
    pub fn new(vertices: &'a [[f32; 3]], faces: &'a [[u32; 3]]) -> Self {
        MeshView {
            vertices,
            faces,
            colors: None,
        }
    }

    /// A mesh over flat `[V·3]` vertices (as `infer` keeps them).
    pub fn from_flat(vertices: &'a [f32], faces: &'a [[u32; 3]]) -> Result<Self> {
        Ok(MeshView::new(points_from_flat(vertices)?, faces))
    }

    pub fn with_colors(mut self, colors: &'a [[f32; 3]]) -> Self {
        self.colors = Some(colors);
        self
    }

    /// An error for a face index out of range or a colour list of the wrong length.
    pub fn validate(&self) -> Result<()> {
        let nv = self.vertices.len();
        if let Some((k, f)) = self
            .faces
            .iter()
            .enumerate()
            .find(|(_, f)| f.iter().any(|&i| i as usize >= nv))
        {
            return Err(Error::Input(format!(
                "mesh face {k} {f:?} refers to a vertex outside 0..{nv}"
            )));
        }
        if let Some(c) = self.colors {
            if c.len() != nv {
                return Err(Error::Input(format!(
                    "mesh has {nv} vertices but {} colours",
                    c.len()
                )));
            }
        }
        Ok(())
    }
}

/// Flat `[N·3]` coordinates viewed as `N` points; an error for a length not divisible by 3.
pub fn points_from_flat(v: &[f32]) -> Result<&[[f32; 3]]> {
    bytemuck::try_cast_slice(v).map_err(|_| {
        Error::Input(format!(
            "{} values is not a whole number of xyz triples",
            v.len()
        ))
    })
}

/// Area-weighted vertex normals (unit length; zero for a vertex on no proper face). Faces must
/// index inside `vertices` (see [`MeshView::validate`]); others are ignored.
pub fn vertex_normals(vertices: &[[f32; 3]], faces: &[[u32; 3]]) -> Vec<[f32; 3]> {
    let mut acc = vec![[0.0f64; 3]; vertices.len()];
    for f in faces {
        let idx = f.map(|i| i as usize);
        if idx.iter().any(|&i| i >= vertices.len()) {
            continue;
        }
        let p = idx.map(|i| vertices[i].map(|v| v as f64));
        let n = cross(sub(p[1], p[0]), sub(p[2], p[0]));
        if !n.iter().all(|v| v.is_finite()) {
            continue;
        }
        for &i in &idx {
            for k in 0..3 {
                acc[i][k] += n[k];
            }
        }
    }
    acc.iter()
        .map(|n| {
            let l = dot(*n, *n).sqrt();
            if l > 0.0 {
                n.map(|v| (v / l) as f32)
            } else {
                [0.0; 3]
            }
        })
        .collect()
}

/// Material and light. Directions are in the camera frame (x right, y down, z forward).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Shading {
    /// Colour of a mesh without per-vertex colours, RGB in `[0, 1]`.
    pub color: [f32; 3],
    pub ambient: f32,
    pub diffuse: f32,
    pub specular: f32,
    pub shininess: f32,
    /// The direction the light travels (from the light into the scene).
    pub light_dir: [f32; 3],
    /// Near clipping plane, `z = near` (metres, > 0).
    pub near: f32,
}

impl Default for Shading {
    /// HaMeR's light blue mesh colour, lit from above-left of the camera.
    fn default() -> Self {
        Shading {
            color: [0.651, 0.741, 0.859],
            ambient: 0.35,
            diffuse: 0.65,
            specular: 0.15,
            shininess: 24.0,
            light_dir: [0.3, 0.6, 1.0],
            near: 1e-3,
        }
    }
}

impl Shading {
    /// No lighting: each sample gets the interpolated (vertex or mesh) colour.
    pub fn unlit(color: [f32; 3]) -> Self {
        Shading {
            color,
            ambient: 1.0,
            diffuse: 0.0,
            specular: 0.0,
            ..Shading::default()
        }
    }
}

/// Colour and depth samples that meshes are drawn into, then resolved into a [`Render`].
pub struct Target {
    width: usize,
    height: usize,
    ss: usize,
    /// Shaded colour per sample (valid where the depth is finite).
    color: Vec<[f32; 3]>,
    /// Camera depth per sample, `+∞` where nothing was drawn.
    depth: Vec<f32>,
}

/// The resolved image: per pixel the mean colour of its covered samples, the covered fraction
/// (alpha, 0..1) and the nearest depth (`+∞` where empty).
#[derive(Clone, Debug)]
pub struct Render {
    pub width: usize,
    pub height: usize,
    pub color: Vec<[f32; 3]>,
    pub alpha: Vec<f32>,
    pub depth: Vec<f32>,
}

/// One vertex while clipping: camera-frame position, normal, colour.
#[derive(Clone, Copy)]
struct ClipVert {
    p: [f64; 3],
    n: [f32; 3],
    c: [f32; 3],
}

/// A triangle ready to rasterise (sample space, vertices ordered counter-clockwise on screen).
struct Tri {
    /// Edge functions `a·x + b·y + c` on snapped coordinates, one per vertex (the edge opposite).
    a: [i64; 3],
    b: [i64; 3],
    c: [i64; 3],
    /// 0 for a top-left edge, −1 otherwise.
    bias: [i64; 3],
    area: f64,
    /// Sample bounding box, inclusive.
    x0: usize,
    x1: usize,
    y0: usize,
    y1: usize,
    inv_z: [f32; 3],
    /// Per vertex: camera-frame position, normal, colour.
    p: [[f32; 3]; 3],
    n: [[f32; 3]; 3],
    col: [[f32; 3]; 3],
}

impl Target {
    /// An empty target of `width × height` pixels with `supersample²` samples per pixel.
    pub fn new(width: usize, height: usize, supersample: usize) -> Result<Self> {
        if width == 0 || height == 0 || !(1..=8).contains(&supersample) {
            return Err(Error::Input(format!(
                "render target {width}x{height} with supersample {supersample}: need a non-empty image and supersample 1..=8"
            )));
        }
        let (sw, sh) = (width * supersample, height * supersample);
        if sw > MAX_SAMPLES_SIDE || sh > MAX_SAMPLES_SIDE {
            return Err(Error::Input(format!(
                "render target {width}x{height} × supersample {supersample} exceeds {MAX_SAMPLES_SIDE} samples per side"
            )));
        }
        Ok(Target {
            width,
            height,
            ss: supersample,
            color: vec![[0.0; 3]; sw * sh],
            depth: vec![f32::INFINITY; sw * sh],
        })
    }

    pub fn width(&self) -> usize {
        self.width
    }

    pub fn height(&self) -> usize {
        self.height
    }

    /// Draws a mesh seen through `cam` (z-tested against everything drawn before).
    pub fn draw(&mut self, mesh: &MeshView, cam: &Camera, shading: &Shading) -> Result<()> {
        mesh.validate()?;
        cam.validate()?;
        if !(shading.near > 0.0 && shading.near.is_finite()) {
            return Err(Error::Input(format!(
                "near plane {} must be a positive number",
                shading.near
            )));
        }
        let tris = self.setup(mesh, cam, shading);
        let sw = self.width * self.ss;
        let light = normalize3(shading.light_dir.map(|v| -v as f64)).map(|v| v as f32);
        self.depth
            .par_chunks_mut(BAND * sw)
            .zip(self.color.par_chunks_mut(BAND * sw))
            .enumerate()
            .for_each(|(band, (depth, color))| {
                let r0 = band * BAND;
                let r1 = r0 + depth.len() / sw - 1;
                for t in &tris {
                    if t.y1 < r0 || t.y0 > r1 {
                        continue;
                    }
                    let (ya, yb) = (t.y0.max(r0), t.y1.min(r1));
                    raster_rows(t, r0, ya, yb, sw, depth, color, |t, l| {
                        shade(t, l, shading, light)
                    });
                }
            });
        Ok(())
    }

    /// Projects, clips and snaps every face.
    fn setup(&self, mesh: &MeshView, cam: &Camera, shading: &Shading) -> Vec<Tri> {
        let ss = self.ss as f64;
        let (sw, sh) = (
            (self.width * self.ss) as f64,
            (self.height * self.ss) as f64,
        );
        // The sample-space camera: a point at pixel coordinate u is at (u + 0.5)·ss − 0.5 in
        // sample coordinates (sample centres at integers, ss per pixel).
        let (fx, fy) = (cam.fx * ss, cam.fy * ss);
        let (cx, cy) = ((cam.cx + 0.5) * ss - 0.5, (cam.cy + 0.5) * ss - 0.5);
        let g = GUARD_BAND;
        // Half-spaces a·X ≥ 0 with X = (x, y, z, 1): near, then u ≥ −g, u ≤ sw−1+g, v likewise.
        let planes = [
            [0.0, 0.0, 1.0, -(shading.near as f64)],
            [fx, 0.0, cx + g, 0.0],
            [-fx, 0.0, sw - 1.0 + g - cx, 0.0],
            [0.0, fy, cy + g, 0.0],
            [0.0, -fy, sh - 1.0 + g - cy, 0.0],
        ];
        let pos: Vec<[f64; 3]> = mesh.vertices.iter().map(|&p| cam.to_camera(p)).collect();
        // Normals do not depend on the translation: taken in the model frame.
        let normals = vertex_normals(mesh.vertices, mesh.faces);
        let project = |p: [f64; 3]| -> [i64; 2] {
            let u = (fx * p[0] / p[2] + cx).clamp(-g - 1.0, sw + g);
            let v = (fy * p[1] / p[2] + cy).clamp(-g - 1.0, sh + g);
            [(u * SUBPIXEL).round() as i64, (v * SUBPIXEL).round() as i64]
        };
        let mut tris = Vec::with_capacity(mesh.faces.len());
        let mut poly = Vec::with_capacity(12);
        let mut scratch = Vec::with_capacity(12);
        for f in mesh.faces {
            let verts = f.map(|i| {
                let i = i as usize;
                ClipVert {
                    p: pos[i],
                    n: normals[i],
                    c: mesh.colors.map_or(shading.color, |c| c[i]),
                }
            });
            let finite = |v: &ClipVert| {
                v.p.iter().all(|x| x.is_finite()) && v.c.iter().all(|x| x.is_finite())
            };
            if !verts.iter().all(finite) {
                continue;
            }
            poly.clear();
            poly.extend_from_slice(&verts);
            for pl in &planes {
                clip_polygon(&poly, pl, &mut scratch);
                std::mem::swap(&mut poly, &mut scratch);
                if poly.len() < 3 {
                    break;
                }
            }
            for k in 1..poly.len().saturating_sub(1) {
                let v = [poly[0], poly[k], poly[k + 1]];
                if let Some(t) = make_tri(
                    v,
                    v.map(|v| project(v.p)),
                    self.width * self.ss,
                    self.height * self.ss,
                ) {
                    tris.push(t);
                }
            }
        }
        tris
    }

    /// Averages the samples of each pixel.
    pub fn resolve(&self) -> Render {
        let (w, h, ss) = (self.width, self.height, self.ss);
        let sw = w * ss;
        let n = (ss * ss) as f32;
        let mut color = vec![[0.0f32; 3]; w * h];
        let mut alpha = vec![0.0f32; w * h];
        let mut depth = vec![f32::INFINITY; w * h];
        for y in 0..h {
            for x in 0..w {
                let (mut c, mut k, mut z) = ([0.0f32; 3], 0usize, f32::INFINITY);
                for sy in 0..ss {
                    for sx in 0..ss {
                        let i = (y * ss + sy) * sw + x * ss + sx;
                        if self.depth[i].is_finite() {
                            k += 1;
                            z = z.min(self.depth[i]);
                            for (a, s) in c.iter_mut().zip(&self.color[i]) {
                                *a += s;
                            }
                        }
                    }
                }
                let o = y * w + x;
                if k > 0 {
                    color[o] = c.map(|v| v / k as f32);
                    alpha[o] = k as f32 / n;
                    depth[o] = z;
                }
            }
        }
        Render {
            width: w,
            height: h,
            color,
            alpha,
            depth,
        }
    }
}

/// Renders one mesh into a new `width × height` image (see [`Target`]).
pub fn render(
    mesh: &MeshView,
    cam: &Camera,
    width: usize,
    height: usize,
    supersample: usize,
    shading: &Shading,
) -> Result<Render> {
    let mut t = Target::new(width, height, supersample)?;
    t.draw(mesh, cam, shading)?;
    Ok(t.resolve())
}

impl Render {
    /// The silhouette: pixels with at least half their samples covered.
    pub fn mask(&self) -> Vec<bool> {
        self.alpha.iter().map(|&a| a >= 0.5).collect()
    }

    /// RGBA8, straight (not premultiplied) alpha = coverage.
    pub fn to_rgba8(&self) -> Vec<u8> {
        self.color
            .iter()
            .zip(&self.alpha)
            .flat_map(|(c, &a)| {
                let q = |v: f32| (v.clamp(0.0, 1.0) * 255.0).round() as u8;
                [q(c[0]), q(c[1]), q(c[2]), q(a)]
            })
            .collect()
    }

    /// `bg` with this render laid over it: `out = bg·(1 − αo) + 255·colour·αo`, α the coverage
    /// and o the opacity. An error if the sizes differ.
    pub fn composite(&self, bg: &RgbImage, opacity: f32) -> Result<RgbImage> {
        if bg.width != self.width || bg.height != self.height {
            return Err(Error::Input(format!(
                "cannot composite a {}x{} render onto a {}x{} image",
                self.width, self.height, bg.width, bg.height
            )));
        }
        let mut out = bg.clone();
        self.composite_onto(&mut out, [0, 0], opacity);
        Ok(out)
    }

    /// Lays this render over the window of `img` whose top-left pixel is `offset` (as
    /// [`Render::composite`]; the part outside `img` is dropped).
    pub fn composite_onto(&self, img: &mut RgbImage, offset: [usize; 2], opacity: f32) {
        let o = opacity.clamp(0.0, 1.0);
        for y in 0..self.height.min(img.height.saturating_sub(offset[1])) {
            for x in 0..self.width.min(img.width.saturating_sub(offset[0])) {
                let i = y * self.width + x;
                let a = self.alpha[i] * o;
                if a > 0.0 {
                    let j = ((y + offset[1]) * img.width + x + offset[0]) * 3;
                    for (d, s) in img.data[j..j + 3].iter_mut().zip(&self.color[i]) {
                        let c = s.clamp(0.0, 1.0) * 255.0;
                        *d = (*d as f32 * (1.0 - a) + c * a).round().clamp(0.0, 255.0) as u8;
                    }
                }
            }
        }
    }
}

/// Sutherland–Hodgman against one half-space `a·(x, y, z, 1) ≥ 0`; attributes interpolate
/// linearly in the camera frame (exact for a planar triangle).
fn clip_polygon(input: &[ClipVert], plane: &[f64; 4], out: &mut Vec<ClipVert>) {
    out.clear();
    let d = |v: &ClipVert| plane[0] * v.p[0] + plane[1] * v.p[1] + plane[2] * v.p[2] + plane[3];
    for (i, cur) in input.iter().enumerate() {
        let prev = &input[(i + input.len() - 1) % input.len()];
        let (dc, dp) = (d(cur), d(prev));
        if (dc >= 0.0) != (dp >= 0.0) {
            let t = dp / (dp - dc);
            let lerp = |a: f64, b: f64| a + (b - a) * t;
            let lerp32 = |a: f32, b: f32| a + (b - a) * t as f32;
            out.push(ClipVert {
                p: [0, 1, 2].map(|k| lerp(prev.p[k], cur.p[k])),
                n: [0, 1, 2].map(|k| lerp32(prev.n[k], cur.n[k])),
                c: [0, 1, 2].map(|k| lerp32(prev.c[k], cur.c[k])),
            });
        }
        if dc >= 0.0 {
            out.push(*cur);
        }
    }
}

/// Triangle setup on snapped coordinates; `None` for zero area or no sample in the image.
fn make_tri(mut v: [ClipVert; 3], mut s: [[i64; 2]; 3], sw: usize, sh: usize) -> Option<Tri> {
    let area2 = |s: &[[i64; 2]; 3]| {
        (s[1][0] - s[0][0]) * (s[2][1] - s[0][1]) - (s[1][1] - s[0][1]) * (s[2][0] - s[0][0])
    };
    let mut area = area2(&s);
    if area == 0 {
        return None;
    }
    if area < 0 {
        v.swap(1, 2);
        s.swap(1, 2);
        area = -area;
    }
    let sub = SUBPIXEL as i64;
    let min = |k: usize| s.iter().map(|p| p[k]).min().unwrap_or(0);
    let max = |k: usize| s.iter().map(|p| p[k]).max().unwrap_or(0);
    // Samples at integer coordinates: the first at or after min, the last at or before max.
    let lo = |m: i64| -((-m).div_euclid(sub));
    let hi = |m: i64| m.div_euclid(sub);
    let (x0, x1) = (lo(min(0)).max(0), hi(max(0)).min(sw as i64 - 1));
    let (y0, y1) = (lo(min(1)).max(0), hi(max(1)).min(sh as i64 - 1));
    if x0 > x1 || y0 > y1 {
        return None;
    }
    let (mut a, mut b, mut c, mut bias) = ([0i64; 3], [0i64; 3], [0i64; 3], [0i64; 3]);
    for k in 0..3 {
        // Edge from p to q, opposite vertex k; E(x, y) = (q−p)×(s−p) ≥ 0 inside.
        let (p, q) = (s[(k + 1) % 3], s[(k + 2) % 3]);
        let (dx, dy) = (q[0] - p[0], q[1] - p[1]);
        a[k] = -dy;
        b[k] = dx;
        c[k] = dy * p[0] - dx * p[1];
        // y down, interior on the left-hand side of p→q: top edge dy = 0, dx > 0; left dy < 0.
        bias[k] = if dy < 0 || (dy == 0 && dx > 0) { 0 } else { -1 };
    }
    Some(Tri {
        a,
        b,
        c,
        bias,
        area: area as f64,
        x0: x0 as usize,
        x1: x1 as usize,
        y0: y0 as usize,
        y1: y1 as usize,
        inv_z: v.map(|v| (1.0 / v.p[2]) as f32),
        p: v.map(|v| v.p.map(|x| x as f32)),
        n: v.map(|v| v.n),
        col: v.map(|v| v.c),
    })
}

/// Scans rows `ya..=yb` of a band starting at row `r0`: for each covered sample, the
/// perspective-correct depth (`1/z` interpolated with the screen-space barycentrics) is tested
/// against the buffer, and only a nearer sample is shaded, `shade(t, λ)` with `λ` the
/// perspective-correct barycentrics.
#[allow(clippy::too_many_arguments)]
fn raster_rows(
    t: &Tri,
    r0: usize,
    ya: usize,
    yb: usize,
    sw: usize,
    depth: &mut [f32],
    color: &mut [[f32; 3]],
    shade: impl Fn(&Tri, [f32; 3]) -> [f32; 3],
) {
    let sub = SUBPIXEL as i64;
    let inv_area = 1.0 / t.area;
    for y in ya..=yb {
        let py = y as i64 * sub;
        let px0 = t.x0 as i64 * sub;
        let mut e = [0, 1, 2].map(|k| t.a[k] * px0 + t.b[k] * py + t.c[k]);
        let step = t.a.map(|a| a * sub);
        let row = (y - r0) * sw;
        for x in t.x0..=t.x1 {
            if e[0] + t.bias[0] >= 0 && e[1] + t.bias[1] >= 0 && e[2] + t.bias[2] >= 0 {
                let pw = [0, 1, 2].map(|k| (e[k] as f64 * inv_area) as f32 * t.inv_z[k]);
                let sum = pw[0] + pw[1] + pw[2];
                let z = 1.0 / sum;
                let i = row + x;
                if z < depth[i] {
                    depth[i] = z;
                    color[i] = shade(t, pw.map(|w| w * z));
                }
            }
            for k in 0..3 {
                e[k] += step[k];
            }
        }
    }
}

/// `Σ λ_k a_k` over the three vertices.
fn mix(l: [f32; 3], a: &[[f32; 3]; 3]) -> [f32; 3] {
    [0, 1, 2].map(|c| l[0] * a[0][c] + l[1] * a[1][c] + l[2] * a[2][c])
}

/// The shaded colour at perspective-correct barycentrics `l`; `light` points towards the light.
fn shade(t: &Tri, l: [f32; 3], s: &Shading, light: [f32; 3]) -> [f32; 3] {
    let base = mix(l, &t.col);
    if s.diffuse == 0.0 && s.specular == 0.0 {
        return base.map(|c| c * s.ambient);
    }
    let view = normalize3f(mix(l, &t.p).map(|x| -x));
    let mut n = normalize3f(mix(l, &t.n));
    if n == [0.0; 3] {
        n = view;
    }
    if dot3f(n, view) < 0.0 {
        n = n.map(|x| -x);
    }
    let k = s.ambient + s.diffuse * dot3f(n, light).max(0.0);
    let spec = if s.specular > 0.0 {
        let h = normalize3f([0, 1, 2].map(|i| light[i] + view[i]));
        s.specular * dot3f(n, h).max(0.0).powf(s.shininess)
    } else {
        0.0
    };
    base.map(|c| (c * k + spec).clamp(0.0, 1.0))
}

fn dot3f(a: [f32; 3], b: [f32; 3]) -> f32 {
    a[0] * b[0] + a[1] * b[1] + a[2] * b[2]
}

fn normalize3f(a: [f32; 3]) -> [f32; 3] {
    let l = dot3f(a, a).sqrt();
    if l > 0.0 && l.is_finite() {
        a.map(|v| v / l)
    } else {
        [0.0; 3]
    }
}

fn sub(a: [f64; 3], b: [f64; 3]) -> [f64; 3] {
    [a[0] - b[0], a[1] - b[1], a[2] - b[2]]
}

fn cross(a: [f64; 3], b: [f64; 3]) -> [f64; 3] {
    [
        a[1] * b[2] - a[2] * b[1],
        a[2] * b[0] - a[0] * b[2],
        a[0] * b[1] - a[1] * b[0],
    ]
}

fn dot(a: [f64; 3], b: [f64; 3]) -> f64 {
    a[0] * b[0] + a[1] * b[1] + a[2] * b[2]
}

fn normalize3(a: [f64; 3]) -> [f64; 3] {
    let l = dot(a, a).sqrt();
    if l > 0.0 && l.is_finite() {
        a.map(|v| v / l)
    } else {
        [0.0; 3]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vert(x: f64, y: f64) -> ClipVert {
        ClipVert {
            p: [x, y, 1.0],
            n: [0.0, 0.0, -1.0],
            c: [1.0; 3],
        }
    }

    /// How many of `tris` cover each sample of a `w × h` grid, through the real scan loop.
    fn coverage_counts(tris: &[Tri], w: usize, h: usize) -> Vec<u32> {
        let mut count = vec![0u32; w * h];
        for t in tris {
            let mut depth = vec![f32::INFINITY; w * h];
            let mut color = vec![[0.0f32; 3]; w * h];
            raster_rows(t, 0, t.y0, t.y1, w, &mut depth, &mut color, |_, _| [0.0; 3]);
            for (c, d) in count.iter_mut().zip(&depth) {
                *c += d.is_finite() as u32;
            }
        }
        count
    }

    #[test]
    fn shared_edges_cover_each_sample_exactly_once() {
        // A 12×12 square of samples cut into a fan around an interior vertex plus a diagonal
        // split, vertices on sample centres (edges run exactly through samples), both windings.
        let (w, h) = (16, 16);
        let s = |x: f64, y: f64| [(x * SUBPIXEL) as i64, (y * SUBPIXEL) as i64];
        let ring = [
            (2.0, 2.0),
            (8.0, 2.0),
            (13.0, 2.0),
            (13.0, 9.0),
            (13.0, 13.0),
            (6.0, 13.0),
            (2.0, 13.0),
            (2.0, 7.0),
        ];
        let centre = (7.0, 6.0);
        let mut tris = Vec::new();
        for k in 0..ring.len() {
            let (a, b) = (ring[k], ring[(k + 1) % ring.len()]);
            let mut v = [vert(centre.0, centre.1), vert(a.0, a.1), vert(b.0, b.1)];
            let mut q = [s(centre.0, centre.1), s(a.0, a.1), s(b.0, b.1)];
            if k % 2 == 1 {
                v.swap(1, 2);
                q.swap(1, 2);
            }
            tris.push(make_tri(v, q, w, h).unwrap());
        }
        let count = coverage_counts(&tris, w, h);
        for y in 0..h {
            for x in 0..w {
                // Top-left rule on the square's own boundary: left column and top row are in,
                // right column and bottom row are out.
                let inside = (2..13).contains(&x) && (2..13).contains(&y);
                assert_eq!(count[y * w + x], inside as u32, "sample ({x}, {y})");
            }
        }
    }

    #[test]
    fn zero_area_and_offscreen_triangles_are_rejected() {
        let v = [vert(0.0, 0.0), vert(1.0, 1.0), vert(2.0, 2.0)];
        let q = [[0, 0], [256, 256], [512, 512]];
        assert!(make_tri(v, q, 8, 8).is_none());
        let q = [[-2560, -2560], [-2048, -2560], [-2560, -2048]];
        assert!(make_tri(v, q, 8, 8).is_none());
    }
}
