//! The software rasteriser, 2D drawing, covariance projection, plots and `infer --render`:
//! silhouettes against analytic projections, z-buffer order, perspective-correct
//! interpolation, clipping, ellipse geometry, `J Σ Jᵀ` against finite differences, PNG output.

mod common;
#[path = "synth_raster/geometry.rs"]
mod geometry;

use common::*;
use geometry::*;
use handcov::model::config::Uncertainty;
use handcov::ops::image::RgbImage;
use handcov::ops::mano::{JOINT_MAP, TIP_VERTICES};
use handcov::synth::camera::Camera;
use handcov::synth::draw::{self, Ellipse};
use handcov::synth::overlay::{overlay, OverlayStyle};
use handcov::synth::plot::{sparsification_fractions, sparsification_png};
use handcov::synth::raster::{render, MeshView, Render, Shading, Target};

/// A convex mesh's silhouette is the convex hull of its projected vertices: every pixel centre
/// more than 0.01 px from the hull boundary is classified exactly; returns the mask IoU.
fn check_convex_silhouette(v: &[[f32; 3]], f: &[[u32; 3]], cam: &Camera, size: usize) -> f64 {
    let r = render(
        &MeshView::new(v, f),
        cam,
        size,
        size,
        1,
        &Shading::default(),
    )
    .unwrap();
    let hull = convex_hull(v.iter().map(|&p| cam.project(p).unwrap()).collect());
    let mask = r.mask();
    let mut want = vec![false; size * size];
    for y in 0..size {
        for x in 0..size {
            let d = hull_depth(&hull, [x as f64, y as f64]);
            want[y * size + x] = d > 0.0;
            if d.abs() > 0.01 {
                assert_eq!(mask[y * size + x], d > 0.0, "pixel ({x}, {y}), depth {d}");
            }
        }
    }
    iou(&mask, &want)
}

#[test]
fn convex_silhouettes_match_the_projected_hull() {
    let cam = Camera::crop(5000.0, 256, [0.004, -0.006, 0.6]);
    let (v, f) = cube(1.0);
    let v = rotate_scale(&v, 0.7, 0.005);
    assert!(check_convex_silhouette(&v, &f, &cam, 256) > 0.99);
    let (v, f) = icosphere(2);
    let v = rotate_scale(&v, 0.3, 0.008);
    assert!(check_convex_silhouette(&v, &f, &cam, 256) > 0.99);
}

#[test]
fn sphere_silhouette_is_the_analytic_disc() {
    // A sphere of radius ρ at distance d on the optical axis projects to a disc of radius
    // f·ρ/√(d² − ρ²) about the principal point.
    let (v, f) = icosphere(4);
    let (rho, d) = (0.02f64, 1.0f64);
    let v: Vec<[f32; 3]> = v.iter().map(|p| p.map(|x| x * rho as f32)).collect();
    let cam = Camera::crop(5000.0, 256, [0.0, 0.0, d]);
    let r = render(
        &MeshView::new(&v, &f),
        &cam,
        256,
        256,
        1,
        &Shading::default(),
    )
    .unwrap();
    let radius = 5000.0 * rho / (d * d - rho * rho).sqrt();
    let want: Vec<bool> = (0..256 * 256)
        .map(|i| ((i % 256) as f64 - 128.0).hypot((i / 256) as f64 - 128.0) < radius)
        .collect();
    let score = iou(&r.mask(), &want);
    assert!(score > 0.98, "IoU {score}");
    // Away from the boundary (one pixel), every pixel agrees.
    for (i, (&m, &w)) in r.mask().iter().zip(&want).enumerate() {
        let dist = ((i % 256) as f64 - 128.0).hypot((i / 256) as f64 - 128.0) - radius;
        if dist.abs() > 1.0 {
            assert_eq!(m, w, "pixel {i}");
        }
    }
    // The nearest depth is d − ρ (up to the tessellation).
    let zmin = r.depth.iter().copied().fold(f32::INFINITY, f32::min) as f64;
    assert!((zmin - (d - rho)).abs() < 1e-4, "{zmin}");
}

// ---- z-buffer, interpolation, clipping ------------------------------------------------------

