//! Line plots as PNG files, drawn with [`super::draw`] and the built-in bitmap font: axes with
//! "nice" 1-2-5 ticks, grid, title, axis labels and a legend. [`sparsification_png`] draws
//! sparsification curves in the convention of SPEC §9.3: x = p, the percentage of entries kept
//! (2, 4, …, 100), most certain first; y = `curve[p]`, the mean error of those kept (and the
//! oracle's, which keeps the smallest errors first).

use super::draw::{self, Rgb};
use super::font;
use crate::error::{Error, Result};
use crate::ops::image::RgbImage;
use std::path::Path;

/// One line of a plot: its legend label, y values (one per x; non-finite values leave gaps)
/// and colour.
#[derive(Clone, Copy, Debug)]
pub struct Series<'a> {
    pub label: &'a str,
    pub y: &'a [f64],
    pub color: Rgb,
}

/// Title, axis labels and size in pixels (each side 160..=8192).
#[derive(Clone, Copy, Debug)]
pub struct PlotSpec<'a> {
    pub title: &'a str,
    pub x_label: &'a str,
    pub y_label: &'a str,
    pub width: usize,
    pub height: usize,
}

const INK: Rgb = [30, 30, 30];
const GRID: Rgb = [225, 225, 225];

/// The percentages of SPEC §9.3's sparsification curves: 2, 4, …, 100.
pub fn sparsification_fractions() -> Vec<f64> {
    (1..=50).map(|i| 2.0 * i as f64).collect()
}

/// Writes a sparsification plot: `series` as (label, curve, colour), e.g. a model's curve and
/// its oracle, over `x` = the percentages kept ([`sparsification_fractions`]).
pub fn sparsification_png(
    path: &Path,
    series: &[(&str, &[f64], Rgb)],
    x: &[f64],
    title: &str,
    size: [usize; 2],
) -> Result<()> {
    let series: Vec<Series> = series
        .iter()
        .map(|&(label, y, color)| Series { label, y, color })
        .collect();
    let img = line_plot(
        x,
        &series,
        &PlotSpec {
            title,
            x_label: "joints kept, most certain first (%)",
            y_label: "mean error of kept joints",
            width: size[0],
            height: size[1],
        },
    )?;
    draw::save_png(path, &img)
}

/// "Nice" ticks covering `[lo, hi]`: a step of 1, 2 or 5 × 10ᵏ giving about `n` intervals;
/// returns (first tick ≤ lo, step, count, decimals for the labels).
fn ticks(lo: f64, hi: f64, n: usize) -> (f64, f64, usize, usize) {
    let raw = (hi - lo) / n.max(1) as f64;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag);
    let first = (lo / step).floor() * step;
    let count = ((hi - first) / step - 1e-9).ceil().max(1.0) as usize;
    let decimals = (-step.log10().floor()).max(0.0) as usize;
    (first, step, count, decimals)
}

/// The (min, max) of the finite values, widened when empty of width.
fn range(values: impl Iterator<Item = f64>) -> Option<(f64, f64)> {
    let (lo, hi) = values
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
            (a.min(v), b.max(v))
        });
    if lo > hi {
        return None;
    }
    if hi - lo <= 1e-12 * lo.abs().max(hi.abs()).max(1e-300) {
        let pad = if lo == 0.0 { 1.0 } else { 0.1 * lo.abs() };
        return Some((lo - pad, hi + pad));
    }
    Some((lo, hi))
}

fn label(v: f64, decimals: usize) -> String {
    let s = format!("{v:.decimals$}");
    if s.starts_with('-') && s[1..].chars().all(|c| c == '0' || c == '.') {
        s[1..].to_string()
    } else {
        s
    }
}

