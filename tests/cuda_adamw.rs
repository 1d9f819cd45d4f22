//! AdamW on the GPU (kernels/adamw.cu, `CudaBackend::adamw_step`) against the CPU optimiser
//! `train::adamw::AdamW::update`: 10 steps on tensors of odd sizes (empty, single, around and
//! across the kernels' 16384-element chunks), with and without clipping, fp32 and bf16 working
//! copies (poisoned with NaN first), a step with a NaN gradient skipped, determinism.
//!
//! All tests need a GPU: `cargo test --release --test cuda_adamw -- --ignored`.
//!
//! Without clipping the GPU update is bit-identical to the twin (same IEEE f32 operations in the
//! same order, no FMA contraction; the host mirror in src/cuda/adamw/tests.rs checks the same
//! claim bit for bit). With clipping the clip factor comes from an f64 sum of squares taken in
//! another order (~1e-14 relative); it rounds to the same f32 except near a rounding boundary, so
//! those runs are compared at 1e-6 relative (and reported when they are not bit-identical).

use cudarc::driver::{CudaSlice, DeviceRepr};
use half::bf16;
use handcov::cuda::adamw::{AdamWHyper, AdamWTensors};
use handcov::cuda::CudaBackend;
use handcov::model::backward::Grads;
use handcov::tensor::rel_err;
use handcov::train::adamw::{AdamW, AdamWConfig};