/// Two overlapping triangles, red at depth 2 and green at depth 3.
fn two_triangles() -> (Vec<[f32; 3]>, Vec<[f32; 3]>) {
    let mut v = Vec::new();
    let mut c = Vec::new();
    for (z, col) in [(2.0f32, [1.0, 0.0, 0.0]), (3.0, [0.0, 1.0, 0.0])] {
        for p in [[-0.5f32, -0.5], [0.5, -0.4], [0.0, 0.6]] {
            v.push([p[0] * z, p[1] * z, z]);
            c.push(col);
        }
    }
    (v, c)
}

#[test]
fn nearer_surface_wins_in_any_draw_order() {
    let (v, c) = two_triangles();
    let cam = Camera::crop(40.0, 64, [0.0; 3]);
    let sh = Shading::unlit([0.0; 3]);
    for faces in [[[0u32, 1, 2], [3, 4, 5]], [[3, 4, 5], [0, 1, 2]]] {
        let r = render(
            &MeshView::new(&v, &faces).with_colors(&c),
            &cam,
            64,
            64,
            1,
            &sh,
        )
        .unwrap();
        let covered: Vec<usize> = (0..64 * 64).filter(|&i| r.alpha[i] > 0.0).collect();
        assert!(covered.len() > 200);
        for i in covered {
            // Barycentric weights sum to 1 up to f32 rounding.
            let c = r.color[i];
            assert!((c[0] - 1.0).abs() < 1e-5 && c[1] == 0.0, "pixel {i}: {c:?}");
            assert!((r.depth[i] - 2.0).abs() < 1e-5);
        }
    }
    // The same across separate draw calls.
    for order in [[0usize, 1], [1, 0]] {
        let mut t = Target::new(64, 64, 1).unwrap();
        for k in order {
            let f = [[3 * k as u32, 3 * k as u32 + 1, 3 * k as u32 + 2]];
            t.draw(&MeshView::new(&v, &f).with_colors(&c), &cam, &sh)
                .unwrap();
        }
        let r = t.resolve();
        assert!(r
            .color
            .iter()
            .zip(&r.alpha)
            .all(|(c, &a)| a == 0.0 || c[1] == 0.0));
    }
}

#[test]
fn attributes_are_interpolated_perspective_correctly() {
    // A strongly slanted quad (z from 1 to 4) whose vertex colours are a linear function of
    // position: the correct value at a pixel is that function at the ray's hit point.
    let v: Vec<[f32; 3]> = vec![
        [-0.5, -0.5, 1.0],
        [0.5, -0.5, 1.0],
        [2.0, 2.0, 4.0],
        [-2.0, 2.0, 4.0],
    ];
    let color = |p: [f64; 3]| [(p[2] - 1.0) / 3.0, (p[0] + 2.0) / 4.0, 0.5];
    let c: Vec<[f32; 3]> = v
        .iter()
        .map(|p| color(p.map(|x| x as f64)).map(|x| x as f32))
        .collect();
    let f = [[0u32, 1, 2], [0, 2, 3]];
    let cam = Camera::crop(64.0, 128, [0.0; 3]);
    let r = render(
        &MeshView::new(&v, &f).with_colors(&c),
        &cam,
        128,
        128,
        1,
        &Shading::unlit([0.0; 3]),
    )
    .unwrap();
    // The quad lies in the plane y = (5/6)·z − 4/3; the ray through a pixel is t·(u', v', 1).
    let (mut n, mut worst, mut affine_gap) = (0, 0.0f64, 0.0f64);
    for y in 0..128 {
        for x in 0..128 {
            let i = y * 128 + x;
            if r.alpha[i] == 0.0 {
                continue;
            }
            let (du, dv) = ((x as f64 - 64.0) / 64.0, (y as f64 - 64.0) / 64.0);
            let t = (4.0 / 3.0) / (5.0 / 6.0 - dv);
            let p = [du * t, dv * t, t];
            let want = color(p);
            worst = worst.max((r.color[i][0] as f64 - want[0]).abs());
            worst = worst.max((r.color[i][1] as f64 - want[1]).abs());
            assert!(
                (r.depth[i] as f64 - t).abs() < 1e-4 * t,
                "depth at ({x}, {y})"
            );
            // What screen-affine interpolation would give for the depth channel: linear in v.
            let (v0, v1) = (-0.5 * 64.0 + 64.0, 0.5 * 64.0 + 64.0);
            let affine = (y as f64 - v0) / (v1 - v0);
            affine_gap = affine_gap.max((affine - want[0]).abs());
            n += 1;
        }
    }
    assert!(n > 2000, "{n} pixels");
    assert!(worst < 1e-4, "max colour error {worst}");
    assert!(
        affine_gap > 0.2,
        "the test must tell the two apart ({affine_gap})"
    );
}

