//! Parsing, validation and the SPEC §1.5 filters.

use super::test_util::{annotation, write_annotations, TempDir};
use super::*;
use crate::error::Error;
use serde_json::{json, Value};

fn base() -> Value {
    annotation("a.png", [50.0, 40.0], 0.2, true, 0)
}

fn parse(v: &Value) -> std::result::Result<Annotation, String> {
    parse_annotation(&v.to_string())
}

/// An edit of the valid annotation [`base`].
type Edit = Box<dyn Fn(&mut Value)>;

/// Each edit of [`base`] is a parse error whose message contains its text.
fn assert_each_edit_fails(cases: &[(Edit, &str)]) {
    for (i, (edit, want)) in cases.iter().enumerate() {
        let mut v = base();
        edit(&mut v);
        let m = parse_err(&v);
        assert!(
            m.contains(want),
            "case {i}: `{m}` does not contain `{want}`"
        );
    }
}

fn parse_err(v: &Value) -> String {
    match parse(v) {
        Ok(_) => panic!("accepted {v}"),
        Err(m) => m,
    }
}

#[test]
fn a_valid_line_parses_with_its_values() {
    let a = parse(&base()).unwrap();
    assert_eq!(a.image, std::path::PathBuf::from("a.png"));
    assert_eq!(
        (a.center, a.scale, a.is_right),
        ([50.0, 40.0], [0.2, 0.2], true)
    );
    assert_eq!(a.keypoints_2d[3], [43.0, 36.5, 0.9]);
    assert_eq!(a.keypoints_3d[0], [0.0, 0.0, 10.0, 1.0]);
    assert_eq!(a.mano.global_orient, [0.3, -0.2, 0.1]);
    assert_eq!(a.mano.hand_pose[44], (0.01f64 * 44.0 - 0.2) as f32);
    assert_eq!(
        a.has_mano,
        HasMano {
            global_orient: true,
            hand_pose: true,
            betas: true
        }
    );
    assert_eq!((a.reprojection_loss, a.key.as_deref()), (None, None));

    // [w, h] scale, optional fields.
    let mut v = base();
    v["scale"] = json!([0.3, 0.4]);
    v["reprojection_loss"] = json!(12.5);
    v["key"] = json!("shard-0/0001");
    let a = parse(&v).unwrap();
    assert_eq!((a.scale, a.reprojection_loss), ([0.3, 0.4], Some(12.5)));
    assert_eq!(a.key.as_deref(), Some("shard-0/0001"));
    assert_eq!(train_box_size(a.scale), 80.0);
    v["reprojection_loss"] = Value::Null;
    assert_eq!(parse(&v).unwrap().reprojection_loss, None);

    // No MANO: zero parameters, no flags. MANO without flags: all flags.
    let mut v = base();
    v.as_object_mut().unwrap().remove("mano");
    v.as_object_mut().unwrap().remove("has_mano");
    let a = parse(&v).unwrap();
    assert_eq!(
        (a.mano, a.has_mano),
        (ManoParams::default(), HasMano::default())
    );
    v["has_mano"] = json!({"global_orient": false, "hand_pose": false, "betas": false});
    assert_eq!(parse(&v).unwrap().has_mano, HasMano::default());
    let mut v = base();
    v.as_object_mut().unwrap().remove("has_mano");
    assert_eq!(
        parse(&v).unwrap().has_mano,
        HasMano {
            global_orient: true,
            hand_pose: true,
            betas: true
        }
    );
}

