//! Patch embedding: Conv2d(3→C, kernel P, stride P, zero padding p) over the central columns of
//! the crop (SPEC §2.2.1), as im2col followed by one GEMM with the flattened `[C, 3·P·P]` weight.

use super::linear::{linear_bwd_params_cpu, linear_cpu, Epilogue};
use rayon::prelude::*;

/// Geometry of the patch convolution on the crop.
#[derive(Clone, Copy, Debug)]
pub struct PatchGeometry {
    /// Side of the square input crop.
    pub image_size: usize,
    /// Rows and columns of the window the backbone sees (`img_size`), and its first column.
    pub win_h: usize,
    pub win_w: usize,
    pub col0: usize,
    pub patch: usize,
    pub pad: usize,
    /// Token grid.
    pub rows: usize,
    pub cols: usize,
}

impl PatchGeometry {
    pub fn patch_len(&self) -> usize {
        3 * self.patch * self.patch
    }
}

/// im2col: `img` `[b, 3, S, S]` → `[b, rows·cols, 3·P·P]` with feature order (channel, ky, kx),
/// the order of a flattened PyTorch conv weight. Pixels outside the window are zero padding.
pub fn im2col_cpu(img: &[f32], b: usize, g: &PatchGeometry, out: &mut [f32]) {
    debug_assert_eq!(out.len(), b * g.rows * g.cols * g.patch_len());
    let (s, p) = (g.image_size, g.patch);
    let plen = g.patch_len();
    let tokens = g.rows * g.cols;
    out.par_chunks_mut(plen).enumerate().for_each(|(bt, o)| {
        let (bi, t) = (bt / tokens, bt % tokens);
        let (ti, tj) = (t / g.cols, t % g.cols);
        for c in 0..3 {
            let plane = &img[(bi * 3 + c) * s * s..(bi * 3 + c + 1) * s * s];
            for ky in 0..p {
                let y = (ti * p + ky) as isize - g.pad as isize;
                let dst = &mut o[(c * p + ky) * p..(c * p + ky + 1) * p];
                if y < 0 || y >= g.win_h as isize {
                    dst.fill(0.0);
                    continue;
                }
                // Columns inside the window form one contiguous run of the image row.
                let x0 = (tj * p) as isize - g.pad as isize;
                let lo = (-x0).clamp(0, p as isize) as usize;
                let hi = (g.win_w as isize - x0).clamp(lo as isize, p as isize) as usize;
                dst[..lo].fill(0.0);
                dst[hi..].fill(0.0);
                if hi > lo {
                    let src = y as usize * s + g.col0 + (x0 + lo as isize) as usize;
                    dst[lo..hi].copy_from_slice(&plane[src..src + (hi - lo)]);
                }
            }
        }
    });
}

/// CPU twin of the patch embedding: `img` `[b, 3, S, S]` → tokens `[b, rows·cols, C]`.
pub fn patch_embed_cpu(
    img: &[f32],
    b: usize,
    g: &PatchGeometry,
    weight: &[f32],
    bias: &[f32],
    c: usize,
    out: &mut [f32],
) {
    let cols = im2col(img, b, g);
    patch_embed_cols_cpu(&cols, g, weight, bias, c, out);
}

/// The im2col of `img` in a new buffer `[b·rows·cols, 3·P·P]`.
pub fn im2col(img: &[f32], b: usize, g: &PatchGeometry) -> Vec<f32> {
    let mut cols = vec![0f32; b * g.rows * g.cols * g.patch_len()];
    im2col_cpu(img, b, g, &mut cols);
    cols
}

/// The patch embedding from its im2col ([`im2col`]): training keeps `cols` for the backward.
pub fn patch_embed_cols_cpu(
    cols: &[f32],
    g: &PatchGeometry,
    weight: &[f32],
    bias: &[f32],
    c: usize,
    out: &mut [f32],
) {
    linear_cpu(
        cols,
        weight,
        Some(bias),
        g.patch_len(),
        c,
        Epilogue::None,
        out,
    );
}

/// Backward of [`patch_embed_cpu`] for its parameters (the image needs no gradient): with
/// `dout` `[b·rows·cols, C]`, `dweight` `[C, 3·P·P]` += doutᵀ·im2col(img) and
/// `dbias` `[C]` += Σ_tokens dout. The im2col of the forward is rebuilt here.
pub fn patch_embed_bwd_cpu(
    img: &[f32],
    b: usize,
    g: &PatchGeometry,
    dout: &[f32],
    c: usize,
    dweight: &mut [f32],
    dbias: &mut [f32],
) {
    debug_assert_eq!(dout.len(), b * g.rows * g.cols * c);
    patch_embed_bwd_cols_cpu(&im2col(img, b, g), g, dout, c, dweight, dbias);
}

