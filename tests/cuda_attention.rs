//! The attention kernels (kernels/attention.cu: `self_attention_fwd_{f32,bf16}`,
//! `cross_attention_1q_fwd_{f32,bf16}`) against their CPU twins `self_attention_packed_cpu` and
//! `cross_attention_1q_cpu`, on fresh random inputs, plus the launchers' argument checks.
//!
//! All tests need a GPU and are `#[ignore]`d: on a machine with a CUDA device run
//! `cargo test --release --test cuda_attention -- --ignored`.
//! (The kernels' index arithmetic, fragment layouts and barrier placement are also checked on
//! the CPU, without a GPU, by the unit tests in src/cuda/attention.rs.)
//!
//! bf16 cases compare with the CPU twin run on the bf16-rounded inputs, so only the kernel's own
//! rounding (P and the output to bf16) shows in the error.

use cudarc::driver::CudaSlice;
use half::bf16;
use handcov::cuda::{CudaBackend, Dtype};
use handcov::ops::attention::{cross_attention_1q_cpu, self_attention_packed_cpu};
use handcov::tensor::rel_err;
use handcov::Error;

/// SplitMix64: fresh inputs per case, reproducible.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// `n` values uniform in [−amp, amp).
    fn vec(&mut self, n: usize, amp: f32) -> Vec<f32> {
        (0..n)
            .map(|_| ((self.next_u64() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * amp)
            .collect()
    }
}

fn backend() -> CudaBackend {
    CudaBackend::new(0).unwrap_or_else(|e| panic!("this test needs a CUDA device: {e}"))
}

/// `host` rounded to T, on the device, at element offset `offset` of a buffer that is `offset`
/// elements longer (an offset of 1 makes the data misaligned for vector accesses).
fn upload<T: Dtype>(be: &CudaBackend, host: &[f32], offset: usize) -> CudaSlice<T> {
    let mut v = vec![T::from_f32(0.0); offset];
    v.extend(host.iter().map(|&x| T::from_f32(x)));
    be.stream().clone_htod(&v).expect("copy to the device")
}

/// A NaN-poisoned output buffer of `n` elements after `offset` leading ones.
fn poisoned<T: Dtype>(be: &CudaBackend, n: usize, offset: usize) -> CudaSlice<T> {
    be.stream()
        .clone_htod(&vec![T::from_f32(f32::NAN); n + offset])
        .expect("copy to the device")
}

fn download<T: Dtype>(be: &CudaBackend, dev: &CudaSlice<T>, offset: usize) -> Vec<f32> {
    let v: Vec<T> = be.stream().clone_dtoh(dev).expect("copy from the device");
    v[offset..].iter().map(|&x| x.to_f32()).collect()
}

/// The values the kernel sees: `host` rounded to T and back.
fn rounded<T: Dtype>(host: &[f32]) -> Vec<f32> {
    host.iter().map(|&x| T::from_f32(x).to_f32()).collect()
}

/// Tolerance of max|gpu − cpu| / max|cpu|:
/// - f32: fp32 throughout; the kernel and the twin differ only in summation order (≤ 255 keys,
///   ≤ 128 dims) and exp2f's 2-ulp error, a few 1e-7 relative; 2e-5 leaves a wide margin.
/// - bf16: the output is rounded to bf16 (2^-9 relative) and the probabilities are rounded to
///   bf16 before P·V (each term off by ≤ 2^-9 relative); 1e-2 of the largest output.
fn tolerance<T: Dtype>() -> f64 {
    if T::NAME == "bf16" {
        1e-2
    } else {
        2e-5
    }
}

/// Runs self-attention on the GPU (inputs at element offset `offset`) and on the CPU twin;
/// returns (gpu, cpu).
#[allow(clippy::too_many_arguments)]
fn self_case<T: Dtype>(
    be: &CudaBackend,
    rng: &mut Rng,
    b: usize,
    s: usize,
    heads: usize,
    d: usize,
    amp: f32,
    offset: usize,
) -> (Vec<f32>, Vec<f32>) {
    let scale = (d as f32).powf(-0.5);
    let qkv = rng.vec(b * s * 3 * heads * d, amp);
    let n_out = b * s * heads * d;
    let dq = upload::<T>(be, &qkv, offset);
    let mut dout = poisoned::<T>(be, n_out, offset);
    be.self_attention_fwd(
        &dq.slice(offset..),
        &mut dout.slice_mut(offset..),
        b,
        s,
        heads,
        d,
        scale,
    )
    .unwrap();
    let got = download(be, &dout, offset);
    let mut want = vec![0f32; n_out];
    self_attention_packed_cpu(&rounded::<T>(&qkv), b, s, heads, d, scale, &mut want);
    (got, want)
}

#[allow(clippy::too_many_arguments)]
fn cross_case<T: Dtype>(
    be: &CudaBackend,
    rng: &mut Rng,
    b: usize,
    t: usize,
    heads: usize,
    d: usize,
    amp: f32,
    offset: usize,
) -> (Vec<f32>, Vec<f32>) {
    let scale = (d as f32).powf(-0.5);
    let q = rng.vec(b * heads * d, amp);
    let kv = rng.vec(b * t * 2 * heads * d, amp);
    let n_out = b * heads * d;
    let dq = upload::<T>(be, &q, offset);
    let dkv = upload::<T>(be, &kv, offset);
    let mut dout = poisoned::<T>(be, n_out, offset);
    be.cross_attention_1q_fwd(
        &dq.slice(offset..),
        &dkv.slice(offset..),
        &mut dout.slice_mut(offset..),
        b,
        t,
        heads,
        d,
        scale,
    )
    .unwrap();
    let got = download(be, &dout, offset);
    let mut want = vec![0f32; n_out];
    cross_attention_1q_cpu(
        &rounded::<T>(&q),
        &rounded::<T>(&kv),
        b,
        t,
        heads,
        d,
        scale,
        &mut want,
    );
    (got, want)
}

/// Every (b, s, d) of the brief with 2 heads, then the model's shapes: hamer (s = 192, 16 heads
/// of 80) and tiny (s = 48, 4 heads of 32). s = 1, 7, 255 and d = 20 are not multiples of the
/// 64-query / 64-key tiles or of the 16-wide head padding.
fn self_attention_matches_cpu<T: Dtype>() {
    let be = backend();
    let mut rng = Rng(0x5e1f ^ T::NAME.len() as u64);
    let mut cases = Vec::new();
    for b in [1, 3] {
        for s in [1, 7, 48, 192, 255] {
            for d in [32, 64, 80, 128, 20] {
                cases.push((b, s, 2, d));
            }
        }
    }
    cases.extend([
        (2, 192, 16, 80),
        (3, 48, 4, 32),
        (1, 300, 1, 40),
        (1, 65, 3, 1),
    ]);
    for (b, s, heads, d) in cases {
        let (got, want) = self_case::<T>(&be, &mut rng, b, s, heads, d, 2.0, 0);
        let err = rel_err(&got, &want);
        println!(
            "self_attention_fwd_{} b={b} s={s} heads={heads} d={d}: {err:.2e}",
            T::NAME
        );
        assert!(
            err < tolerance::<T>(),
            "self_attention_fwd_{} b={b} s={s} heads={heads} d={d}: rel err {err:.3e}",
            T::NAME
        );
    }
}

#[test]
#[ignore = "needs a CUDA device"]
fn self_attention_f32_matches_cpu() {
    self_attention_matches_cpu::<f32>();
}

#[test]
#[ignore = "needs a CUDA device"]
fn self_attention_bf16_matches_cpu() {
    self_attention_matches_cpu::<bf16>();
}

/// Misaligned buffers (the kernels' element-wise staging and output paths instead of the
/// 16-byte ones) and peaked softmaxes (inputs up to ±6: scores of a few hundred, so the running
/// max changes between key tiles and most probabilities underflow).
fn self_attention_other_paths<T: Dtype>() {
    let be = backend();
    let mut rng = Rng(0xa11 ^ T::NAME.len() as u64);
    for (b, s, heads, d, amp, offset) in [
        (2, 192, 4, 80, 2.0, 1),
        (1, 130, 2, 64, 2.0, 3),
        (1, 77, 2, 128, 2.0, 1),
        (2, 192, 4, 80, 6.0, 0),
        (1, 255, 2, 32, 6.0, 0),
    ] {
        let (got, want) = self_case::<T>(&be, &mut rng, b, s, heads, d, amp, offset);
        let err = rel_err(&got, &want);
        let what = format!("b={b} s={s} heads={heads} d={d} amp={amp} offset={offset}");
        println!("self_attention_fwd_{} {what}: {err:.2e}", T::NAME);
        assert!(
            err < tolerance::<T>(),
            "self_attention_fwd_{} {what}: rel err {err:.3e}",
            T::NAME
        );
    }
}

#[test]
#[ignore = "needs a CUDA device"]
fn self_attention_f32_misaligned_and_peaked() {
    self_attention_other_paths::<f32>();
}

#[test]
#[ignore = "needs a CUDA device"]
fn self_attention_bf16_misaligned_and_peaked() {
    self_attention_other_paths::<bf16>();
}

/// t of the decoder (192) and the tiny model (48), and sizes that are not multiples of the
/// 8 warps × 4 keys a block takes per step; every d of the brief; heads 1 and 8; a misaligned
/// and a peaked case.
fn cross_attention_matches_cpu<T: Dtype>() {
    let be = backend();
    let mut rng = Rng(0xc055 ^ T::NAME.len() as u64);
    let mut cases = Vec::new();
    for b in [1, 3] {
        for t in [1, 7, 48, 192, 255, 1000] {
            for d in [32, 64, 80, 128, 20] {
                cases.push((b, t, if d == 64 { 8 } else { 2 }, d, 2.0, 0));
            }
        }
    }
    cases.extend([
        (64, 192, 8, 64, 2.0, 0),
        (2, 192, 8, 64, 2.0, 1),
        (2, 192, 8, 64, 6.0, 0),
    ]);
    for (b, t, heads, d, amp, offset) in cases {
        let (got, want) = cross_case::<T>(&be, &mut rng, b, t, heads, d, amp, offset);
        let err = rel_err(&got, &want);
        let what = format!("b={b} t={t} heads={heads} d={d} amp={amp} offset={offset}");
        println!("cross_attention_1q_fwd_{} {what}: {err:.2e}", T::NAME);
        assert!(
            err < tolerance::<T>(),
            "cross_attention_1q_fwd_{} {what}: rel err {err:.3e}",
            T::NAME
        );
    }
}

#[test]
#[ignore = "needs a CUDA device"]
fn cross_attention_f32_matches_cpu() {
    cross_attention_matches_cpu::<f32>();
}

#[test]
#[ignore = "needs a CUDA device"]
fn cross_attention_bf16_matches_cpu() {
    cross_attention_matches_cpu::<bf16>();
}

/// Same inputs, same bits: two launches of each kernel agree exactly.
#[test]
#[ignore = "needs a CUDA device"]
fn attention_is_deterministic() {
    let be = backend();
    let (b, s, heads, d) = (2, 192, 16, 80);
    let qkv = Rng(7).vec(b * s * 3 * heads * d, 2.0);
    let run = |qkv: &CudaSlice<bf16>| {
        let mut out = poisoned::<bf16>(&be, b * s * heads * d, 0);
        be.self_attention_fwd(&qkv.slice(..), &mut out.slice_mut(..), b, s, heads, d, 0.1)
            .unwrap();
        download(&be, &out, 0)
    };
    let dq = upload::<bf16>(&be, &qkv, 0);
    let (x, y) = (run(&dq), run(&dq));
    assert!(x.iter().zip(&y).all(|(a, b)| a.to_bits() == b.to_bits()));

    let (t, heads, d) = (192, 8, 64);
    let q = upload::<f32>(&be, &Rng(8).vec(b * heads * d, 2.0), 0);
    let kv = upload::<f32>(&be, &Rng(9).vec(b * t * 2 * heads * d, 2.0), 0);
    let run = || {
        let mut out = poisoned::<f32>(&be, b * heads * d, 0);
        be.cross_attention_1q_fwd(
            &q.slice(..),
            &kv.slice(..),
            &mut out.slice_mut(..),
            b,
            t,
            heads,
            d,
            0.125,
        )
        .unwrap();
        download(&be, &out, 0)
    };
    let (x, y) = (run(), run());
    assert!(x.iter().zip(&y).all(|(a, b)| a.to_bits() == b.to_bits()));
}

fn expect_input<T: std::fmt::Debug>(r: handcov::Result<T>, what: &str) {
    match r {
        Err(Error::Input(msg)) => println!("{what}: {msg}"),
        other => panic!("{what}: expected Error::Input, got {other:?}"),
    }
}

/// Bad arguments are `Error::Input` before anything is launched; empty shapes are no-ops.
#[test]
#[ignore = "needs a CUDA device"]
fn launchers_reject_bad_arguments() {
    let be = backend();
    // One device buffer, viewed at the lengths each call needs.
    let buf = upload::<f32>(&be, &vec![0.5; 2000], 0);
    let mut obuf = poisoned::<f32>(&be, 2000, 0);
    let mut sa = |qkv_len: usize, out_len: usize, b, s, h, d, scale| {
        be.self_attention_fwd(
            &buf.slice(..qkv_len),
            &mut obuf.slice_mut(..out_len),
            b,
            s,
            h,
            d,
            scale,
        )
    };
    let (n_qkv, n_out) = (2 * 5 * 3 * 2 * 8, 2 * 5 * 2 * 8);
    assert!(sa(n_qkv, n_out, 2, 5, 2, 8, 0.3).is_ok());
    expect_input(sa(n_qkv, n_out, 2, 6, 2, 8, 0.3), "qkv and out too short");
    expect_input(sa(n_qkv, n_out, 1, 5, 2, 8, 0.3), "qkv and out too long");
    expect_input(sa(n_qkv, n_out + 1, 2, 5, 2, 8, 0.3), "out too long");
    expect_input(sa(n_qkv, n_out, 2, 5, 2, 8, f32::NAN), "NaN scale");
    expect_input(
        sa(n_qkv, n_out, 2, 5, 2, 8, f32::INFINITY),
        "infinite scale",
    );
    expect_input(sa(3 * 129, 129, 1, 1, 1, 129, 0.3), "d = 129");
    expect_input(
        sa(n_qkv, n_out, usize::MAX, usize::MAX, 2, 8, 0.3),
        "overflowing shape",
    );
    assert!(sa(0, 0, 0, 5, 2, 8, 0.3).is_ok(), "b = 0 is a no-op");
    assert!(sa(0, 0, 2, 0, 2, 8, 0.3).is_ok(), "s = 0 is a no-op");

    let mut ca = |q_len: usize, kv_len: usize, out_len: usize, b, t, h, d, scale| {
        be.cross_attention_1q_fwd(
            &buf.slice(..q_len),
            &buf.slice(..kv_len),
            &mut obuf.slice_mut(..out_len),
            b,
            t,
            h,
            d,
            scale,
        )
    };
    let (n_q, n_kv) = (2 * 2 * 8, 2 * 3 * 2 * 2 * 8);
    assert!(ca(n_q, n_kv, n_q, 2, 3, 2, 8, 0.3).is_ok());
    expect_input(ca(n_q, n_kv, n_q, 2, 4, 2, 8, 0.3), "kv too short");
    expect_input(ca(n_q + 1, n_kv, n_q, 2, 3, 2, 8, 0.3), "q too long");
    expect_input(ca(n_q, n_kv, n_q - 1, 2, 3, 2, 8, 0.3), "out too short");
    expect_input(ca(n_q, n_kv, n_q, 2, 3, 2, 8, f32::NAN), "NaN scale");
    expect_input(ca(n_q, 0, n_q, 2, 0, 2, 8, 0.3), "t = 0");
    expect_input(ca(129, 2 * 129, 129, 1, 1, 1, 129, 0.3), "d = 129");
    assert!(ca(0, 0, 0, 0, 3, 2, 8, 0.3).is_ok(), "b = 0 is a no-op");
    be.synchronize().unwrap();
}
