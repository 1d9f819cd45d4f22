//! The evaluation file formats (src/eval/files.rs): round trips, Python-compatible text, and one
//! clear error per malformed input.

mod common;

use handcov::eval::files::*;
use handcov::eval::json::python_float_repr;
use std::path::Path;

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
}

fn err_of<T: std::fmt::Debug>(r: handcov::Result<T>) -> String {
    match r {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(e) => e.to_string(),
    }
}

fn xyz_text(n: usize, joints: usize) -> String {
    let s: Vec<String> = (0..n)
        .map(|i| {
            let j: Vec<String> = (0..joints)
                .map(|j| format!("[{}, {}, {}]", i as f64 * 0.5, j as f64 * 0.25, -1.5e-3))
                .collect();
            format!("[{}]", j.join(", "))
        })
        .collect();
    format!("[{}]", s.join(", "))
}

#[test]
fn predictions_round_trip_with_python_text() {
    let dir = common::scratch("eval_files_round_trip");
    for n in [1usize, 3, 200] {
        let xyz: Vec<f32> = (0..n * 63).map(|k| (k as f32 * 0.37).sin() * 0.1).collect();
        let verts: Vec<f32> = (0..n * 778 * 3)
            .map(|k| (k as f32 * 0.011).cos() * 0.09)
            .collect();
        let p = dir.join(format!("freihand-val-{n}.json"));
        write_predictions(&p, n, &xyz, &verts).unwrap();
        let text = std::fs::read_to_string(&p).unwrap();
        // json.dumps(tensor.tolist()): repr of the f64 value of each f32, ", " separators.
        let first = format!("[[[[{}, ", python_float_repr(xyz[0] as f64));
        assert!(text.starts_with(&first), "{}", &text[..60]);
        let back = read_predictions(&p).unwrap();
        assert_eq!(back.n(), n);
        let want: Vec<f64> = xyz.iter().map(|&v| v as f64).collect();
        assert_eq!(back.xyz.as_flat(), &want[..]);
        let want: Vec<f64> = verts.iter().map(|&v| v as f64).collect();
        assert_eq!(back.verts.as_flat(), &want[..]);
        assert_eq!(back.verts.sample(n - 1)[777][2], verts[n * 2334 - 1] as f64);

        let u: Vec<f32> = (0..n * 21).map(|k| 1e-5 * (1.0 + k as f32)).collect();
        let pu = dir.join("u.json");
        write_uncertainty(&pu, n, &u).unwrap();
        let bu = read_uncertainty(&pu).unwrap();
        assert_eq!(bu.n(), n);
        assert_eq!(bu.sample(0)[20], u[20] as f64);

        let cov: Vec<f32> = (0..n * 3969).map(|k| k as f32 * 1e-6).collect();
        let pc = dir.join("c.safetensors");
        write_covariance(&pc, n, &cov, "ours").unwrap();
        let bc = read_covariance(&pc).unwrap();
        assert_eq!(bc.n(), n);
        assert_eq!(bc.uncertainty.as_deref(), Some("ours"));
        assert_eq!(bc.sample(n - 1)[3968], cov[n * 3969 - 1] as f64);
    }
}

/// `[xyz_list, verts_list]` text with n samples, `joints` joints and 778 vertices.
fn pred_text(n: usize, joints: usize, verts: usize) -> String {
    let v: Vec<String> = (0..n)
        .map(|_| format!("[{}]", vec!["[0.01, -0.02, 0.5]"; verts].join(", ")))
        .collect();
    format!("[{}, [{}]]", xyz_text(n, joints), v.join(", "))
}