/// [`patch_embed_bwd_cpu`] from the forward's im2col.
pub fn patch_embed_bwd_cols_cpu(
    cols: &[f32],
    g: &PatchGeometry,
    dout: &[f32],
    c: usize,
    dweight: &mut [f32],
    dbias: &mut [f32],
) {
    linear_bwd_params_cpu(cols, dout, g.patch_len(), c, dweight, Some(dbias));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::math::fd;

    /// The convolution written out in f64, straight from the geometry (no im2col).
    fn conv64(img: &[f32], b: usize, g: &PatchGeometry, w: &[f64], bias: &[f64]) -> Vec<f64> {
        let (s, p, c) = (g.image_size, g.patch, bias.len());
        let mut out = vec![0f64; b * g.rows * g.cols * c];
        for bi in 0..b {
            for ti in 0..g.rows {
                for tj in 0..g.cols {
                    let o = &mut out[((bi * g.rows + ti) * g.cols + tj) * c..][..c];
                    o.copy_from_slice(bias);
                    for ch in 0..3 {
                        for ky in 0..p {
                            for kx in 0..p {
                                let y = (ti * p + ky) as isize - g.pad as isize;
                                let x = (tj * p + kx) as isize - g.pad as isize;
                                if y < 0 || x < 0 || y >= g.win_h as isize || x >= g.win_w as isize
                                {
                                    continue;
                                }
                                let pix = img
                                    [((bi * 3 + ch) * s + y as usize) * s + g.col0 + x as usize]
                                    as f64;
                                for (oc, ov) in o.iter_mut().enumerate() {
                                    *ov += w[oc * g.patch_len() + (ch * p + ky) * p + kx] * pix;
                                }
                            }
                        }
                    }
                }
            }
        }
        out
    }

    #[test]
    fn patch_embed_bwd_matches_finite_differences() {
        // A 7×7 window at column 2 of a 10×10 crop, 3×3 patches with padding 1: a 3×3 grid
        // whose border patches read padding on every side (rows and columns 7 of the window),
        // while the crop's pixels outside the window must not count.
        let g = PatchGeometry {
            image_size: 10,
            win_h: 7,
            win_w: 7,
            col0: 2,
            patch: 3,
            pad: 1,
            rows: 3,
            cols: 3,
        };
        let (b, c) = (2, 4);
        let mut rng = fd::Rng(0x9a7c);
        let img = rng.vec(b * 3 * 10 * 10, 1.0);
        let w = rng.vec(c * g.patch_len(), 0.5);
        let bias = rng.vec(c, 0.5);
        let r = rng.vec(b * g.rows * g.cols * c, 1.0);
        let (w64, b64, r64) = (fd::to64(&w), fd::to64(&bias), fd::to64(&r));
        // The forward agrees with the written-out convolution, so its FD is the forward's.
        let mut out = vec![0f32; r.len()];
        patch_embed_cpu(&img, b, &g, &w, &bias, c, &mut out);
        assert!(fd::rel_err(&out, &conv64(&img, b, &g, &w64, &b64)) < 1e-6);
        let gw = fd::grad(&w, 1e-6, |p| fd::dot(&conv64(&img, b, &g, p, &b64), &r64));
        let gb = fd::grad(&bias, 1e-6, |p| {
            fd::dot(&conv64(&img, b, &g, &w64, p), &r64)
        });
        let mut dw = vec![0.5f32; w.len()];
        let mut db = vec![0.5f32; c];
        patch_embed_bwd_cpu(&img, b, &g, &r, c, &mut dw, &mut db);
        dw.iter_mut().chain(db.iter_mut()).for_each(|v| *v -= 0.5);
        let errs = [fd::rel_err(&dw, &gw), fd::rel_err(&db, &gb)];
        eprintln!("patch_embed_bwd: dweight dbias {errs:?}");
        // Linear in the parameters, so the f64 FD is exact to ~1e-10; the analytic side is f32
        // sums of 18 products of O(1) terms (~1e-7) plus the 0.5 offset round trip (~3e-8).
        assert!(errs.iter().all(|&e| e < 1e-5), "{errs:?}");
    }
}
