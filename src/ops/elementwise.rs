//! Elementwise passes between the GEMMs: bf16 casts, bias + exact GELU, residual add, broadcast
//! row add and the ViT's positional embedding. These are the CPU twins of the kernels in
//! kernels/elementwise.cu (the other kernels there have their twins in `patch_embed` and
//! `geometry`). Each function computes in f32 in the same order as its kernel.
//!
//! The functions never panic on mismatched lengths: they process the common prefix (whole rows
//! for the row ops), or nothing when a bias or embedding is too short, and leave the rest
//! untouched. Callers check shapes first.

use half::bf16;

use super::math::gelu;

/// `y[i] = bf16(x[i])`, rounded to nearest even (`half::bf16::from_f32`).
pub fn cast_f32_to_bf16_cpu(x: &[f32], y: &mut [bf16]) {
    for (o, &v) in y.iter_mut().zip(x) {
        *o = bf16::from_f32(v);
    }
}

/// `y[i] = f32(x[i])` (exact).
pub fn cast_bf16_to_f32_cpu(x: &[bf16], y: &mut [f32]) {
    for (o, &v) in y.iter_mut().zip(x) {
        *o = v.to_f32();
    }
}

/// In place on `y` `[rows, cols]`: `v = y + bias[c]` (when `bias` is given, `cols` floats), then
/// `v = gelu(v)` (exact erf GELU, when `apply_gelu`).
pub fn bias_gelu_cpu(y: &mut [f32], bias: Option<&[f32]>, cols: usize, apply_gelu: bool) {
    if cols == 0 || bias.is_some_and(|b| b.len() < cols) {
        return;
    }
    for row in y.chunks_exact_mut(cols) {
        for (c, v) in row.iter_mut().enumerate() {
            *v = bias_act(*v, bias.map(|b| b[c]), apply_gelu);
        }
    }
}

/// [`bias_gelu_cpu`] on bf16 storage: each element widened to f32, biased and activated in f32,
/// and rounded back to bf16 (nearest even).
pub fn bias_gelu_bf16_cpu(y: &mut [bf16], bias: Option<&[f32]>, cols: usize, apply_gelu: bool) {
    if cols == 0 || bias.is_some_and(|b| b.len() < cols) {
        return;
    }
    for row in y.chunks_exact_mut(cols) {
        for (c, v) in row.iter_mut().enumerate() {
            *v = bf16::from_f32(bias_act(v.to_f32(), bias.map(|b| b[c]), apply_gelu));
        }
    }
}

#[inline]
fn bias_act(v: f32, bias: Option<f32>, apply_gelu: bool) -> f32 {
    let v = match bias {
        Some(b) => v + b,
        None => v,
    };
    if apply_gelu {
        gelu(v)
    } else {
        v
    }
}

/// `x[i] += y[i]`.
pub fn add_cpu(x: &mut [f32], y: &[f32]) {
    for (a, &b) in x.iter_mut().zip(y) {
        *a += b;
    }
}

/// `x` `[rows, n]` += `v` `[n]` on every row (n = `v.len()`).
pub fn add_rows_cpu(x: &mut [f32], v: &[f32]) {
    if v.is_empty() {
        return;
    }
    for row in x.chunks_exact_mut(v.len()) {
        add_cpu(row, v);
    }
}

/// The ViT's positional embedding (SPEC §2.2 step 2): `x` `[b, t, c]`, `pos` `[1 + t, c]`;
/// `x[b, i, j] = (x[b, i, j] + pos[1 + i, j]) + pos[0, j]`, in that order (as `vit.rs`).
pub fn add_pos_embed_cpu(x: &mut [f32], pos: &[f32], t: usize, c: usize) {
    if c == 0 || t == 0 || pos.len() < (1 + t) * c {
        return;
    }
    let (slot0, slots) = pos.split_at(c);
    let slots = &slots[..t * c];
    for image in x.chunks_exact_mut(t * c) {
        for (i, v) in image.iter_mut().enumerate() {
            *v = (*v + slots[i]) + slot0[i % c];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pos_embed_adds_token_slot_then_slot_zero() {
        // b = 2, t = 2, c = 3
        let pos = [100.0, 200.0, 300.0, 1.0, 2.0, 3.0, 10.0, 20.0, 30.0];
        let mut x = vec![0.5f32; 12];
        add_pos_embed_cpu(&mut x, &pos, 2, 3);
        assert_eq!(
            x,
            [101.5, 202.5, 303.5, 110.5, 220.5, 330.5, 101.5, 202.5, 303.5, 110.5, 220.5, 330.5]
        );
    }

    #[test]
    fn bias_gelu_and_add_rows() {
        let mut y = vec![1.0f32, -1.0, 0.0, 2.0];
        bias_gelu_cpu(&mut y, Some(&[1.0, 1.0]), 2, false);
        assert_eq!(y, [2.0, 0.0, 1.0, 3.0]);
        bias_gelu_cpu(&mut y, None, 2, true);
        assert_eq!(y, [gelu(2.0), 0.0, gelu(1.0), gelu(3.0)]);
        let mut x = vec![0.0f32; 6];
        add_rows_cpu(&mut x, &[1.0, 2.0, 3.0]);
        assert_eq!(x, [1.0, 2.0, 3.0, 1.0, 2.0, 3.0]);
        add_rows_cpu(&mut x, &[]); // no panic, nothing to do
    }

    #[test]
    fn bf16_casts_round_to_nearest_even() {
        // 1 + 2^-8 is halfway between two bf16 values: ties to even (1.0).
        let x = [1.0f32 + 1.0 / 256.0, 1.0 + 3.0 / 256.0, -2.5];
        let mut y = [bf16::ZERO; 3];
        cast_f32_to_bf16_cpu(&x, &mut y);
        let mut back = [0f32; 3];
        cast_bf16_to_f32_cpu(&y, &mut back);
        assert_eq!(back, [1.0, 1.0 + 4.0 / 256.0, -2.5]);
    }
}
