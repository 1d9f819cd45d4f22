//! The procedural hand (`synth::hand`): a closed, outward, self-intersection-free surface in
//! MANO's layout; joints inside it; weights and regressor normalised; it loads and runs through
//! the MANO layer like MANO; its shape directions do what they claim; poses within the joint
//! limits keep it whole; two builds are bit-identical.

use handcov::model::mano::Mano;
use handcov::model::weights::TensorFile;
use handcov::ops::mano::{mano_fwd_cpu, JOINT_MAP, NUM_KEYPOINTS, TIP_VERTICES};
use handcov::synth::hand::{
    pose_rotmats, procedural_hand, random_pose, ProceduralHand, JOINT_LIMITS, NUM_FACES, NUM_VERTS,
};
use handcov::train::rng::Philox;
use std::collections::{BTreeMap, BTreeSet};
use std::f64::consts::PI;

type V = [f64; 3];

fn sub(a: V, b: V) -> V {
    [a[0] - b[0], a[1] - b[1], a[2] - b[2]]
}
fn dot(a: V, b: V) -> f64 {
    a[0] * b[0] + a[1] * b[1] + a[2] * b[2]
}
fn cross(a: V, b: V) -> V {
    [
        a[1] * b[2] - a[2] * b[1],
        a[2] * b[0] - a[0] * b[2],
        a[0] * b[1] - a[1] * b[0],
    ]
}
fn norm(a: V) -> f64 {
    dot(a, a).sqrt()
}
fn dist(a: V, b: V) -> f64 {
    norm(sub(a, b))
}

fn vert(v: &[f32], i: usize) -> V {
    [v[3 * i] as f64, v[3 * i + 1] as f64, v[3 * i + 2] as f64]
}

/// Signed volume of a closed mesh (positive when the faces wind counter-clockwise outside).
fn volume(v: &[f32], faces: &[[u32; 3]]) -> f64 {
    faces
        .iter()
        .map(|f| {
            let [a, b, c] = f.map(|i| vert(v, i as usize));
            dot(a, cross(b, c)) / 6.0
        })
        .sum()
}

/// Winding number of the surface around `p` (sum of signed solid angles / 4π).
fn winding(v: &[f32], faces: &[[u32; 3]], p: V) -> f64 {
    let total: f64 = faces
        .iter()
        .map(|f| {
            let [a, b, c] = f.map(|i| sub(vert(v, i as usize), p));
            let (la, lb, lc) = (norm(a), norm(b), norm(c));
            let num = dot(a, cross(b, c));
            let den = la * lb * lc + dot(a, b) * lc + dot(a, c) * lb + dot(b, c) * la;
            2.0 * num.atan2(den)
        })
        .sum();
    total / (4.0 * PI)
}

/// Identity rotations for joints 1..15 after `global`.
fn rotmats(pose: &[f32; 45]) -> Vec<f32> {
    pose_rotmats(&[0.0; 3], pose)
}

/// MANO forward of one sample → (vertices, keypoints in OpenPose order).
fn forward(m: &Mano, pose: &[f32; 45], betas: &[f32; 10]) -> (Vec<f32>, Vec<f32>) {
    let mut verts = vec![0f32; NUM_VERTS * 3];
    let mut kp = vec![0f32; NUM_KEYPOINTS * 3];
    mano_fwd_cpu(&m.data(), &rotmats(pose), betas, 1, &mut verts, &mut kp);
    (verts, kp)
}

fn hand() -> ProceduralHand {
    procedural_hand()
}

