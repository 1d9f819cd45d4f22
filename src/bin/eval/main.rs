//! `eval`: predictions over an evaluation set, pose metrics, and uncertainty metrics.
//! Each subcommand lives in its own file; see `eval --help`.

mod pose;
mod predict;
mod uncertainty;

use handcov::error::{Error, Result};

const HELP: &str = "\
eval: evaluation of 3D hand pose and per-joint uncertainty (SPEC §9)

USAGE:
  eval predict     ...   run a model over a FreiHAND / HO-3D evaluation set and write
                         results/{exp}/{dataset}-val.json, {dataset}-val_uncertainty.json
                         and {dataset}-val_covariance.safetensors
  eval pose        ...   PA-MPJPE, PA-MPVPE, AUC, F@5/F@15 (FreiHAND procedure)
  eval uncertainty ...   Pearson, AUSC, AUSE exactly as the reference, plus aligned variants
                         and calibration

  eval SUBCOMMAND --help   the options of one subcommand
";

fn run() -> Result<()> {
    let mut args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    if args.is_empty() {
        print!("{HELP}");
        return Err(Error::Input(
            "missing subcommand (predict, pose or uncertainty)".into(),
        ));
    }
    let sub = args.remove(0);
    let rest = pico_args::Arguments::from_vec(args);
    match sub.to_str() {
        Some("predict") => predict::run(rest),
        Some("pose") => pose::run(rest),
        Some("uncertainty") => uncertainty::run(rest),
        Some("-h") | Some("--help") | Some("help") => {
            print!("{HELP}");
            Ok(())
        }
        _ => Err(Error::Input(format!(
            "unknown subcommand {sub:?}: expected predict, pose or uncertainty (see --help)"
        ))),
    }
}

fn main() {
    if let Err(e) = run() {
        eprintln!("error: {}", e.one_line());
        std::process::exit(2);
    }
}