#[test]
fn geometry_behind_the_camera_is_clipped() {
    let cam = Camera::crop(100.0, 100, [0.0; 3]);
    let sh = Shading::default();
    // Entirely behind: nothing.
    let v = [[-1.0f32, -1.0, -2.0], [1.0, -1.0, -2.0], [0.0, 1.0, -2.0]];
    let r = render(&MeshView::new(&v, &[[0, 1, 2]]), &cam, 100, 100, 1, &sh).unwrap();
    assert!(r.alpha.iter().all(|&a| a == 0.0));
    // Crossing the near plane: only the part in front (y ≥ 0 here, so rows at or below the
    // principal point), never the wrapped-around projection of the vertex behind.
    let v = [[-0.1f32, 0.0, 1.0], [0.1, 0.0, 1.0], [0.0, 0.5, -1.0]];
    let r = render(&MeshView::new(&v, &[[0, 1, 2]]), &cam, 100, 100, 2, &sh).unwrap();
    let rows: Vec<usize> = (0..100 * 100)
        .filter(|&i| r.alpha[i] > 0.0)
        .map(|i| i / 100)
        .collect();
    assert!(rows.len() > 100);
    assert!(rows.iter().all(|&y| y >= 50), "{:?}", rows.iter().min());
    assert!(r.depth.iter().all(|&z| z >= sh.near));
}

#[test]
fn degenerate_and_malformed_input() {
    let cam = Camera::crop(100.0, 64, [0.0, 0.0, 2.0]);
    let sh = Shading::default();
    let v = [
        [0.0f32, 0.0, 0.0],
        [0.1, 0.1, 0.0],
        [0.2, 0.2, 0.0],
        [f32::NAN, 0.0, 0.0],
        [1e30, 1e30, 0.0],
        [-1e30, 1e30, 1.0],
    ];
    // Collinear, repeated index, NaN vertex: nothing drawn. A huge triangle: no panic.
    let f = [[0u32, 1, 2], [0, 0, 1], [0, 1, 3]];
    let r = render(&MeshView::new(&v, &f), &cam, 64, 64, 1, &sh).unwrap();
    assert!(r.alpha.iter().all(|&a| a == 0.0));
    render(&MeshView::new(&v, &[[0, 4, 5]]), &cam, 64, 64, 1, &sh).unwrap();
    // Out-of-range index, wrong colour count, bad camera / target / near plane: errors.
    assert!(render(&MeshView::new(&v, &[[0, 1, 6]]), &cam, 64, 64, 1, &sh).is_err());
    let c = [[0.0f32; 3]; 2];
    assert!(render(&MeshView::new(&v, &f).with_colors(&c), &cam, 64, 64, 1, &sh).is_err());
    let bad = Camera {
        fx: f64::NAN,
        ..cam
    };
    assert!(render(&MeshView::new(&v, &f), &bad, 64, 64, 1, &sh).is_err());
    assert!(Target::new(0, 10, 1).is_err());
    assert!(Target::new(10, 10, 9).is_err());
    assert!(Target::new(100_000, 10, 1).is_err());
    let near0 = Shading { near: 0.0, ..sh };
    assert!(render(&MeshView::new(&v, &f), &cam, 64, 64, 1, &near0).is_err());
    assert!(MeshView::from_flat(&[0.0; 7], &[]).is_err());
}

#[test]
fn composite_and_rgba() {
    let (v, f) = icosphere(2);
    let v: Vec<[f32; 3]> = v.iter().map(|p| p.map(|x| x * 0.01)).collect();
    let cam = Camera::crop(2000.0, 64, [0.0, 0.0, 1.0]);
    let r: Render = render(&MeshView::new(&v, &f), &cam, 64, 64, 4, &Shading::default()).unwrap();
    // Supersampled edges give fractional coverage.
    assert!(r.alpha.iter().any(|&a| a > 0.0 && a < 1.0));
    let rgba = r.to_rgba8();
    assert_eq!(rgba.len(), 64 * 64 * 4);
    assert_eq!(rgba[(32 * 64 + 32) * 4 + 3], 255);
    assert_eq!(rgba[3], 0);
    let bg = RgbImage::from_raw(64, 64, vec![10; 64 * 64 * 3]).unwrap();
    let out = r.composite(&bg, 1.0).unwrap();
    assert_eq!(&out.data[..3], &[10, 10, 10]);
    assert!(out.data[(32 * 64 + 32) * 3] > 100);
    assert!(r.composite(&RgbImage::new(3, 3), 1.0).is_err());
}

