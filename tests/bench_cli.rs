//! The `bench` binary's command line: one clean error line for bad flags (no GPU needed), and
//! the CPU training step's JSON output.

mod common;

use common::{assert_clean_error, scratch};

fn bench(args: &[&str]) -> (i32, String, String) {
    common::run_binary(env!("CARGO_BIN_EXE_bench"), args)
}

#[test]
fn bad_flags_are_one_clean_error() {
    let cpu = ["--cpu-train", "--train-batch", "2", "--warmup", "0"];
    let with = |extra: &[&str]| bench(&[&cpu[..], extra].concat());
    // Each of these overflowed, aborted on allocation or panicked.
    assert_clean_error(
        with(&["--runs", "18446744073709551615"]),
        &["--runs", "expected 1 to"],
    );
    assert_clean_error(
        bench(&["--cpu-train", "--train-batch", "10000000"]),
        &["--train-batch 10000000: expected 1 to 4096"],
    );
    assert_clean_error(
        bench(&["--cpu-train", "--warmup", "18446744073709551615"]),
        &["--warmup"],
    );
    // GPU flags meant nothing with --cpu-train and were ignored (an invalid one too).
    assert_clean_error(
        with(&["--precision", "fp64"]),
        &["--precision applies to the GPU benchmarks, not to --cpu-train"],
    );
    assert_clean_error(
        with(&["--runs", "1", "--runs", "2"]),
        &["--runs is given more than once"],
    );
    assert_clean_error(
        with(&["--json", "/nonexistent-dir/x.jsonl"]),
        &["--json /nonexistent-dir/x.jsonl: expected a file name in an existing directory"],
    );
}

#[test]
fn cpu_train_writes_one_json_row_per_batch() {
    let dir = scratch("bench_cli_json");
    let json = dir.join("rows.jsonl");
    let (code, stdout, stderr) = bench(&[
        "--cpu-train",
        "--train-batch",
        "2",
        "--runs",
        "1",
        "--warmup",
        "0",
        "--json",
        json.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("cpu_train_step fp32 batch 2"), "{stdout}");
    let text = std::fs::read_to_string(&json).unwrap();
    assert_eq!(text.lines().count(), 1, "{text}");
    let row: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
    assert_eq!(row["batch"], 2);
    assert!(row["median_ms"].as_f64().unwrap() > 0.0, "{row}");
}
