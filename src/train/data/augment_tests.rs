//! The augmentation's draws and every label transform against hand-computed cases and against
//! each other (2D ↔ 3D through a camera, 3D ↔ MANO through the MANO layer).

use super::test_util::{annotation, test_image};
use super::*;
use crate::ops::image::{crop_affine, crop_for_model, flip_horizontal, normalize_crop, CropBox};

fn ann(is_right: bool) -> Annotation {
    parse_annotation(&annotation("a.png", [61.0, 47.5], 0.3, is_right, 0).to_string()).unwrap()
}

fn params(tx: f64, ty: f64, scale: f64, rot: f64, flip: bool) -> AugParams {
    AugParams {
        tx,
        ty,
        scale,
        rot,
        flip,
        color_scale: [1.0; 3],
    }
}

fn close(a: f64, b: f64, tol: f64) -> bool {
    (a - b).abs() <= tol
}

#[test]
fn draws_are_reproducible_and_in_the_reference_ranges() {
    let cfg = AugConfig::default();
    let a = AugParams::draw(&cfg, 7, 3, 11, true);
    assert_eq!(a, AugParams::draw(&cfg, 7, 3, 11, true));
    assert_ne!(
        a,
        AugParams::draw(&cfg, 7, 4, 11, true),
        "epoch changes the draw"
    );
    assert_ne!(
        a,
        AugParams::draw(&cfg, 7, 3, 12, true),
        "item changes the draw"
    );
    assert_ne!(
        a,
        AugParams::draw(&cfg, 8, 3, 11, true),
        "seed changes the draw"
    );
    assert!(
        !a.flip && AugParams::draw(&cfg, 7, 3, 11, false).flip,
        "flip = left hand"
    );

    let n = 20_000;
    let (mut rotated, mut color_sum) = (0usize, 0f64);
    let (mut t_max, mut s_range, mut r_max) = (0f64, (2f64, 0f64), 0f64);
    for i in 0..n {
        let p = AugParams::draw(&cfg, 1, 0, i, true);
        t_max = t_max.max(p.tx.abs()).max(p.ty.abs());
        s_range = (s_range.0.min(p.scale), s_range.1.max(p.scale));
        r_max = r_max.max(p.rot.abs());
        rotated += (p.rot != 0.0) as usize;
        for c in p.color_scale {
            assert!((0.8..=1.2).contains(&c), "colour {c}");
            color_sum += c as f64;
        }
    }
    // Clipped normals: the bounds are reached (P(|z| > 1) = 0.32, P(|z| > 2) = 0.046).
    assert_eq!(t_max, 0.02);
    assert_eq!(s_range, (0.7, 1.3));
    assert_eq!(r_max, 60.0);
    // P(rotate) = 0.6; the standard error at n = 2·10⁴ is 0.0035, the bound ~4.5 of them.
    let frac = rotated as f64 / n as f64;
    assert!(close(frac, 0.6, 0.016), "rotated fraction {frac}");
    // Mean colour factor 1; standard error 0.4/√12/√(3n) = 4.7e-4.
    let cm = color_sum / (3 * n) as f64;
    assert!(close(cm, 1.0, 0.0025), "colour mean {cm}");

    let id = AugParams::identity(false);
    assert_eq!(
        (id.tx, id.ty, id.scale, id.rot, id.flip),
        (0.0, 0.0, 1.0, 0.0, true)
    );
}

#[test]
fn keypoint_at_the_box_centre_maps_to_the_crop_centre() {
    let a = ann(true);
    let s = train_box_size(a.scale);
    assert_eq!(s, 60.0);
    let w = 120;
    for (tx, ty, sc, rot) in [
        (0.0, 0.0, 1.0, 0.0),
        (0.02, -0.01, 0.7, 35.0),
        (-0.02, 0.02, 1.3, -60.0),
    ] {
        for flip in [false, true] {
            // The (translated) centre, in the original image.
            let c = [a.center[0] + s * tx, a.center[1] + s * ty];
            let cf = if flip {
                [w as f64 - c[0] - 1.0, c[1]]
            } else {
                c
            };
            let m = crop_affine(cf, s, 256, rot, sc);
            let mut kp = a.keypoints_2d;
            kp[5] = [c[0] as f32, c[1] as f32, 0.7];
            let out = transform_keypoints_2d(&kp, flip, w, &m, 256);
            assert!(
                out[5][0].abs() < 2e-5 && out[5][1].abs() < 2e-5,
                "{:?}",
                out[5]
            );
            assert_eq!(out[5][2], 0.7, "confidence unchanged");
        }
    }
}