#[test]
fn overlay_renders_the_mesh_window_like_the_whole_image() {
    let (v, f) = icosphere(2);
    let v: Vec<[f32; 3]> = v.iter().map(|p| p.map(|x| x * 0.01)).collect();
    let bg = RgbImage::from_raw(
        160,
        120,
        (0..160 * 120 * 3).map(|i| (i % 251) as u8).collect(),
    )
    .unwrap();
    let style = OverlayStyle::default();
    let mesh = MeshView::new(&v, &f);
    for t in [[0.02, 0.01, 1.0], [-0.07, -0.05, 1.0], [0.0, 0.0, 0.005]] {
        let cam = Camera::full_image(1000.0, 160, 120, t);
        let got = overlay(&bg, &mesh, &cam, &[], None, &style).unwrap();
        let full = render(&mesh, &cam, 160, 120, style.supersample, &style.shading).unwrap();
        let want = full.composite(&bg, style.mesh_opacity).unwrap();
        let diff = got
            .data
            .iter()
            .zip(&want.data)
            .map(|(a, b)| (*a as i32 - *b as i32).abs())
            .max()
            .unwrap();
        assert!(diff <= 2, "t = {t:?}: max difference {diff}");
        assert_ne!(got, bg, "t = {t:?}");
    }
    // Entirely outside the image: unchanged.
    let cam = Camera::full_image(1000.0, 160, 120, [1.0, 0.0, 1.0]);
    assert_eq!(overlay(&bg, &mesh, &cam, &[], None, &style).unwrap(), bg);
}

// ---- a hand --------------------------------------------------------------------------------

#[test]
fn procedural_hand_covers_its_projected_vertices() {
    // The procedural MANO-layout hand (778 vertices, closed), centred in a 256 px crop at a
    // depth where it spans about 200 px, as HaMeR's crops frame a hand.
    let hand = handcov::synth::hand::procedural_hand();
    // Rotated −90° about x, (x, y, z) → (x, z, −y), so that the back of the hand (+y) faces
    // the camera.
    let v: Vec<[f32; 3]> = hand
        .v_template
        .chunks(3)
        .map(|p| [p[0], p[2], -p[1]])
        .collect();
    let f = &hand.faces;
    assert_eq!(v.len(), 778);
    let mean: Vec<f64> = (0..3)
        .map(|k| v.iter().map(|p| p[k] as f64).sum::<f64>() / v.len() as f64)
        .collect();
    let cam = Camera::crop(5000.0, 256, [-mean[0], -mean[1], 5.0 - mean[2]]);
    let mesh = MeshView::new(&v, f);
    let shading = Shading::default();
    let r = render(&mesh, &cam, 256, 256, 1, &shading).unwrap();
    // Timing (printed, not asserted): `cargo test --test synth_raster -- --nocapture`.
    for ss in [1, 2] {
        let runs = 20;
        let t0 = std::time::Instant::now();
        for _ in 0..runs {
            std::hint::black_box(render(&mesh, &cam, 256, 256, ss, &shading).unwrap());
        }
        let ms = t0.elapsed().as_secs_f64() * 1e3 / runs as f64;
        eprintln!(
            "render of a {}-vertex / {}-face hand, 256x256, {ss}x{ss} samples: {ms:.2} ms",
            v.len(),
            f.len()
        );
    }
    let covered = r.alpha.iter().filter(|&&a| a > 0.0).count();
    assert!(covered > 3000, "{covered}");
    // Every projected vertex lies on the silhouette or within a pixel of it.
    for p in &v {
        let uv = cam.project(*p).unwrap();
        let (x, y) = (uv[0].round() as i64, uv[1].round() as i64);
        let near = (-1..=1).any(|dy| {
            (-1..=1).any(|dx| {
                let (xx, yy) = (x + dx, y + dy);
                (0..256).contains(&xx)
                    && (0..256).contains(&yy)
                    && r.alpha[(yy * 256 + xx) as usize] > 0.0
            })
        });
        assert!(near, "vertex at {uv:?} not covered");
    }
    // The overlay (mesh, skeleton, 2σ ellipses) for looking at: target/tmp/synth_hand/.
    let mut all: Vec<[f32; 3]> = hand.joints.iter().map(|p| [p[0], p[2], -p[1]]).collect();
    all.extend(TIP_VERTICES.iter().map(|&i| v[i]));
    let kp: Vec<[f32; 3]> = JOINT_MAP.iter().map(|&j| all[j]).collect();
    let cov: Vec<[f64; 9]> = (0..21)
        .map(|k| {
            let (a, b) = (0.003 + 0.0003 * k as f64, 0.0015);
            [
                a * a,
                0.3 * a * b,
                0.0,
                0.3 * a * b,
                b * b,
                0.0,
                0.0,
                0.0,
                1e-4,
            ]
        })
        .collect();
    let bg = RgbImage::from_raw(256, 256, vec![90; 256 * 256 * 3]).unwrap();
    let style = OverlayStyle::default();
    let out = overlay(&bg, &mesh, &cam, &kp, Some(&cov), &style).unwrap();
    assert_ne!(out, bg);
    let dir = scratch("synth_hand");
    draw::save_png(&dir.join("hand_overlay.png"), &out).unwrap();
}

