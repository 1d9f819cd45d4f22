//! `eval uncertainty`: the reference's per-joint uncertainty scores (SPEC §9.3) plus aligned
//! variants and calibration (SPEC §15b.3).

use handcov::error::{Error, Result};
use handcov::eval::files::Dataset;
use handcov::eval::uncertainty::{evaluate, UncertaintyInputs};
use std::path::PathBuf;

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
  --threads N      worker threads (default: all cores)
  -h, --help       this text
";

fn arg_err(e: pico_args::Error) -> Error {
    Error::Input(format!("{e} (see eval uncertainty --help)"))
}

pub fn run(mut p: pico_args::Arguments) -> Result<()> {
    if p.contains(["-h", "--help"]) {
        print!("{HELP}");
        return Ok(());
    }
    let dataset: String = p.value_from_str("--dataset").map_err(arg_err)?;
    let exp: String = p.value_from_str("--exp").map_err(arg_err)?;
    let pred_dir: PathBuf = p.value_from_str("--pred-dir").map_err(arg_err)?;
    let gt_dir: PathBuf = p.value_from_str("--gt-dir").map_err(arg_err)?;
    let out: Option<PathBuf> = p.opt_value_from_str("--out").map_err(arg_err)?;
    let threads: Option<usize> = p
        .opt_value_from_fn("--threads", |v| {
            v.parse::<usize>()
                .map_err(|e| format!("--threads {v:?}: {e}"))
        })
        .map_err(arg_err)?;
    let rest = p.finish();
    if let Some(first) = rest.first() {
        return Err(Error::Input(format!(
            "unexpected argument {first:?} (see eval uncertainty --help)"
        )));
    }
    let dataset = Dataset::parse(&dataset)?;
    if exp.is_empty() || exp.contains(['/', '\\']) || exp == ".." {
        return Err(Error::Input(format!(
            "--exp {exp:?}: expected a plain experiment name (a directory under --pred-dir)"
        )));
    }
    handcov::eval::set_threads(threads)?;
    let inputs = UncertaintyInputs::locate(dataset, &exp, &pred_dir, &gt_dir);
    let report = evaluate(dataset, &exp, &inputs)?;
    for w in &report.warnings {
        eprintln!("warning: {w}");
    }
    let dir = out
        .unwrap_or_else(|| PathBuf::from("uncertainty_eval/save"))
        .join(dataset.name())
        .join(&exp);
    let (txt, js) = report.write(&dir)?;
    print!("{}", report.scores_txt());
    println!();
    print!("{}", report.summary());
    println!("wrote {} and {}", txt.display(), js.display());
    Ok(())
}