#[test]
fn readers_accept_python_layouts() {
    let dir = common::scratch("eval_files_layouts");
    // json.dump(..., indent=2) style whitespace, integers and exponents.
    let p = dir.join("gt.json");
    let sample = format!(
        "[\n  [\n    1,\n    -2.5e-3,\n    3E2\n  ]{}\n]",
        ",\n  [0, 0, 0]".repeat(20)
    );
    write(&p, &format!("[\n {sample},\n {sample}\n]\n"));
    let g = read_gt_xyz(&p).unwrap();
    assert_eq!(g.n(), 2);
    assert_eq!(g.sample(1)[0], [1.0, -2.5e-3, 300.0]);
    // Many samples (the parallel path) read the same as few.
    let p = dir.join("many.json");
    write(&p, &xyz_text(300, 21));
    let g = read_gt_xyz(&p).unwrap();
    assert_eq!(g.n(), 300);
    assert_eq!(g.sample(299)[20], [299.0 * 0.5, 20.0 * 0.25, -1.5e-3]);
}

#[test]
fn malformed_files_give_one_clear_error() {
    let dir = common::scratch("eval_files_errors");
    let p = dir.join("f.json");
    let gt = |text: &str| {
        write(&p, text);
        err_of(read_gt_xyz(&p))
    };
    let shown = p.display().to_string();

    let e = err_of(read_gt_xyz(&dir.join("missing.json")));
    assert!(
        e.contains("missing.json") && e.contains("No such file"),
        "{e}"
    );

    // One sample whose first joint is `j0` (the other 20 are fine), plus `tail`.
    let one = |j0: &str, tail: &str| format!("[[{j0}{}]]{tail}", ", [0, 0, 0]".repeat(20));
    for (text, needle) in [
        (String::new(), "wrong nesting: expected an array of samples"),
        ("{\"a\": 1}".into(), "wrong nesting"),
        ("[]".into(), "the top level has no samples"),
        ("[[[0.1, 0.2, 0.3]".into(), "file ends"),
        (one("[0.1, 0.2 0.3]", ""), "expected `,` or `]`"),
        (
            one("[0.1, 0.2, 0.3]", " x"),
            "after the end of the document",
        ),
        (
            one("[0.1, 0.2, abc]", ""),
            "expected a number at sample 0, joint 0, coordinate 2",
        ),
        (one("[0.1, 0.2, \"0.3\"]", ""), "expected a number"),
        (one("[0.1, 0.2, 1.]", ""), "expected a number"),
        (
            "[[0.1, 0.2, 0.3]]".into(),
            "wrong nesting: expected an array of 3 coordinates at sample 0, joint 0, found `0.1`",
        ),
        (
            one("[0.1, 0.2, NaN]", ""),
            "NaN at sample 0, joint 0, coordinate 2",
        ),
        (
            one("[0.1, Infinity, 0]", ""),
            "Infinity at sample 0, joint 0, coordinate 1",
        ),
        (
            one("[-Infinity, 0, 0]", ""),
            "-Infinity at sample 0, joint 0, coordinate 0",
        ),
        (one("[1e999, 0, 0]", ""), "overflows to infinity"),
        (
            one("[0.1, 0.2]", ""),
            "sample 0, joint 0 has 2 coordinates, expected 3",
        ),
    ] {
        let e = gt(&text);
        assert!(e.starts_with(&format!("input: {shown}: ")), "{e}");
        assert!(e.contains(needle), "{text:?}: expected {needle:?} in {e}");
        assert!(!e.contains('\n'), "{e}");
    }
    // Joint count, with the location.
    let e = gt(&xyz_text(3, 20));
    assert!(e.contains("sample 0 has 20 joints, expected 21"), "{e}");
    // The first error in file order, also when the samples are parsed in parallel.
    let mut text = xyz_text(400, 21);
    let cut = text.match_indices("], [").nth(21 * 150 + 3).unwrap().0; // inside sample 150
    text.insert_str(cut, ", 7");
    let e = gt(&text);
    assert!(
        e.contains("sample 150, joint 3 has 4 coordinates, expected 3"),
        "{e}"
    );

    // Predictions: nesting, vertex count, N mismatch.
    let pp = dir.join("freihand-val.json");
    let pred = |text: &str| {
        write(&pp, text);
        err_of(read_predictions(&pp))
    };
    assert!(pred(&xyz_text(2, 21)).contains("wrong nesting"));
    assert!(pred(&format!("[{}]", xyz_text(2, 21))).contains("expected 2 (["));
    let e = pred(&pred_text(2, 21, 777));
    assert!(
        e.contains("verts_list, sample 0 has 777 vertices, expected 778"),
        "{e}"
    );
    let three = format!(
        "{}, []]",
        &pred_text(1, 21, 778)[..pred_text(1, 21, 778).len() - 1]
    );
    assert!(
        pred(&three).contains("more than 2 elements"),
        "{}",
        pred(&three)
    );
    let mismatch = format!(
        "[{}, {}",
        xyz_text(3, 21),
        &pred_text(2, 21, 778)[xyz_text(2, 21).len() + 3..]
    );
    let e = pred(&mismatch);
    assert!(
        e.contains("xyz_list has 3 samples but verts_list has 2"),
        "{e}"
    );
    write(&pp, &pred_text(2, 21, 778));
    assert_eq!(read_predictions(&pp).unwrap().n(), 2);

    // Uncertainty: the extra list level is required.
    let pu = dir.join("u.json");
    let row = format!("[{}]", vec!["0.001"; 21].join(", "));
    write(&pu, &format!("[{row}, {row}]"));
    let e = err_of(read_uncertainty(&pu));
    assert!(e.contains("wrong nesting"), "{e}");
    write(&pu, &format!("[[{row}, {row}]]"));
    assert_eq!(read_uncertainty(&pu).unwrap().n(), 2);
    write(&pu, &format!("[[{row}, [0.1]]]"));
    let e = err_of(read_uncertainty(&pu));
    assert!(
        e.contains("uncertainty_list, sample 1 has 1 joints, expected 21"),
        "{e}"
    );
}