// ---- ellipses and the covariance projection -------------------------------------------------

/// Pixels with coverage ≥ 1/2 of a white shape on black.
fn drawn(img: &RgbImage) -> Vec<[f64; 2]> {
    (0..img.width * img.height)
        .filter(|i| img.data[i * 3] >= 128)
        .map(|i| [(i % img.width) as f64, (i / img.width) as f64])
        .collect()
}

#[test]
fn diagonal_covariance_ellipse_has_two_sigma_extents() {
    let (sx, sy) = (7.0f64, 3.0f64);
    let c = [50.3, 40.6];
    let e = Ellipse::from_cov(c, [sx * sx, 0.0, sy * sy], 2.0).unwrap();
    assert!((e.semi_axes[0] - 2.0 * sx).abs() < 1e-12 && (e.semi_axes[1] - 2.0 * sy).abs() < 1e-12);
    assert!(e.angle.abs() < 1e-12);
    let mut img = RgbImage::new(100, 80);
    draw::fill_ellipse(&mut img, &e, [255; 3], 1.0);
    let px = drawn(&img);
    let ext = |k: usize| {
        let lo = px.iter().map(|p| p[k]).fold(f64::INFINITY, f64::min);
        let hi = px.iter().map(|p| p[k]).fold(f64::NEG_INFINITY, f64::max);
        (lo, hi)
    };
    let (x0, x1) = ext(0);
    let (y0, y1) = ext(1);
    for (got, want) in [
        (x0, c[0] - 2.0 * sx),
        (x1, c[0] + 2.0 * sx),
        (y0, c[1] - 2.0 * sy),
        (y1, c[1] + 2.0 * sy),
    ] {
        assert!((got - want).abs() <= 1.0, "{got} vs {want}");
    }
    // The outline passes through the axis ends.
    let mut img = RgbImage::new(100, 80);
    draw::ellipse(&mut img, &e, 1.0, [255; 3], 1.0);
    let on = |x: f64, y: f64| img.data[((y.round() as usize) * 100 + x.round() as usize) * 3] > 0;
    assert!(on(c[0] + 2.0 * sx, c[1]) && on(c[0], c[1] - 2.0 * sy));
    assert!(!on(c[0], c[1]));
}

