//! Patch embedding: Conv2d(3→C, kernel P, stride P, zero padding p) over the central columns of
//! the crop (SPEC §2.2.1), as im2col followed by one GEMM with the flattened `[C, 3·P·P]` weight.

use super::linear::{linear_cpu, Epilogue};
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
                for (kx, d) in dst.iter_mut().enumerate() {
                    let x = (tj * p + kx) as isize - g.pad as isize;
                    *d = if x < 0 || x >= g.win_w as isize {
                        0.0
                    } else {
                        plane[y as usize * s + g.col0 + x as usize]
                    };
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
    let mut cols = vec![0f32; b * g.rows * g.cols * g.patch_len()];
    im2col_cpu(img, b, g, &mut cols);
    linear_cpu(
        &cols,
        weight,
        Some(bias),
        g.patch_len(),
        c,
        Epilogue::None,
        out,
    );
}
