//! The synthetic dataset generator: deterministic, readable by the training loader and by the
//! evaluation tools unchanged, with labels that match the rendered pixels.

mod common;

use common::scratch;
use handcov::eval::files::{read_gt_verts, read_gt_xyz};
use handcov::synth::dataset::{generate, sample, SynthConfig};
use handcov::synth::hand::procedural_hand;
use handcov::train::data::TrainSet;

fn small() -> SynthConfig {
    SynthConfig {
        n_train: 12,
        n_test: 6,
        image_px: 96,
        seed: 7,
        nuisance_rate: 0.6,
    }
}

#[test]
fn samples_are_deterministic_and_varied() {
    let mano = procedural_hand().mano().unwrap();
    let a = sample(&mano, 3, 5, 96, 0.6).unwrap();
    let b = sample(&mano, 3, 5, 96, 0.6).unwrap();
    assert_eq!(a.image.data, b.image.data);
    assert_eq!(a.keypoints_3d, b.keypoints_3d);
    let c = sample(&mano, 3, 6, 96, 0.6).unwrap();
    assert_ne!(a.image.data, c.image.data);
    // Across many draws, every nuisance occurs and many images have none.
    let all: Vec<_> = (0..60)
        .map(|i| sample(&mano, 3, i, 64, 0.6).unwrap())
        .collect();
    let n = |f: &dyn Fn(&handcov::synth::dataset::Nuisance) -> bool| {
        all.iter().filter(|s| f(&s.nuisance)).count()
    };
    assert!(n(&|z| !z.occluded.is_empty()) > 5);
    assert!(n(&|z| z.blur_sigma > 0.0) > 3);
    assert!(n(&|z| z.noise_sigma > 0.0) > 3);
    assert!(n(&|z| z.contrast < 1.0) > 3);
    assert!(n(&|z| z.occluded.is_empty() && z.blur_sigma == 0.0 && z.noise_sigma == 0.0) > 10);
}

/// The 2D labels are where the hand is drawn: every keypoint lies inside the image, and the
/// pixels at the projected wrist and fingertips differ from a render without the hand far more
/// often than chance.
#[test]
fn labels_match_the_pixels() {
    let mano = procedural_hand().mano().unwrap();
    for i in 0..10 {
        let s = sample(&mano, 11, i, 128, 0.0).unwrap();
        for p in &s.keypoints_2d {
            assert!(
                p[0] > 0.0 && p[0] < 128.0 && p[1] > 0.0 && p[1] < 128.0,
                "{p:?}"
            );
        }
        // Keypoints are the MANO-frame joints projected with the sample's camera.
        let f = s.focal;
        for (p2, p3) in s.keypoints_2d.iter().zip(&s.keypoints_3d) {
            let x = [
                p3[0] as f64 + s.cam_t[0],
                p3[1] as f64 + s.cam_t[1],
                p3[2] as f64 + s.cam_t[2],
            ];
            let u = f * x[0] / x[2] + 64.0;
            let v = f * x[1] / x[2] + 64.0;
            assert!((u - p2[0]).abs() < 1e-6 && (v - p2[1]).abs() < 1e-6);
        }
        // Every keypoint is inside the part of the box the ViT sees: its central ¾ columns.
        for p in &s.keypoints_2d {
            assert!((p[0] - s.center[0]).abs() <= 0.375 * s.box_side);
            assert!((p[1] - s.center[1]).abs() <= s.box_side / 2.0);
        }
    }
}