#[test]
fn rotated_covariance_ellipse_orientation() {
    // Σ = R diag(σ1², σ2²) Rᵀ at 30°: the ellipse's major axis and the filled pixels' principal
    // axis both point along 30°.
    let (a, s1, s2) = (30f64.to_radians(), 8.0f64, 2.5f64);
    let (sn, cs) = a.sin_cos();
    let cov = [
        cs * cs * s1 * s1 + sn * sn * s2 * s2,
        cs * sn * (s1 * s1 - s2 * s2),
        sn * sn * s1 * s1 + cs * cs * s2 * s2,
    ];
    let e = Ellipse::from_cov([50.0, 50.0], cov, 2.0).unwrap();
    assert!((e.angle - a).abs() < 1e-9, "{}", e.angle);
    assert!((e.semi_axes[0] - 2.0 * s1).abs() < 1e-9 && (e.semi_axes[1] - 2.0 * s2).abs() < 1e-9);
    let mut img = RgbImage::new(100, 100);
    draw::fill_ellipse(&mut img, &e, [255; 3], 1.0);
    let px = drawn(&img);
    let n = px.len() as f64;
    let m = [0, 1].map(|k| px.iter().map(|p| p[k]).sum::<f64>() / n);
    let (mut sxx, mut sxy, mut syy) = (0.0, 0.0, 0.0);
    for p in &px {
        let (dx, dy) = (p[0] - m[0], p[1] - m[1]);
        sxx += dx * dx;
        sxy += dx * dy;
        syy += dy * dy;
    }
    let angle = 0.5 * (2.0 * sxy).atan2(sxx - syy);
    assert!(
        (angle - a).abs() < 1f64.to_radians(),
        "{}",
        angle.to_degrees()
    );
    // Area ≈ π·a·b.
    let want = std::f64::consts::PI * e.semi_axes[0] * e.semi_axes[1];
    assert!((n - want).abs() / want < 0.03, "{n} vs {want}");
    // Degenerate and non-finite covariances.
    let flat = Ellipse::from_cov([0.0, 0.0], [4.0, 0.0, -1e-9], 2.0).unwrap();
    assert_eq!(flat.semi_axes[1], 0.0);
    assert!(Ellipse::from_cov([0.0, 0.0], [f64::NAN, 0.0, 1.0], 2.0).is_none());
}

#[test]
fn projected_covariance_matches_finite_differences() {
    let cam = Camera {
        fx: 5000.0,
        fy: 4800.0,
        cx: 128.0,
        cy: 120.0,
        t: [0.05, -0.03, 0.9],
    };
    let p = [0.04f32, 0.07, -0.05];
    let j = cam.jacobian(p).unwrap();
    // Central differences of the projection in f64 (around the f32 point).
    let proj = |x: [f64; 3]| cam.project_camera(x).unwrap();
    let x0 = cam.to_camera(p);
    let h = 1e-6;
    for k in 0..3 {
        let (mut a, mut b) = (x0, x0);
        a[k] += h;
        b[k] -= h;
        let (pa, pb) = (proj(a), proj(b));
        for r in 0..2 {
            let fd = (pa[r] - pb[r]) / (2.0 * h);
            assert!(
                (fd - j[r][k]).abs() < 1e-5 * fd.abs().max(1.0),
                "J[{r}][{k}]"
            );
        }
    }
    // J Σ Jᵀ against the covariance of the linearised map applied to Σ's square root: with
    // Σ = L Lᵀ, the columns of J L are the projected "sigma directions" (finite differences).
    let l = [
        [0.004, 0.0, 0.0],
        [0.001, 0.003, 0.0],
        [-0.002, 0.0005, 0.006],
    ];
    let mut sigma = [0.0f64; 9];
    for r in 0..3 {
        for c in 0..3 {
            sigma[r * 3 + c] = (0..3).map(|k| l[r][k] * l[c][k]).sum();
        }
    }
    let got = cam.project_cov(p, &sigma).unwrap();
    let eps = 1e-4;
    let mut want = [0.0f64; 3];
    for k in 0..3 {
        let d: [f64; 3] = l.map(|row| row[k] * eps);
        let (a, b) = (
            proj([0, 1, 2].map(|i| x0[i] + d[i])),
            proj([0, 1, 2].map(|i| x0[i] - d[i])),
        );
        let col = [0, 1].map(|r| (a[r] - b[r]) / (2.0 * eps));
        want[0] += col[0] * col[0];
        want[1] += col[0] * col[1];
        want[2] += col[1] * col[1];
    }
    for (g, w) in got.iter().zip(&want) {
        assert!((g - w).abs() < 1e-6 * want[0].abs(), "{got:?} vs {want:?}");
    }
    assert!(cam.project_cov([0.0, 0.0, -5.0], &sigma).is_none());
}

// ---- plot -----------------------------------------------------------------------------------