#[test]
fn mesh_is_a_closed_oriented_genus0_manifold() {
    let h = hand();
    assert_eq!(h.num_verts(), NUM_VERTS);
    assert_eq!(h.faces.len(), NUM_FACES);
    let mut directed = BTreeSet::new();
    for f in &h.faces {
        assert!(
            f[0] != f[1] && f[1] != f[2] && f[0] != f[2],
            "degenerate face {f:?}"
        );
        for k in 0..3 {
            let e = (f[k], f[(k + 1) % 3]);
            assert!(directed.insert(e), "directed edge {e:?} used twice");
        }
    }
    // Every edge is used once in each direction: exactly two faces, opposite orientations.
    for &(a, b) in &directed {
        assert!(directed.contains(&(b, a)), "edge ({a}, {b}) has one face");
    }
    let edges = directed.len() / 2;
    let chi = NUM_VERTS as i64 - edges as i64 + h.faces.len() as i64;
    assert_eq!((edges, chi), (2328, 2), "edges, Euler characteristic");
    // Every vertex is used, and its faces form one fan (a disc): manifold vertices.
    let mut out_edges: BTreeMap<u32, BTreeMap<u32, u32>> = BTreeMap::new();
    for f in &h.faces {
        for k in 0..3 {
            // around vertex f[k]: the face maps its next vertex to its previous one.
            out_edges
                .entry(f[k])
                .or_default()
                .insert(f[(k + 1) % 3], f[(k + 2) % 3]);
        }
    }
    assert_eq!(out_edges.len(), NUM_VERTS, "unused vertices");
    for (v, ring) in &out_edges {
        let start = *ring.keys().next().unwrap();
        let (mut cur, mut steps) = (start, 0);
        loop {
            cur = ring[&cur];
            steps += 1;
            if cur == start || steps > ring.len() {
                break;
            }
        }
        assert_eq!(
            steps,
            ring.len(),
            "vertex {v}: its faces form more than one fan"
        );
    }
    // One connected component.
    let mut parent: Vec<usize> = (0..NUM_VERTS).collect();
    fn find(p: &mut [usize], mut x: usize) -> usize {
        while p[x] != x {
            p[x] = p[p[x]];
            x = p[x];
        }
        x
    }
    for f in &h.faces {
        for k in 0..3 {
            let (a, b) = (
                find(&mut parent, f[k] as usize),
                find(&mut parent, f[(k + 1) % 3] as usize),
            );
            parent[a] = b;
        }
    }
    let roots: BTreeSet<usize> = (0..NUM_VERTS).map(|v| find(&mut parent, v)).collect();
    assert_eq!(roots.len(), 1, "connected components");
    // Outward: positive volume, of a plausible adult hand (this one has no forearm stub).
    let vol = volume(&h.v_template, &h.faces);
    assert!((2.0e-4..6.0e-4).contains(&vol), "volume {vol} m³");
}

fn tri_bbox(p: &[V; 3]) -> (V, V) {
    let mut lo = p[0];
    let mut hi = p[0];
    for q in &p[1..] {
        for c in 0..3 {
            lo[c] = lo[c].min(q[c]);
            hi[c] = hi[c].max(q[c]);
        }
    }
    (lo, hi)
}

/// Does the segment `a b` cross the triangle `t` (Möller–Trumbore, strictly inside)?
fn segment_hits(a: V, b: V, t: &[V; 3]) -> bool {
    let d = sub(b, a);
    let (e1, e2) = (sub(t[1], t[0]), sub(t[2], t[0]));
    let p = cross(d, e2);
    let det = dot(e1, p);
    if det.abs() < 1e-18 {
        return false;
    }
    let s = sub(a, t[0]);
    let u = dot(s, p) / det;
    let q = cross(s, e1);
    let w = dot(d, q) / det;
    let tt = dot(e2, q) / det;
    u > 0.0 && w > 0.0 && u + w < 1.0 && tt > 0.0 && tt < 1.0
}