#[test]
fn malformed_lines_are_rejected_with_what_is_wrong() {
    let cases: Vec<(Edit, &str)> = vec![
        (Box::new(|v| v["extra"] = json!(1)), "unknown field `extra`"),
        (
            Box::new(|v| v["mano"]["pose"] = json!([0.0])),
            "unknown field `pose`",
        ),
        (
            Box::new(|v| v["has_mano"]["cam"] = json!(true)),
            "unknown field `cam`",
        ),
        (
            Box::new(|v| {
                v.as_object_mut().unwrap().remove("center");
            }),
            "missing field `center`",
        ),
        (
            Box::new(|v| {
                v.as_object_mut().unwrap().remove("is_right");
            }),
            "missing field `is_right`",
        ),
        (Box::new(|v| v["is_right"] = json!(1)), "invalid type"),
        (
            Box::new(|v| v["center"] = json!([1.0])),
            "`center` has 1 values",
        ),
        (Box::new(|v| v["scale"] = json!(0.0)), "positive"),
        (Box::new(|v| v["scale"] = json!(-1.0)), "positive"),
        (
            Box::new(|v| v["scale"] = json!([0.1, 0.2, 0.3])),
            "number or [w, h]",
        ),
        (Box::new(|v| v["scale"] = json!("big")), "number or [w, h]"),
        (
            Box::new(|v| v["scale"] = json!([0.1, "x"])),
            "positive finite",
        ),
        (
            Box::new(|v| {
                v["keypoints_2d"].as_array_mut().unwrap().pop();
            }),
            "`keypoints_2d` has 20 rows",
        ),
        (
            Box::new(|v| v["keypoints_2d"][7] = json!([1.0, 2.0])),
            "`keypoints_2d[7]` has 2 values",
        ),
        (
            Box::new(|v| v["keypoints_3d"][20] = json!([1.0, 2.0, 3.0])),
            "`keypoints_3d[20]` has 3 values",
        ),
        (
            Box::new(|v| v["keypoints_3d"][2][1] = json!(1e300)),
            "`keypoints_3d[2]`[1] = 1e300 is not a finite float32",
        ),
        (
            Box::new(|v| v["keypoints_2d"][0][0] = json!("x")),
            "invalid type",
        ),
        (
            Box::new(|v| v["mano"]["hand_pose"] = json!(vec![0.0; 48])),
            "`mano.hand_pose` has 48 values, expected 45",
        ),
        (
            Box::new(|v| v["mano"]["betas"] = json!(vec![0.0; 9])),
            "`mano.betas` has 9 values",
        ),
        (
            Box::new(|v| v["mano"]["global_orient"] = json!([0.0, 0.0])),
            "`mano.global_orient` has 2",
        ),
        (
            Box::new(|v| {
                v.as_object_mut().unwrap().remove("mano");
            }),
            "`has_mano` marks parameters as present but there is no `mano`",
        ),
        (Box::new(|v| v["image"] = json!("")), "`image` is empty"),
        (
            Box::new(|v| v["image"] = json!("/abs/a.png")),
            "must be relative",
        ),
        (
            Box::new(|v| v["reprojection_loss"] = json!("high")),
            "invalid type",
        ),
    ];
    assert_each_edit_fails(&cases);
    for text in [
        "",
        "{",
        "[1, 2]",
        "null",
        "{\"image\": \"a\", \"image\": \"b\"}",
    ] {
        assert!(parse_annotation(text).is_err(), "accepted {text:?}");
    }
    // A duplicate field is an error too.
    let dup = base().to_string().replacen("{", "{\"is_right\":false,", 1);
    assert!(parse_annotation(&dup)
        .unwrap_err()
        .contains("duplicate field"));
}

#[test]
fn open_names_the_file_and_line_of_a_bad_annotation() {
    let t = TempDir::new("bad-line");
    let mut bad = base();
    bad["keypoints_2d"][4] = json!([1.0]);
    let text = format!("{}\n\n{}\n{}\n", base(), bad, base());
    std::fs::write(t.path().join(ANNOTATIONS_FILE), text).unwrap();
    let e = TrainSet::open(t.path()).unwrap_err();
    let m = e.to_string();
    assert!(matches!(e, Error::Input(_)), "{m}");
    assert!(
        m.contains("annotations.jsonl: line 3: `keypoints_2d[4]` has 1 values"),
        "{m}"
    );

    // Blank lines are skipped and line numbers are kept.
    let text = format!("\n{}\n   \n{}\n", base(), base());
    std::fs::write(t.path().join(ANNOTATIONS_FILE), text).unwrap();
    let set = TrainSet::open(t.path()).unwrap();
    assert_eq!(set.len(), 2);
    assert_eq!(set.items()[0].line, 2);
    assert_eq!(set.items()[1].line, 4);
    assert_eq!(set.image_path(1), Some(t.path().join("a.png")));
    assert_eq!(set.image_path(2), None);

    let empty = TempDir::new("no-file");
    let e = TrainSet::open(empty.path()).unwrap_err();
    assert!(matches!(e, Error::Io { .. }), "{e}");
    assert!(e.to_string().contains("annotations.jsonl"), "{e}");
}

fn filtered(v: &Value) -> std::result::Result<Annotation, Dropped> {
    let mut s = false;
    apply_filters(parse(v).unwrap(), &mut s)
}