/// SplitMix64, uniform in [-1, 1).
struct Rng(u64);
impl Rng {
    fn sym(&mut self) -> f32 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        ((z >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
    fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| scale * self.sym()).collect()
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

/// Odd sizes: empty, single, around the 16384-element chunk, several chunks, chunks spanning
/// several small tensors.
const SIZES: [usize; 9] = [1, 0, 16383, 16385, 7, 40001, 3, 255, 32768];

fn hyper(clip_norm: Option<f32>) -> AdamWHyper {
    AdamWHyper {
        lr: 1e-3,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 1e-2,
        clip_norm,
    }
}

/// Max relative error over all tensors, and whether every bit matched.
fn compare(got: &[Vec<f32>], want: &[Vec<f32>]) -> (f64, bool) {
    let mut worst = 0f64;
    let mut bits = true;
    for (g, w) in got.iter().zip(want) {
        if !w.is_empty() {
            worst = worst.max(rel_err(g, w));
        }
        bits &= g.iter().zip(w).all(|(a, b)| a.to_bits() == b.to_bits());
    }
    (worst, bits)
}

/// 10 steps on the GPU and on the CPU; `nan_step`: a NaN in one gradient at that step (the GPU
/// skips it, the CPU is not called). Returns the GPU's final weights.
fn run(be: &CudaBackend, h: AdamWHyper, bf16_out: bool, nan_step: Option<usize>) -> Vec<Vec<f32>> {
    let mut rng = Rng(0xada3_0001);
    let names: Vec<String> = (0..SIZES.len()).map(|i| format!("t{i}")).collect();
    let p0: Vec<Vec<f32>> = SIZES.iter().map(|&n| rng.vec(n, 0.5)).collect();
    let mut params: Vec<CudaSlice<f32>> = p0.iter().map(|p| upload(be, p)).collect();
    let mut m: Vec<CudaSlice<f32>> = SIZES.iter().map(|&n| upload(be, &vec![0f32; n])).collect();
    let mut v: Vec<CudaSlice<f32>> = SIZES.iter().map(|&n| upload(be, &vec![0f32; n])).collect();
    let mut work: Vec<CudaSlice<bf16>> = SIZES
        .iter()
        .map(|&n| upload(be, &vec![bf16::NAN; n]))
        .collect();
    let mut ws = be.adamw_workspace(0).unwrap();
    let mut cpu_p = p0;
    let mut opt = AdamW::new(AdamWConfig {
        lr: h.lr,
        beta1: h.beta1,
        beta2: h.beta2,
        eps: h.eps,
        weight_decay: h.weight_decay,
        clip_norm: h.clip_norm,
    });
    let what = format!(
        "clip {:?}, bf16 {bf16_out}, NaN at {nan_step:?}",
        h.clip_norm
    );
    for step in 0..10 {
        let mut grads = Grads::default();
        let mut g_dev = Vec::new();
        for (i, name) in names.iter().enumerate() {
            let scale = 10f32.powi((i % 7) as i32 - 4);
            let mut g = rng.vec(SIZES[i], scale);
            if nan_step == Some(step) && i == 5 {
                g[123] = f32::NAN;
            }
            g_dev.push(upload(be, &g));
            grads.put(name, g);
        }
        be.adamw_step(
            &mut ws,
            &h,
            AdamWTensors {
                params: &mut params,
                grads: &g_dev,
                exp_avg: &mut m,
                exp_avg_sq: &mut v,
                work: bf16_out.then_some(&mut work[..]),
            },
            nan_step.is_some(),
        )
        .expect("adamw_step");
        let st = be.adamw_state(&ws).unwrap();
        if nan_step == Some(step) {
            assert!(st.skipped, "{what}: step {step} not skipped");
            assert_eq!(
                st.step, opt.step,
                "{what}: a skipped step advanced the count"
            );
            continue;
        }
        assert!(!st.skipped, "{what}: step {step} skipped");
        opt.update(
            names
                .iter()
                .cloned()
                .zip(cpu_p.iter_mut().map(|p| p.as_mut_slice())),
            &grads,
        );
        assert_eq!(st.step, opt.step, "{what}: step count");
        let got_p: Vec<Vec<f32>> = params.iter().map(|p| download(be, p)).collect();
        let got_m: Vec<Vec<f32>> = m.iter().map(|x| download(be, x)).collect();
        let got_v: Vec<Vec<f32>> = v.iter().map(|x| download(be, x)).collect();
        let want_m: Vec<Vec<f32>> = names.iter().map(|n| opt.exp_avg[n].clone()).collect();
        let want_v: Vec<Vec<f32>> = names.iter().map(|n| opt.exp_avg_sq[n].clone()).collect();
        for (name, got, want) in [
            ("weights", &got_p, &cpu_p),
            ("exp_avg", &got_m, &want_m),
            ("exp_avg_sq", &got_v, &want_v),
        ] {
            let (err, bits) = compare(got, want);
            if h.clip_norm.is_none() {
                assert!(
                    bits,
                    "{what}, step {step}: {name} not bit-identical (rel err {err:e})"
                );
            } else {
                if !bits {
                    eprintln!("{what}, step {step}: {name} rel err {err:.2e} (not bit-identical)");
                }
                // The clip factor may differ by one f32 ulp (see the file header).
                assert!(err <= 1e-6, "{what}, step {step}: {name} rel err {err:e}");
            }
        }
        if bf16_out {
            for (i, w) in work.iter().enumerate() {
                let got = download(be, w);
                for (e, x) in got.iter().enumerate() {
                    assert_eq!(
                        x.to_bits(),
                        bf16::from_f32(got_p[i][e]).to_bits(),
                        "{what}, step {step}: working copy of t{i}[{e}]"
                    );
                }
            }
        }
    }
    params.iter().map(|p| download(be, p)).collect()
}

#[test]
#[ignore = "needs a CUDA device"]
fn adamw_matches_the_cpu_optimiser_without_clipping() {
    let be = backend();
    let a = run(&be, hyper(None), false, None);
    let b = run(&be, hyper(None), true, None);
    assert_eq!(a, b, "the bf16 copies changed the fp32 update");
}

#[test]
#[ignore = "needs a CUDA device"]
fn adamw_matches_the_cpu_optimiser_with_clipping() {
    let be = backend();
    // max norm 1: every step clips (the gradients' norm is ~1e3); 1e6: never.
    let a = run(&be, hyper(Some(1.0)), true, None);
    run(&be, hyper(Some(1e6)), false, None);
    // Same inputs, same bits.
    assert_eq!(a, run(&be, hyper(Some(1.0)), true, None));
}

#[test]
#[ignore = "needs a CUDA device"]
fn adamw_skips_a_step_with_a_nan_gradient() {
    let be = backend();
    run(&be, hyper(None), false, Some(4));
    run(&be, hyper(Some(1.0)), true, Some(0));
}

#[test]
#[ignore = "needs a CUDA device"]
fn adamw_rejects_bad_lists() {
    let be = backend();
    let mut ws = be.adamw_workspace(0).unwrap();
    let mut p = vec![upload(&be, &[1f32; 4])];
    let g = vec![upload(&be, &[1f32; 3])];
    let mut m = vec![upload(&be, &[0f32; 4])];
    let mut v = vec![upload(&be, &[0f32; 4])];
    let r = be.adamw_step(
        &mut ws,
        &hyper(None),
        AdamWTensors {
            params: &mut p,
            grads: &g,
            exp_avg: &mut m,
            exp_avg_sq: &mut v,
            work: None,
        },
        true,
    );
    assert!(matches!(r, Err(handcov::Error::Input(_))), "{r:?}");
    let r = be.adamw_step(
        &mut ws,
        &hyper(None),
        AdamWTensors {
            params: &mut p,
            grads: &[],
            exp_avg: &mut m,
            exp_avg_sq: &mut v,
            work: None,
        },
        true,
    );
    assert!(matches!(r, Err(handcov::Error::Input(_))), "{r:?}");
    // Nothing was queued: the step count is still 0.
    assert_eq!(be.adamw_state(&ws).unwrap().step, 0);
}
