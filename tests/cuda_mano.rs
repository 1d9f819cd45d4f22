//! The MANO kernels (`mano_chain_fwd_f32` + `mano_skin_fwd_f32`, kernels/mano.cu) against their
//! CPU twin `mano_fwd_cpu`, on the fixture's MANO-shaped model (778 vertices, 10 betas) and on a
//! random model of other sizes.
//!
//! All tests need a GPU and are `#[ignore]`d: on a machine with a CUDA device run
//! `cargo test --release --test cuda_mano -- --ignored`.

mod common;

use common::fixture;
use handcov::cuda::{CudaBackend, ManoDevice, ManoWorkspace};
use handcov::model::mano::Mano;
use handcov::model::weights::TensorFile;
use handcov::ops::geometry::rot6d_to_rotmat;
use handcov::ops::mano::{mano_fwd_cpu, ManoData, PARENTS, TIP_VERTICES};
use handcov::tensor::rel_err;
use handcov::Error;

/// SplitMix64: fresh but reproducible inputs per case.
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
    fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| scale * self.sym()).collect()
    }
}

fn backend() -> CudaBackend {
    CudaBackend::new(0).unwrap_or_else(|e| panic!("this test needs a CUDA device: {e}"))
}

/// Owned MANO buffers (the fixture's, or random ones).
struct Model {
    nv: usize,
    nb: usize,
    v_template: Vec<f32>,
    shapedirs: Vec<f32>,
    posedirs: Vec<f32>,
    j_regressor: Vec<f32>,
    lbs_weights: Vec<f32>,
    parents: [usize; 16],
    tips: [usize; 5],
}

impl Model {
    fn fixture() -> Model {
        let f = TensorFile::open(&fixture("tiny_weights.safetensors")).unwrap();
        let m = Mano::load(&f).unwrap();
        Model {
            nv: m.num_verts(),
            nb: 10,
            v_template: m.v_template.data().to_vec(),
            shapedirs: m.shapedirs.data().to_vec(),
            posedirs: m.posedirs.data().to_vec(),
            j_regressor: m.j_regressor.data().to_vec(),
            lbs_weights: m.lbs_weights.data().to_vec(),
            parents: m.parents,
            tips: m.tips,
        }
    }

    /// MANO-like magnitudes (template ±0.1, bases ±0.02, non-negative regressor and skinning
    /// weights with rows summing to 1), `nv` vertices, `nb` betas.
    fn random(rng: &mut Rng, nv: usize, nb: usize) -> Model {
        let rows = |rng: &mut Rng, n: usize, m: usize| {
            let mut w: Vec<f32> = (0..n * m).map(|_| rng.sym().max(0.0)).collect();
            for r in w.chunks_mut(m) {
                r[0] += 0.01;
                let s: f32 = r.iter().sum();
                r.iter_mut().for_each(|x| *x /= s);
            }
            w
        };
        Model {
            nv,
            nb,
            v_template: rng.vec(3 * nv, 0.1),
            shapedirs: rng.vec(3 * nv * nb, 0.02),
            posedirs: rng.vec(135 * 3 * nv, 0.02),
            j_regressor: rows(rng, 16, nv),
            lbs_weights: rows(rng, nv, 16),
            parents: PARENTS.map(|p| p.max(0) as usize),
            tips: TIP_VERTICES.map(|v| v % nv),
        }
    }

    fn data(&self) -> ManoData<'_> {
        ManoData {
            num_verts: self.nv,
            num_betas: self.nb,
            v_template: &self.v_template,
            shapedirs: &self.shapedirs,
            posedirs: &self.posedirs,
            j_regressor: &self.j_regressor,
            lbs_weights: &self.lbs_weights,
            parents: &self.parents,
            tips: &self.tips,
        }
    }
}

