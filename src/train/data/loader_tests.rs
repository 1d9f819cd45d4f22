//! The loader: determinism across thread counts, resuming from a cursor, skipping unreadable
//! images, epoch order, argument errors.

use super::test_util::{build_set, TempDir};
use super::*;
use crate::train::step::Batch;
use std::sync::Arc;

const SIZE: usize = 24;

fn opts(batch_size: usize, threads: usize, seed: u64) -> LoaderOptions {
    LoaderOptions {
        batch_size,
        image_size: SIZE,
        seed,
        threads,
        prefetch: 2,
        augment: Some(AugConfig::default()),
        shuffle: true,
    }
}

/// Every tensor of a batch, as bits.
fn bits(b: &Batch) -> Vec<Vec<u32>> {
    assert!(b.sample_eps.is_none() && b.mocap.is_none());
    [
        &b.img,
        &b.keypoints_2d,
        &b.keypoints_3d,
        &b.global_orient,
        &b.hand_pose,
        &b.betas,
        &b.has_global_orient,
        &b.has_hand_pose,
        &b.has_betas,
    ]
    .iter()
    .map(|v| v.iter().map(|x| x.to_bits()).collect())
    .collect()
}

/// The item ids of a batch (joint 0's z is `10 + id`, unchanged by flip and rotation).
fn ids(b: &Batch) -> Vec<usize> {
    (0..b.b)
        .map(|i| (b.keypoints_3d[i * 84 + 2] - 10.0).round() as usize)
        .collect()
}

fn take(
    set: &Arc<TrainSet>,
    o: LoaderOptions,
    start: Cursor,
    n: usize,
) -> (Vec<Batch>, Vec<Cursor>, u64) {
    let mut l = Loader::new(set.clone(), o, start).unwrap();
    let mut out = Vec::new();
    let mut cursors = Vec::new();
    for _ in 0..n {
        out.push(l.next_batch().unwrap());
        cursors.push(l.cursor());
    }
    (out, cursors, l.skipped())
}

#[test]
fn batches_have_the_batch_layout() {
    let t = TempDir::new("layout");
    build_set(t.path(), 5, &[]);
    let set = Arc::new(TrainSet::open(t.path()).unwrap());
    let (b, _, _) = take(&set, opts(3, 2, 0), Cursor::default(), 1);
    let b = &b[0];
    assert_eq!(b.b, 3);
    assert_eq!(b.img.len(), 3 * 3 * SIZE * SIZE);
    assert_eq!(
        [
            b.keypoints_2d.len(),
            b.keypoints_3d.len(),
            b.global_orient.len(),
            b.hand_pose.len(),
            b.betas.len()
        ],
        [3 * 21 * 3, 3 * 21 * 4, 9, 135, 30]
    );
    assert_eq!(
        [
            b.has_global_orient.len(),
            b.has_hand_pose.len(),
            b.has_betas.len()
        ],
        [3; 3]
    );
    assert!(b.img.iter().all(|v| v.is_finite()));
    // Each row is exactly the item's example.
    let o = opts(3, 2, 0);
    let order = epoch_order(0, 0, 5, true);
    for (r, &i) in order[..3].iter().enumerate() {
        let ex = set
            .example(i as usize, 0, 0, o.augment.as_ref(), SIZE)
            .unwrap();
        let n = 3 * SIZE * SIZE;
        assert_eq!(&b.img[r * n..(r + 1) * n], &ex.img[..]);
        assert_eq!(ids(b)[r], i as usize);
        assert_eq!(&b.hand_pose[r * 45..(r + 1) * 45], &ex.mano.hand_pose[..]);
    }
}

#[test]
fn same_seed_same_batches_with_one_or_four_threads() {
    let t = TempDir::new("determinism");
    build_set(t.path(), 7, &[]);
    let set = Arc::new(TrainSet::open(t.path()).unwrap());
    let (a, ca, _) = take(&set, opts(4, 1, 42), Cursor::default(), 5);
    let (b, cb, _) = take(&set, opts(4, 4, 42), Cursor::default(), 5);
    let (c, _, _) = take(
        &set,
        LoaderOptions {
            prefetch: 5,
            ..opts(4, 3, 42)
        },
        Cursor::default(),
        5,
    );
    assert_eq!(ca, cb);
    for i in 0..5 {
        assert_eq!(bits(&a[i]), bits(&b[i]), "batch {i}: 1 vs 4 threads");
        assert_eq!(bits(&a[i]), bits(&c[i]), "batch {i}: prefetch");
    }
    // 20 items over 7-item epochs: cursors advance across epochs.
    assert_eq!(
        ca[4],
        Cursor {
            epoch: 2,
            position: 6
        }
    );
    let (d, _, _) = take(&set, opts(4, 4, 43), Cursor::default(), 1);
    assert_ne!(bits(&a[0]), bits(&d[0]), "another seed, other batches");
}