/// Renders a line plot (white background).
pub fn line_plot(x: &[f64], series: &[Series], spec: &PlotSpec) -> Result<RgbImage> {
    let (w, h) = (spec.width, spec.height);
    if !(160..=8192).contains(&w) || !(160..=8192).contains(&h) {
        return Err(Error::Input(format!(
            "plot size {w}x{h}: each side must be 160..=8192 pixels"
        )));
    }
    if series.is_empty() {
        return Err(Error::Input("a plot needs at least one series".into()));
    }
    if let Some(s) = series.iter().find(|s| s.y.len() != x.len()) {
        return Err(Error::Input(format!(
            "series \"{}\" has {} values for {} x positions",
            s.label,
            s.y.len(),
            x.len()
        )));
    }
    let (xr, yr) = (
        range(x.iter().copied()),
        range(series.iter().flat_map(|s| {
            s.y.iter()
                .zip(x)
                .filter(|(_, x)| x.is_finite())
                .map(|(y, _)| *y)
        })),
    );
    let (Some((x_lo, x_hi)), Some((y_lo, y_hi))) = (xr, yr) else {
        return Err(Error::Input(
            "a plot needs at least one finite point".into(),
        ));
    };
    let s = if w.min(h) >= 480 { 2 } else { 1 };
    let line_h = font::text_height(s) as i64;
    let (xt0, xstep, xn, xdec) = ticks(x_lo, x_hi, 6);
    let (yt0, ystep, yn, ydec) = ticks(y_lo, y_hi, 6);
    let (x_min, x_max) = (xt0, xt0 + xstep * xn as f64);
    let (y_min, y_max) = (yt0, yt0 + ystep * yn as f64);
    let ylabels: Vec<String> = (0..=yn)
        .map(|i| label(yt0 + ystep * i as f64, ydec))
        .collect();
    let ylab_w = ylabels
        .iter()
        .map(|l| font::text_width(l, s))
        .max()
        .unwrap_or(0) as i64;
    // Plot area [left, right] × [top, bottom].
    let pad = 6 * s as i64;
    let left = pad + line_h + pad + ylab_w + pad;
    let right = w as i64 - 3 * pad;
    let top = pad + line_h + 2 * pad;
    let bottom = h as i64 - (pad + line_h + pad + line_h + pad);
    if right - left < 40 || bottom - top < 40 {
        return Err(Error::Input(format!(
            "plot size {w}x{h} leaves no room for the axes"
        )));
    }
    let px = |v: f64| left as f64 + (v - x_min) / (x_max - x_min) * (right - left) as f64;
    let py = |v: f64| bottom as f64 - (v - y_min) / (y_max - y_min) * (bottom - top) as f64;
    let mut img = RgbImage::from_raw(w, h, vec![255; w * h * 3])?;
    // Grid, ticks and tick labels.
    for i in 0..=xn {
        let v = xt0 + xstep * i as f64;
        let x = px(v).round() as i64;
        draw::fill_rect(&mut img, x, top, x, bottom, GRID, 1.0);
        draw::fill_rect(&mut img, x, bottom, x, bottom + pad / 2, INK, 1.0);
        let l = label(v, xdec);
        let lw = font::text_width(&l, s) as i64;
        draw::text(&mut img, x - lw / 2, bottom + pad, &l, s, INK);
    }
    for (i, l) in ylabels.iter().enumerate() {
        let y = py(yt0 + ystep * i as f64).round() as i64;
        draw::fill_rect(&mut img, left, y, right, y, GRID, 1.0);
        draw::fill_rect(&mut img, left - pad / 2, y, left, y, INK, 1.0);
        let lw = font::text_width(l, s) as i64;
        draw::text(&mut img, left - pad - lw, y - line_h / 2, l, s, INK);
    }
    // Frame.
    for (a, b, c, d) in [
        (left, top, right, top),
        (left, bottom, right, bottom),
        (left, top, left, bottom),
        (right, top, right, bottom),
    ] {
        draw::fill_rect(&mut img, a, b, c, d, INK, 1.0);
    }
    // Title and axis labels.
    let tw = font::text_width(spec.title, s) as i64;
    draw::text(&mut img, (w as i64 - tw) / 2, pad, spec.title, s, INK);
    let xw = font::text_width(spec.x_label, s) as i64;
    let xl_y = bottom + pad + line_h + pad;
    draw::text(
        &mut img,
        (left + right - xw) / 2,
        xl_y,
        spec.x_label,
        s,
        INK,
    );
    let yw = font::text_width(spec.y_label, s) as i64;
    draw::text_vertical(&mut img, pad, (top + bottom + yw) / 2, spec.y_label, s, INK);
    // Series.
    let lw = 1.5 * s as f64;
    for sr in series {
        let pts: Vec<Option<[f64; 2]>> = x
            .iter()
            .zip(sr.y)
            .map(|(&a, &b)| (a.is_finite() && b.is_finite()).then(|| [px(a), py(b)]))
            .collect();
        for k in 0..pts.len() {
            match (pts[k], pts.get(k + 1).copied().flatten()) {
                (Some(p), Some(q)) => draw::line(&mut img, p, q, lw, sr.color, 1.0),
                (Some(p), None) if k == 0 || pts[k - 1].is_none() => {
                    draw::fill_circle(&mut img, p, lw, sr.color, 1.0)
                }
                _ => {}
            }
        }
    }
    draw_legend(&mut img, series, left + pad, top + pad, s);
    Ok(img)
}