/// `b·16` random rotations from random 6D codes (the MANO head's parameterisation).
fn random_rotmats(rng: &mut Rng, b: usize) -> Vec<f32> {
    (0..b * 16)
        .flat_map(|_| {
            let code: [f32; 6] = std::array::from_fn(|_| rng.sym());
            rot6d_to_rotmat(&code)
        })
        .collect()
}

/// Runs the GPU forward on NaN-poisoned outputs; returns (verts, keypoints).
fn run_gpu(
    be: &CudaBackend,
    dev: &ManoDevice,
    ws: &mut ManoWorkspace,
    rot: &[f32],
    betas: &[f32],
    b: usize,
) -> (Vec<f32>, Vec<f32>) {
    let nv = dev.num_verts();
    let d_rot = be.htod(rot).unwrap();
    let d_betas = be.htod(betas).unwrap();
    let mut d_verts = be.htod(&vec![f32::NAN; b * nv * 3]).unwrap();
    let mut d_kp = be.htod(&vec![f32::NAN; b * 63]).unwrap();
    be.mano_fwd(
        dev,
        ws,
        &d_rot.as_view(),
        &d_betas.as_view(),
        &mut d_verts.as_view_mut(),
        &mut d_kp.as_view_mut(),
        b,
    )
    .unwrap();
    be.synchronize().unwrap();
    (be.dtoh(&d_verts).unwrap(), be.dtoh(&d_kp).unwrap())
}

/// Random rotations and betas of `b` samples: GPU against the CPU twin.
fn check_case(be: &CudaBackend, model: &Model, dev: &ManoDevice, rng: &mut Rng, b: usize) {
    let rot = random_rotmats(rng, b);
    let betas = rng.vec(b * model.nb, 3.0);
    let mut want_v = vec![0f32; b * model.nv * 3];
    let mut want_k = vec![0f32; b * 63];
    mano_fwd_cpu(&model.data(), &rot, &betas, b, &mut want_v, &mut want_k);
    let mut ws = be.mano_workspace(b).unwrap();
    let (got_v, got_k) = run_gpu(be, dev, &mut ws, &rot, &betas, b);
    let case = format!("V={} nb={} b={b}", model.nv, model.nb);
    for (what, got) in [("verts", &got_v), ("keypoints", &got_k)] {
        if let Some(i) = got.iter().position(|v| !v.is_finite()) {
            panic!("{case}: {what}[{i}] = {} (not written?)", got[i]);
        }
    }
    let (ev, ek) = (rel_err(&got_v, &want_v), rel_err(&got_k, &want_k));
    // Tolerance 1e-5: fp32 on both sides; the kernels differ from the twin only in summation
    // order, FMA contraction and the rest joints (J_regressor folded into the shape basis in
    // f64 on upload). A host emulation of the kernels (src/cuda/mano/tests.rs) lands at
    // <= 8.1e-7 against the twin on random MANO-shaped models.
    assert!(
        ev <= 1e-5,
        "{case}: verts max|gpu − cpu| / max|cpu| = {ev:e} > 1e-5"
    );
    assert!(
        ek <= 1e-5,
        "{case}: keypoints max|gpu − cpu| / max|cpu| = {ek:e} > 1e-5"
    );
}

/// The fixture's MANO at the batch sizes the brief names, plus 1000 (the 16-sample tile with a
/// partial last tile). On an H100 (132 SMs) b ≤ 33 takes the 4-sample tile (b = 5 and 33 end in
/// a partial tile) and b ≥ 1000 the 16-sample tile; V = 778 is 5 vertex chunks, the last partial.
#[test]
#[ignore = "needs a CUDA device"]
fn mano_matches_cpu_twin_on_the_fixture_model() {
    let be = backend();
    let model = Model::fixture();
    let dev = be.upload_mano(&model.data()).unwrap();
    let mut rng = Rng(0x3a70_f00d);
    for b in [1, 5, 33, 1000, 1024] {
        check_case(&be, &model, &dev, &mut rng, b);
    }
}

