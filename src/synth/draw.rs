//! 2D drawing on the crate's [`RgbImage`]: alpha blending, anti-aliased lines, circles and
//! covariance ellipses, axis-aligned rectangles, text in the built-in bitmap font
//! ([`super::font`]), and PNG encoding.
//!
//! Coordinates are in the engine's pixel convention (the centre of pixel `(i, j)` is at `(i, j)`,
//! as for the rasteriser and `infer`'s 2D keypoints). Shapes are anti-aliased from an estimate of
//! the signed distance `d` of each pixel centre to the shape's edge (negative inside): coverage
//! `clamp(0.5 − d, 0, 1)` times the given alpha. Everything is clipped to the image, and
//! non-finite geometry draws nothing.

use super::font;
use crate::error::{Error, Result};
use crate::ops::image::RgbImage;
use std::path::Path;

pub type Rgb = [u8; 3];

/// Blends `color` into pixel `(x, y)` with opacity `alpha` (0..1); outside the image: nothing.
pub fn blend(img: &mut RgbImage, x: i64, y: i64, color: Rgb, alpha: f32) {
    if x < 0
        || y < 0
        || x as usize >= img.width
        || y as usize >= img.height
        || alpha.is_nan()
        || alpha <= 0.0
    {
        return;
    }
    let a = alpha.min(1.0);
    let i = (y as usize * img.width + x as usize) * 3;
    for (d, &s) in img.data[i..i + 3].iter_mut().zip(&color) {
        *d = (*d as f32 * (1.0 - a) + s as f32 * a)
            .round()
            .clamp(0.0, 255.0) as u8;
    }
}

/// Visits every pixel of the box `[x0, x1] × [y0, y1]` (clipped to the image) with the
/// coverage that `dist` (signed distance of a pixel centre) gives it.
fn cover(
    img: &mut RgbImage,
    bbox: [f64; 4],
    color: Rgb,
    alpha: f32,
    dist: impl Fn(f64, f64) -> f64,
) {
    if !bbox.iter().all(|v| v.is_finite()) || img.width == 0 || img.height == 0 {
        return;
    }
    let (w, h) = (img.width as f64 - 1.0, img.height as f64 - 1.0);
    let x0 = bbox[0].floor().clamp(0.0, w) as i64;
    let x1 = bbox[2].ceil().clamp(0.0, w) as i64;
    let y0 = bbox[1].floor().clamp(0.0, h) as i64;
    let y1 = bbox[3].ceil().clamp(0.0, h) as i64;
    for y in y0..=y1 {
        for x in x0..=x1 {
            let c = (0.5 - dist(x as f64, y as f64)).clamp(0.0, 1.0) as f32;
            if c > 0.0 {
                blend(img, x, y, color, alpha * c);
            }
        }
    }
}

/// An anti-aliased line segment of the given width with round caps.
pub fn line(img: &mut RgbImage, p0: [f64; 2], p1: [f64; 2], width: f64, color: Rgb, alpha: f32) {
    let hw = width.max(0.0) / 2.0;
    let (dx, dy) = (p1[0] - p0[0], p1[1] - p0[1]);
    let len2 = dx * dx + dy * dy;
    let pad = hw + 1.0;
    let bbox = [
        p0[0].min(p1[0]) - pad,
        p0[1].min(p1[1]) - pad,
        p0[0].max(p1[0]) + pad,
        p0[1].max(p1[1]) + pad,
    ];
    cover(img, bbox, color, alpha, |x, y| {
        let t = if len2 > 0.0 {
            (((x - p0[0]) * dx + (y - p0[1]) * dy) / len2).clamp(0.0, 1.0)
        } else {
            0.0
        };
        let (qx, qy) = (p0[0] + t * dx - x, p0[1] + t * dy - y);
        (qx * qx + qy * qy).sqrt() - hw
    });
}

/// A filled anti-aliased disc.
pub fn fill_circle(img: &mut RgbImage, c: [f64; 2], r: f64, color: Rgb, alpha: f32) {
    let pad = r.max(0.0) + 1.0;
    let bbox = [c[0] - pad, c[1] - pad, c[0] + pad, c[1] + pad];
    cover(img, bbox, color, alpha, |x, y| {
        (x - c[0]).hypot(y - c[1]) - r.max(0.0)
    });
}

/// An anti-aliased circle outline of the given line width.
pub fn circle(img: &mut RgbImage, c: [f64; 2], r: f64, width: f64, color: Rgb, alpha: f32) {
    let pad = r.max(0.0) + width.max(0.0) / 2.0 + 1.0;
    let bbox = [c[0] - pad, c[1] - pad, c[0] + pad, c[1] + pad];
    cover(img, bbox, color, alpha, |x, y| {
        ((x - c[0]).hypot(y - c[1]) - r.max(0.0)).abs() - width.max(0.0) / 2.0
    });
}