#[test]
fn keypoint_confidence_suppression_and_count_filter() {
    let mut v = base();
    // conf 0.29 → 0; 0.3 stays (the reference zeroes conf < 0.3).
    v["keypoints_2d"][0][2] = json!(0.29);
    v["keypoints_2d"][1][2] = json!(0.3);
    v["keypoints_2d"][2][2] = json!(0.0);
    let a = filtered(&v).unwrap();
    assert_eq!(a.keypoints_2d[0][2], 0.0);
    assert_eq!(a.keypoints_2d[1][2], 0.3);
    assert_eq!(a.keypoints_2d[2][2], 0.0);
    assert_eq!(a.keypoints_2d[3][2], 0.9);

    // Exactly 5 visible keypoints: kept; 4: dropped (needs #(conf > 0) > 4).
    for (visible, keep) in [(5usize, true), (4, false), (0, false), (21, true)] {
        let mut v = base();
        for k in visible..21 {
            v["keypoints_2d"][k][2] = json!(if k % 2 == 0 { 0.0 } else { 0.2 });
        }
        let r = filtered(&v);
        assert_eq!(r.is_ok(), keep, "{visible} visible");
        if !keep {
            assert_eq!(r.unwrap_err(), Dropped::FewKeypoints);
        }
    }
}

#[test]
fn reprojection_filter() {
    for (loss, keep) in [
        (Value::Null, true),
        (json!(30999.9), true),
        (json!(31000.0), false),
        (json!(1e9), false),
    ] {
        let mut v = base();
        v["reprojection_loss"] = loss.clone();
        let r = filtered(&v);
        assert_eq!(r.is_ok(), keep, "{loss}");
        if !keep {
            assert_eq!(r.unwrap_err(), Dropped::Reprojection);
        }
    }
}

#[test]
fn mano_flags_betas_threshold_simultaneity_and_betas_reg() {
    let all = HasMano {
        global_orient: true,
        hand_pose: true,
        betas: true,
    };
    // All present, |β| ≤ 3: unchanged.
    let mut v = base();
    v["mano"]["betas"][3] = json!(-3.0);
    let mut s = false;
    let a = apply_filters(parse(&v).unwrap(), &mut s).unwrap();
    assert_eq!((a.has_mano, a.mano.betas[3], s), (all, -3.0, false));

    // |β| > 3: betas dropped → hand pose (and global orient) dropped too → betas regularised to 0.
    v["mano"]["betas"][3] = json!(-3.01);
    let a = apply_filters(parse(&v).unwrap(), &mut s).unwrap();
    assert!(s);
    assert_eq!(
        a.has_mano,
        HasMano {
            global_orient: false,
            hand_pose: false,
            betas: true
        }
    );
    assert_eq!(a.mano.betas, [0.0; 10]);
    assert_eq!(
        a.mano.hand_pose,
        parse(&v).unwrap().mano.hand_pose,
        "values are kept"
    );

    // Hand pose without betas: neither is a label; betas regularised.
    let mut v = base();
    v["has_mano"]["betas"] = json!(false);
    let a = filtered(&v).unwrap();
    assert_eq!(
        a.has_mano,
        HasMano {
            global_orient: false,
            hand_pose: false,
            betas: true
        }
    );
    assert_eq!(a.mano.betas, [0.0; 10]);

    // Betas without hand pose: betas flag cleared then regularised to 0; global orient follows.
    let mut v = base();
    v["has_mano"]["hand_pose"] = json!(false);
    let a = filtered(&v).unwrap();
    assert_eq!(
        a.has_mano,
        HasMano {
            global_orient: false,
            hand_pose: false,
            betas: true
        }
    );
    assert_eq!(a.mano.betas, [0.0; 10]);

    // Global orient flag alone off: the rest stays.
    let mut v = base();
    v["has_mano"]["global_orient"] = json!(false);
    let a = filtered(&v).unwrap();
    assert_eq!(
        a.has_mano,
        HasMano {
            global_orient: false,
            hand_pose: true,
            betas: true
        }
    );
    assert_ne!(a.mano.betas, [0.0; 10]);

    // No MANO at all: only the betas regulariser.
    let mut v = base();
    v.as_object_mut().unwrap().remove("mano");
    v.as_object_mut().unwrap().remove("has_mano");
    let a = filtered(&v).unwrap();
    assert_eq!(
        a.has_mano,
        HasMano {
            global_orient: false,
            hand_pose: false,
            betas: true
        }
    );
}