/// Other sizes: V not a multiple of the 160-thread vertex chunk, other beta counts (1, 7, 16),
/// duplicate fingertip vertices (V = 5), and a batch large enough for the 16-sample tile.
#[test]
#[ignore = "needs a CUDA device"]
fn mano_matches_cpu_twin_on_random_models() {
    let be = backend();
    let mut rng = Rng(0x5eed_3a70);
    for (nv, nb, batches) in [
        (300usize, 7usize, &[1usize, 17, 1100][..]),
        (5, 16, &[3, 40][..]),
        (161, 1, &[2, 9][..]),
    ] {
        let model = Model::random(&mut rng, nv, nb);
        let dev = be.upload_mano(&model.data()).unwrap();
        for &b in batches {
            check_case(&be, &model, &dev, &mut rng, b);
        }
    }
}

/// Identity rotations and zero betas: every D_j is exactly zero, so the vertices are
/// v_template bit for bit (SPEC §13) and the fingertip keypoints are template vertices.
#[test]
#[ignore = "needs a CUDA device"]
fn identity_pose_and_zero_betas_give_the_template_exactly() {
    let be = backend();
    let model = Model::fixture();
    let dev = be.upload_mano(&model.data()).unwrap();
    let nv = model.nv;
    for b in [1usize, 40, 1024] {
        let mut rot = vec![0f32; b * 144];
        for r in rot.chunks_mut(9) {
            (r[0], r[4], r[8]) = (1.0, 1.0, 1.0);
        }
        let betas = vec![0f32; b * 10];
        let mut ws = be.mano_workspace(b).unwrap();
        let (v, k) = run_gpu(&be, &dev, &mut ws, &rot, &betas, b);
        let mut want_v = vec![0f32; b * nv * 3];
        let mut want_k = vec![0f32; b * 63];
        mano_fwd_cpu(&model.data(), &rot, &betas, b, &mut want_v, &mut want_k);
        for s in 0..b {
            let got = &v[s * nv * 3..(s + 1) * nv * 3];
            // The fixture's template holds no −0.0, so bits and values agree.
            if let Some(i) =
                (0..nv * 3).find(|&i| got[i].to_bits() != model.v_template[i].to_bits())
            {
                panic!(
                    "b={b} sample {s}: verts[{i}] = {:e}, template {:e}",
                    got[i], model.v_template[i]
                );
            }
            for (slot, tip) in [(4, 744), (8, 320), (12, 443), (16, 554), (20, 671)] {
                assert_eq!(
                    &k[s * 63 + slot * 3..s * 63 + slot * 3 + 3],
                    &model.v_template[tip * 3..tip * 3 + 3],
                    "b={b} sample {s}: keypoint {slot}"
                );
            }
        }
        // The joints are the rest joints J_regressor·v_template; the GPU folds the regressor in
        // f64, the twin sums in f32: equal to a few ulps.
        let ek = rel_err(&k, &want_k);
        assert!(
            ek <= 1e-6,
            "b={b}: identity keypoints differ from the twin by {ek:e}"
        );
    }
}

/// Same inputs, same bits; a workspace larger than the batch serves it.
#[test]
#[ignore = "needs a CUDA device"]
fn mano_is_deterministic_and_workspaces_are_reusable() {
    let be = backend();
    let model = Model::fixture();
    let dev = be.upload_mano(&model.data()).unwrap();
    let mut rng = Rng(42);
    let mut ws = be.mano_workspace(1024).unwrap();
    for b in [1024usize, 33, 1] {
        let rot = random_rotmats(&mut rng, b);
        let betas = rng.vec(b * 10, 3.0);
        let (v1, k1) = run_gpu(&be, &dev, &mut ws, &rot, &betas, b);
        let (v2, k2) = run_gpu(&be, &dev, &mut ws, &rot, &betas, b);
        let same = |a: &[f32], c: &[f32]| a.iter().zip(c).all(|(x, y)| x.to_bits() == y.to_bits());
        assert!(same(&v1, &v2) && same(&k1, &k2), "b={b}: runs differ");
        let mut want_v = vec![0f32; b * 778 * 3];
        let mut want_k = vec![0f32; b * 63];
        mano_fwd_cpu(&model.data(), &rot, &betas, b, &mut want_v, &mut want_k);
        // Tolerance 1e-5, as in check_case.
        assert!(
            rel_err(&v1, &want_v) <= 1e-5 && rel_err(&k1, &want_k) <= 1e-5,
            "b={b}"
        );
    }
}