#[test]
fn keypoint_transform_matches_hand_computed_points() {
    // Box side 100 at (50, 60), crop 200: a point S/2 right of the centre lands on the right
    // edge (x = 0.5); with rot = 90° the source axis (S'/2, 0) is rotated to (0, S'/2), so the
    // point below the centre lands there; with scale 0.5 a point S/4 right does.
    let kp = |x: f32, y: f32| {
        let mut k = [[0f32; 3]; 21];
        k[0] = [x, y, 1.0];
        k
    };
    let cases = [
        (kp(100.0, 60.0), 0.0, 1.0, [0.5, 0.0]),
        (kp(50.0, 110.0), 0.0, 1.0, [0.0, 0.5]),
        (kp(50.0, 110.0), 90.0, 1.0, [0.5, 0.0]),
        (kp(0.0, 60.0), 90.0, 1.0, [0.0, 0.5]),
        (kp(75.0, 60.0), 0.0, 0.5, [0.5, 0.0]),
        (kp(25.0, 10.0), 0.0, 1.0, [-0.25, -0.5]),
    ];
    for (i, (k, rot, sc, want)) in cases.iter().enumerate() {
        let m = crop_affine([50.0, 60.0], 100.0, 200, *rot, *sc);
        let out = transform_keypoints_2d(k, false, 500, &m, 200);
        assert!(
            close(out[0][0] as f64, want[0], 1e-6) && close(out[0][1] as f64, want[1], 1e-6),
            "case {i}: {:?} vs {want:?}",
            out[0]
        );
    }
    // Flip: x ← W − x − 1 before the affine.
    let m = crop_affine([50.0, 60.0], 100.0, 200, 0.0, 1.0);
    let out = transform_keypoints_2d(&kp(449.0, 60.0), true, 500, &m, 200);
    assert_eq!([out[0][0], out[0][1]], [0.0, 0.0]);
}

#[test]
fn three_d_flip_is_an_involution_and_rotation_is_rz_of_minus_rot() {
    let a = ann(true);
    let f1 = transform_keypoints_3d(&a.keypoints_3d, true, 0.0);
    for (o, i) in f1.iter().zip(&a.keypoints_3d) {
        assert_eq!([o[0], o[1], o[2], o[3]], [-i[0], i[1], i[2], i[3]]);
    }
    assert_eq!(transform_keypoints_3d(&f1, true, 0.0), a.keypoints_3d);
    assert_eq!(
        transform_keypoints_3d(&a.keypoints_3d, false, 0.0),
        a.keypoints_3d
    );

    let mut kp = [[0f32; 4]; 21];
    kp[0] = [1.0, 0.0, 2.0, 1.0];
    kp[1] = [0.0, 1.0, -1.0, 0.5];
    let out = transform_keypoints_3d(&kp, false, 90.0);
    // Rz(−90°): (1, 0) → (0, −1), (0, 1) → (1, 0); z and conf unchanged.
    let want = [[0.0, -1.0, 2.0, 1.0], [1.0, 0.0, -1.0, 0.5]];
    for (o, w) in out.iter().zip(want) {
        for d in 0..4 {
            assert!(close(o[d] as f64, w[d], 1e-7), "{o:?} vs {w:?}");
        }
    }
    // +rot then −rot: back (f32 rounding).
    let back = transform_keypoints_3d(
        &transform_keypoints_3d(&a.keypoints_3d, false, 37.0),
        false,
        -37.0,
    );
    for (o, i) in back.iter().zip(&a.keypoints_3d) {
        for d in 0..4 {
            assert!(close(o[d] as f64, i[d] as f64, 1e-6));
        }
    }
}