#[test]
fn writes_a_training_set_and_a_freihand_layout() {
    let dir = scratch("synth_dataset");
    let mano = procedural_hand().mano().unwrap();
    let cfg = small();
    let paths = generate(&dir.join("set"), &cfg, &mano, false).unwrap();
    let set = TrainSet::open(&paths.train).unwrap();
    assert_eq!(set.len(), cfg.n_train);
    let xyz = read_gt_xyz(&paths.test.join("evaluation_xyz.json")).unwrap();
    let verts = read_gt_verts(&paths.test.join("evaluation_verts.json")).unwrap();
    assert_eq!((xyz.n(), verts.n()), (cfg.n_test, cfg.n_test));
    let es = handcov::eval::predict::load_eval_set(&paths.eval_set, None).unwrap();
    assert_eq!(es.samples.len(), cfg.n_test);
    handcov::eval::predict::check_images(&es.samples).unwrap();
    // A second call finds the complete set and keeps it.
    let stamp = std::fs::metadata(paths.train.join("annotations.jsonl"))
        .unwrap()
        .modified()
        .unwrap();
    generate(&dir.join("set"), &cfg, &mano, false).unwrap();
    let again = std::fs::metadata(paths.train.join("annotations.jsonl"))
        .unwrap()
        .modified()
        .unwrap();
    assert_eq!(stamp, again);
    // A set with the same key from another generator version (its marker holds another
    // fingerprint) is regenerated, not reused.
    let marker = dir.join("set").join(".complete");
    let text = std::fs::read_to_string(&marker).unwrap();
    assert!(text.starts_with(&cfg.key()), "{text}");
    std::fs::write(&marker, format!("{}\n0000000000000000", cfg.key())).unwrap();
    std::fs::write(paths.train.join("annotations.jsonl"), "stale\n").unwrap();
    generate(&dir.join("set"), &cfg, &mano, false).unwrap();
    assert_eq!(TrainSet::open(&paths.train).unwrap().len(), cfg.n_train);
    assert_eq!(std::fs::read_to_string(&marker).unwrap(), text);
    // A set damaged after it was written (its marker intact) is regenerated too: an emptied
    // ground-truth file, a removed image, a removed split, no marker.
    let xyz_path = paths.test.join("evaluation_xyz.json");
    type Spoil<'a> = Box<dyn Fn() + 'a>;
    let damage: [(&str, Spoil); 4] = [
        (
            "empty xyz",
            Box::new(|| std::fs::write(&xyz_path, "").unwrap()),
        ),
        (
            "missing image",
            Box::new(|| std::fs::remove_file(paths.train.join("images/000001.jpg")).unwrap()),
        ),
        (
            "missing test split",
            Box::new(|| std::fs::remove_dir_all(&paths.test).unwrap()),
        ),
        (
            "no marker",
            Box::new(|| std::fs::remove_file(&marker).unwrap()),
        ),
    ];
    for (what, spoil) in damage {
        spoil();
        generate(&dir.join("set"), &cfg, &mano, false).unwrap();
        assert_eq!(read_gt_xyz(&xyz_path).unwrap().n(), cfg.n_test, "{what}");
        assert!(paths.train.join("images/000001.jpg").is_file(), "{what}");
        assert_eq!(std::fs::read_to_string(&marker).unwrap(), text, "{what}");
    }
}

/// Runs sharing a cache generate at the same time (two tests, two demo runs): each finds or
/// publishes a complete set, neither deletes the other's files, and no staging or stale folder
/// is left beside it. Before the set was written in place, the second run deleted the first's
/// half-written set and one of them failed on a missing folder.
#[test]
fn concurrent_generations_share_one_complete_set() {
    let dir = scratch("synth_dataset_concurrent");
    let mano = procedural_hand().mano().unwrap();
    let cfg = small();
    let root = dir.join("set");
    // A stale set first, so that both runs also race to discard it.
    std::fs::create_dir_all(root.join("train")).unwrap();
    std::fs::write(root.join(".complete"), "v0-stale").unwrap();
    let results: Vec<_> = std::thread::scope(|s| {
        let runs: Vec<_> = (0..3)
            .map(|_| s.spawn(|| generate(&root, &cfg, &mano, false)))
            .collect();
        runs.into_iter().map(|r| r.join().unwrap()).collect()
    });
    for r in results {
        let paths = r.unwrap();
        assert_eq!(TrainSet::open(&paths.train).unwrap().len(), cfg.n_train);
        assert_eq!(
            read_gt_xyz(&paths.test.join("evaluation_xyz.json"))
                .unwrap()
                .n(),
            cfg.n_test
        );
    }
    let names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["set"]);
}