/// A legend box with a line sample and the label of each series, top-left corner at `(x, y)`.
fn draw_legend(img: &mut RgbImage, series: &[Series], x: i64, y: i64, s: usize) {
    let line_h = font::text_height(s) as i64;
    let pad = 4 * s as i64;
    let sample = 16 * s as i64;
    let row = line_h + pad;
    let text_w = series
        .iter()
        .map(|sr| font::text_width(sr.label, s))
        .max()
        .unwrap_or(0) as i64;
    let (bw, bh) = (
        pad + sample + pad + text_w + pad,
        pad + row * series.len() as i64,
    );
    draw::fill_rect(img, x, y, x + bw, y + bh, [255; 3], 0.9);
    for (a, b, c, d) in [
        (x, y, x + bw, y),
        (x, y + bh, x + bw, y + bh),
        (x, y, x, y + bh),
        (x + bw, y, x + bw, y + bh),
    ] {
        draw::fill_rect(img, a, b, c, d, [160; 3], 1.0);
    }
    for (i, sr) in series.iter().enumerate() {
        let ry = y + pad + row * i as i64;
        let mid = (ry + line_h / 2) as f64;
        let (x0, x1) = ((x + pad) as f64, (x + pad + sample) as f64);
        draw::line(img, [x0, mid], [x1, mid], 2.0 * s as f64, sr.color, 1.0);
        draw::text(img, x + pad + sample + pad, ry, sr.label, s, INK);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_nice() {
        let (first, step, n, dec) = ticks(0.13, 0.92, 6);
        assert_eq!((step, dec), (0.2, 1));
        assert!(first <= 0.13 && first + step * n as f64 >= 0.92);
        let (first, step, n, _) = ticks(2.0, 100.0, 6);
        assert_eq!((first, step, n), (0.0, 20.0, 5));
        assert_eq!(label(-0.0001, 2), "0.00");
        assert_eq!(range([3.0, f64::NAN].into_iter()), Some((2.7, 3.3)));
        assert_eq!(range([f64::NAN].into_iter()), None);
    }

    #[test]
    fn bad_plots_are_errors() {
        let x = [1.0, 2.0];
        let y = [1.0];
        let spec = PlotSpec {
            title: "t",
            x_label: "x",
            y_label: "y",
            width: 320,
            height: 240,
        };
        let s = |y| Series {
            label: "a",
            y,
            color: [255, 0, 0],
        };
        assert!(line_plot(&x, &[s(&y)], &spec).is_err());
        assert!(line_plot(&x, &[], &spec).is_err());
        assert!(line_plot(&x, &[s(&[f64::NAN, f64::NAN])], &spec).is_err());
        assert!(line_plot(&x, &[s(&[1.0, 2.0])], &PlotSpec { width: 10, ..spec }).is_err());
        assert!(line_plot(&x, &[s(&[1.0, f64::NAN])], &spec).is_ok());
    }
}