/// The 2D and 3D transforms describe the same image operation: keypoints projected from 3D by
/// a pinhole camera (focal f, principal point p), transformed in 2D, equal the transformed 3D
/// keypoints projected by the crop's camera (focal f·size/S', principal point p mapped by the
/// crop affine). Checked for rotation, scale, translation and the left-hand mirror.
#[test]
fn two_d_and_three_d_transforms_agree_through_a_camera() {
    let (f, p, w) = (900.0f64, [310.0f64, 250.0f64], 640usize);
    let project =
        |x: f64, y: f64, z: f64, f: f64, pp: [f64; 2]| [f * x / z + pp[0], f * y / z + pp[1]];
    let mut kp3 = [[0f32; 4]; 21];
    let mut kp2 = [[0f32; 3]; 21];
    for k in 0..21 {
        let (x, y, z) = (
            0.1 + 0.01 * k as f64,
            -0.05 + 0.007 * k as f64,
            0.6 + 0.003 * k as f64,
        );
        kp3[k] = [x as f32, y as f32, z as f32, 1.0];
        let q = project(x as f32 as f64, y as f32 as f64, z as f32 as f64, f, p);
        kp2[k] = [q[0] as f32, q[1] as f32, 1.0];
    }
    let (center, s, size) = ([450.0f64, 190.0f64], 180.0f64, 256usize);
    for (tx, ty, sc, rot, flip) in [
        (0.0, 0.0, 1.0, 0.0, false),
        (0.01, -0.02, 0.8, 40.0, false),
        (-0.015, 0.005, 1.2, -55.0, true),
        (0.0, 0.0, 1.0, 0.0, true),
    ] {
        let c = [center[0] + s * tx, center[1] + s * ty];
        let (cc, pp) = if flip {
            ([w as f64 - c[0] - 1.0, c[1]], [w as f64 - p[0] - 1.0, p[1]])
        } else {
            (c, p)
        };
        let m = crop_affine(cc, s, size, rot, sc);
        let out2 = transform_keypoints_2d(&kp2, flip, w, &m, size);
        let out3 = transform_keypoints_3d(&kp3, flip, rot);
        // The crop camera: principal point = the affine image of pp, focal scaled.
        let pc = [
            m[0] * pp[0] + m[1] * pp[1] + m[2],
            m[3] * pp[0] + m[4] * pp[1] + m[5],
        ];
        let fc = f * size as f64 / (s * sc);
        for k in 0..21 {
            let q = project(
                out3[k][0] as f64,
                out3[k][1] as f64,
                out3[k][2] as f64,
                fc,
                pc,
            );
            let want = [q[0] / size as f64 - 0.5, q[1] / size as f64 - 0.5];
            for d in 0..2 {
                // f32 keypoints of ~500 px: a few 1e-5 px of rounding, /256.
                assert!(
                    close(out2[k][d] as f64, want[d], 2e-6),
                    "flip {flip} rot {rot}: joint {k} axis {d}: {} vs {}",
                    out2[k][d],
                    want[d]
                );
            }
        }
    }
}