/// An ellipse: centre, semi-axes (major first) and the angle of the major axis in radians,
/// measured from +x towards +y (image y points down, so positive angles turn clockwise on
/// screen).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Ellipse {
    pub center: [f64; 2],
    pub semi_axes: [f64; 2],
    pub angle: f64,
}

impl Ellipse {
    /// The `n_sigma` ellipse of a 2D Gaussian with covariance `[σxx, σxy, σyy]` (px²): the
    /// semi-axes are `n_sigma·√λ` along the eigenvectors of the covariance (negative
    /// eigenvalues, from a covariance that is not quite PSD, count as 0). `None` for non-finite
    /// input.
    pub fn from_cov(center: [f64; 2], cov: [f64; 3], n_sigma: f64) -> Option<Ellipse> {
        let [a, b, c] = cov;
        if !(center.iter().chain(&cov).all(|v| v.is_finite()) && n_sigma.is_finite()) {
            return None;
        }
        let m = (a + c) / 2.0;
        let r = ((a - c) / 2.0).hypot(b);
        let (l1, l2) = ((m + r).max(0.0), (m - r).max(0.0));
        let angle = if b == 0.0 && a == c {
            0.0
        } else {
            0.5 * (2.0 * b).atan2(a - c)
        };
        Some(Ellipse {
            center,
            semi_axes: [n_sigma.abs() * l1.sqrt(), n_sigma.abs() * l2.sqrt()],
            angle,
        })
    }

    /// Half the width and height of the axis-aligned bounding box.
    pub fn half_extents(&self) -> [f64; 2] {
        let (s, c) = self.angle.sin_cos();
        let [a, b] = self.semi_axes;
        [
            ((a * c).powi(2) + (b * s).powi(2)).sqrt(),
            ((a * s).powi(2) + (b * c).powi(2)).sqrt(),
        ]
    }

    /// Approximate signed distance of `(x, y)` to the ellipse (first order in the implicit
    /// function `f = √((x'/a)² + (y'/b)²)`, exact on the axes and accurate near the curve).
    pub fn signed_distance(&self, x: f64, y: f64) -> f64 {
        let a = self.semi_axes[0].max(0.25);
        let b = self.semi_axes[1].max(0.25);
        let (s, c) = self.angle.sin_cos();
        let (dx, dy) = (x - self.center[0], y - self.center[1]);
        let (u, v) = (c * dx + s * dy, -s * dx + c * dy);
        let f = ((u / a).powi(2) + (v / b).powi(2)).sqrt();
        if f == 0.0 {
            return -b.min(a);
        }
        let g = ((u / (a * a)).powi(2) + (v / (b * b)).powi(2)).sqrt() / f;
        (f - 1.0) / g
    }

    fn bbox(&self, pad: f64) -> [f64; 4] {
        let [ex, ey] = self.half_extents();
        [
            self.center[0] - ex - pad,
            self.center[1] - ey - pad,
            self.center[0] + ex + pad,
            self.center[1] + ey + pad,
        ]
    }
}

/// A filled anti-aliased ellipse.
pub fn fill_ellipse(img: &mut RgbImage, e: &Ellipse, color: Rgb, alpha: f32) {
    cover(img, e.bbox(1.5), color, alpha, |x, y| {
        e.signed_distance(x, y)
    });
}

/// An anti-aliased ellipse outline of the given line width.
pub fn ellipse(img: &mut RgbImage, e: &Ellipse, width: f64, color: Rgb, alpha: f32) {
    let hw = width.max(0.0) / 2.0;
    cover(img, e.bbox(hw + 1.5), color, alpha, |x, y| {
        e.signed_distance(x, y).abs() - hw
    });
}

/// Fills the pixels `x0..=x1`, `y0..=y1` (clipped to the image).
pub fn fill_rect(img: &mut RgbImage, x0: i64, y0: i64, x1: i64, y1: i64, color: Rgb, alpha: f32) {
    let (xa, xb) = (x0.max(0), x1.min(img.width as i64 - 1));
    let (ya, yb) = (y0.max(0), y1.min(img.height as i64 - 1));
    for y in ya..=yb {
        for x in xa..=xb {
            blend(img, x, y, color, alpha);
        }
    }
}

/// Writes `s` in the bitmap font with its top-left corner at pixel `(x, y)`, each font pixel a
/// `scale × scale` block; returns the width drawn ([`font::text_width`]).
pub fn text(img: &mut RgbImage, x: i64, y: i64, s: &str, scale: usize, color: Rgb) -> usize {
    let k = scale.max(1) as i64;
    for (n, ch) in s.chars().enumerate() {
        let gx = x + (n * font::ADVANCE) as i64 * k;
        for row in 0..font::GLYPH_H {
            for col in 0..font::GLYPH_W {
                if font::pixel(ch, col, row) {
                    let (px, py) = (gx + col as i64 * k, y + row as i64 * k);
                    fill_rect(img, px, py, px + k - 1, py + k - 1, color, 1.0);
                }
            }
        }
    }
    font::text_width(s, scale.max(1))
}

