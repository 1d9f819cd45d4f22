//! Self-attention (packed qkv) and one-query cross-attention backward against their CPU twins.

use half::bf16;
use handcov::cuda::{CudaBackend, Dtype};
use handcov::ops::attention::{
    cross_attention_1q_bwd_cpu, self_attention_packed_bwd_cpu, self_attention_packed_cpu,
};
use handcov::tensor::rel_err;

use super::helpers::*;

/// (b, s, heads, d): one key tile and several (s = 65, 130, 256: partial last tiles), every
/// padded head dimension class (DP 32, 64, 80, 128; d from 3 to 128, non-multiples of 16), the
/// hamer shape.
const SELF_SHAPES: &[(usize, usize, usize, usize)] = &[
    (1, 1, 1, 32),
    (2, 7, 2, 20),
    (1, 33, 1, 3),
    (1, 48, 4, 32),
    (1, 65, 1, 80),
    (1, 130, 2, 16),
    (1, 70, 1, 128),
    (1, 9, 1, 96),
    (1, 64, 1, 112),
    (1, 100, 1, 100),
    (1, 256, 2, 64),
    (2, 192, 3, 80),
];

/// Runs the GPU backward (inputs in `T`, rounded on upload) and returns dqkv as f32.
#[allow(clippy::too_many_arguments)]
fn self_gpu<T: Dtype>(
    be: &CudaBackend,
    qkv: &[f32],
    out: &[f32],
    dout: &[f32],
    b: usize,
    s: usize,
    heads: usize,
    d: usize,
    scale: f32,
) -> Vec<f32> {
    let (d_qkv, d_out, d_dout) = (
        be.upload::<T>(qkv).unwrap(),
        be.upload::<T>(out).unwrap(),
        be.upload::<T>(dout).unwrap(),
    );
    let mut dqkv = poisoned::<T>(be, qkv.len());
    let mut scratch = poisoned::<f32>(be, CudaBackend::self_attention_bwd_scratch_len(b, s, heads));
    be.self_attention_bwd(
        &d_qkv.slice(..),
        &d_out.slice(..),
        &d_dout.slice(..),
        &mut dqkv.slice_mut(..),
        &mut scratch.slice_mut(..),
        b,
        s,
        heads,
        d,
        scale,
    )
    .expect("self_attention_bwd");
    download_f32(be, &dqkv)
}

fn self_case<T: Dtype>(
    be: &CudaBackend,
    rng: &mut Rng,
    (b, s, heads, d): (usize, usize, usize, usize),
) {
    let bf = T::NAME == "bf16";
    let round = |v: Vec<f32>| if bf { bf16_round(&v) } else { v };
    let scale = (d as f32).powf(-0.5);
    let qkv = round(rng.vec(b * s * 3 * heads * d, 0.0, 2.0));
    let dout = round(rng.vec(b * s * heads * d, 0.0, 1.0));
    // O from the CPU forward (on the values the GPU sees), stored as T like a real activation.
    let mut out = vec![0f32; b * s * heads * d];
    self_attention_packed_cpu(&qkv, b, s, heads, d, scale, &mut out);
    let out = round(out);
    let mut want = vec![0f32; qkv.len()];
    self_attention_packed_bwd_cpu(&qkv, b, s, heads, d, scale, &dout, &mut want);
    let got = self_gpu::<T>(be, &qkv, &out, &dout, b, s, heads, d, scale);
    let e = rel_err(&got, &want);
    // f32: fp32 throughout; the twin's softmax uses its exp_f32 (2 ulp) and f64 row sums, the
    // kernels exp2 and fp32 sums in other orders, D = dO·O instead of rowsum(P∘dP): ~1e-6 of
    // max|dqkv| expected, with headroom for the dP − D cancellation: 5e-5.
    // bf16: inputs identical (rounded for both), O rounded to bf16 (moves D by ~2^-9·|dO||O|)
    // and the result rounded to bf16 (2^-9 relative): 1e-2.
    let tol = if bf { 1e-2 } else { 5e-5 };
    assert!(
        e < tol,
        "self_attention_bwd<{}> b{b} s{s} h{heads} d{d}: {e}",
        T::NAME
    );
}

#[test]
#[ignore = "needs a CUDA device"]
fn self_attention_bwd_matches_cpu_twin() {
    let be = backend();
    let mut rng = Rng(0x5e1f);
    for &shape in SELF_SHAPES {
        self_case::<f32>(&be, &mut rng, shape);
        self_case::<bf16>(&be, &mut rng, shape);
    }
}

