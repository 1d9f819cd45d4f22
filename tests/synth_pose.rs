//! The synthetic set's pose prior (`synth::pose`): joints move together the way the prior's
//! documentation says (DIP with PIP, fingers with each other), open and closed hands both occur,
//! every angle stays within the joint limits, and a pose is a function of its random numbers.

use handcov::synth::hand::random_pose;
use handcov::synth::pose::natural_pose;
use handcov::train::rng::Philox;

const N: u32 = 2000;

/// Pose `i` of a fixed stream.
fn pose(i: u32) -> [f32; 45] {
    let rng = Philox::new(11, 3, 0, i);
    let mut k = 0u64;
    natural_pose(&mut || {
        k += 1;
        rng.uniform(k)
    })
}

/// Rotation angle (degrees) of MANO joint `j` (1..15) of a pose.
fn angle(p: &[f32; 45], j: usize) -> f64 {
    let a = &p[3 * (j - 1)..3 * j];
    (a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>())
        .sqrt()
        .to_degrees()
}

fn pearson(a: &[f64], b: &[f64]) -> f64 {
    let n = a.len() as f64;
    let (ma, mb) = (a.iter().sum::<f64>() / n, b.iter().sum::<f64>() / n);
    let cov: f64 = a.iter().zip(b).map(|(x, y)| (x - ma) * (y - mb)).sum();
    let va: f64 = a.iter().map(|x| (x - ma).powi(2)).sum();
    let vb: f64 = b.iter().map(|y| (y - mb).powi(2)).sum();
    cov / (va * vb).sqrt()
}

/// Angles of joint `j` over a set of poses.
fn column(poses: &[[f32; 45]], j: usize) -> Vec<f64> {
    poses.iter().map(|p| angle(p, j)).collect()
}

#[test]
fn joints_move_together_and_hands_open_and_close() {
    let poses: Vec<[f32; 45]> = (0..N).map(pose).collect();
    assert!(poses.iter().flatten().all(|x| x.is_finite()));
    // MANO joints: index 1-3, middle 4-6, pinky 7-9, ring 10-12 (MCP, PIP, DIP), thumb 13-15.
    for (name, pip) in [("index", 2), ("middle", 5), ("pinky", 8), ("ring", 11)] {
        let r = pearson(&column(&poses, pip), &column(&poses, pip + 1));
        assert!(r > 0.85, "{name}: PIP–DIP correlation {r}");
    }
    let r = pearson(&column(&poses, 5), &column(&poses, 11));
    assert!(r > 0.6, "middle–ring PIP correlation {r}");
    let r = pearson(&column(&poses, 5), &column(&poses, 14));
    assert!(r > 0.2, "middle PIP – thumb MCP correlation {r}");
    // The same statistics of the independent uniform sampler are near zero, so the checks above
    // measure the prior and not the limits.
    let uniform: Vec<[f32; 45]> = (0..N)
        .map(|i| {
            let rng = Philox::new(11, 4, 0, i);
            random_pose(&std::array::from_fn(|k| rng.uniform(k as u64)))
        })
        .collect();
    let r = pearson(&column(&uniform, 2), &column(&uniform, 3));
    assert!(r.abs() < 0.1, "uniform sampler PIP–DIP correlation {r}");
    // Open and closed hands are both common.
    let mean_pip = |p: &[f32; 45]| [2, 5, 8, 11].iter().map(|&j| angle(p, j)).sum::<f64>() / 4.0;
    let open = poses.iter().filter(|p| mean_pip(p) < 20.0).count() as f64 / N as f64;
    let closed = poses.iter().filter(|p| mean_pip(p) > 70.0).count() as f64 / N as f64;
    assert!(open > 0.15 && closed > 0.15, "open {open}, closed {closed}");
    // A pointing or V gesture straightens fingers while the others stay curled.
    let pointing = poses
        .iter()
        .filter(|p| angle(p, 2) < 15.0 && angle(p, 5) > 60.0 && angle(p, 11) > 60.0)
        .count();
    assert!(pointing > 20, "{pointing} pointing hands of {N}");
}

#[test]
fn every_angle_stays_within_the_limits() {
    // The prior goes through the uniform sampler's clamp: feeding it the extremes of its
    // random numbers gives poses the limits allow, never more.
    for fixed in [0.0f32, 0.999_999, 0.5] {
        let p = natural_pose(&mut || fixed);
        assert!(p.iter().all(|x| x.is_finite()), "u = {fixed}");
        for j in 1..=15 {
            let lim = handcov::synth::hand::JOINT_LIMITS[j - 1];
            // A product of three rotations turns by at most the sum of their angles.
            let worst = [lim.flex, lim.abd, lim.twist]
                .iter()
                .map(|r| r[0].abs().max(r[1].abs()))
                .sum::<f32>() as f64;
            assert!(
                angle(&p, j) <= worst + 1e-3,
                "u = {fixed}: joint {j} at {}° > {worst}°",
                angle(&p, j)
            );
        }
    }
    for i in 0..N {
        let p = pose(i);
        assert_eq!(p, pose(i), "pose {i} is not a function of its numbers");
    }
}