#[test]
fn open_applies_the_filters_and_counts() {
    let t = TempDir::new("filters");
    let mut few = base();
    for k in 0..21 {
        few["keypoints_2d"][k][2] = json!(0.1);
    }
    let mut reproj = base();
    reproj["reprojection_loss"] = json!(5e4);
    let mut big_betas = base();
    big_betas["mano"]["betas"][0] = json!(4.0);
    write_annotations(
        t.path(),
        &[base(), few, reproj.clone(), big_betas, reproj, base()],
    );
    let set = TrainSet::open(t.path()).unwrap();
    assert_eq!(set.len(), 3);
    assert_eq!(
        set.stats(),
        FilterStats {
            read: 6,
            kept: 3,
            dropped_few_keypoints: 1,
            dropped_reprojection: 2,
            betas_suppressed: 1
        }
    );
    assert_eq!(
        set.items().iter().map(|a| a.line).collect::<Vec<_>>(),
        [1, 4, 6]
    );
    assert!(!set.items()[1].has_mano.hand_pose);
    // The statistics in words (they end the "no items left" error).
    assert_eq!(
        set.stats().to_string(),
        "6 annotation lines read, 3 kept; dropped: 1 with at most 4 2D keypoints of \
         confidence ≥ 0.3, 2 with reprojection_loss ≥ 31000"
    );
}

#[test]
fn boxes_must_be_finite_float32_values_a_crop_can_use() {
    let cases: Vec<(Edit, &str)> = vec![
        (
            Box::new(|v| v["scale"] = json!(1e39)),
            "`scale` 1e39 is too large",
        ),
        (
            Box::new(|v| v["scale"] = json!([0.2, 1e300])),
            "`scale` 1e300 is too large",
        ),
        (
            // Finite as float32, but not once multiplied by 200.
            Box::new(|v| v["scale"] = json!(3e36)),
            "`scale` 3e36 is too large",
        ),
        (
            Box::new(|v| v["scale"] = json!(1e-300)),
            "`scale` 1e-300 is too small: it is zero",
        ),
        (
            Box::new(|v| v["scale"] = json!(1e-40)),
            "`scale` 1e-40 is too small",
        ),
        (
            Box::new(|v| v["center"] = json!([1e39, 10.0])),
            "`center` value 1e39 is not a finite float32",
        ),
        (
            Box::new(|v| v["center"] = json!([10.0, -1e300])),
            "`center` value -1e300 is not a finite float32",
        ),
        (
            // Finite, but float32 cannot place a 40-px box there.
            Box::new(|v| v["center"] = json!([1e30, 10.0])),
            "`center` value 1e30 is too far out for a box of side 4e1 px",
        ),
    ];
    assert_each_edit_fails(&cases);
    // Large but usable boxes are fine.
    let mut v = base();
    v["center"] = json!([1e5, 3e4]);
    v["scale"] = json!(1e30);
    parse(&v).unwrap();
}

#[test]
fn confidences_must_lie_in_zero_one() {
    for (field, row, col) in [("keypoints_2d", 3, 2), ("keypoints_3d", 20, 3)] {
        for bad in [-0.5, 1.0001, 1e30] {
            let mut v = base();
            v[field][row][col] = json!(bad);
            let m = parse_err(&v);
            assert!(
                m.contains(&format!("`{field}[{row}]` has confidence"))
                    && m.contains("expected a value in [0, 1]"),
                "{field} {bad}: {m}"
            );
        }
        for ok in [0.0, 0.3, 1.0] {
            let mut v = base();
            v[field][row][col] = json!(ok);
            parse(&v).unwrap();
        }
    }
    let mut v = base();
    v["keypoints_2d"][0][2] = json!(1e30);
    assert!(parse_err(&v).contains("has confidence 1e30,"));
}

#[test]
fn image_paths_must_stay_inside_the_data_directory() {
    for bad in ["../a.png", "img/../../a.png", "img/..", "..\\a.png"] {
        let mut v = base();
        v["image"] = json!(bad);
        let m = parse_err(&v);
        assert!(
            m.contains("must stay inside the data directory"),
            "{bad}: {m}"
        );
    }
    for ok in ["img/a..png", "..a/b.png", "./a.png"] {
        let mut v = base();
        v["image"] = json!(ok);
        parse(&v).unwrap();
    }
}

#[test]
fn a_byte_order_mark_is_skipped() {
    let t = TempDir::new("bom");
    let text = format!("\u{feff}{}\n{}\n", base(), base());
    std::fs::write(t.path().join(ANNOTATIONS_FILE), text).unwrap();
    let set = TrainSet::open(t.path()).unwrap();
    assert_eq!((set.len(), set.items()[0].line), (2, 1));
}