#[test]
fn covariance_errors() {
    let dir = common::scratch("eval_files_cov");
    let p = dir.join("c.safetensors");
    let save = |shape: &[usize], name: &str, vals: Vec<f32>| {
        let t = handcov::Tensor::from_vec(shape, vals).unwrap();
        handcov::model::weights::save_f32(&p, &[(name, &t)], None).unwrap();
    };
    save(&[2, 63, 62], "covariance", vec![0.0; 2 * 63 * 62]);
    let e = err_of(read_covariance(&p));
    assert!(e.contains("shape [2, 63, 62], expected [N, 63, 63]"), "{e}");
    save(&[1, 63, 63], "cov", vec![0.0; 3969]);
    assert!(err_of(read_covariance(&p)).contains("no tensor `covariance`"));
    let mut v = vec![0.0f32; 2 * 3969];
    v[3969 + 64 * 2] = f32::INFINITY;
    save(&[2, 63, 63], "covariance", v);
    let e = err_of(read_covariance(&p));
    assert!(
        e.contains("covariance of sample 1 has a non-finite entry (inf) at row 2, column 2"),
        "{e}"
    );
    let c = {
        save(&[2, 63, 63], "covariance", vec![1.0; 2 * 3969]);
        read_covariance(&p).unwrap()
    };
    assert_eq!((c.n(), c.uncertainty.clone()), (2, None));
    // Writers check their lengths.
    assert!(write_covariance(&p, 2, &[0.0; 10], "ours").is_err());
    assert!(write_predictions(&dir.join("x.json"), 1, &[0.0; 63], &[0.0; 10]).is_err());
    assert!(write_uncertainty(&dir.join("u.json"), 2, &[0.0; 21]).is_err());
}