/// Writes `s` rotated 90° counter-clockwise, reading bottom to top (a y-axis label): the
/// glyphs' tops face left, at column `x`; the first character starts at row `y_bottom`.
pub fn text_vertical(img: &mut RgbImage, x: i64, y_bottom: i64, s: &str, scale: usize, color: Rgb) {
    let k = scale.max(1) as i64;
    for (n, ch) in s.chars().enumerate() {
        let gy = y_bottom - (n * font::ADVANCE) as i64 * k;
        for row in 0..font::GLYPH_H {
            for col in 0..font::GLYPH_W {
                if font::pixel(ch, col, row) {
                    let (px, py) = (x + row as i64 * k, gy - col as i64 * k);
                    fill_rect(img, px, py - k + 1, px + k - 1, py, color, 1.0);
                }
            }
        }
    }
}

/// The image as PNG bytes.
pub fn encode_png(img: &RgbImage) -> Result<Vec<u8>> {
    let buf = image::RgbImage::from_raw(img.width as u32, img.height as u32, img.data.clone())
        .ok_or_else(|| {
            Error::Input(format!(
                "RGB image of {}x{} has {} bytes",
                img.width,
                img.height,
                img.data.len()
            ))
        })?;
    let mut out = std::io::Cursor::new(Vec::new());
    buf.write_to(&mut out, image::ImageFormat::Png)
        .map_err(|e| Error::Input(format!("cannot encode a PNG: {e}")))?;
    Ok(out.into_inner())
}

/// Writes the image as a PNG file (atomically: a temporary file, then a rename).
pub fn save_png(path: &Path, img: &RgbImage) -> Result<()> {
    crate::model::weights::write_atomic(path, &encode_png(img)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn covered(img: &RgbImage) -> Vec<(usize, usize)> {
        (0..img.height)
            .flat_map(|y| (0..img.width).map(move |x| (x, y)))
            .filter(|&(x, y)| img.data[(y * img.width + x) * 3] >= 128)
            .collect()
    }

    #[test]
    fn blend_mixes_and_ignores_outside() {
        let mut img = RgbImage::new(2, 2);
        blend(&mut img, 1, 0, [200, 100, 0], 0.5);
        assert_eq!(&img.data[3..6], &[100, 50, 0]);
        blend(&mut img, -1, 0, [255; 3], 1.0);
        blend(&mut img, 0, 2, [255; 3], 1.0);
        blend(&mut img, 0, 0, [255; 3], f32::NAN);
        assert_eq!(img.data.iter().filter(|&&v| v != 0).count(), 2);
    }

    #[test]
    fn horizontal_line_covers_its_width() {
        let mut img = RgbImage::new(20, 10);
        line(&mut img, [2.0, 5.0], [17.0, 5.0], 3.0, [255; 3], 1.0);
        let px = covered(&img);
        assert!(px.iter().all(|&(_, y)| (4..=6).contains(&y)));
        assert_eq!(px.iter().filter(|&&(_, y)| y == 5).count(), 18); // caps reach 1.5 px
                                                                     // Non-finite geometry draws nothing and does not panic.
        let mut img2 = RgbImage::new(4, 4);
        line(&mut img2, [f64::NAN, 0.0], [3.0, 3.0], 1.0, [255; 3], 1.0);
        fill_circle(&mut img2, [1.0, 1.0], f64::INFINITY, [255; 3], 1.0);
        assert!(img2.data.iter().all(|&v| v == 0));
    }

    #[test]
    fn circle_area_is_pi_r_squared() {
        let mut img = RgbImage::new(64, 64);
        fill_circle(&mut img, [31.3, 30.8], 20.0, [255; 3], 1.0);
        let sum: f64 = img.data.chunks(3).map(|p| p[0] as f64 / 255.0).sum();
        let want = std::f64::consts::PI * 400.0;
        assert!((sum - want).abs() / want < 0.01, "{sum} vs {want}");
    }

    #[test]
    fn text_draws_glyph_pixels() {
        let mut img = RgbImage::new(20, 10);
        let w = text(&mut img, 1, 1, "1", 1, [255; 3]);
        assert_eq!(w, 5);
        // '1' = rows 04,0C,04,04,04,04,0E: 1 + 2 + 1·4 + 3 = 10 pixels.
        assert_eq!(covered(&img).len(), 10);
        let mut img = RgbImage::new(10, 20);
        text_vertical(&mut img, 1, 18, "1", 1, [255; 3]);
        assert_eq!(covered(&img).len(), 10);
    }

    #[test]
    fn png_round_trip() {
        let mut img = RgbImage::new(5, 3);
        img.data[7] = 99;
        let png = encode_png(&img).unwrap();
        let back = image::load_from_memory(&png).unwrap().to_rgb8();
        assert_eq!(back.dimensions(), (5, 3));
        assert_eq!(back.into_raw(), img.data);
        let bad = RgbImage {
            width: 5,
            height: 3,
            data: vec![0; 4],
        };
        assert!(encode_png(&bad).is_err());
    }
}