#[test]
fn rest_surface_does_not_intersect_itself() {
    // Triangles that share no vertex must not cross: an edge of one through the other.
    let h = hand();
    let tris: Vec<[V; 3]> = h
        .faces
        .iter()
        .map(|f| f.map(|i| vert(&h.v_template, i as usize)))
        .collect();
    let boxes: Vec<(V, V)> = tris.iter().map(tri_bbox).collect();
    let mut hits = Vec::new();
    for i in 0..tris.len() {
        for j in i + 1..tris.len() {
            let (fi, fj) = (h.faces[i], h.faces[j]);
            if fi.iter().any(|v| fj.contains(v)) {
                continue;
            }
            let ((lo1, hi1), (lo2, hi2)) = (boxes[i], boxes[j]);
            if (0..3).any(|c| lo1[c] > hi2[c] || lo2[c] > hi1[c]) {
                continue;
            }
            let (a, b) = (&tris[i], &tris[j]);
            let crosses = (0..3).any(|k| segment_hits(a[k], a[(k + 1) % 3], b))
                || (0..3).any(|k| segment_hits(b[k], b[(k + 1) % 3], a));
            if crosses {
                hits.push((i, j));
            }
        }
    }
    assert!(
        hits.is_empty(),
        "{} crossing pairs, e.g. {:?}",
        hits.len(),
        &hits[..hits.len().min(5)]
    );
}

#[test]
fn rest_joints_are_inside_and_tips_are_the_ends_of_their_fingers() {
    let h = hand();
    for (j, &p) in h.joints.iter().enumerate() {
        let w = winding(&h.v_template, &h.faces, p.map(|x| x as f64));
        assert!((w - 1.0).abs() < 1e-6, "joint {j}: winding number {w}");
    }
    // A point well outside has winding 0.
    let w = winding(&h.v_template, &h.faces, [0.0, 0.2, 0.0]);
    assert!(w.abs() < 1e-6, "outside point: {w}");
    // Each tip vertex is the farthest point of its finger along the last bone. A finger's
    // vertices are the ones its last joint moves most.
    let last_joint = [15, 3, 6, 12, 9]; // thumb IP, index, middle, ring, pinky DIP
    for (k, (&tip, &j)) in TIP_VERTICES.iter().zip(&last_joint).enumerate() {
        let jp = h.joints[j].map(|x| x as f64);
        let d = sub(vert(&h.v_template, tip), jp);
        let reach = |v: usize| dot(sub(vert(&h.v_template, v), jp), d);
        let dominant = |v: usize| {
            let w = &h.lbs_weights[v * 16..v * 16 + 16];
            (0..16).all(|i| w[i] <= w[j])
        };
        for v in (0..NUM_VERTS).filter(|&v| v != tip && dominant(v)) {
            assert!(
                reach(v) < reach(tip),
                "finger {k}: vertex {v} beyond the tip {tip}"
            );
        }
        assert!(dominant(tip), "finger {k}: the tip is not its last joint's");
    }
}

#[test]
fn weights_and_regressor_are_normalised() {
    let h = hand();
    for v in 0..NUM_VERTS {
        let w = &h.lbs_weights[v * 16..v * 16 + 16];
        let sum: f64 = w.iter().map(|&x| x as f64).sum();
        assert!(
            w.iter().all(|&x| x >= 0.0),
            "vertex {v}: negative weight {w:?}"
        );
        assert!((sum - 1.0).abs() < 1e-6, "vertex {v}: weights sum to {sum}");
    }
    for j in 0..16 {
        let r = &h.j_regressor[j * NUM_VERTS..(j + 1) * NUM_VERTS];
        let sum: f64 = r.iter().map(|&x| x as f64).sum();
        assert!(
            r.iter().all(|&x| x >= 0.0),
            "joint {j}: negative regressor entry"
        );
        assert!(
            (sum - 1.0).abs() < 1e-6,
            "joint {j}: regressor row sums to {sum}"
        );
    }
    // Pose correctives: present, and small (≤ 2 mm per unit of R − I).
    let max = h.posedirs.iter().fold(0f32, |m, &x| m.max(x.abs()));
    assert!(max > 1e-5 && max < 2e-3, "max |posedirs| = {max}");
}