#[test]
fn rodrigues_round_trips_and_matches_the_quaternion_path() {
    use crate::train::losses::axis_angle_to_rotmat;
    let vs = [
        [0.3, -0.2, 0.1],
        [1.0, 2.0, -0.5],
        [0.0, 0.0, 3.0],
        [-2.0, 0.5, 1.5],
        [1e-3, 0.0, -2e-3],
    ];
    for v in vs {
        let r = rodrigues(v);
        let q = axis_angle_to_rotmat(v);
        for i in 0..9 {
            assert!(close(r[i], q[i], 1e-7), "{v:?}: {r:?} vs {q:?}");
        }
        let back = rodrigues_inv(&r);
        for d in 0..3 {
            assert!(close(back[d], v[d], 1e-9), "{v:?} → {back:?}");
        }
    }
    // Angle above π comes back as the equivalent angle 2π − θ about the opposite axis.
    let v = [0.0, 4.0, 0.0];
    let back = rodrigues_inv(&rodrigues(v));
    assert!(
        close(back[1], 4.0 - std::f64::consts::TAU, 1e-9),
        "{back:?}"
    );
    // Near π (OpenCV's special branch) and a rotation by exactly π about x.
    let pi = std::f64::consts::PI;
    let back = rodrigues_inv(&[1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, -1.0]);
    assert!(
        close(back[0].abs(), pi, 1e-12) && back[1] == 0.0 && back[2] == 0.0,
        "{back:?}"
    );
    let axis = [0.6f64, -0.8, 0.0];
    let back = rodrigues_inv(&rodrigues(axis.map(|a| a * pi)));
    let r1 = rodrigues(back);
    let r0 = rodrigues(axis.map(|a| a * pi));
    for i in 0..9 {
        assert!(close(r1[i], r0[i], 1e-7), "{back:?}");
    }
    assert_eq!(rodrigues_inv(&rodrigues([0.0; 3])), [0.0; 3]);
    assert_eq!(
        rodrigues([0.0; 3]),
        [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
    );
}

#[test]
fn mano_flip_is_the_mirror_conjugation_and_an_involution() {
    let a = ann(true);
    let f = transform_mano(&a.mano, true, 0.0);
    let ff = transform_mano(&f, true, 0.0);
    assert_eq!(ff.hand_pose, a.mano.hand_pose, "hand pose: exact negations");
    assert_eq!(f.betas, a.mano.betas);
    for d in 0..3 {
        assert!(close(
            ff.global_orient[d] as f64,
            a.mano.global_orient[d] as f64,
            1e-7
        ));
    }
    for j in 0..15 {
        let h = &f.hand_pose[j * 3..j * 3 + 3];
        let o = &a.mano.hand_pose[j * 3..j * 3 + 3];
        assert_eq!([h[0], h[1], h[2]], [o[0], -o[1], -o[2]]);
    }
    // Negating (y, z) of an axis-angle = conjugating its rotation by the mirror M = diag(−1, 1, 1).
    let g = a.mano.global_orient.map(|v| v as f64);
    let r = rodrigues(g);
    let rf = rodrigues(f.global_orient.map(|v| v as f64));
    let sign = [-1.0, 1.0, 1.0];
    for i in 0..3 {
        for j in 0..3 {
            assert!(close(rf[i * 3 + j], sign[i] * r[i * 3 + j] * sign[j], 1e-7));
        }
    }
}

/// For a pure global rotation, the MANO joints of the augmented parameters equal the augmented
/// 3D joints, relative to the root (MANO rotates about the wrist joint, so the absolute joints
/// differ by the constant (Rz − I)·J₀).
#[test]
fn mano_global_orient_rotates_like_the_three_d_keypoints() {
    use crate::model::mano::Mano;
    use crate::model::weights::TensorFile;
    use crate::tensor::Tensor;
    use crate::train::losses::axis_angle_to_rotmat_cpu;
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/tiny_weights.safetensors");
    let mano = Mano::load(&TensorFile::open(&path).unwrap()).unwrap();
    let betas = [0.4f32, -0.3, 0.2, 0.0, 0.1, 0.0, 0.0, -0.1, 0.0, 0.05];
    let joints = |go: [f32; 3]| -> [[f32; 4]; 21] {
        let mut aa = vec![0f32; 16 * 3];
        aa[..3].copy_from_slice(&go);
        let mut rot = vec![0f32; 16 * 9];
        axis_angle_to_rotmat_cpu(&aa, &mut rot).unwrap();
        let (_, kp) = mano
            .forward(
                &Tensor::from_vec(&[1, 16, 3, 3], rot).unwrap(),
                &Tensor::from_vec(&[1, 10], betas.to_vec()).unwrap(),
            )
            .unwrap();
        let mut out = [[0f32; 4]; 21];
        for k in 0..21 {
            let d = kp.data();
            out[k] = [d[k * 3], d[k * 3 + 1], d[k * 3 + 2], 1.0];
        }
        out
    };
    let mut p = ManoParams::default();
    for (go, rot) in [
        ([0.3f32, -1.2, 0.4], 35.0),
        ([2.0, 0.5, -1.0], -60.0),
        ([0.0, 0.0, 0.0], 90.0),
    ] {
        p.global_orient = go;
        let aug = transform_mano(&p, false, rot);
        let from_params = joints(aug.global_orient);
        let from_kp = transform_keypoints_3d(&joints(go), false, rot);
        let max = from_kp
            .iter()
            .flat_map(|k| k[..3].iter())
            .fold(0f32, |m, v| m.max(v.abs()));
        for k in 0..21 {
            for d in 0..3 {
                let a = from_params[k][d] - from_params[0][d];
                let b = from_kp[k][d] - from_kp[0][d];
                // f32 MANO and f32 rounding of the rotated axis-angle: relative 1e-5.
                assert!(
                    (a - b).abs() <= 1e-5 * max,
                    "go {go:?} rot {rot}: joint {k} axis {d}: {a} vs {b}"
                );
            }
        }
    }
}

#[test]
fn colour_scale_and_normalisation() {
    let crop: Vec<u8> = (0..4 * 4 * 3).map(|i| (i * 17 % 256) as u8).collect();
    assert_eq!(
        normalize_crop_scaled(&crop, 4, [1.0; 3]),
        normalize_crop(&crop, 4)
    );
    let out = normalize_crop_scaled(&crop, 4, [1.2, 0.8, 1.0]);
    let n = 16;
    for i in 0..n {
        for c in 0..3 {
            let cs = [1.2f32, 0.8, 1.0][c];
            let mean = (255.0 * [0.485, 0.456, 0.406][c]) as f32;
            let std = (255.0 * [0.229, 0.224, 0.225][c]) as f32;
            let want = ((crop[i * 3 + c] as f32 * cs).min(255.0) - mean) / std;
            assert_eq!(out[c * n + i], want);
        }
    }
    // 250·1.2 clips at 255.
    let white = vec![250u8; 3];
    let o = normalize_crop_scaled(&white, 1, [1.2, 1.0, 1.0]);
    assert_eq!(o[0], normalize_crop(&[255, 0, 0], 1)[0]);
}

#[test]
fn unaugmented_example_is_the_evaluation_crop_and_left_mirrors_right() {
    let img = test_image(120, 96, 3);
    for is_right in [true, false] {
        let a = ann(is_right);
        let ex = make_example(&a, &img, &AugParams::identity(is_right), 64);
        let (want, m) = crop_for_model(
            &img,
            &CropBox {
                center: a.center,
                box_size: train_box_size(a.scale),
                is_right,
            },
            64,
        );
        assert_eq!(ex.img, want);
        assert_eq!(ex.trans, m);
        assert_eq!(ex.has_mano, a.has_mano);
    }

    // A left hand in the mirrored image gives the same example as the right hand.
    let right = ann(true);
    let mut left = right.clone();
    left.is_right = false;
    left.center[0] = 120.0 - right.center[0] - 1.0;
    for (l, r) in left.keypoints_2d.iter_mut().zip(&right.keypoints_2d) {
        l[0] = 120.0 - r[0] - 1.0;
    }
    for (l, r) in left.keypoints_3d.iter_mut().zip(&right.keypoints_3d) {
        l[0] = -r[0];
    }
    left.mano = transform_mano(&right.mano, true, 0.0);
    let mirrored = flip_horizontal(&img);
    let mut p = params(0.01, -0.02, 0.9, 25.0, false);
    p.color_scale = [1.1, 0.9, 1.05];
    let er = make_example(&right, &img, &p, 64);
    p.flip = true;
    let el = make_example(&left, &mirrored, &p, 64);
    // Translation moves the centre by +S·tx in the mirrored image, i.e. −S·tx in the original:
    // undo that difference by comparing with the right hand translated the other way.
    let mut p_r = p;
    p_r.flip = false;
    p_r.tx = -p.tx;
    let er2 = make_example(&right, &img, &p_r, 64);
    assert_ne!(er.img, er2.img);
    assert_eq!(el.img, er2.img);
    assert_eq!(el.keypoints_3d, er2.keypoints_3d);
    for (l, r) in el.keypoints_2d.iter().zip(&er2.keypoints_2d) {
        assert!(close(l[0] as f64, r[0] as f64, 1e-6) && close(l[1] as f64, r[1] as f64, 1e-6));
    }
    assert_eq!(el.mano.hand_pose, er2.mano.hand_pose);
    for d in 0..3 {
        assert!(close(
            el.mano.global_orient[d] as f64,
            er2.mano.global_orient[d] as f64,
            1e-6
        ));
    }
}

#[test]
fn colour_scale_reaches_the_example_image() {
    let img = test_image(120, 96, 5);
    let a = ann(true);
    let mut p = params(0.0, 0.0, 1.0, 0.0, false);
    let plain = make_example(&a, &img, &p, 32);
    p.color_scale = [0.8, 1.0, 1.2];
    let tinted = make_example(&a, &img, &p, 32);
    let n = 32 * 32;
    assert_eq!(plain.img[n..2 * n], tinted.img[n..2 * n], "G unchanged");
    assert_ne!(plain.img[..n], tinted.img[..n]);
    assert_eq!(plain.keypoints_2d, tinted.keypoints_2d);
}

#[test]
fn extreme_but_valid_boxes_give_finite_examples_not_panics() {
    let img = test_image(40, 30, 1);
    for (center, scale) in [
        ([1e30, -1e30], 1e-30),
        ([20.0, 15.0], 1e30),
        ([-500.0, 900.0], 0.05),
    ] {
        let mut a = ann(false);
        a.center = center;
        a.scale = [scale, scale];
        let p = AugParams::draw(&AugConfig::default(), 3, 0, 0, false);
        let ex = make_example(&a, &img, &p, 16);
        assert_eq!(ex.img.len(), 3 * 16 * 16);
        assert!(ex.img.iter().all(|v| v.is_finite()));
        assert!(ex.keypoints_3d.iter().flatten().all(|v| v.is_finite()));
    }
}