#[test]
fn resuming_from_a_cursor_gives_the_same_next_batches() {
    let t = TempDir::new("resume");
    build_set(t.path(), 6, &[]);
    let set = Arc::new(TrainSet::open(t.path()).unwrap());
    let (all, cursors, _) = take(&set, opts(4, 2, 9), Cursor::default(), 5);
    for k in [0usize, 1, 3] {
        let (rest, _, _) = take(&set, opts(4, 3, 9), cursors[k], 5 - k - 1);
        for (j, b) in rest.iter().enumerate() {
            assert_eq!(
                bits(b),
                bits(&all[k + 1 + j]),
                "resumed after batch {k}: batch {}",
                k + 1 + j
            );
        }
    }
    // (e, n) is the same place as (e + 1, 0).
    let (x, _, _) = take(
        &set,
        opts(4, 1, 9),
        Cursor {
            epoch: 2,
            position: 6,
        },
        1,
    );
    let (y, _, _) = take(
        &set,
        opts(4, 1, 9),
        Cursor {
            epoch: 3,
            position: 0,
        },
        1,
    );
    assert_eq!(bits(&x[0]), bits(&y[0]));
}

#[test]
fn unshuffled_stream_visits_items_in_order_across_epochs() {
    let t = TempDir::new("order");
    build_set(t.path(), 5, &[]);
    let set = Arc::new(TrainSet::open(t.path()).unwrap());
    let o = LoaderOptions {
        shuffle: false,
        augment: None,
        ..opts(3, 2, 0)
    };
    let (b, c, _) = take(&set, o, Cursor::default(), 3);
    assert_eq!(ids(&b[0]), [0, 1, 2]);
    assert_eq!(ids(&b[1]), [3, 4, 0]);
    assert_eq!(ids(&b[2]), [1, 2, 3]);
    assert_eq!(
        c,
        [
            Cursor {
                epoch: 0,
                position: 3
            },
            Cursor {
                epoch: 1,
                position: 1
            },
            Cursor {
                epoch: 1,
                position: 4
            }
        ]
    );
    // Without augmentation the epoch does not matter: the repeated item is identical.
    let n = 3 * SIZE * SIZE;
    assert_eq!(b[0].img[..n], b[1].img[2 * n..3 * n]);
}

#[test]
fn epoch_order_is_a_seeded_permutation() {
    let a = epoch_order(5, 0, 1000, true);
    let mut s = a.clone();
    s.sort_unstable();
    assert_eq!(s, (0..1000).collect::<Vec<u32>>());
    assert_ne!(a, s);
    assert_eq!(a, epoch_order(5, 0, 1000, true));
    assert_ne!(a, epoch_order(5, 1, 1000, true));
    assert_ne!(a, epoch_order(6, 0, 1000, true));
    assert_eq!(epoch_order(5, 0, 1000, false), s);
    assert_eq!(epoch_order(5, 0, 1, true), [0]);
    assert!(epoch_order(5, 0, 0, true).is_empty());
    // Roughly uniform: item 0 lands in each half about equally often.
    let first_half = (0..2000u64)
        .filter(|&e| epoch_order(1, e, 10, true)[..5].contains(&0))
        .count();
    // Binomial(2000, 0.5): standard deviation 22.
    assert!((first_half as i64 - 1000).abs() < 110, "{first_half}");
}