/// Wrong lengths, a small workspace and malformed models are `Error::Input`, not panics.
#[test]
#[ignore = "needs a CUDA device"]
fn mano_rejects_bad_arguments() {
    let be = backend();
    let model = Model::fixture();
    let dev = be.upload_mano(&model.data()).unwrap();
    let b = 4;
    let rot = be.htod(&vec![0.0; b * 144]).unwrap();
    let betas = be.htod(&vec![0.0; b * 10]).unwrap();
    let short = be.htod(&[0.0; 7]).unwrap();
    let mut verts = be.htod(&vec![0.0; b * 778 * 3]).unwrap();
    let mut kp = be.htod(&vec![0.0; b * 63]).unwrap();
    let mut small_out = be.htod(&[0.0; 5]).unwrap();
    let mut ws = be.mano_workspace(b).unwrap();
    let mut small_ws = be.mano_workspace(b - 1).unwrap();
    let is_input = |r: handcov::Result<()>| matches!(r, Err(Error::Input(_)));

    assert!(is_input(be.mano_fwd(
        &dev,
        &mut ws,
        &short.as_view(),
        &betas.as_view(),
        &mut verts.as_view_mut(),
        &mut kp.as_view_mut(),
        b
    )));
    assert!(is_input(be.mano_fwd(
        &dev,
        &mut ws,
        &rot.as_view(),
        &short.as_view(),
        &mut verts.as_view_mut(),
        &mut kp.as_view_mut(),
        b
    )));
    assert!(is_input(be.mano_fwd(
        &dev,
        &mut ws,
        &rot.as_view(),
        &betas.as_view(),
        &mut small_out.as_view_mut(),
        &mut kp.as_view_mut(),
        b
    )));
    assert!(is_input(be.mano_fwd(
        &dev,
        &mut ws,
        &rot.as_view(),
        &betas.as_view(),
        &mut verts.as_view_mut(),
        &mut small_out.as_view_mut(),
        b
    )));
    assert!(is_input(be.mano_fwd(
        &dev,
        &mut small_ws,
        &rot.as_view(),
        &betas.as_view(),
        &mut verts.as_view_mut(),
        &mut kp.as_view_mut(),
        b
    )));
    assert!(is_input(be.mano_fwd(
        &dev,
        &mut ws,
        &rot.as_view(),
        &betas.as_view(),
        &mut verts.as_view_mut(),
        &mut kp.as_view_mut(),
        usize::MAX
    )));
    // A batch of 0 is fine with empty buffers.
    let empty = be.zeros(1).unwrap();
    let mut empty_v = be.zeros(1).unwrap();
    let mut empty_k = be.zeros(1).unwrap();
    be.mano_fwd(
        &dev,
        &mut ws,
        &empty.slice(0..0),
        &empty.slice(0..0),
        &mut empty_v.slice_mut(0..0),
        &mut empty_k.slice_mut(0..0),
        0,
    )
    .unwrap();

    let mut bad = Model::fixture();
    bad.parents[5] = 9;
    assert!(matches!(be.upload_mano(&bad.data()), Err(Error::Input(_))));
    let mut bad = Model::fixture();
    bad.tips[2] = 778;
    assert!(matches!(be.upload_mano(&bad.data()), Err(Error::Input(_))));
    let mut bad = Model::fixture();
    bad.lbs_weights.pop();
    assert!(matches!(be.upload_mano(&bad.data()), Err(Error::Input(_))));
    be.synchronize().unwrap();
}