#[test]
fn numbers_follow_the_json_grammar_and_the_float32_range() {
    let dir = common::scratch("eval_files_numbers");
    let p = dir.join("f.json");
    let shown = p.display().to_string();
    // One sample whose joint 3 is `j3` (the other 20 are fine).
    let one = |j3: &str| {
        let mut joints = vec!["[0, 0, 0]".to_string(); 21];
        joints[3] = j3.to_string();
        format!("[[{}]]", joints.join(", "))
    };
    for (j3, needle) in [
        (
            "[00.1, 0, 0]",
            "joint 3, coordinate 0 has a leading zero (`00.1`)",
        ),
        (
            "[0, -01, 0]",
            "joint 3, coordinate 1 has a leading zero (`-01`)",
        ),
        ("[0, 0, 007]", "joint 3, coordinate 2 has a leading zero"),
        (
            "[1e160, 0, 0]",
            "the number 1e160 at sample 0, joint 3, coordinate 0 is beyond the float32 range",
        ),
        (
            "[0, -1e300, 0]",
            "-1e300 at sample 0, joint 3, coordinate 1 is beyond the float32 range",
        ),
        ("[0, 0, 3.4028236e38]", "beyond the float32 range"),
    ] {
        write(&p, &one(j3));
        let e = err_of(read_gt_xyz(&p));
        assert!(e.starts_with(&format!("input: {shown}: ")), "{e}");
        assert!(e.contains(needle), "{j3}: expected {needle:?} in {e}");
    }
    // What the grammar and float32 allow: a lone zero, -0, exponents, f32::MAX and the smallest
    // subnormal (as Python's repr writes their f64 values).
    write(
        &p,
        &one("[0, -0.0, 0e5]").replacen("[0, 0, 0]", "[3.4028234663852886e+38, -1e-45, 0.5]", 1),
    );
    let pts = read_gt_xyz(&p).unwrap();
    assert_eq!(pts.sample(0)[0], [f32::MAX as f64, -1e-45, 0.5]);
    assert_eq!(pts.sample(0)[3], [0.0, 0.0, 0.0]);
}

#[test]
fn negative_uncertainty_is_an_error() {
    let dir = common::scratch("eval_files_neg_unc");
    let pu = dir.join("u.json");
    let mut row = vec!["0.001"; 21];
    let good = format!("[{}]", row.join(", "));
    row[7] = "-2e-06";
    let bad = format!("[{}]", row.join(", "));
    write(&pu, &format!("[[{good}, {bad}]]"));
    let e = err_of(read_uncertainty(&pu));
    assert!(
        e.contains("uncertainty_list, sample 1, joint 7 is negative (-0.000002)"),
        "{e}"
    );
    // -0 is not below zero.
    write(
        &pu,
        &format!("[[{good}, {}]]", good.replacen("0.001", "-0.0", 1)),
    );
    assert_eq!(read_uncertainty(&pu).unwrap().sample(1)[0], 0.0);
}

#[test]
fn only_regular_files_are_read() {
    let dir = common::scratch("eval_files_not_regular");
    let fifo = dir.join("fifo.json");
    assert!(std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    // A FIFO would block the read until a writer comes (the reads run on a thread so that
    // the test fails rather than hangs); a directory is not a file either.
    for (p, what) in [
        (fifo.clone(), "is not a regular file"),
        (dir.clone(), "is a directory"),
    ] {
        let (tx, rx) = std::sync::mpsc::channel();
        let q = p.clone();
        std::thread::spawn(move || {
            let _ = tx.send([
                err_of(read_gt_xyz(&q)),
                err_of(read_predictions(&q)),
                err_of(read_uncertainty(&q)),
                err_of(read_covariance(&q)),
            ]);
        });
        let errors = rx
            .recv_timeout(std::time::Duration::from_secs(20))
            .unwrap_or_else(|_| panic!("reading {} blocked", p.display()));
        for e in errors {
            assert!(
                e.starts_with(&format!("input: {}: {what}", p.display())),
                "{e}"
            );
        }
    }
    // An output that is an input, however it is spelt; a new output is never one.
    let a = dir.join("a.json");
    write(&a, "[]");
    let b = dir.join("b.json");
    let other = dir.join("sub/../a.json");
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    let e = err_of(check_not_an_input(
        "--out",
        &other,
        &[("--x", &b), ("--pred", &a)],
    ));
    assert!(e.contains("is the same file as --pred"), "{e}");
    assert!(check_not_an_input("--out", &b, &[("--pred", &a)]).is_ok());
    assert!(check_not_an_input("--out", &a, &[("--pred", &b)]).is_ok());
}