#[test]
fn missing_images_are_skipped_counted_and_replaced() {
    let t = TempDir::new("missing");
    build_set(t.path(), 6, &[2]);
    // An unreadable file, not only a missing one.
    std::fs::write(t.path().join("img/4.png"), b"not a png").unwrap();
    let set = Arc::new(TrainSet::open(t.path()).unwrap());
    let (o, nb, bsz) = (opts(5, 3, 1), 6, 5);
    let (batches, cursors, skipped) = take(&set, o, Cursor::default(), nb);
    // 30 good items were delivered; the stream positions consumed = 30 + skipped.
    let end = cursors[nb - 1];
    let consumed = end.epoch * 6 + end.position;
    assert_eq!(consumed, (nb * bsz) as u64 + skipped);
    // The delivered items are the stream's order without items 2 and 4.
    let mut want = Vec::new();
    for e in 0..=end.epoch {
        want.extend(epoch_order(1, e, 6, true).into_iter().map(|i| i as usize));
    }
    let want: Vec<usize> = want[..consumed as usize]
        .iter()
        .copied()
        .filter(|&i| i != 2 && i != 4)
        .collect();
    let got: Vec<usize> = batches.iter().flat_map(ids).collect();
    assert_eq!(got, want);
    let bad_in_stream = consumed as usize - want.len();
    assert_eq!(skipped, bad_in_stream as u64);
    assert!(skipped >= 2);
    for b in &batches {
        assert_eq!(b.b, bsz);
    }
    // Same skips, same batches with one thread.
    let (again, _, skipped1) = take(&set, opts(5, 1, 1), Cursor::default(), nb);
    assert_eq!(skipped1, skipped);
    for (a, b) in again.iter().zip(&batches) {
        assert_eq!(bits(a), bits(b));
    }
}

#[test]
fn no_readable_image_is_an_error_not_a_hang() {
    let t = TempDir::new("all-missing");
    build_set(t.path(), 3, &[0, 1, 2]);
    let set = Arc::new(TrainSet::open(t.path()).unwrap());
    let mut l = Loader::new(set, opts(2, 2, 0), Cursor::default()).unwrap();
    let e = l.next_batch().err().expect("no batch").to_string();
    assert!(
        e.contains("none of the 3 items' images could be read"),
        "{e}"
    );
    let e2 = l.next_batch().err().expect("no batch").to_string();
    assert_eq!(e, e2, "the error is sticky");
}

#[test]
fn bad_loader_arguments_are_errors() {
    let t = TempDir::new("args");
    build_set(t.path(), 3, &[]);
    let set = Arc::new(TrainSet::open(t.path()).unwrap());
    let err = |o: LoaderOptions, c: Cursor| match Loader::new(set.clone(), o, c) {
        Ok(_) => panic!("accepted {o:?} {c:?}"),
        Err(e) => e.to_string(),
    };
    assert!(err(opts(0, 1, 0), Cursor::default()).contains("batch size 0"));
    assert!(err(
        LoaderOptions {
            image_size: 0,
            ..opts(2, 1, 0)
        },
        Cursor::default()
    )
    .contains("image size 0"));
    assert!(err(
        opts(2, 1, 0),
        Cursor {
            epoch: 0,
            position: 4
        }
    )
    .contains("beyond the 3 items"));
    assert!(
        err(opts(2, 100_000, 0), Cursor::default()).contains("100000 threads is more than 1024")
    );
    let empty = Arc::new(TrainSet::from_annotations(t.path(), Vec::new()));
    let e = Loader::new(empty, opts(2, 1, 0), Cursor::default())
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("no items left after filtering (0 annotation lines read"),
        "{e}"
    );
    assert!(!e.contains("FilterStats"), "{e}");
    // A loader dropped while its producer is blocked on a full channel shuts down.
    let l = Loader::new(
        set,
        LoaderOptions {
            threads: 0,
            prefetch: 1,
            ..opts(2, 1, 0)
        },
        Cursor::default(),
    )
    .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(50));
    drop(l);
}

#[test]
fn cursor_serialises_to_json() {
    let c = Cursor {
        epoch: 3,
        position: 17,
    };
    let s = serde_json::to_string(&c).unwrap();
    assert_eq!(s, r#"{"epoch":3,"position":17}"#);
    assert_eq!(serde_json::from_str::<Cursor>(&s).unwrap(), c);
}

#[test]
fn example_of_an_unknown_item_is_an_error() {
    let t = TempDir::new("example-index");
    build_set(t.path(), 2, &[1]);
    let set = TrainSet::open(t.path()).unwrap();
    let e = set.example(2, 0, 0, None, 8).unwrap_err().to_string();
    assert!(e.contains("training item 2 out of range (2 items)"), "{e}");
    let e = set.example(1, 0, 0, None, 8).unwrap_err();
    assert!(matches!(e, crate::error::Error::Io { .. }), "{e}");
    assert!(set.example(0, 0, 0, None, 8).is_ok());
}
