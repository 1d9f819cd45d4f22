//! `eval uncertainty`: the reference's per-joint uncertainty scores (SPEC §9.3) plus aligned
//! variants and calibration (SPEC §15b.3).

use handcov::cli;
use handcov::cli::required;
use handcov::error::{Error, Result};
use handcov::eval::files::{check_not_an_input, Dataset};
use handcov::eval::uncertainty::{evaluate, UncertaintyInputs, REPORT_FILES};
use std::path::{Path, PathBuf};

const HELP: &str = "\
eval uncertainty: Pearson, clipped Pearson, AUSC, AUSE exactly as the reference's
uncertainty_eval/eval_uncertainty.py (unaligned errors, SPEC §9.3), the same scores on
root-aligned and Procrustes-aligned errors, and covariance calibration

USAGE:
  eval uncertainty --dataset freihand|ho3d --exp NAME --pred-dir DIR --gt-dir GT [--out OUT]

OPTIONS:
  --dataset NAME   freihand or ho3d
  --exp NAME       experiment name: reads DIR/NAME/{dataset}-val.json and
                   DIR/NAME/{dataset}-val_uncertainty.json (and, when present,
                   DIR/NAME/{dataset}-val_covariance.safetensors for the calibration)
  --pred-dir DIR   the predictions root (the reference's --pred_file_dir, e.g. results)
  --gt-dir GT      holds evaluation_xyz.json (N×21×3)
  --out OUT        output root (default uncertainty_eval/save, as the reference): writes
                   OUT/{dataset}/NAME/scores.txt (the reference's five lines) and scores.json
                   (the same numbers, the aligned variants, the calibration, notes)
  --threads N      worker threads, 1 to 1024 (default: all cores)
  -h, --help       this text

At least 3 samples are needed (with fewer, the 2 % sparsification cut is empty). Every number
in the files must be a finite float32 value, and no uncertainty may be negative; such input,
mismatched files, or an --out whose files would overwrite an input, is one `error: ...` line
and exit code 2. A score the reference itself leaves undefined (Pearson of a constant
uncertainty: nan) stays nan in scores.txt, with a `warning: ...` line on stderr saying why and
a note in scores.json.
";

const SEE: &str = "eval uncertainty --help";

pub fn run(mut p: pico_args::Arguments) -> Result<()> {
    if p.contains(["-h", "--help"]) {
        print!("{HELP}");
        return Ok(());
    }
    let dataset: String = required(&mut p, "--dataset", SEE)?;
    let exp: String = required(&mut p, "--exp", SEE)?;
    let pred_dir: PathBuf = required(&mut p, "--pred-dir", SEE)?;
    let gt_dir: PathBuf = required(&mut p, "--gt-dir", SEE)?;
    let out: Option<PathBuf> = cli::opt(&mut p, "--out", SEE)?;
    let threads = cli::threads(&mut p, SEE)?;
    cli::finish(p, HELP, SEE)?;
    let dataset = Dataset::parse(&dataset)?;
    if exp.is_empty() || exp.contains(['/', '\\']) || exp == ".." {
        return Err(Error::Input(format!(
            "--exp {exp:?}: expected a plain experiment name (a directory under --pred-dir)"
        )));
    }
    cli::set_threads(threads)?;
    let inputs = UncertaintyInputs::locate(dataset, &exp, &pred_dir, &gt_dir);
    let dir = out
        .unwrap_or_else(|| PathBuf::from("uncertainty_eval/save"))
        .join(dataset.name())
        .join(&exp);
    let mut read: Vec<(&str, &Path)> = vec![
        ("the predictions", &inputs.predictions),
        ("the uncertainties", &inputs.uncertainty),
        ("the ground truth", &inputs.gt_xyz),
    ];
    if let Some(c) = &inputs.covariance {
        read.push(("the covariances", c));
    }
    for name in REPORT_FILES {
        check_not_an_input("--out", &dir.join(name), &read)?;
    }
    let report = evaluate(dataset, &exp, &inputs)?;
    for w in &report.warnings {
        eprintln!("warning: {w}");
    }
    let (txt, js) = report.write(&dir)?;
    print!("{}", report.scores_txt());
    println!();
    print!("{}", report.summary());
    println!("wrote {} and {}", txt.display(), js.display());
    Ok(())
}