#[test]
#[ignore = "needs a CUDA device"]
fn self_attention_bwd_is_deterministic() {
    let be = backend();
    let mut rng = Rng(0xde7);
    let (b, s, heads, d) = (2usize, 192usize, 4usize, 80usize);
    let scale = (d as f32).powf(-0.5);
    let qkv = rng.vec(b * s * 3 * heads * d, 0.0, 2.0);
    let dout = rng.vec(b * s * heads * d, 0.0, 1.0);
    let mut out = vec![0f32; b * s * heads * d];
    self_attention_packed_cpu(&qkv, b, s, heads, d, scale, &mut out);
    let a = self_gpu::<f32>(&be, &qkv, &out, &dout, b, s, heads, d, scale);
    let c = self_gpu::<f32>(&be, &qkv, &out, &dout, b, s, heads, d, scale);
    assert_bits_eq(&a, &c, "dqkv");
}

fn cross_case<T: Dtype>(
    be: &CudaBackend,
    rng: &mut Rng,
    (b, t, heads, d): (usize, usize, usize, usize),
) {
    let bf = T::NAME == "bf16";
    let round = |v: Vec<f32>| if bf { bf16_round(&v) } else { v };
    let scale = (d as f32).powf(-0.5);
    let q = round(rng.vec(b * heads * d, 0.0, 2.0));
    let kv = round(rng.vec(b * t * 2 * heads * d, 0.0, 2.0));
    let dout = round(rng.vec(b * heads * d, 0.0, 1.0));
    let (mut want_dq, mut want_dkv) = (vec![0f32; q.len()], vec![0f32; kv.len()]);
    cross_attention_1q_bwd_cpu(
        &q,
        &kv,
        b,
        t,
        heads,
        d,
        scale,
        &dout,
        &mut want_dq,
        &mut want_dkv,
    );
    let (d_q, d_kv, d_do) = (
        be.upload::<T>(&q).unwrap(),
        be.upload::<T>(&kv).unwrap(),
        be.upload::<T>(&dout).unwrap(),
    );
    let mut g_q = poisoned::<T>(be, q.len());
    let mut g_kv = poisoned::<T>(be, kv.len());
    be.cross_attention_1q_bwd(
        &d_q.slice(..),
        &d_kv.slice(..),
        &d_do.slice(..),
        &mut g_q.slice_mut(..),
        &mut g_kv.slice_mut(..),
        b,
        t,
        heads,
        d,
        scale,
    )
    .expect("cross_attention_1q_bwd");
    let e_q = rel_err(&download_f32(be, &g_q), &want_dq);
    let e_kv = rel_err(&download_f32(be, &g_kv), &want_dkv);
    // f32: fp32 with other summation orders and exp2 vs the twin's exp_f32: 5e-5 (as self-
    // attention). bf16: identical rounded inputs, results rounded to bf16: 1e-2.
    let tol = if bf { 1e-2 } else { 5e-5 };
    assert!(
        e_q < tol && e_kv < tol,
        "cross_attention_1q_bwd<{}> b{b} t{t} h{heads} d{d}: dq {e_q}, dkv {e_kv}",
        T::NAME
    );
}

#[test]
#[ignore = "needs a CUDA device"]
fn cross_attention_1q_bwd_matches_cpu_twin() {
    let be = backend();
    let mut rng = Rng(0xc055);
    for &shape in &[
        (1usize, 1usize, 1usize, 32usize),
        (2, 7, 3, 20),
        (1, 48, 4, 32),
        (2, 192, 8, 64),
        (1, 37, 1, 128),
        (1, 100, 2, 1),
        (3, 33, 2, 100),
    ] {
        cross_case::<f32>(&be, &mut rng, shape);
        cross_case::<bf16>(&be, &mut rng, shape);
    }
}

/// No context tokens: the forward's output is the constant 0, so dq = 0.
#[test]
#[ignore = "needs a CUDA device"]
fn cross_attention_1q_bwd_without_context_gives_zero_dq() {
    let be = backend();
    let (b, heads, d) = (2usize, 2usize, 8usize);
    let q = upload(&be, &vec![1f32; b * heads * d]);
    let dout = upload(&be, &vec![1f32; b * heads * d]);
    let kv = upload(&be, &[0f32; 1]);
    let mut dq = poisoned::<f32>(&be, b * heads * d);
    let mut dkv = upload(&be, &[0f32; 1]);
    be.cross_attention_1q_bwd(
        &q.slice(..),
        &kv.slice(..0),
        &dout.slice(..),
        &mut dq.slice_mut(..),
        &mut dkv.slice_mut(..0),
        b,
        0,
        heads,
        d,
        0.35,
    )
    .expect("t = 0");
    assert!(download(&be, &dq).iter().all(|&v| v == 0.0));
}