#[test]
fn sparsification_plot_writes_a_png_with_every_series() {
    let dir = scratch("synth_plot");
    let x = sparsification_fractions();
    assert_eq!((x.len(), x[0], x[49]), (50, 2.0, 100.0));
    let model: Vec<f64> = x
        .iter()
        .map(|p| 0.1 + 0.2 * (p / 100.0).powf(1.5))
        .collect();
    let oracle: Vec<f64> = x
        .iter()
        .map(|p| 0.02 + 0.25 * (p / 100.0).powi(3))
        .collect();
    let (c1, c2) = ([220u8, 40, 40], [30u8, 90, 200]);
    let path = dir.join("sparsification.png");
    sparsification_png(
        &path,
        &[("ours", &model, c1), ("oracle", &oracle, c2)],
        &x,
        "FreiHAND sparsification",
        [640, 480],
    )
    .unwrap();
    let img = image::open(&path).unwrap().to_rgb8();
    assert_eq!(img.dimensions(), (640, 480));
    for c in [c1, c2] {
        let n = img.pixels().filter(|p| p.0 == c).count();
        assert!(n > 200, "colour {c:?}: {n} pixels");
    }
    // Text is present (dark pixels beyond the frame lines).
    let dark = img.pixels().filter(|p| p.0 == [30, 30, 30]).count();
    assert!(dark > 2000, "{dark}");
    // Errors are clean.
    let bad = sparsification_png(&path, &[("a", &model[..3], c1)], &x, "t", [640, 480]);
    assert!(bad.unwrap_err().to_string().contains("3 values for 50"));
    let missing = dir.join("no/such/dir/p.png");
    assert!(sparsification_png(&missing, &[("a", &model, c1)], &x, "t", [320, 240]).is_err());
}

// ---- infer --render -------------------------------------------------------------------------

#[test]
fn infer_render_draws_the_hands_over_the_image() {
    let dir = scratch("synth_infer_render");
    let u = Uncertainty::Ours;
    let w = tiny_weights_for(u, &dir);
    let cfg = dir.join("tiny.json");
    std::fs::write(&cfg, tiny_config(u).to_json()).unwrap();
    let src = fixture("crop_src.png");
    let boxes = dir.join("boxes.json");
    std::fs::write(
        &boxes,
        serde_json::json!({"crop_src.png": [
            {"center": [70.5, 60.0], "scale": 0.4, "is_right": true},
            {"center": [40.0, 50.0], "scale": 0.3, "is_right": false},
        ]})
        .to_string(),
    )
    .unwrap();
    let out = dir.join("out");
    let run = infer(&[
        "--config",
        s(&cfg),
        "--weights",
        s(&w),
        "--images",
        s(&src),
        "--boxes",
        s(&boxes),
        "--out",
        s(&out),
        "--render",
    ]);
    assert_eq!(run.0, 0, "{}", run.2);
    let input = image::open(&src).unwrap().to_rgb8();
    let picture = image::open(out.join("crop_src_render.png"))
        .unwrap()
        .to_rgb8();
    assert_eq!(picture.dimensions(), input.dimensions());
    // The picture differs from the input around every hand's projected 2D keypoints.
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("crop_src.json")).unwrap()).unwrap();
    let (iw, ih) = input.dimensions();
    for hand in doc["hands"].as_array().unwrap() {
        let kp: Vec<[f64; 2]> = hand["keypoints_2d"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| [p[0].as_f64().unwrap(), p[1].as_f64().unwrap()])
            .collect();
        let mut changed = 0;
        for p in &kp {
            let (x, y) = (p[0].round() as i64, p[1].round() as i64);
            if x < 0 || y < 0 || x >= iw as i64 || y >= ih as i64 {
                continue;
            }
            if input.get_pixel(x as u32, y as u32) != picture.get_pixel(x as u32, y as u32) {
                changed += 1;
            }
        }
        assert!(changed >= 5, "only {changed} keypoint pixels changed");
        // The full-image camera puts the 3D keypoints where `keypoints_2d` says.
        let f = hand["focal_length_full"].as_f64().unwrap();
        let t: Vec<f64> = hand["cam_t_full"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        let cam = Camera::full_image(f, iw as usize, ih as usize, [t[0], t[1], t[2]]);
        for (k, q) in hand["keypoints_3d"].as_array().unwrap().iter().enumerate() {
            let q = [0, 1, 2].map(|i| q[i].as_f64().unwrap() as f32);
            let uv = cam.project(q).unwrap();
            let err = (uv[0] - kp[k][0]).hypot(uv[1] - kp[k][1]);
            // Weak-perspective crop vs full perspective differ by the depth spread only.
            assert!(
                err < 0.05 * (iw.max(ih) as f64),
                "joint {k}: {uv:?} vs {:?}",
                kp[k]
            );
        }
    }
    let mismatch = input
        .pixels()
        .zip(picture.pixels())
        .filter(|(a, b)| a != b)
        .count();
    assert!(mismatch > 100, "{mismatch}");
}