#[test]
fn loads_through_mano_load_and_rest_pose_is_the_template() {
    let h = hand();
    let dir = std::env::temp_dir().join(format!("handcov_synth_hand_{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("hand.safetensors");
    h.save(&path).unwrap();
    let f = TensorFile::open(&path).unwrap();
    let loaded = Mano::load(&f).unwrap();
    assert!(f.unused().is_empty(), "unused tensors: {:?}", f.unused());
    let mem = h.mano().unwrap();
    assert_eq!(loaded.v_template.data(), mem.v_template.data());
    assert_eq!(loaded.shapedirs.data(), mem.shapedirs.data());
    assert_eq!(loaded.posedirs.data(), mem.posedirs.data());
    assert_eq!(loaded.j_regressor.data(), mem.j_regressor.data());
    assert_eq!(loaded.lbs_weights.data(), mem.lbs_weights.data());
    assert_eq!((loaded.parents, loaded.tips), (mem.parents, mem.tips));
    assert_eq!(loaded.faces, h.faces);
    std::fs::remove_dir_all(&dir).unwrap();

    let (verts, kp) = forward(&loaded, &[0.0; 45], &[0.0; 10]);
    assert_eq!(verts, h.v_template, "identity pose, zero betas");
    // Keypoints: the regressed joints and the tip vertices, in OpenPose order.
    let mut all = Vec::new();
    for j in 0..16 {
        let r = &h.j_regressor[j * NUM_VERTS..(j + 1) * NUM_VERTS];
        all.push([0, 1, 2].map(|c| {
            (0..NUM_VERTS)
                .map(|v| r[v] as f64 * h.v_template[3 * v + c] as f64)
                .sum::<f64>()
        }));
    }
    for &t in &TIP_VERTICES {
        all.push(vert(&h.v_template, t));
    }
    for (k, &src) in JOINT_MAP.iter().enumerate() {
        let got = vert(&kp, k);
        assert!(
            dist(got, all[src]) < 1e-6,
            "keypoint {k}: {got:?} vs {:?}",
            all[src]
        );
        if src < 16 {
            assert!(
                dist(got, h.joints[src].map(|x| x as f64)) < 1e-6,
                "keypoint {k}"
            );
        }
    }
    for (k, t) in [(4, 744), (8, 320), (12, 443), (16, 554), (20, 671)] {
        assert_eq!(
            &kp[k * 3..k * 3 + 3],
            &h.v_template[t * 3..t * 3 + 3],
            "tip keypoint {k}"
        );
    }
    // The rest frame: fingers along −x from a wrist at ≈ (0.095, 0.006, 0.006), thumb on +z,
    // the palm (and the thumb) on the −y side.
    let wrist = vert(&kp, 0);
    assert!(dist(wrist, [0.095, 0.006, 0.006]) < 1e-6, "wrist {wrist:?}");
    let middle_tip = vert(&kp, 12);
    assert!(
        middle_tip[0] < -0.07 && middle_tip[2].abs() < 0.02,
        "middle tip {middle_tip:?}"
    );
    let thumb_tip = vert(&kp, 4);
    assert!(
        thumb_tip[2] > 0.05 && thumb_tip[1] < 0.0,
        "thumb tip {thumb_tip:?}"
    );
}

/// OpenPose keypoints at shape `betas` (identity pose).
fn shaped(m: &Mano, l: usize, b: f32) -> Vec<V> {
    let mut betas = [0f32; 10];
    betas[l] = b;
    let (_, kp) = forward(m, &[0.0; 45], &betas);
    (0..NUM_KEYPOINTS).map(|k| vert(&kp, k)).collect()
}

fn angle(a: V, b: V) -> f64 {
    (dot(a, b) / (norm(a) * norm(b))).clamp(-1.0, 1.0).acos()
}

#[test]
fn each_shape_direction_changes_what_it_claims() {
    let h = hand();
    let m = h.mano().unwrap();
    // OpenPose: 0 wrist; thumb 1–4; index 5–8; middle 9–12; ring 13–16; pinky 17–20.
    let finger_len = |k: &[V], base: usize| dist(k[base], k[base + 3]);
    type Measure = Box<dyn Fn(&[V]) -> f64>;
    let claims: Vec<(usize, &str, Measure)> = vec![
        (0, "wrist–middle tip", Box::new(|k| dist(k[0], k[12]))),
        (1, "index length", Box::new(move |k| finger_len(k, 5))),
        (1, "middle length", Box::new(move |k| finger_len(k, 9))),
        (1, "ring length", Box::new(move |k| finger_len(k, 13))),
        (1, "pinky length", Box::new(move |k| finger_len(k, 17))),
        (2, "index–pinky MCP", Box::new(|k| dist(k[5], k[17]))),
        (3, "wrist–middle MCP", Box::new(|k| dist(k[0], k[9]))),
        (5, "thumb CMC–tip", Box::new(|k| dist(k[1], k[4]))),
        (
            6,
            "index–pinky angle",
            Box::new(|k| angle(sub(k[8], k[5]), sub(k[20], k[17]))),
        ),
        (
            7,
            "thumb–index angle",
            Box::new(|k| angle(sub(k[4], k[1]), sub(k[8], k[5]))),
        ),
        (9, "pinky length", Box::new(move |k| finger_len(k, 17))),
    ];
    for (l, what, f) in &claims {
        let values: Vec<f64> = (-3..=3).map(|b| f(&shaped(&m, *l, b as f32))).collect();
        for w in values.windows(2) {
            assert!(
                w[1] > w[0] + 1e-5,
                "beta {l}: {what} not increasing: {values:?}"
            );
        }
    }
    // And what they leave alone.
    let unchanged: Vec<(usize, &str, Measure)> = vec![
        (1, "thumb length", Box::new(|k| dist(k[1], k[4]))),
        (5, "index length", Box::new(move |k| finger_len(k, 5))),
        (9, "index length", Box::new(move |k| finger_len(k, 5))),
    ];
    for (l, what, f) in &unchanged {
        let (a, b) = (f(&shaped(&m, *l, -2.0)), f(&shaped(&m, *l, 2.0)));
        assert!((a - b).abs() < 1e-6, "beta {l} changes {what}: {a} → {b}");
    }
    // Every shape within ±2 units keeps the regressed joints inside its surface.
    let inverse: Vec<usize> = (0..16)
        .map(|j| JOINT_MAP.iter().position(|&s| s == j).unwrap())
        .collect();
    for l in 0..10 {
        for b in [-2.0, 2.0] {
            let mut betas = [0f32; 10];
            betas[l] = b;
            let (v, kp) = forward(&m, &[0.0; 45], &betas);
            for (j, &k) in inverse.iter().enumerate() {
                let w = winding(&v, &h.faces, vert(&kp, k));
                assert!(
                    (w - 1.0).abs() < 1e-6,
                    "beta {l} = {b}: joint {j} winding {w}"
                );
            }
        }
    }
    // Thickness: digit rings widen (distance of the index PIP ring from its joint); palm
    // thickness: the wrist ring's y-extent grows.
    let ring_of = |j: usize| -> Vec<usize> {
        (0..NUM_VERTS)
            .filter(|&v| h.j_regressor[j * NUM_VERTS + v] > 0.0)
            .collect()
    };
    let (pip, wrist) = (ring_of(2), ring_of(0));
    let shaped_verts = |l: usize, b: f32| {
        let mut betas = [0f32; 10];
        betas[l] = b;
        forward(&m, &[0.0; 45], &betas)
    };
    let mut prev = (0.0, 0.0);
    for b in -3..=3 {
        let (v, kp) = shaped_verts(4, b as f32);
        let r = pip
            .iter()
            .map(|&i| dist(vert(&v, i), vert(&kp, 6)))
            .sum::<f64>();
        let (v, _) = shaped_verts(8, b as f32);
        let ys: Vec<f64> = wrist.iter().map(|&i| vert(&v, i)[1]).collect();
        let extent = ys.iter().cloned().fold(f64::MIN, f64::max)
            - ys.iter().cloned().fold(f64::MAX, f64::min);
        assert!(
            r > prev.0 && extent > prev.1,
            "beta 4 / 8 at {b}: {r} {extent}"
        );
        prev = (r, extent);
    }
}

#[test]
fn a_bent_finger_curls_toward_the_palm() {
    let h = hand();
    let m = h.mano().unwrap();
    let (rest_v, rest) = forward(&m, &[0.0; 45], &[0.0; 10]);
    let mut pose = [0f32; 45];
    for j in 0..3 {
        // index MCP, PIP, DIP flexed 70°
        let axis = h.frames[j].flex;
        for c in 0..3 {
            pose[3 * j + c] = axis[c] * 70f32.to_radians();
        }
    }
    let (v, kp) = forward(&m, &pose, &[0.0; 10]);
    assert!(v.iter().all(|x| x.is_finite()));
    let (tip0, tip1) = (vert(&rest, 8), vert(&kp, 8));
    // Palmward (−y), back toward the wrist, and closer to the palm's centre.
    assert!(tip1[1] < tip0[1] - 0.03, "tip y {} → {}", tip0[1], tip1[1]);
    assert!(tip1[0] > tip0[0] + 0.03, "tip x {} → {}", tip0[0], tip1[0]);
    let palm = [0.05, -0.01, 0.0];
    assert!(dist(tip1, palm) < dist(tip0, palm) - 0.03);
    // The other fingers stay where they were.
    for k in 9..=20 {
        assert!(
            dist(vert(&kp, k), vert(&rest, k)) < 1e-6,
            "keypoint {k} moved"
        );
    }
    let (v0, v1) = (volume(&rest_v, &h.faces), volume(&v, &h.faces));
    assert!((v1 / v0 - 1.0).abs() < 0.1, "volume {v0} → {v1}");
}

#[test]
fn random_poses_within_limits_keep_the_hand_whole() {
    let h = hand();
    let m = h.mano().unwrap();
    let v0 = volume(&h.v_template, &h.faces);
    let mut extremes = (f64::MAX, f64::MIN);
    for sample in 0..40u32 {
        let rng = Philox::new(7, 1, 0, sample);
        let u: [f32; 45] = std::array::from_fn(|i| rng.uniform(i as u64));
        let pose = random_pose(&u);
        assert_eq!(pose, h.random_pose(&u));
        assert!(pose.iter().all(|x| x.is_finite()));
        let mut betas = [0f32; 10];
        for (l, b) in betas.iter_mut().enumerate() {
            *b = 2.0 * rng.uniform(100 + l as u64) - 1.0;
        }
        let (v, kp) = forward(&m, &pose, &betas);
        assert!(
            v.iter().chain(&kp).all(|x| x.is_finite()),
            "sample {sample}"
        );
        let r = volume(&v, &h.faces) / v0;
        extremes = (extremes.0.min(r), extremes.1.max(r));
    }
    assert!(
        extremes.0 > 0.8 && extremes.1 < 1.25,
        "volume ratios {extremes:?}"
    );
    // The extremes of the limits map to their rotations: all-zero u is each range's minimum.
    let low = random_pose(&[0.0; 45]);
    let pip = JOINT_LIMITS[1];
    let aa = [low[3], low[4], low[5]];
    let angle = (aa[0] * aa[0] + aa[1] * aa[1] + aa[2] * aa[2])
        .sqrt()
        .to_degrees();
    let expect = (pip.abd[0].powi(2) + pip.twist[0].powi(2)).sqrt();
    assert!(
        (angle - expect).abs() < 0.2,
        "index PIP at u = 0: {angle}° vs ≈{expect}°"
    );
    // Out-of-range and non-finite inputs are clamped, not propagated.
    let mut wild = [2.0f32; 45];
    wild[0] = f32::NAN;
    assert!(random_pose(&wild).iter().all(|x| x.is_finite()));
}

#[test]
fn two_builds_are_bit_identical() {
    let t = std::time::Instant::now();
    let a = hand();
    let elapsed = t.elapsed();
    let b = hand();
    let bits = |h: &ProceduralHand| -> Vec<u32> {
        h.v_template
            .iter()
            .chain(&h.shapedirs)
            .chain(&h.posedirs)
            .chain(&h.j_regressor)
            .chain(&h.lbs_weights)
            .map(|x| x.to_bits())
            .collect()
    };
    assert_eq!(bits(&a), bits(&b));
    assert_eq!(a.faces, b.faces);
    eprintln!("procedural_hand: {elapsed:?}");
}
