//! The kernels of kernels/elementwise.cu against their CPU twins: bf16 casts, bias + exact GELU,
//! add, add_rows, the positional embedding (`ops::elementwise`), im2col (`ops::patch_embed`),
//! rot6d and the camera (`ops::geometry`), on fresh random inputs with NaN-poisoned outputs, at
//! sizes that are and are not multiples of 4 and of the block size, on buffers that start at an
//! aligned address (vector paths) and 4 bytes into their allocation (scalar paths).
//!
//! All tests need a GPU and are `#[ignore]`d: on a machine with a CUDA device run
//! `cargo test --release --test cuda_elementwise -- --ignored`.
//! (The kernels' index loops are also checked on the CPU, without a GPU, by the unit tests in
//! src/cuda/elementwise.rs.)

use cudarc::driver::{CudaSlice, DeviceRepr};
use half::bf16;
use handcov::cuda::{CudaBackend, Dtype};
use handcov::ops::elementwise::{
    add_cpu, add_pos_embed_cpu, add_rows_cpu, bias_gelu_bf16_cpu, bias_gelu_cpu,
    cast_bf16_to_f32_cpu, cast_f32_to_bf16_cpu,
};
use handcov::ops::geometry::{cam_translation, project_cpu, rot6d_to_rotmat_cpu};
use handcov::ops::patch_embed::{im2col_cpu, PatchGeometry};
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
    /// Uniform in [-1, 1).
    fn sym(&mut self) -> f32 {
        ((self.next_u64() >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
    /// `n` values uniform in [center − spread, center + spread).
    fn vec(&mut self, n: usize, center: f32, spread: f32) -> Vec<f32> {
        (0..n).map(|_| center + spread * self.sym()).collect()
    }
    /// `n` values of both signs with magnitudes spread over 1e-2 .. 1e2, so that sums round:
    /// values on one fixed grid (as `vec` gives) often add exactly, which would hide a change in
    /// the order of two additions.
    fn wide(&mut self, n: usize) -> Vec<f32> {
        (0..n)
            .map(|_| self.sym() * 10f32.powf(2.0 * self.sym()))
            .collect()
    }
}

fn backend() -> CudaBackend {
    CudaBackend::new(0).unwrap_or_else(|e| panic!("this test needs a CUDA device: {e}"))
}

fn upload<T: DeviceRepr>(be: &CudaBackend, host: &[T]) -> CudaSlice<T> {
    be.stream().clone_htod(host).expect("copy to the device")
}

fn download<T: DeviceRepr + Default + Clone>(be: &CudaBackend, dev: &CudaSlice<T>) -> Vec<T> {
    be.synchronize().expect("kernel run");
    be.stream().clone_dtoh(dev).expect("copy from the device")
}

/// Buffers start at element 0 of their allocation (aligned: vector paths) or at element 1
/// (4 bytes in for f32, 2 for bf16: scalar paths whatever the shape).
const SKIPS: [usize; 2] = [0, 1];

/// Uploads `host` behind `skip` NaN elements, so that `.slice(skip..)` is the data.
fn upload_at<T: Dtype>(be: &CudaBackend, host: &[T], skip: usize) -> CudaSlice<T> {
    let mut v = vec![T::from_f32(f32::NAN); skip];
    v.extend_from_slice(host);
    upload(be, &v)
}

/// `skip + len` NaNs: the output buffer, poisoned so that an element the kernel does not write
/// shows up.
fn poisoned<T: Dtype>(be: &CudaBackend, skip: usize, len: usize) -> CudaSlice<T> {
    upload(be, &vec![T::from_f32(f32::NAN); skip + len])
}

fn f32s<T: Dtype>(v: &[T]) -> Vec<f32> {
    v.iter().map(|x| x.to_f32()).collect()
}

/// Bitwise equality, with the first difference as the failure message. Used where kernel and
/// twin perform the same IEEE operations in the same order (no tolerance is needed: any
/// difference is a bug).
fn assert_same_bits(case: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{case}: lengths");
    if let Some(i) = (0..got.len()).find(|&i| got[i].to_bits() != want[i].to_bits()) {
        panic!("{case}: element {i}: gpu {:e}, cpu {:e}", got[i], want[i]);
    }
}

fn assert_finite(case: &str, v: &[f32]) {
    if let Some(i) = v.iter().position(|x| !x.is_finite()) {
        panic!("{case}: element {i} = {} (not written?)", v[i]);
    }
}

/// Flat sizes: tiny, ragged (n % 4 != 0), around the block size (256 threads × 4 elements), and
/// large enough for many blocks.
const FLAT_SIZES: [usize; 9] = [1, 3, 4, 5, 1023, 1024, 1025, 4099, 1_000_003];

#[test]
#[ignore = "needs a CUDA device"]
fn casts_match_half_bit_for_bit() {
    let be = backend();
    let mut rng = Rng(0xca57);
    for &n in &FLAT_SIZES {
        for skip in SKIPS {
            // f32 → bf16 on arbitrary bit patterns: normals, subnormals, ±0, ±inf, NaNs with
            // payloads, and every rounding case (ties included: low 16 bits 0x8000).
            let mut x: Vec<f32> = (0..n)
                .map(|i| {
                    let bits = rng.next_u64() as u32;
                    match i % 5 {
                        0 => f32::from_bits(bits),
                        1 => f32::from_bits((bits & 0xffff_0000) | 0x8000), // exact tie
                        2 => f32::from_bits(bits & 0x807f_ffff),            // subnormal or ±0
                        _ => rng.sym() * 1000.0,
                    }
                })
                .collect();
            if n >= 4 {
                x[..4].copy_from_slice(&[f32::INFINITY, f32::MAX, -f32::MAX, f32::NAN]);
            }
            let mut want = vec![bf16::ZERO; n];
            cast_f32_to_bf16_cpu(&x, &mut want);
            let dx = upload_at(&be, &x, skip);
            let mut dy = poisoned::<bf16>(&be, skip, n);
            be.cast_fwd_f32_to_bf16(&dx.slice(skip..), &mut dy.slice_mut(skip..))
                .unwrap();
            let got = &download(&be, &dy)[skip..];
            // Exact: the kernel rounds with the same integer arithmetic as half (NaNs included).
            if let Some(i) = (0..n).find(|&i| got[i].to_bits() != want[i].to_bits()) {
                panic!(
                    "f32→bf16 n={n} skip={skip}: x[{i}] = {:#010x}: gpu {:#06x}, half {:#06x}",
                    x[i].to_bits(),
                    got[i].to_bits(),
                    want[i].to_bits()
                );
            }

            // bf16 → f32 on every kind of bit pattern: exact widening.
            let xb: Vec<bf16> = (0..n)
                .map(|_| bf16::from_bits(rng.next_u64() as u16))
                .collect();
            let mut want = vec![0f32; n];
            cast_bf16_to_f32_cpu(&xb, &mut want);
            let dxb = upload_at(&be, &xb, skip);
            let mut dyf = poisoned::<f32>(&be, skip, n);
            be.cast_fwd_bf16_to_f32(&dxb.slice(skip..), &mut dyf.slice_mut(skip..))
                .unwrap();
            let got = &download(&be, &dyf)[skip..];
            assert_same_bits(&format!("bf16→f32 n={n} skip={skip}"), got, &want);
        }
    }
}

/// Row shapes: single elements, ragged columns, the head readouts (96, 10, 3), the decoder and
/// MLP widths, and more rows than a grid's y-dimension (65 535).
const ROW_SHAPES: [(usize, usize); 9] = [
    (1, 1),
    (3, 5),
    (7, 96),
    (64, 10),
    (5, 1283),
    (33, 1024),
    (2 * 192, 5120),
    (70_001, 3),
    (66_000, 8),
];

#[test]
#[ignore = "needs a CUDA device"]
fn bias_gelu_matches_cpu_twin() {
    let be = backend();
    let mut rng = Rng(0x6e1);
    for &(rows, cols) in &ROW_SHAPES {
        for skip in SKIPS {
            for (with_bias, gelu) in [(true, true), (false, true), (true, false)] {
                // Inputs over [-6, 6]: both GELU tails and the curved middle.
                let y = rng.vec(rows * cols, 0.0, 6.0);
                let bias = rng.wide(cols);
                let case = format!("{rows}×{cols} skip={skip} bias={with_bias} gelu={gelu}");

                // f32
                let mut want = y.clone();
                bias_gelu_cpu(&mut want, with_bias.then_some(&bias[..]), cols, gelu);
                let mut dy = upload_at(&be, &y, skip);
                let db = upload_at(&be, &bias, skip);
                let db_view = db.slice(skip..);
                be.bias_gelu_fwd(
                    &mut dy.slice_mut(skip..),
                    with_bias.then_some(&db_view),
                    rows,
                    cols,
                    gelu,
                )
                .unwrap();
                let got = download(&be, &dy)[skip..].to_vec();
                assert_finite(&case, &got);
                if gelu {
                    let err = rel_err(&got, &want);
                    // Tolerance 5e-6: CUDA's erfcf is within 4 ulp (~5e-7 relative) and the
                    // twin's erfc within 1.2e-7 (plus its exp's 2 ulp), so each GELU value is
                    // within ~1e-6 of the other's relative to itself, and less relative to the
                    // tensor's largest value; a wrong formula (tanh GELU: ~1e-3) is far above.
                    assert!(
                        err <= 5e-6,
                        "bias_gelu_fwd_f32 {case}: error {err:e} > 5e-6"
                    );
                } else {
                    // Only the bias add: one identical fp32 addition on both sides.
                    assert_same_bits(&format!("bias_gelu_fwd_f32 {case}"), &got, &want);
                }

                // bf16 storage
                let y16: Vec<bf16> = y.iter().map(|&v| bf16::from_f32(v)).collect();
                let mut want16 = y16.clone();
                bias_gelu_bf16_cpu(&mut want16, with_bias.then_some(&bias[..]), cols, gelu);
                let mut dy16 = upload_at(&be, &y16, skip);
                be.bias_gelu_fwd(
                    &mut dy16.slice_mut(skip..),
                    with_bias.then_some(&db_view),
                    rows,
                    cols,
                    gelu,
                )
                .unwrap();
                let got16 = f32s(&download(&be, &dy16)[skip..]);
                let want16 = f32s(&want16);
                assert_finite(&case, &got16);
                if gelu {
                    let err = rel_err(&got16, &want16);
                    // Tolerance 1e-2: both sides round a GELU value that agrees to ~1e-6 to bf16,
                    // so they differ only where that straddles a rounding boundary, by one bf16
                    // ulp: at most 2^-7 = 7.8e-3 of the largest value.
                    assert!(
                        err <= 1e-2,
                        "bias_gelu_fwd_bf16 {case}: error {err:e} > 1e-2"
                    );
                } else {
                    // bf16 → f32 is exact, the add identical, the rounding the same: exact.
                    assert_same_bits(&format!("bias_gelu_fwd_bf16 {case}"), &got16, &want16);
                }
            }
        }
    }
}

#[test]
#[ignore = "needs a CUDA device"]
fn add_and_add_rows_match_cpu_twin_exactly() {
    let be = backend();
    let mut rng = Rng(0xadd);
    // x += y: one fp32 addition per element on both sides, so the results agree bit for bit.
    for &n in &FLAT_SIZES {
        for (sx, sy) in [(0, 0), (1, 1), (0, 1)] {
            let x = rng.wide(n);
            let y = rng.wide(n);
            let mut want = x.clone();
            add_cpu(&mut want, &y);
            let mut dx = upload_at(&be, &x, sx);
            let dy = upload_at(&be, &y, sy);
            be.add_fwd(&mut dx.slice_mut(sx..), &dy.slice(sy..))
                .unwrap();
            let got = &download(&be, &dx)[sx..];
            assert_same_bits(&format!("add_fwd_f32 n={n} skips=({sx},{sy})"), got, &want);
        }
    }
    // x[r, j] += v[j]: also exact.
    for &(rows, n) in &ROW_SHAPES {
        for skip in SKIPS {
            let x = rng.wide(rows * n);
            let v = rng.wide(n);
            let mut want = x.clone();
            add_rows_cpu(&mut want, &v);
            let mut dx = upload_at(&be, &x, skip);
            let dv = upload_at(&be, &v, skip);
            be.add_rows_fwd(&mut dx.slice_mut(skip..), &dv.slice(skip..), rows, n)
                .unwrap();
            let got = &download(&be, &dx)[skip..];
            assert_same_bits(
                &format!("add_rows_fwd_f32 {rows}×{n} skip={skip}"),
                got,
                &want,
            );
        }
    }
}

#[test]
#[ignore = "needs a CUDA device"]
fn add_pos_embed_matches_cpu_twin_exactly() {
    let be = backend();
    let mut rng = Rng(0x905);
    // (b, t, c): the ViT at batch 2, ragged shapes, and b·t above the grid's y-dimension.
    for &(b, t, c) in &[
        (2usize, 192usize, 1280usize),
        (1, 1, 1),
        (3, 5, 7),
        (2, 3, 12),
        (2, 40_000, 2),
    ] {
        for skip in SKIPS {
            let x = rng.wide(b * t * c);
            let pos = rng.wide((1 + t) * c);
            let mut want = x.clone();
            add_pos_embed_cpu(&mut want, &pos, t, c);
            let mut dx = upload_at(&be, &x, skip);
            let dp = upload_at(&be, &pos, skip);
            be.add_pos_embed_fwd(&mut dx.slice_mut(skip..), &dp.slice(skip..), b, t, c)
                .unwrap();
            let got = &download(&be, &dx)[skip..];
            // The same two fp32 additions in the same order: exact.
            assert_same_bits(
                &format!("add_pos_embed_fwd_f32 {b}×{t}×{c} skip={skip}"),
                got,
                &want,
            );
        }
    }
}

#[test]
#[ignore = "needs a CUDA device"]
fn im2col_matches_cpu_twin_exactly() {
    let be = backend();
    let mut rng = Rng(0x12c);
    let g = |image_size, win_h, win_w, col0, patch, pad, rows, cols| PatchGeometry {
        image_size,
        win_h,
        win_w,
        col0,
        patch,
        pad,
        rows,
        cols,
    };
    let cases = [
        // The model: 256×256 crop, the central 256×192 window, P = 16, pad 2, 16×12 tokens.
        (2usize, g(256, 256, 192, 32, 16, 2, 16, 12)),
        (1, g(13, 11, 9, 3, 3, 1, 4, 3)),
        (3, g(7, 7, 7, 0, 5, 0, 2, 2)),
        (2, g(20, 20, 17, 2, 7, 3, 3, 3)),
    ];
    for (b, geo) in cases {
        let s = geo.image_size;
        let img = rng.vec(b * 3 * s * s, 0.0, 2.0);
        let out_len = b * geo.rows * geo.cols * geo.patch_len();
        let mut want = vec![0f32; out_len];
        im2col_cpu(&img, b, &geo, &mut want);
        let want16: Vec<f32> = want.iter().map(|&v| bf16::from_f32(v).to_f32()).collect();
        for skip in SKIPS {
            let di = upload_at(&be, &img, skip);
            let mut out = poisoned::<f32>(&be, skip, out_len);
            be.im2col_fwd(&di.slice(skip..), b, &geo, &mut out.slice_mut(skip..))
                .unwrap();
            let got = &download(&be, &out)[skip..];
            // A gather of the same elements (and zeros): exact.
            assert_same_bits(
                &format!("im2col_fwd_f32 b={b} {geo:?} skip={skip}"),
                got,
                &want,
            );

            let mut out16 = poisoned::<bf16>(&be, skip, out_len);
            be.im2col_fwd(&di.slice(skip..), b, &geo, &mut out16.slice_mut(skip..))
                .unwrap();
            let got16 = f32s(&download(&be, &out16)[skip..]);
            // The same elements rounded to nearest even on both sides: exact.
            assert_same_bits(
                &format!("im2col_fwd_bf16 b={b} {geo:?} skip={skip}"),
                &got16,
                &want16,
            );
        }
    }
}

#[test]
#[ignore = "needs a CUDA device"]
fn rot6d_and_camera_match_cpu_twin_bit_for_bit() {
    let be = backend();
    let mut rng = Rng(0x6d);
    for &n in &[1usize, 16, 16 * 32 + 3, 100_003] {
        let mut x = rng.vec(6 * n, 0.0, 2.0);
        if n >= 3 {
            x[..6].copy_from_slice(&[0.0; 6]); // zero code: both norms clamp at 1e-12
            x[6..12].copy_from_slice(&[1.0, 2.0, 3.0, 2.0, 4.0, 6.0]); // a2 parallel to a1
            x[12..18].copy_from_slice(&[1.0, 0.0, 0.0, 0.0, 1.0, 0.0]); // identity
        }
        let mut want = vec![0f32; 9 * n];
        rot6d_to_rotmat_cpu(&x, &mut want);
        let dx = upload(&be, &x);
        let mut out = poisoned::<f32>(&be, 0, 9 * n);
        be.rot6d_fwd(&dx.as_view(), &mut out.as_view_mut(), n)
            .unwrap();
        // The kernel repeats the twin's operations in order with non-contracted intrinsics
        // and IEEE division and square root: the same bits, no tolerance.
        assert_same_bits(&format!("rot6d_fwd_f32 n={n}"), &download(&be, &out), &want);
    }

    let (focal, size) = (5000.0f32, 256.0f32);
    for &(b, n) in &[
        (1usize, 21usize),
        (7, 21),
        (64, 21),
        (3, 1),
        (5, 0),
        (300, 333),
    ] {
        // Realistic cameras (s ~ 0.9 ± 0.5) and keypoints (±0.1 m).
        let cam: Vec<f32> = (0..b)
            .flat_map(|_| [0.9 + 0.5 * rng.sym(), 0.1 * rng.sym(), 0.1 * rng.sym()])
            .collect();
        let kp = rng.vec(b * n * 3, 0.0, 0.1);
        let mut want_t = vec![0f32; 3 * b];
        let mut want_2d = vec![0f32; 2 * b * n];
        for i in 0..b {
            let t = cam_translation(&[cam[3 * i], cam[3 * i + 1], cam[3 * i + 2]], focal, size);
            want_t[3 * i..3 * i + 3].copy_from_slice(&t);
            project_cpu(
                &kp[3 * n * i..3 * n * (i + 1)],
                &t,
                focal / size,
                &mut want_2d[2 * n * i..2 * n * (i + 1)],
            );
        }
        let dc = upload(&be, &cam);
        let dk = upload(&be, &kp);
        let mut dt = poisoned::<f32>(&be, 0, 3 * b);
        let mut d2 = poisoned::<f32>(&be, 0, 2 * b * n);
        be.camera_fwd(
            &dc.as_view(),
            &dk.as_view(),
            &mut dt.as_view_mut(),
            &mut d2.as_view_mut(),
            b,
            n,
            focal,
            size,
        )
        .unwrap();
        // Same operations in the same order (see rot6d above): the same bits.
        assert_same_bits(
            &format!("camera_fwd_f32 cam_t b={b} n={n}"),
            &download(&be, &dt),
            &want_t,
        );
        assert_same_bits(
            &format!("camera_fwd_f32 kp2d b={b} n={n}"),
            &download(&be, &d2),
            &want_2d,
        );
    }
}

/// Wrong lengths, overflowing shapes and impossible geometry are `Error::Input`, not panics.
#[test]
#[ignore = "needs a CUDA device"]
fn elementwise_launchers_reject_bad_arguments() {
    let be = backend();
    let is_input = |r: handcov::Result<()>| matches!(r, Err(Error::Input(_)));
    let a = upload(&be, &[0f32; 24]);
    let mut m = upload(&be, &[0f32; 24]);
    let mut h = upload(&be, &[bf16::ZERO; 24]);
    let av = a.as_view();

    assert!(is_input(
        be.cast_fwd_f32_to_bf16(&a.slice(..23), &mut h.as_view_mut())
    ));
    assert!(is_input(
        be.cast_fwd_bf16_to_f32(&h.slice(..23), &mut m.as_view_mut())
    ));
    assert!(is_input(be.add_fwd(&mut m.as_view_mut(), &a.slice(..23))));

    assert!(is_input(be.bias_gelu_fwd(
        &mut m.as_view_mut(),
        None,
        5,
        5,
        true
    )));
    assert!(is_input(be.bias_gelu_fwd(
        &mut m.as_view_mut(),
        Some(&a.slice(..5)),
        4,
        6,
        true
    )));
    assert!(is_input(be.bias_gelu_fwd(
        &mut h.as_view_mut(),
        None,
        usize::MAX,
        2,
        true
    )));
    assert!(is_input(be.add_rows_fwd(
        &mut m.as_view_mut(),
        &a.slice(..5),
        4,
        6
    )));
    assert!(is_input(be.add_rows_fwd(
        &mut m.as_view_mut(),
        &av,
        1 << 31,
        6
    )));

    // x [2, 3, 4] needs pos [4, 4] = 16; [3, 4] = 12 is one slot short.
    assert!(is_input(be.add_pos_embed_fwd(
        &mut m.as_view_mut(),
        &a.slice(..12),
        2,
        3,
        4
    )));
    assert!(is_input(be.add_pos_embed_fwd(
        &mut m.as_view_mut(),
        &a.slice(..16),
        2,
        usize::MAX,
        4
    )));

    let geo = PatchGeometry {
        image_size: 2,
        win_h: 2,
        win_w: 2,
        col0: 0,
        patch: 1,
        pad: 0,
        rows: 2,
        cols: 2,
    };
    // img [1, 3, 2, 2] = 12 floats → out [4, 3] = 12.
    assert!(is_input(be.im2col_fwd(
        &a.slice(..11),
        1,
        &geo,
        &mut m.slice_mut(..12)
    )));
    assert!(is_input(be.im2col_fwd(
        &a.slice(..12),
        1,
        &geo,
        &mut m.slice_mut(..13)
    )));
    let wide = PatchGeometry { col0: 1, ..geo }; // columns 1..3 of a 2-wide image
    assert!(is_input(be.im2col_fwd(
        &a.slice(..12),
        1,
        &wide,
        &mut m.slice_mut(..12)
    )));
    let tall = PatchGeometry { win_h: 3, ..geo };
    assert!(is_input(be.im2col_fwd(
        &a.slice(..12),
        1,
        &tall,
        &mut h.slice_mut(..12)
    )));
    let huge = PatchGeometry {
        rows: usize::MAX,
        ..geo
    };
    assert!(is_input(be.im2col_fwd(
        &a.slice(..12),
        1,
        &huge,
        &mut m.slice_mut(..12)
    )));

    assert!(is_input(be.rot6d_fwd(
        &a.slice(..12),
        &mut m.slice_mut(..17),
        2
    )));
    assert!(is_input(be.rot6d_fwd(
        &a.slice(..11),
        &mut m.slice_mut(..18),
        2
    )));

    let c = upload(&be, &[1f32; 6]);
    let mut t = upload(&be, &[0f32; 6]);
    let k = upload(&be, &[1f32; 12]);
    let mut p = upload(&be, &[0f32; 8]);
    let mut cam = |cl: usize, kl: usize, tl: usize, pl: usize, f: f32, s: f32| {
        be.camera_fwd(
            &c.slice(..cl),
            &k.slice(..kl),
            &mut t.slice_mut(..tl),
            &mut p.slice_mut(..pl),
            2,
            2,
            f,
            s,
        )
    };
    assert!(cam(6, 12, 6, 8, 5000.0, 256.0).is_ok());
    assert!(is_input(cam(5, 12, 6, 8, 5000.0, 256.0)));
    assert!(is_input(cam(6, 11, 6, 8, 5000.0, 256.0)));
    assert!(is_input(cam(6, 12, 5, 8, 5000.0, 256.0)));
    assert!(is_input(cam(6, 12, 6, 7, 5000.0, 256.0)));
    assert!(is_input(cam(6, 12, 6, 8, f32::NAN, 256.0)));
    assert!(is_input(cam(6, 12, 6, 8, 5000.0, 0.0)));
    be.synchronize().unwrap();
}
